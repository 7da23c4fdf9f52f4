"""How checkpoint bytes, save/restore time and memory grow with the shuffle buffer.

Each buffer size is saved in its own process and restored in another (so peak RSS
figures never mix), the checkpoint is uploaded to a fresh embedded GCS server whose RSS
is read before and after, and a straight line is fitted per quantity: the slope is the
cost of one more buffered element. The preflight's "host RAM" row is then checked
against the measured memory at the largest buffer.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlckpt.bench.child import run_child
from dlckpt.bench.limits import ServerProcesses, checkpoint_files, gcs_bucket
from dlckpt.bench.stats import fit_line

# The preflight's RAM figure must agree with the measured memory within this fraction.
RAM_TOLERANCE = 0.20
FITTED = (
    "bytes",
    "save_seconds",
    "restore_seconds",
    "peak_rss_bytes",
    "restore_peak_rss_bytes",
    "server_rss_bytes",
)


def server_rss_after_upload(files: list[Path]) -> dict[str, int | None]:
    """RSS of a fresh embedded GCS server, idle and after GcsDestination.put of `files`."""
    from dlckpt.storage.gcs import GcsDestination, GcsLocation, embedded_gcs_server, make_client

    before = ServerProcesses.snapshot()
    with embedded_gcs_server():
        server = ServerProcesses(before)
        client = make_client()
        bucket = gcs_bucket(client)
        idle = server.rss_bytes()
        GcsDestination(client, GcsLocation(bucket.name, "bench")).put(files, "scaling")
        return {"server_idle_rss_bytes": idle, "server_rss_bytes": server.rss_bytes()}


def measure_size(
    config: str, overrides: list[str], buffer: int, workdir: Path, *, with_server: bool = True
) -> dict[str, Any]:
    """One buffer size: save (own process), restore (own process), server RSS; scratch removed."""
    folder = workdir / f"buffer-{buffer}"
    request = {"config": config, "overrides": overrides, "buffer": buffer}
    try:
        saved = run_child("save", {**request, "folder": str(folder / "ckpt")}, folder)
        prefix = folder / "ckpt" / "iterator"
        restored = run_child("restore", {**request, "prefix": str(prefix)}, folder)
        server: dict[str, int | None] = {}
        if with_server:
            server = server_rss_after_upload(checkpoint_files(prefix))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "buffer": buffer,
        **saved,
        "restore_seconds": restored["restore_seconds"],
        "restore_first_batch_seconds": restored["first_batch_seconds"],
        "restore_peak_rss_bytes": restored["peak_rss_bytes"],
        **server,
    }


def fits(rows: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """A straight line per quantity against the buffer size (slope: per buffered element)."""
    lines = {}
    for key in FITTED:
        points = [(r["buffer"], r[key]) for r in rows if r.get(key) is not None]
        if len({b for b, _ in points}) >= 2:
            lines[key] = fit_line([b for b, _ in points], [v for _, v in points])
    return lines


def ram_check(
    rows: Sequence[dict[str, Any]], lines: dict[str, dict[str, float]], estimate: Any, rows_ram: int
) -> dict[str, Any]:
    """The preflight's host-RAM figure against the measured memory at the largest buffer.

    The RAM row counts the buffer only, so it is compared with the peak RSS at the
    largest buffer minus the process's own memory with an empty buffer (the intercept of
    the peak-RSS line); the absolute peak is reported beside it.
    """
    largest = max(rows, key=lambda r: r["buffer"])
    baseline = lines["peak_rss_bytes"]["intercept"]
    measured_buffer = largest["peak_rss_bytes"] - baseline
    calibration = estimate.calibration
    return {
        "buffer": largest["buffer"],
        "estimate_ram_bytes": rows_ram,
        "raw_bytes_per_element": calibration.raw_element_bytes if calibration else None,
        # the row's figure per element: the allocator's bytes plus the save's working memory
        "ram_bytes_per_element": calibration.ram_per_element if calibration else None,
        "measured_peak_rss_bytes": largest["peak_rss_bytes"],
        "measured_peak_rss_kernel_bytes": largest.get("peak_rss_kernel_bytes"),
        "process_baseline_bytes": baseline,
        "measured_buffer_bytes": measured_buffer,
        "measured_bytes_per_element": lines["peak_rss_bytes"]["slope"],
        "estimate/measured_buffer": rows_ram / measured_buffer if measured_buffer > 0 else None,
        "estimate/measured_peak": rows_ram / largest["peak_rss_bytes"],
        "tolerance": RAM_TOLERANCE,
        "within_tolerance": measured_buffer > 0
        and abs(rows_ram / measured_buffer - 1) <= RAM_TOLERANCE,
    }


def preflight_rows(config: str, overrides: list[str], buffer: int) -> tuple[Any, list[Any]]:
    """The measured estimate and the small-buffer scenario's checked locations.

    A cached estimate of the same config serves (it is the same measurement); part 4 times
    the cold one.
    """
    from dlckpt.config import load_config, with_buffer_size
    from dlckpt.estimate.estimator import estimate
    from dlckpt.preflight.locations import check_locations, scenario_locations

    cfg = with_buffer_size(load_config(config, list(overrides)), buffer)
    result = estimate(cfg, tested_buffer=buffer, say=lambda _: None)
    return result, check_locations(scenario_locations("small_buffer", result))


def scaling(
    config: str,
    overrides: list[str],
    buffers: Sequence[int],
    workdir: Path,
    say: Callable[[str], None],
    estimate_overrides: Sequence[str] = (),
) -> dict[str, Any]:
    """Every buffer size measured, the fitted lines, the RAM check and the tightest folder.

    `estimate_overrides` go to the preflight's estimate only (--quick calibrates less).
    """
    from dlckpt.preflight.locations import RAM

    rows = []
    for buffer in sorted(buffers):
        row = measure_size(config, overrides, buffer, workdir)
        rows.append(row)
        say(
            f"  buffer {buffer:,}: {row['bytes']:,} B, save {row['save_seconds']:.2f} s, "
            f"restore {row['restore_seconds']:.2f} s, peak RSS {row['peak_rss_bytes']:,} B, "
            f"server RSS {row.get('server_rss_bytes')}"
        )
    lines = fits(rows)
    estimate, locations = preflight_rows(config, [*overrides, *estimate_overrides], max(buffers))
    ram_row = next(row for row in locations if row.role.startswith("host RAM"))
    folders = [row for row in locations if row.free_bytes is not None and row.path != RAM]
    tightest = min(folders, key=lambda row: row.free_bytes or 0)
    return {
        "config": config,
        "overrides": overrides,
        "estimate_overrides": list(estimate_overrides),
        "rows": rows,
        "fits": lines,
        "ram": ram_check(rows, lines, estimate, ram_row.required_bytes),
        "estimated_checkpoint_bytes": estimate.tested_bytes,
        "tightest_location": {
            "role": tightest.role,
            "path": tightest.path,
            "free_bytes": tightest.free_bytes,
        },
    }
