"""Compare shuffle strategies side by side: checkpoint size, speed, shuffle quality, exact resume.

For the reference loader, writes the config's synthetic episodes to TFRecord shards (and a
one-file-per-record folder for the strategies that read by index), builds every strategy
over the same data at the same buffer size, saves each iterator, restores it in a new
process and compares the batches bit for bit. For your own loader (`dataloader._target_`),
the strategies that need no new data layout run on it (a smaller buffer, its
encoded/decoded switch, symbolic checkpointing); those that read by index run on synthetic
episodes of your sample size, and the table says which data each row was measured on.
See DISK_SPACE_SOLUTIONS.md for the code of each strategy.

Exit codes: 0 every strategy resumed exactly, 1 one did not, 2 bad input.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf

from dlckpt.cli.common import common_parser, load_from_args, parse_args, run_main, say_runtime
from dlckpt.config import parse_positive_int, shuffle_buffer_size
from dlckpt.errors import EXIT_FAILED, EXIT_PASSED, UsageError
from dlckpt.paths import doc
from dlckpt.report import write_report
from dlckpt.strategies.compare import (
    DEFAULT_WORK_DIR,
    LAST_REPORT_NAME,
    STRATEGIES,
    STRATEGY_NAMES,
    StrategyResult,
    finish_restore,
    measure_strategy,
)
from dlckpt.strategies.episodes import DataSpec, write_episode_files
from dlckpt.strategies.user import (
    ON_YOUR_PIPELINE,
    RANDOM_ACCESS_NEEDS,
    SYNTHETIC_FOR_USER,
    is_reference_loader,
    measure_variant,
    measured_sample_bytes,
    synthetic_spec_like,
    user_variants,
)
from dlckpt.units import format_size

# The decoded-frame buffer is really filled; past this it would not fit a shared machine.
MAX_DECODED_BUFFER_BYTES = 2_000_000_000


def main(argv: Sequence[str] | None = None, prog: str = "compare_shuffle_strategies.py") -> int:
    parser = common_parser(prog, __doc__.splitlines()[0])
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


def _selected(setting: str | None) -> tuple[list[Any], dict[str, str]]:
    """The strategies to measure, and those this environment cannot run with the reason.

    By default every strategy this environment can run (Grain is optional; tf.data's global
    shuffle needs TensorFlow 2.17); one named with --strategies that cannot run is bad input.
    """
    if not setting:
        missing = {s.name: reason for s in STRATEGIES if (reason := s.missing())}
        return [s for s in STRATEGIES if s.name not in missing], missing
    names = [n.strip() for n in setting.split(",") if n.strip()]
    unknown = [n for n in names if n not in STRATEGY_NAMES]
    if unknown or not names:
        raise UsageError(
            f"--strategies {setting!r}: unknown {', '.join(unknown) or 'empty list'}; "
            f"choose from {', '.join(STRATEGY_NAMES)}"
        )
    chosen = [s for s in STRATEGIES if s.name in names]
    for strategy in chosen:
        if reason := strategy.missing():
            raise UsageError(f"--strategies {strategy.name}: {reason}")
    return chosen, {}


def _run(parser: Any, argv: Sequence[str] | None) -> int:
    args = parse_args(parser, argv)
    cfg = load_from_args(args)
    strategies, not_measured = _selected(args.strategies)
    buffer = parse_positive_int(
        args.buffer_size if args.buffer_size is not None else shuffle_buffer_size(cfg),
        "--buffer-size",
    )
    timed_batches = parse_positive_int(args.timed_batches, "--timed-batches")
    dataloader: dict[str, Any] = OmegaConf.to_container(cfg.dataloader, resolve=True)  # type: ignore[assignment]
    settings = _Settings(
        work_dir=args.work_dir.expanduser().resolve(),
        batch_size=int(dataloader.get("batch_size", 8)),
        timed_batches=timed_batches,
        compare_batches=int(cfg.roundtrip.batches_to_compare),
        keep=args.keep,
    )
    report: dict[str, Any] = {
        "config": args.config_name,
        "dataloader_target": str(dataloader.get("_target_")),
        "buffer_size": buffer,
    }
    if is_reference_loader(dataloader):
        spec = DataSpec.from_dataloader(dataloader)
        _check_synthetic(spec, buffer)
        settings.work_dir.mkdir(parents=True, exist_ok=True)
        frames = ", ".join(f"{s}×{s}" for s in spec.cameras.values())
        say_runtime(args)
        print(
            f"Config: {args.config_name} · {spec.num_records:,} steps ({spec.num_episodes} "
            f"episodes × {spec.steps_per_episode}), frames {frames}, window {spec.window_size} "
            f"· buffer {buffer:,} · {format_size(_decoded_sample(spec))} per decoded sample"
        )
        results = _run_synthetic(strategies, spec, buffer, settings, dataloader)
        report.update(records=spec.num_records, decoded_sample_bytes=_decoded_sample(spec))
    else:
        results, user_report = _run_users_loader(strategies, dataloader, buffer, settings, args)
        report.update(user_report)

    print()
    print(format_table(results))
    for name, reason in not_measured.items():
        print(f"not measured in this environment: {name} ({reason})")
    report["strategies"] = [r.to_json() for r in results]
    report["not_measured"] = not_measured
    write_report(args.report, report)
    if args.strategies is None:  # the small-buffer script's pointer needs every strategy
        write_report(settings.work_dir / LAST_REPORT_NAME, report)
    print()
    for line in summary_lines(results):
        print(line)
    return EXIT_PASSED if all(r.resumes_exactly for r in results) else EXIT_FAILED


@dataclass
class _Settings:
    work_dir: Path
    batch_size: int
    timed_batches: int
    compare_batches: int
    keep: bool


def _decoded_sample(spec: DataSpec) -> int:
    return spec.window_size * sum(3 * s * s for s in spec.cameras.values())


def _check_synthetic(spec: DataSpec, buffer: int) -> None:
    """UsageError (exit 2) before anything is written when the buffer cannot be compared."""
    decoded_sample = _decoded_sample(spec)
    if buffer * decoded_sample > MAX_DECODED_BUFFER_BYTES:
        raise UsageError(
            f"--buffer-size {buffer:,}: the decoded-frame buffer would hold "
            f"{format_size(buffer * decoded_sample)} in memory ({format_size(decoded_sample)} "
            f"per sample); pass --buffer-size 1000 to compare the strategies at a size that fits"
        )
    if spec.num_records <= buffer:
        raise UsageError(
            f"the config records {spec.num_records:,} steps, not more than the {buffer:,}-element "
            "buffer; raise dataloader.num_episodes or pass a smaller --buffer-size"
        )


def _run_synthetic(
    strategies: list[Any], spec: DataSpec, buffer: int, settings: _Settings,
    dataloader: dict[str, Any],
) -> list[StrategyResult]:  # fmt: skip
    """The synthetic strategies over episode files written from `spec`."""
    data_dir = write_episode_files(spec, settings.work_dir / "data")
    print(f"Episodes: {data_dir} (TFRecord shards + one file per record, reused on the next run)")

    def job(strategy: Any) -> Callable[[Path], tuple[StrategyResult, Any]]:
        node = _dataloader_cfg(
            strategy, data_dir, buffer, settings.batch_size, dataloader, spec.seed
        )
        return lambda scratch: measure_strategy(
            strategy, node, spec=spec, workdir=scratch, warmup_batches=2,
            timed_batches=settings.timed_batches, compare_batches=settings.compare_batches,
        )  # fmt: skip

    return _measure_then_restore([(s.name, job(s)) for s in strategies], settings)


def _run_users_loader(
    strategies: list[Any], dataloader: dict[str, Any], buffer: int, settings: _Settings,
    args: Any,
) -> tuple[list[StrategyResult], dict[str, Any]]:  # fmt: skip
    """The strategies the user's loader can run, on it; the random-access ones on synthetic
    episodes of the user's sample size, labelled as such."""
    sample = measured_sample_bytes(dataloader)
    if buffer * sample > MAX_DECODED_BUFFER_BYTES:
        raise UsageError(
            f"--buffer-size {buffer:,}: your loader's buffer would hold about "
            f"{format_size(buffer * sample)} in memory ({format_size(sample)} per sample); "
            "pass --buffer-size 1000 to compare the strategies at a size that fits"
        )
    settings.work_dir.mkdir(parents=True, exist_ok=True)
    say_runtime(args)
    print(
        f"Config: {args.config_name} · your loader {dataloader['_target_']} · buffer {buffer:,} "
        f"· {format_size(sample)} per sample (measured)"
    )
    variants, notes = user_variants(dataloader, buffer)
    for note in notes:
        print(f"  not measured on your loader: {note}")

    def job(variant: Any) -> Callable[[Path], tuple[StrategyResult, Any]]:
        def run(scratch: Path) -> tuple[StrategyResult, Any]:
            outcome = measure_variant(
                variant, workdir=scratch, warmup_batches=2,
                timed_batches=settings.timed_batches, compare_batches=settings.compare_batches,
            )  # fmt: skip
            outcome.result.measured_on = ON_YOUR_PIPELINE
            return outcome.result, outcome.pending

        return run

    results = _measure_then_restore([(v.name, job(v)) for v in variants], settings)
    synthetic = [s for s in strategies if s.name in SYNTHETIC_FOR_USER]
    spec = synthetic_spec_like(sample, buffer)
    if synthetic:
        print(
            f"The index strategies need your loader to {RANDOM_ACCESS_NEEDS}. Shown on "
            f"SYNTHETIC episodes instead (not your data): {spec.image_size}×{spec.image_size} "
            f"frames, {format_size(_decoded_sample(spec))} per sample like yours:"
        )
        results += _run_synthetic(synthetic, spec, buffer, settings, {"seed": 0})
    return results, {
        "decoded_sample_bytes": sample,
        "user_loader_notes": notes,
        "random_access_needs": RANDOM_ACCESS_NEEDS,
        "synthetic_image_size": spec.image_size,
    }


def _measure_then_restore(
    jobs: list[tuple[str, Callable[[Path], tuple[StrategyResult, Any]]]], settings: _Settings
) -> list[StrategyResult]:
    """Measure one strategy at a time (the timing must not compete with anything of ours),
    then restore every checkpoint in its own new process, two at a time."""
    results: list[StrategyResult] = []
    scratches: list[Path] = []
    try:
        measured = []
        for name, job in jobs:
            scratch = Path(tempfile.mkdtemp(prefix=f"{name}-", dir=settings.work_dir))
            scratches.append(scratch)
            measured.append(job(scratch))
            saved = format_size(measured[-1][0].checkpoint_bytes)
            print(f"· {name}: measured, checkpoint saved ({saved})")
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
                size = format_size(result.checkpoint_bytes)
                print(f"{mark} {result.name}: checkpoint {size}, {status}")
    finally:
        for scratch in scratches:
            if settings.keep:
                print(f"  kept {scratch} (--keep)")
            else:
                shutil.rmtree(scratch, ignore_errors=True)
    return results


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


_BASELINES = {ON_YOUR_PIPELINE: "your_loader", "synthetic episodes": "decoded_buffer"}


def _baseline(results: list[StrategyResult], measured_on: str) -> StrategyResult | None:
    name = _BASELINES.get(measured_on)
    return next((r for r in results if r.name == name and r.measured_on == measured_on), None)


def format_table(results: list[StrategyResult], *, batch_size: int = 0) -> str:
    """One row per strategy; sizes compared with the baseline measured on the same data."""
    from tabulate import tabulate

    rows = []
    for r in results:
        baseline = _baseline(results, r.measured_on)
        ratio = "baseline" if baseline is r else ""
        if baseline is not None and baseline is not r and baseline.checkpoint_bytes:
            ratio = (
                _ratio(baseline.checkpoint_bytes, r.checkpoint_bytes) if r.checkpoint_bytes else ""
            )
        quality = r.quality
        rows.append([
            r.name, r.measured_on, format_size(r.checkpoint_bytes), ratio,
            f"{r.save_seconds:.2f}", f"{r.restore_seconds:.2f}", f"{r.elements_per_second:,.0f}",
            f"{quality['mean_displacement']:,.0f}" if quality else "n/a",
            f"{quality['same_episode_consecutive']:.3f}" if quality else "n/a",
            "yes" if r.resumes_exactly else "NO",
        ])  # fmt: skip
    headers = [
        "strategy", "measured on", "checkpoint", "vs baseline", "save s", "restore s",
        "elements/s", "mean displacement", "same-episode neighbours", "resumes exactly",
    ]  # fmt: skip
    return tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def summary_lines(results: list[StrategyResult]) -> list[str]:
    """The smallest checkpoint that resumed exactly, once per kind of data it was measured on."""
    lines = []
    for measured_on in (ON_YOUR_PIPELINE, "synthetic episodes"):
        resuming = [
            r for r in results
            if r.resumes_exactly and r.checkpoint_bytes and r.measured_on == measured_on
        ]  # fmt: skip
        if not resuming:
            continue
        best = min(resuming, key=lambda r: r.checkpoint_bytes)
        baseline = _baseline(results, measured_on)
        versus = ""
        if baseline is not None and baseline is not best and baseline.checkpoint_bytes:
            same = "" if measured_on == ON_YOUR_PIPELINE else " at the same buffer"
            versus = (
                f", {_ratio(baseline.checkpoint_bytes, best.checkpoint_bytes)} than "
                f"{baseline.name} ({format_size(baseline.checkpoint_bytes)}){same}"
            )
        label = "ON YOUR PIPELINE" if measured_on == ON_YOUR_PIPELINE else "(synthetic episodes)"
        lines.append(
            f"SMALLEST CHECKPOINT THAT RESUMES EXACTLY {label}: {best.name}, "
            f"{format_size(best.checkpoint_bytes)}{versus}"
        )
    for r in results:
        if not r.resumes_exactly:
            lines.append(f"✗ {r.name} DID NOT RESUME EXACTLY: {r.error}")
    lines.append(
        f"Copyable code per strategy, and the production path: {doc('DISK_SPACE_SOLUTIONS.md')}"
    )
    return lines
