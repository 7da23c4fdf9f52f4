"""docs/benchmarks.md and docs/benchmarks.png, drawn from bench/results.json alone."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dlckpt.units import format_size

REGENERATE = "python scripts/bench.py --render-only"
MEASURE = "make bench"
PLOT_NAME = "benchmarks.png"


def size_cell(value: float | None) -> str:
    return "n/a" if value is None else format_size(value)


def spread(stats: dict[str, Any] | None, digits: int = 2, unit: str = "") -> str:
    """`1.23 / 1.50 / 2.01 (n=3)`: min / median / max of a summary."""
    if not stats:
        return "n/a"
    values = (f"{stats[key]:,.{digits}f}" for key in ("min", "median", "max"))
    return f"{' / '.join(values)}{unit} (n={stats['n']})"


def _table(headers: list[str], rows: list[list[Any]]) -> str:
    from tabulate import tabulate

    return str(tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True))


def machine_section(results: dict[str, Any]) -> list[str]:
    machine = results["machine"]
    load = machine["load_average"]
    end = results.get("load_average_end") or load
    cores = machine["cpu_count"] or 1
    lines = [
        "## Machine",
        "",
        f"Taken {machine['taken_at_utc']} on {machine['cpu_count']} CPUs, "
        f"{machine['ram_total_bytes'] / 2**30:.1f} GiB RAM, TensorFlow {machine['tensorflow']}, "
        f"Python {machine['python']}. Load average (1/5/15 min) {load[0]} / {load[1]} / "
        f"{load[2]} at the start, {end[0]} / {end[1]} / {end[2]} at the end.",
        "",
    ]
    if max(load[0], end[0]) > cores:
        lines += [
            f"**The machine was busy** (load above its {cores} cores): wall-clock seconds "
            "below are inflated by other work. The ratios are less affected, since both "
            "sides of each ratio ran one right after the other under the same load.",
            "",
        ]
    rows = [
        [role, fs["folder"], fs["fstype"], fs["mountpoint"], size_cell(fs["free_bytes"])]
        for role, fs in machine["filesystems"].items()
    ]
    lines += [_table(["folder", "path", "filesystem", "mount", "free"], rows), ""]
    lines += [f"Note: {note}" for note in results.get("notes", [])]
    lines += [""] if results.get("notes") else []
    for command, later in zip(
        results.get("commands_merged", []), results.get("machine_merged", []), strict=False
    ):
        load = later["load_average"]
        lines += [
            f"Some parts were measured later by `{command}` ({later['taken_at_utc']}, load "
            f"{load[0]} / {load[1]} / {load[2]} at its start).",
            "",
        ]
    part_load = results.get("part_load_average") or {}
    part_seconds = results.get("part_seconds") or {}
    if part_seconds:
        rows = [
            [name, f"{seconds:.0f}", " / ".join(str(v) for v in part_load.get(name, []))]
            for name, seconds in part_seconds.items()
        ]
        lines += [_table(["part", "wall seconds", "load average at its end"], rows), ""]
    return lines


def save_restore_section(data: dict[str, Any] | None) -> list[str]:
    if not data:
        return []
    seconds = data["seconds"]
    return [
        "## 1. Save and restore against raw disk I/O",
        "",
        f"tf.train.Checkpoint save of a filled iterator (then fsync) against a raw sequential "
        f"write of the same {size_cell(data['raw_bytes'])} to the same folder (fsync'd); restore "
        "against a sequential read, both read back with their pages evicted from the cache. "
        f"Preset `{data['config']}` at buffer {data['buffer']:,}.",
        "",
        _table(
            ["step", "seconds min / median / max", "ratio to raw, min / median / max"],
            [
                ["save + fsync", spread(seconds["save"]), spread(data["save/raw_write"])],
                ["raw write + fsync", spread(seconds["write"]), "1"],
                ["restore", spread(seconds["restore"]), spread(data["restore/raw_read"])],
                ["raw read", spread(seconds["read"]), "1"],
            ],
        ),
        "",
    ]


def transfer_section(data: dict[str, Any] | None) -> list[str]:
    if not data:
        return []
    seconds = data["seconds"]
    return [
        "## 2. Verified GCS transfer against a plain copy",
        "",
        f"`GcsDestination.put` / `fetch` (parallel, crc32c-verified, marker last) against one "
        f"plain `upload_from_filename` / `download_to_filename` per file, for the same "
        f"{data['files']} checkpoint files ({size_cell(data['bytes'])}) on the same embedded "
        "GCS server.",
        "",
        _table(
            ["step", "seconds min / median / max", "ratio to plain, min / median / max"],
            [
                ["verified put", spread(seconds["put"]), spread(data["put/plain_upload"])],
                ["plain upload", spread(seconds["upload"]), "1"],
                ["verified fetch", spread(seconds["fetch"]), spread(data["fetch/plain_download"])],
                ["plain download", spread(seconds["download"]), "1"],
            ],
        ),
        "",
    ]


# The page is one table and its paragraph per section: long, but a straight line of rows.
_SCALING_COLUMNS = [
    "buffer", "checkpoint", "save s", "restore s", "peak RSS save", "peak RSS restore",
    "server RSS",
]  # fmt: skip
# The fitted quantities: results key -> (what it is, its unit).
_FITTED = {
    "bytes": ("checkpoint", "B"),
    "save_seconds": ("save", "s"),
    "restore_seconds": ("restore", "s"),
    "peak_rss_bytes": ("peak RSS, saving process", "B"),
    "restore_peak_rss_bytes": ("peak RSS, restoring process", "B"),
    "server_rss_bytes": ("embedded GCS server RSS after upload", "B"),
}


def scaling_section(data: dict[str, Any] | None) -> list[str]:
    """Part 3: one row per buffer, the fitted lines, the preflight's RAM row held to them."""
    if not data:
        return []
    rows = [
        [
            f"{r['buffer']:,}", size_cell(r["bytes"]), f"{r['save_seconds']:.2f}",
            f"{r['restore_seconds']:.2f}", size_cell(r["peak_rss_bytes"]),
            size_cell(r["restore_peak_rss_bytes"]), size_cell(r.get("server_rss_bytes")),
        ]
        for r in data["rows"]
    ]  # fmt: skip
    fits = data["fits"]
    fit_rows = [
        [name, f"{fits[key]['slope']:,.6g} {unit}", f"{fits[key]['intercept']:,.6g} {unit}",
         f"{fits[key]['r2']:.4f}"]
        for key, (name, unit) in _FITTED.items()
        if key in fits
    ]  # fmt: skip
    overrides = " ".join(data.get("overrides") or [])
    return [
        "## 3. How cost grows with the shuffle buffer",
        "",
        f"Preset `{data['config']}` {overrides}; each size saved in its own process and "
        "restored in another (peak RSS polled with psutil), then uploaded to a fresh embedded "
        "GCS server.",
        "",
        _table(_SCALING_COLUMNS, rows),
        "",
        "Fitted lines (value = intercept + slope × buffered elements):",
        "",
        _table(["quantity", "slope per element", "intercept", "r²"], fit_rows),
        "",
        _ram_paragraph(data["ram"], data["rows"][0]),
        "",
    ]


def _ram_paragraph(ram: dict[str, Any], first_row: dict[str, Any]) -> str:
    """The preflight's host-RAM row against the saving process's measured peak RSS."""
    verdict = "agrees within" if ram["within_tolerance"] else "**does NOT agree** within"
    ratio = ram["estimate/measured_buffer"]
    return (
        f"**Preflight RAM row vs measurement** at buffer {ram['buffer']:,}: the preflight's "
        f'"host RAM" row says {size_cell(ram["estimate_ram_bytes"])} '
        f"({ram.get('ram_bytes_per_element')} B per element: the allocator's bytes for an "
        f"element of {ram['raw_bytes_per_element']} B of data, plus the save's working "
        "memory). The saving "
        f"process peaked at {size_cell(ram['measured_peak_rss_bytes'])} (the kernel's high-water "
        f"mark, {size_cell(ram['measured_peak_rss_kernel_bytes'])}, also counts start-up "
        "transients such as importing TensorFlow: it is "
        f"{size_cell(first_row.get('peak_rss_kernel_bytes'))}"
        f" at buffer {first_row['buffer']:,}), of which "
        f"{size_cell(ram['process_baseline_bytes'])} is the process with an empty buffer (the "
        f"intercept) and {size_cell(ram['measured_buffer_bytes'])} the buffer "
        f"({ram['measured_bytes_per_element']:,.0f} B per element). The row {verdict} "
        f"{ram['tolerance']:.0%} of the buffer's measured memory (estimate/measured = "
        f"{'n/a' if ratio is None else f'{ratio:.3f}'}). It does not count the process "
        f"itself: estimate/peak RSS = {ram['estimate/measured_peak']:.3f}."
    )


def answer_section(rows: list[dict[str, Any]] | None) -> list[str]:
    if not rows:
        return []
    table = [
        [
            r["config"], f"{r['shuffle_buffer_size']:,}",
            f"{r['estimate_only']['seconds']:.1f} (exit {r['estimate_only']['exit_code']})",
            f"{r['fill_measured_at_buffer']:,}",
            spread(r["fill_elements_per_second"], 1), spread(r["fill_seconds"], 0),
            spread(r["fill/estimate_only"], 3),
        ]
        for r in rows
    ]  # fmt: skip
    return [
        "## 4. Time to an answer",
        "",
        "`--estimate-only` (cold estimate cache) against the time to fill the configured "
        "buffer: measured fill rate × buffer size, one projection per fill-rate repeat "
        "(n/a: filling was too fast to time against the pipeline's start-up).",
        "",
        _table(
            [
                "preset",
                "buffer",
                "--estimate-only s",
                "fill timed at",
                "fill elements/s",
                "fill s",
                "fill / estimate-only",
            ],
            table,
        ),
        "",
    ]


def suite_section(data: dict[str, Any] | None) -> list[str]:
    if not data:
        return [
            "## 5. The test suite",
            "",
            "Not measured in this run (`--suite` was not given).",
            "",
        ]
    slowest = [[f"{r['seconds']:.1f}", r["phase"], r["test"]] for r in data["slowest"][:15]]
    return [
        "## 5. The test suite",
        "",
        f"`{data['command']}`: {data['seconds']:.0f} s wall, exit {data['exit_code']} "
        f"({data['summary'] or 'no pytest summary line'}). Slowest steps:",
        "",
        _table(["seconds", "phase", "test"], slowest),
        "",
    ]


def steps_section(steps: dict[str, Any] | None) -> list[str]:
    if not steps:
        return [
            "## Other benchmarks run by `make bench`",
            "",
            "Not in this results file: the run recorded no steps "
            "(--no-steps, --quick, or it was stopped before them).",
            "",
        ]
    lines = ["## Other benchmarks run by `make bench`", ""]
    for name, step in steps.items():
        if "skipped" in step:
            lines += [f"- **{name}**: skipped ({step['skipped']}).", ""]
            continue
        lines += [
            f"- **{name}**: `{step['command']}` — {step['seconds']:.0f} s, exit "
            f"{step['exit_code']}. Its last lines:",
            "",
            "```",
            *step["output_tail"][-10:],
            "```",
            "",
        ]
    return lines


def markdown(results: dict[str, Any]) -> str:
    """The whole of docs/benchmarks.md for one results.json."""
    quick = (
        " (a --quick run: small buffers, one repeat; not for citing)" if results["quick"] else ""
    )
    lines = [
        "# Benchmarks",
        "",
        f"Generated from `bench/results.json` by `{REGENERATE}`; measured by "
        f"`{results['command']}`{quick}. Do not edit by hand.",
        "",
        *(
            [f"![Checkpoint bytes and peak RSS against buffer size]({PLOT_NAME})", ""]
            if results.get("scaling")
            else []
        ),
        *machine_section(results),
        *save_restore_section(results.get("save_restore")),
        *transfer_section(results.get("transfer")),
        *scaling_section(results.get("scaling")),
        *answer_section(results.get("time_to_answer")),
        *suite_section(results.get("suite")),
        *steps_section(results.get("steps")),
    ]
    return "\n".join(lines).rstrip() + "\n"


# One figure, drawn panel by panel: splitting it would only pass the axes around.
def _plot_measured_and_fit(
    axes: Any, data: dict[str, Any], key: str, label: str, color: str, xs: Any
) -> None:
    """The measured points of `key` and its fitted line: solid within the measured buffers,
    dotted beyond them (extrapolated)."""
    rows, fit = data["rows"], data["fits"][key]
    measured_max = max(r["buffer"] for r in rows)
    axes.plot([r["buffer"] for r in rows], [r[key] for r in rows], "o", color=color,
              label=f"{label} (measured)")  # fmt: skip
    for part, style in ((xs <= measured_max, "-"), (xs >= measured_max, ":")):
        axes.plot(
            xs[part],
            fit["intercept"] + fit["slope"] * xs[part],
            style,
            color=color,
            alpha=0.6,
            label=(
                f"fit: {fit['slope']:,.0f} B/element + {format_size(fit['intercept'])}"
                if style == "-"
                else None
            ),
        )


def _plot_limits(axes: Any, where: dict[str, Any], available: int | None) -> None:
    """Horizontal lines: the tightest folder's free space, and the RAM available."""
    free = where["free_bytes"]
    axes.axhline(
        free, color="black", linestyle="--",
        label=f"free space, tightest folder ({where['path']}): {format_size(free)}",
    )  # fmt: skip
    if available:
        axes.axhline(
            available,
            color="tab:red",
            linestyle="-.",
            alpha=0.5,
            label=f"RAM available at the start: {format_size(available)}",
        )


def plot(results: dict[str, Any], path: Path) -> None:
    """Checkpoint bytes and peak RSS against buffer size, fitted lines, tightest free space."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    data = results["scaling"]
    rows = data["rows"]
    buffers = np.array([r["buffer"] for r in rows], dtype=float)
    free = data["tightest_location"]["free_bytes"]
    line = data["fits"]["bytes"]
    # Draw the lines out to where the checkpoint would fill the tightest folder.
    reach = (free - line["intercept"]) / line["slope"] if line["slope"] > 0 else buffers.max()
    xs = np.geomspace(buffers.min(), max(buffers.max(), min(reach * 1.5, 1e9)), 200)
    figure, axes = plt.subplots(figsize=(8, 5), dpi=110)
    for key, label, color in (
        ("bytes", "checkpoint bytes", "tab:blue"),
        ("peak_rss_bytes", "peak RSS of the saving process", "tab:red"),
    ):
        _plot_measured_and_fit(axes, data, key, label, color, xs)
    _plot_limits(axes, data["tightest_location"], results["machine"].get("ram_available_bytes"))
    axes.set_xscale("log")
    axes.set_xlabel("shuffle buffer (elements); dotted: the fitted lines extrapolated")
    axes.set_yscale("log")
    axes.set_ylabel("bytes")
    machine = results["machine"]
    axes.set_title(
        f"{data['config']} preset: cost per buffered element "
        f"({machine['cpu_count']} CPUs, load {machine['load_average'][0]})"
    )
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8, loc="upper left")
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


def render(results_path: Path, docs_dir: Path) -> tuple[Path, Path | None]:
    """Write docs_dir/benchmarks.md and docs_dir/benchmarks.png from results_path.

    The plot needs the scaling part; without it only the page is written (path None).
    """
    results = json.loads(results_path.read_text())
    docs_dir.mkdir(parents=True, exist_ok=True)
    page = docs_dir / "benchmarks.md"
    page.write_text(markdown(results))
    if not results.get("scaling"):
        return page, None
    picture = docs_dir / PLOT_NAME
    plot(results, picture)
    return page, picture
