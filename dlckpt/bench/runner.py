"""`make bench` from start to end: measure each part, write results.json, render the docs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlckpt.paths import PROJECT_ROOT

# Sized so that the whole of `make bench` stays under 15 minutes on 2 idle cores.
FULL_SIZES = [500, 1000, 2000, 4000, 8000, 16000]
QUICK_SIZES = [16, 64, 512]


@dataclass
class Options:
    """What one run measures; `quick` shrinks every part to a smoke test of the machinery."""

    quick: bool = False
    repeats: int = 5
    io_config: str = "config"
    io_buffer: int = 300
    scaling_config: str = "small"
    sizes: list[int] = field(default_factory=lambda: list(FULL_SIZES))
    estimate_overrides: list[str] = field(default_factory=list)  # part 3's preflight estimate
    presets: list[str] | None = None  # None: every conf/*.yaml
    fill_buffer: int = 64  # grows until filling takes MIN_FILL_SECONDS (answer.py)
    fill_repeats: int = 3
    steps: bool = True
    catch_runs: int = 3
    estimate_args: list[str] = field(default_factory=lambda: ["--multipliers", "20", "100"])
    tf_gcs_args: list[str] = field(default_factory=lambda: ["--megabytes", "128"])
    suite: bool = False
    parts: list[str] = field(default_factory=lambda: ["limits", "scaling", "answer"])
    command: str = "make bench"

    @classmethod
    def quick_defaults(cls, **changes: Any) -> Options:
        options = cls(
            quick=True, repeats=1, io_config="small", io_buffer=64, sizes=list(QUICK_SIZES),
            presets=["small"], fill_buffer=32, fill_repeats=1, steps=False, catch_runs=1,
            estimate_overrides=[  # the test suite's cheap calibration: its cached estimate serves
                "estimate.calibration_buffer_sizes=[8,32]", "estimate.calibration_offsets=[0]",
            ],
            estimate_args=["--cases", "small", "--multipliers", "2"],
            tf_gcs_args=["--megabytes", "8", "--repeats", "1"],
        )  # fmt: skip
        for key, value in changes.items():
            setattr(options, key, value)
        return options


def filled_iterator(config: str, buffer: int) -> tuple[Any, Any]:
    """(dataset, iterator) with its shuffle buffer filled and its prefetch settled."""
    from dlckpt.bench.child import settle
    from dlckpt.config import load_config, with_buffer_size
    from dlckpt.pipeline.build import instantiate_dataset

    dataset = instantiate_dataset(with_buffer_size(load_config(config), buffer).dataloader)
    iterator = iter(dataset)
    next(iterator)
    settle()
    return dataset, iterator


def measure_limits(options: Options, scratch: Path, say: Callable[[str], None]) -> dict[str, Any]:
    """Parts 1 and 2: one filled iterator saved beside raw I/O, then moved beside plain copies."""
    from dlckpt.bench.limits import checkpoint_files, save_restore_vs_raw, transfer_vs_plain
    from dlckpt.ckpt_io import save_iterator

    say(f"1. Save/restore vs raw write/read: preset {options.io_config}, buffer "
        f"{options.io_buffer:,}, {options.repeats} repeats")  # fmt: skip
    dataset, iterator = filled_iterator(options.io_config, options.io_buffer)
    folder = scratch / "io"
    folder.mkdir()
    io = save_restore_vs_raw(iterator, dataset, folder, options.repeats, say)
    io.update(config=options.io_config, buffer=options.io_buffer)
    saved = save_iterator(iterator, scratch / "transfer-source")
    del iterator, dataset
    say(f"2. Verified GCS transfer vs plain copy: {saved.bytes:,} B, {options.repeats} repeats")
    transfer = transfer_vs_plain(checkpoint_files(saved.prefix), scratch, options.repeats, say)
    return {"save_restore": io, "transfer": transfer}


PARTS = ("limits", "scaling", "answer")


def measure(
    options: Options, out: Path | None = None, say: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every part the options ask for, as the dictionary results.json holds.

    With `out`, results.json is rewritten after each part, so a run stopped halfway
    still leaves what it measured.
    """
    from dlckpt.bench.answer import preset_names, time_to_answer
    from dlckpt.bench.machine import machine_facts
    from dlckpt.bench.scaling import scaling
    from dlckpt.bench.steps import other_benchmarks
    from dlckpt.bench.suite import run_suite

    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="dlckpt-bench-"))
    results: dict[str, Any] = {"command": options.command, "quick": options.quick}
    results["machine"] = machine_facts({"scratch (TMPDIR)": scratch, "project": PROJECT_ROOT})
    results["part_seconds"] = {}

    def part(name: str, work: Callable[[], dict[str, Any]]) -> None:
        part_started = time.perf_counter()
        results.update(work())
        results["part_seconds"][name] = time.perf_counter() - part_started
        results["load_average_end"] = [round(value, 2) for value in os.getloadavg()]
        results.setdefault("part_load_average", {})[name] = results["load_average_end"]
        results["total_seconds"] = time.perf_counter() - started
        if out is not None:
            write_results(results, out)

    presets = options.presets or preset_names(PROJECT_ROOT / "conf")
    try:
        if "limits" in options.parts:
            part("limits", lambda: measure_limits(options, scratch, say))
        if "scaling" in options.parts:
            say(f"3. Scaling: preset {options.scaling_config}, buffers {options.sizes}")
            part("scaling", lambda: {"scaling": scaling(
                options.scaling_config, [], options.sizes, scratch, say,
                estimate_overrides=options.estimate_overrides,
            )})  # fmt: skip
        if "answer" in options.parts:
            say(f"4. Time to an answer: presets {presets}")
            part("answer", lambda: {"time_to_answer": time_to_answer(
                presets, options.fill_buffer, options.fill_repeats, scratch, say
            )})  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if options.steps:
        say("Other benchmarks:")
        part("steps", lambda: {"steps": other_benchmarks(
            PROJECT_ROOT, catch_runs=options.catch_runs, estimate_args=options.estimate_args,
            tf_gcs_args=options.tf_gcs_args, say=say,
        )})  # fmt: skip
    if options.suite:
        say("5. The test suite: make test")
        part("suite", lambda: {"suite": run_suite(PROJECT_ROOT)})
    return results


MEASURED_KEYS = {
    "limits": ("save_restore", "transfer"),
    "scaling": ("scaling",),
    "answer": ("time_to_answer",),
    "steps": ("steps",),
    "suite": ("suite",),
}


def merged(earlier: dict[str, Any], later: dict[str, Any]) -> dict[str, Any]:
    """`earlier` with the parts `later` measured replaced; each part keeps its own timing.

    The machine facts stay the earlier run's; the later run's are kept under
    `machine_merged`, so a reader sees both loads.
    """
    result = dict(earlier)
    for part in later.get("part_seconds", {}):
        for key in MEASURED_KEYS[part]:
            result[key] = later[key]
        for bookkeeping in ("part_seconds", "part_load_average"):
            result.setdefault(bookkeeping, {})[part] = later[bookkeeping][part]
    result["machine_merged"] = [*earlier.get("machine_merged", []), later["machine"]]
    result["commands_merged"] = [*earlier.get("commands_merged", []), later["command"]]
    result["load_average_end"] = later["load_average_end"]
    return result


def write_results(results: dict[str, Any], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")


def problems(results: dict[str, Any]) -> list[str]:
    """What the run found wrong: the RAM row out of tolerance, a step that failed."""
    found = []
    ram = (results.get("scaling") or {}).get("ram")
    if ram and not ram["within_tolerance"] and not results["quick"]:
        ratio = ram["estimate/measured_buffer"]
        found.append(
            f"the preflight's host-RAM row ({ram['estimate_ram_bytes']:,} B at buffer "
            f"{ram['buffer']:,}) differs from the measured buffer memory "
            f"({ram['measured_buffer_bytes']:,.0f} B) by more than {ram['tolerance']:.0%} "
            f"(estimate/measured = {ratio})"
        )
    for name, step in (results.get("steps") or {}).items():
        if step.get("exit_code"):
            found.append(f"{step['command']} exited {step['exit_code']} (step {name})")
    suite = results.get("suite")
    if suite and suite["exit_code"]:
        found.append(f"{suite['command']} exited {suite['exit_code']}")
    return found
