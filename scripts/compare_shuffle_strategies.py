#!/usr/bin/env python3
"""Compare shuffle strategies side by side: checkpoint size, speed, shuffle quality, exact resume.

Writes the config's synthetic episodes to TFRecord shards (and a one-file-per-record
folder for the strategies that read by index), builds every strategy over the same data
at the same buffer size, saves each iterator, restores it in a new process and compares
the batches bit for bit. See DISK_SPACE_SOLUTIONS.md for the code of each strategy.

Exit codes: 0 every strategy resumed exactly, 1 one did not, 2 bad input.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent / "tests"))

from _common import (
    EXIT_FAILED,
    EXIT_PASSED,
    common_parser,
    load_from_args,
    parse_args,
    run_main,
)
from _config import parse_positive_int, shuffle_buffer_size
from _errors import UsageError
from _report import format_bytes, write_report
from _strategies import (
    DEFAULT_WORK_DIR,
    LAST_REPORT_NAME,
    STRATEGIES,
    STRATEGY_NAMES,
    StrategyResult,
    finish_restore,
    measure_strategy,
)
from _strategy_builders import grain_available
from _strategy_episodes import DataSpec, write_episode_files

# The decoded-frame buffer is really filled; past this it would not fit a shared machine.
MAX_DECODED_BUFFER_BYTES = 2_000_000_000


def main(argv: Sequence[str] | None = None) -> int:
    parser = common_parser("compare_shuffle_strategies.py", __doc__.splitlines()[0])
    parser.set_defaults(config_name="strategies")
    parser.add_argument(
        "--buffer-size", help="shuffle buffer for every strategy (default: the config's)"
    )
    parser.add_argument(
        "--strategies",
        help=f"comma-separated subset (default: all): {','.join(STRATEGY_NAMES)}",
    )
    parser.add_argument(
        "--timed-batches", default="50", help="batches timed for throughput (default: 50)"
    )
    parser.add_argument(
        "--work-dir",
        type=Path,
        default=DEFAULT_WORK_DIR,
        help="where the episode files are written and reused (default: .work/strategies)",
    )
    return run_main(lambda: _run(parser, argv))


def _selected(setting: str | None) -> list[Any]:
    if not setting:
        # Grain is optional: measured only when `grain` and `array_record` are installed.
        return [s for s in STRATEGIES if s.framework != "grain" or grain_available()]
    names = [n.strip() for n in setting.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGY_NAMES]
    if unknown or not names:
        raise UsageError(
            f"--strategies {setting!r}: unknown {', '.join(unknown) or 'empty list'}; "
            f"choose from {', '.join(STRATEGY_NAMES)}"
        )
    if "grain_array_record" in names and not grain_available():
        raise UsageError(
            "--strategies grain_array_record: grain and array_record are not installed "
            "(pip install grain array-record)"
        )
    return [s for s in STRATEGIES if s.name in names]


def _run(parser: Any, argv: Sequence[str] | None) -> int:
    args = parse_args(parser, argv)
    cfg = load_from_args(args)
    strategies = _selected(args.strategies)
    buffer = parse_positive_int(
        args.buffer_size if args.buffer_size is not None else shuffle_buffer_size(cfg),
        "--buffer-size",
    )
    timed_batches = parse_positive_int(args.timed_batches, "--timed-batches")
    dataloader = dict(cfg.dataloader)
    spec = DataSpec.from_dataloader(dataloader)
    decoded_sample = spec.window_size * sum(3 * s * s for s in spec.cameras.values())
    if buffer * decoded_sample > MAX_DECODED_BUFFER_BYTES:
        raise UsageError(
            f"--buffer-size {buffer:,}: the decoded-frame buffer would hold "
            f"{format_bytes(buffer * decoded_sample)} in memory ({format_bytes(decoded_sample)} "
            f"per sample); pass --buffer-size 1000 to compare the strategies at a size that fits"
        )
    if spec.num_records <= buffer:
        raise UsageError(
            f"the config records {spec.num_records:,} steps, not more than the {buffer:,}-element "
            "buffer; raise dataloader.num_episodes or pass a smaller --buffer-size"
        )

    work_dir = args.work_dir.expanduser().resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    frames = ", ".join(f"{s}×{s}" for s in spec.cameras.values())
    print(
        f"Config: {args.config_name} · {spec.num_records:,} steps ({spec.num_episodes} episodes "
        f"× {spec.steps_per_episode}), frames {frames}, window {spec.window_size} · buffer "
        f"{buffer:,} · {format_bytes(decoded_sample)} per decoded sample"
    )
    data_dir = write_episode_files(spec, work_dir / "data")
    print(f"Episodes: {data_dir} (TFRecord shards + one file per record, reused on the next run)")

    batch_size = int(dataloader.get("batch_size", 8))
    results: list[StrategyResult] = []
    scratches: list[Path] = []
    try:
        # Measure one strategy at a time (the timing must not compete with anything of
        # ours), then restore every checkpoint in its own new process, two at a time.
        measured = []
        for strategy in strategies:
            scratch = Path(tempfile.mkdtemp(prefix=f"{strategy.name}-", dir=work_dir))
            scratches.append(scratch)
            measured.append(
                measure_strategy(
                    strategy,
                    _dataloader_cfg(strategy, data_dir, buffer, batch_size, dataloader, spec.seed),
                    spec=spec,
                    workdir=scratch,
                    warmup_batches=2,
                    timed_batches=timed_batches,
                    compare_batches=int(cfg.roundtrip.batches_to_compare),
                )
            )
            saved = format_bytes(measured[-1][0].checkpoint_bytes)
            print(f"· {strategy.name}: measured, checkpoint saved ({saved})")
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [
                pool.submit(finish_restore, result, pending) if pending else None
                for result, pending in measured
            ]
            for (result, _), future in zip(measured, futures, strict=True):
                if future is not None:
                    future.result()
                results.append(result)
                mark = "✓" if result.resumes_exactly else "✗"
                status = "resumes exactly" if result.resumes_exactly else result.error
                size = format_bytes(result.checkpoint_bytes)
                print(f"{mark} {result.name}: checkpoint {size}, {status}")
    finally:
        for scratch in scratches:
            if args.keep:
                print(f"  kept {scratch} (--keep)")
            else:
                shutil.rmtree(scratch, ignore_errors=True)

    print()
    print(format_table(results, batch_size=batch_size))
    report = {
        "config": args.config_name,
        "buffer_size": buffer,
        "records": spec.num_records,
        "decoded_sample_bytes": decoded_sample,
        "strategies": [r.to_json() for r in results],
    }
    write_report(args.report, report)
    if args.strategies is None:  # the small-buffer script's pointer needs every strategy
        write_report(work_dir / LAST_REPORT_NAME, report)
    print()
    for line in summary_lines(results):
        print(line)
    return EXIT_PASSED if all(r.resumes_exactly for r in results) else EXIT_FAILED


def _dataloader_cfg(
    strategy: Any,
    data_dir: Path,
    buffer: int,
    batch_size: int,
    dataloader: dict[str, Any],
    seed: int,
) -> dict[str, Any]:
    """The Hydra node the restore process rebuilds the strategy from."""
    return {
        "_target_": strategy.target,
        "data_dir": str(data_dir),
        "shuffle_buffer_size": buffer,
        "batch_size": batch_size,
        "num_parallel_calls": int(dataloader.get("num_parallel_calls", 2)),
        "prefetch_batches": int(dataloader.get("prefetch_batches", 2)),
        "seed": seed,
    }


def _ratio(baseline: int, size: int) -> str:
    """How `size` compares with `baseline`: '19,219x smaller', '4.8x smaller', '1.8x larger'."""
    factor = baseline / size if baseline >= size else size / baseline
    digits = ",.0f" if factor >= 10 else ".1f"
    return f"{factor:{digits}}× {'smaller' if baseline >= size else 'larger'}"


def format_table(results: list[StrategyResult], *, batch_size: int) -> str:
    from tabulate import tabulate

    baseline = next((r.checkpoint_bytes for r in results if r.name == "decoded_buffer"), 0)
    rows = []
    for r in results:
        ratio = "baseline" if r.name == "decoded_buffer" else ""
        if baseline and r.checkpoint_bytes and r.name != "decoded_buffer":
            ratio = _ratio(baseline, r.checkpoint_bytes)
        rows.append([
            r.name, format_bytes(r.checkpoint_bytes), ratio, f"{r.save_seconds:.2f}",
            f"{r.restore_seconds:.2f}", f"{r.elements_per_second:,.0f}",
            f"{r.quality.get('mean_displacement', 0):,.0f}",
            f"{r.quality.get('same_episode_consecutive', 0):.3f}",
            "yes" if r.resumes_exactly else "NO",
        ])  # fmt: skip
    headers = [
        "strategy", "checkpoint", "vs decoded", "save s", "restore s", "elements/s",
        "mean displacement", "same-episode neighbours", "resumes exactly",
    ]  # fmt: skip
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def summary_lines(results: list[StrategyResult]) -> list[str]:
    baseline = next((r for r in results if r.name == "decoded_buffer"), None)
    resuming = [r for r in results if r.resumes_exactly and r.checkpoint_bytes]
    lines = []
    if resuming:
        best = min(resuming, key=lambda r: r.checkpoint_bytes)
        versus = ""
        if baseline is not None and baseline is not best and baseline.checkpoint_bytes:
            versus = (
                f", {_ratio(baseline.checkpoint_bytes, best.checkpoint_bytes)} than "
                f"decoded_buffer ({format_bytes(baseline.checkpoint_bytes)}) at the same buffer"
            )
        lines.append(
            f"SMALLEST CHECKPOINT THAT RESUMES EXACTLY: {best.name}, "
            f"{format_bytes(best.checkpoint_bytes)}{versus}"
        )
    for r in results:
        if not r.resumes_exactly:
            lines.append(f"✗ {r.name} DID NOT RESUME EXACTLY: {r.error}")
    lines.append("Copyable code per strategy, and the production path: DISK_SPACE_SOLUTIONS.md")
    return lines


if __name__ == "__main__":
    sys.exit(main())
