#!/usr/bin/env python3
"""Benchmark the measured checkpoint-size estimate against real saves, shape by shape.

For each case it calibrates (cache off, timed), extrapolates to 20x and 100x the largest
calibration buffer, then fills each buffer for real, saves the iterator once the
prefetch buffers are full, and prints estimate/real, the stated ±, the README's rule of
thumb beside it and the calibration seconds. Results go to bench/estimate.json. Nothing
else is kept: every save goes to a scratch folder that is removed.

    python scripts/bench_estimate.py                       # presets + the test family
    python scripts/bench_estimate.py --cases small tiny_elements --multipliers 20 100
    python scripts/bench_estimate.py --cases index_shuffle --real-saves 6   # the truth's spread
"""

from __future__ import annotations

import argparse
import gc
import json
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

PRESETS: dict[str, tuple[str, list[str]]] = {
    "small": ("small", []),
    "openvla-40": (
        "openvla",
        ["dataloader.image_size=40", "+dataloader.num_episodes=40",
         "+dataloader.steps_per_episode=12"],
    ),
}  # fmt: skip


def _shape_names() -> list[str]:
    """The test family's shapes, then the probes (shapes measured here, not in the family)."""
    from dlckpt.bench.pipelines.estimate_shapes import FAMILY, PROBES

    return [*FAMILY, *PROBES]


def shape_config(name: str, folder: Path, overrides: Sequence[str] = ()) -> Any:
    """The config of a preset or of a test-family shape (written into `folder`)."""
    from dlckpt.bench.pipelines.estimate_shapes import FAMILY
    from dlckpt.config import load_config

    if name in PRESETS:
        config_name, preset_overrides = PRESETS[name]
        return load_config(config_name, [*preset_overrides, *overrides])
    folder.mkdir(parents=True, exist_ok=True)
    lines = [
        f"  _target_: dlckpt.bench.pipelines.estimate_shapes.{name}",
        "  shuffle_buffer_size: 1000",
    ]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in FAMILY.get(name, {}).items()]
    (folder / f"{name}.yaml").write_text("dataloader:\n" + "\n".join(lines) + "\n")
    return load_config(name, list(overrides), folder)


def real_checkpoint_bytes(cfg: Any, buffer: int, scratch: Path) -> int:
    """Bytes of a real iterator checkpoint at `buffer`, saved as a training job saves it.

    Reads roundtrip.batches_before_save batches, lets the background buffers fill, then
    takes the settled size as the calibration's anchors do (estimate.calibrate.steady_save_bytes).
    """
    from dlckpt.config import with_buffer_size
    from dlckpt.estimate.saves import steady_save_bytes
    from dlckpt.pipeline.build import instantiate_dataset

    iterator = iter(instantiate_dataset(with_buffer_size(cfg, buffer).dataloader))
    for _ in range(cfg.roundtrip.batches_before_save):
        next(iterator)
    time.sleep(0.5)
    size = steady_save_bytes(iterator, scratch / f"real-{buffer}", scratch)
    del iterator
    gc.collect()  # the iterator is gone before the caller makes another (a cache lock file)
    return size


def bench_case(
    name: str, multipliers: Sequence[int], scratch: Path, real_saves: int = 1
) -> dict[str, Any]:
    """One case's row. With `real_saves` > 1 each real buffer is filled and saved that many
    times: estimate/real is against their median, "real spread" is max/min - 1 (how far
    the truth itself moves with thread timing), and "covered" needs every save inside ±."""
    from dlckpt.estimate.estimator import estimate

    cfg = shape_config(name, scratch / "conf", ["estimate.cache=false"])
    started = time.perf_counter()
    result = estimate(cfg, scratch_root=scratch, say=lambda _: None)
    calibration_seconds = time.perf_counter() - started
    assert result.calibration is not None
    largest = max(cfg.estimate.calibration_buffer_sizes)
    row: dict[str, Any] = {"case": name, "calibration_s": round(calibration_seconds, 1),
                           "constant": result.calibration.constant}  # fmt: skip
    for multiplier in multipliers:
        buffer = multiplier * largest
        reals = [real_checkpoint_bytes(cfg, buffer, scratch) for _ in range(real_saves)]
        real = round(statistics.median(reals))
        estimated = result.bytes_for(buffer)
        formula = result.formula_tested_bytes * buffer // max(result.tested_buffer, 1)
        stated = result.uncertainty_for(buffer) or 0.0
        row[f"est/real {multiplier}x"] = round(estimated / real, 4)
        row[f"± {multiplier}x"] = round(stated, 4)
        row[f"covered {multiplier}x"] = all(abs(estimated / r - 1) <= stated for r in reals)
        if real_saves > 1:
            row[f"real spread {multiplier}x"] = round(max(reals) / min(reals) - 1, 4)
        row[f"formula/real {multiplier}x"] = round(formula / real, 3)
        row[f"real bytes {multiplier}x"] = real
    return row


def compression_rows(
    image_size: int = 128, buffers: tuple[int, int] = (8, 72)
) -> list[dict[str, object]]:
    """Checkpoint bytes per buffered frame / the frame's decoded bytes, by kind of frame.

    The per-frame figure is the slope between two buffer sizes, so the iterator's fixed
    part cancels out; the pipeline is range -> map -> shuffle -> batch(1), no prefetch.
    """
    from dlckpt.ckpt_io import save_iterator
    from dlckpt.pipeline.robot import _frame
    from dlckpt.runtime.tf_import import import_tensorflow

    tf = import_tensorflow()
    raw = image_size * image_size * 3

    def reference(index):
        return _frame(tf, 0, 0, index // 40, index % 40, image_size)

    makers = {
        "uniform noise": lambda i: tf.random.stateless_uniform(
            [image_size, image_size, 3], seed=tf.stack([i, i + 1]), maxval=256, dtype=tf.int32
        ),
        "constant (all 128)": lambda i: tf.fill(
            [image_size, image_size, 3], tf.constant(128, tf.uint8)
        ),
        "reference frame, decoded": reference,
        "reference frame, JPEG q=90": lambda i: tf.io.encode_jpeg(reference(i), quality=90),
        "reference frame, JPEG q=95": lambda i: tf.io.encode_jpeg(reference(i), quality=95),
    }
    rows: list[dict[str, object]] = []
    scratch = Path(tempfile.mkdtemp(prefix="dlckpt-compression-"))
    try:
        for kind, make in makers.items():
            sizes = []
            for buffer in buffers:

                def element(i, make=make):
                    value = make(i)
                    return tf.cast(value, tf.uint8) if value.dtype == tf.int32 else value

                dataset = tf.data.Dataset.range(10**9).map(element).shuffle(buffer, seed=1).batch(1)
                iterator = iter(dataset)
                next(iterator)
                sizes.append(save_iterator(iterator, scratch / f"{len(rows)}-{buffer}").bytes)
            per_frame = (sizes[1] - sizes[0]) / (buffers[1] - buffers[0])
            rows.append({"frame": kind, "checkpoint bytes per frame": round(per_frame),
                         "decoded bytes": raw, "ratio": per_frame / raw})  # fmt: skip
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return rows


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="+", help="presets and/or test-family shapes (default: all)"
    )
    parser.add_argument(
        "--multipliers", nargs="+", type=int, default=[20, 100],
        help="real buffers = these x the largest calibration buffer (default: 20 100)",
    )  # fmt: skip
    parser.add_argument(
        "--multiplier", type=int, action="append",
        help="one multiplier (repeatable); the same as --multipliers",
    )  # fmt: skip
    parser.add_argument(
        "--output", type=Path, default=ROOT / "bench" / "estimate.json",
        help="where the JSON results go (default: bench/estimate.json)",
    )  # fmt: skip
    parser.add_argument(
        "--real-saves", type=int, default=1,
        help="real saves per buffer (default 1); more also print how far they spread",
    )  # fmt: skip
    parser.add_argument(
        "--compression", action="store_true",
        help="print checkpoint bytes per buffered frame / decoded bytes, by kind of frame; exit",
    )  # fmt: skip
    return parser


def _bad_input(args: argparse.Namespace) -> str | None:
    """The one line for arguments of the wrong form (exit 2), else None."""
    if any(m < 1 for m in args.multipliers):
        return "✗ --multipliers: expected positive integers, e.g. 20 100"
    if args.real_saves < 1:
        return f"✗ --real-saves {args.real_saves}: expected a positive integer"
    known = [*PRESETS, *_shape_names()]
    unknown = [c for c in args.cases or known if c not in known]
    if unknown:
        return f"✗ --cases {' '.join(unknown)}: expected some of {', '.join(known)}"
    return None


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    args.multipliers = args.multiplier or args.multipliers
    problem = _bad_input(args)
    if problem:
        print(problem, file=sys.stderr)
        return 2
    from tabulate import tabulate

    from dlckpt.runtime.tf_import import import_tensorflow

    import_tensorflow()
    if args.compression:
        print(tabulate(compression_rows(), headers="keys", floatfmt=".3f", intfmt=","))
        return 0
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="dlckpt-bench-"))
    try:
        for name in args.cases or [*PRESETS, *_shape_names()]:
            rows.append(bench_case(name, args.multipliers, scratch, args.real_saves))
            print(json.dumps(rows[-1]), flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(tabulate(rows, headers="keys", floatfmt=".4f", intfmt=","))
    errors = [abs(v - 1) for row in rows for k, v in row.items() if k.startswith("est/real")]
    covered = [v for row in rows for k, v in row.items() if k.startswith("covered")]
    print(
        f"worst |estimate/real - 1| = {max(errors):.2%}; the stated ± (95%) covered "
        f"{sum(covered)}/{len(covered)} real saves"
    )
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps({"multipliers": args.multipliers, "rows": rows}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
