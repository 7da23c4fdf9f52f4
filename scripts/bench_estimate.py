#!/usr/bin/env python3
"""Benchmark the measured checkpoint-size estimate against real saves.

For each case it calibrates (cache off, timed), extrapolates to MULTIPLIER x the largest
calibration buffer, then fills that buffer for real, saves the iterator once the
prefetch buffers are full, and prints estimate/real and calibration-time/real-time as
ratios. Nothing is kept: every save goes to a scratch folder that is removed.

    python scripts/bench_estimate.py                      # all cases, 20x
    python scripts/bench_estimate.py --cases small sensor --multiplier 30
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts" / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "pipelines"))  # the pipeline the estimator never saw

# name -> (config name, overrides, config folder or None)
CASES: dict[str, tuple[str, list[str]]] = {
    "small": ("small", []),
    "config": ("config", []),
    "openvla": ("openvla", []),
    "sensor": ("sensor", []),
}
SENSOR_YAML = (
    "dataloader:\n"
    "  _target_: estimate_pipelines.sensor_log_dataset\n"
    "  shuffle_buffer_size: 100000\n"
)


def bench_case(name: str, multiplier: int, scratch: Path) -> dict[str, float | int | str]:
    from _config import load_config, with_buffer_size
    from _estimate import _settle, estimate
    from _pipeline import instantiate_dataset
    from _roundtrip import save_iterator

    config_name, overrides = CASES[name]
    config_dir = None
    if name == "sensor":
        config_dir = scratch / "conf"
        config_dir.mkdir(exist_ok=True)
        (config_dir / "sensor.yaml").write_text(SENSOR_YAML)
    cfg = load_config(config_name, [*overrides, "estimate.cache=false"], config_dir)
    target = multiplier * max(cfg.estimate.calibration_buffer_sizes)
    started = time.perf_counter()
    result = estimate(cfg, tested_buffer=target, scratch_root=scratch, say=lambda _: None)
    calibration_seconds = time.perf_counter() - started

    started = time.perf_counter()
    iterator = iter(instantiate_dataset(with_buffer_size(cfg, target).dataloader))
    for _ in range(cfg.roundtrip.batches_before_save):
        next(iterator)
    _settle()
    saved = save_iterator(iterator, scratch / f"{name}-real")
    real_seconds = time.perf_counter() - started
    del iterator
    shutil.rmtree(scratch / f"{name}-real", ignore_errors=True)
    assert result.calibration is not None
    return {
        "case": name,
        "buffer": target,
        "estimate_bytes": result.tested_bytes,
        "real_bytes": saved.bytes,
        "estimate/real": result.tested_bytes / saved.bytes,
        "uncertainty": result.calibration.uncertainty_for(target),
        "formula/real": result.formula_tested_bytes / saved.bytes,
        "calibration_s": calibration_seconds,
        "real_fill_save_s": real_seconds,
        "calibration/real_time": calibration_seconds / real_seconds,
    }


def compression_rows(
    image_size: int = 128, buffers: tuple[int, int] = (8, 72)
) -> list[dict[str, object]]:
    """Checkpoint bytes per buffered frame / the frame's decoded bytes, by kind of frame.

    The per-frame figure is the slope between two buffer sizes, so the iterator's fixed
    part cancels out; the pipeline is range -> map -> shuffle -> batch(1), no prefetch.
    """
    from _pipeline import _frame
    from _roundtrip import save_iterator
    from _tf import import_tensorflow

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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", choices=sorted(CASES), default=list(CASES))
    parser.add_argument(
        "--multiplier",
        type=int,
        default=20,
        help="real buffer = this x the largest calibration buffer",
    )
    parser.add_argument(
        "--compression", action="store_true",
        help="print checkpoint bytes per buffered frame / decoded bytes, by kind of frame; exit",
    )  # fmt: skip
    args = parser.parse_args(argv)
    if args.multiplier < 1:
        print("✗ --multiplier: expected a positive integer, e.g. 20", file=sys.stderr)
        return 2
    from _tf import import_tensorflow
    from tabulate import tabulate

    import_tensorflow()
    if args.compression:
        print(tabulate(compression_rows(), headers="keys", floatfmt=".3f", intfmt=","))
        return 0
    rows = []
    scratch = Path(tempfile.mkdtemp(prefix="dlckpt-bench-"))
    try:
        for name in args.cases:
            row = bench_case(name, args.multiplier, scratch)
            rows.append(row)
            print(
                f"{name}: estimate/real {row['estimate/real']:.4f} (±{row['uncertainty']:.1%}), "
                f"calibration {row['calibration_s']:.1f} s vs real fill+save "
                f"{row['real_fill_save_s']:.1f} s",
                flush=True,
            )
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print(tabulate(rows, headers="keys", floatfmt=".3f", intfmt=","))
    worst = max(abs(float(row["estimate/real"]) - 1) for row in rows)
    print(f"worst |estimate/real - 1| = {worst:.2%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
