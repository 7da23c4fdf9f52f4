#!/usr/bin/env python3
"""Benchmark the preflight's host-RAM row against a real save's peak memory, shape by shape.

For each case it calibrates (cache off), takes the row's bytes per buffered element, and
measures a real fill-and-save's RSS high-water mark per element at two buffers, each in a
fresh process (bench.ram). Prints both and their ratio; writes bench/ram.json. The saves
go to a scratch folder that is removed.

    python scripts/bench_ram.py                    # the small preset, the test family, and
                                                   # many_tensors / one_tensor
    python scripts/bench_ram.py --cases small tiny_elements

Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

# Pipelines outside the estimate family: 24 tensors per element, and the same data in one.
EXTRA = ("many_tensors", "one_tensor")
CHEAP = ["estimate.cache=false", "estimate.calibration_offsets=[0,256,1024,3072,6400]"]


def _config(case: str, folder: Path) -> tuple[Any, dict[str, Any]]:
    """(config, the bench child's request for it)."""
    from bench_estimate import PRESETS, shape_config

    from dlckpt.config import load_config

    if case in EXTRA:
        folder.mkdir(parents=True, exist_ok=True)
        target = f"dlckpt.bench.pipelines.estimate_pipelines.{case}"
        text = f"dataloader:\n  _target_: {target}\n  shuffle_buffer_size: 1000\n"
        (folder / f"{case}.yaml").write_text(text)
        return load_config(case, CHEAP, folder), {"config": case, "config_dir": str(folder)}
    cfg = shape_config(case, folder, CHEAP)
    if case in PRESETS:
        name, overrides = PRESETS[case]
        return cfg, {"config": name, "overrides": overrides}
    return cfg, {"config": case, "config_dir": str(folder)}


def measure(case: str, scratch: Path) -> dict[str, Any]:
    from dlckpt.bench.ram import BUFFERS, save_peak_per_element
    from dlckpt.estimate.estimator import estimate

    scratch.mkdir(parents=True, exist_ok=True)
    cfg, request = _config(case, scratch / "conf")
    result = estimate(cfg, scratch_root=scratch, say=lambda _: None)
    cal = result.calibration
    measured = save_peak_per_element(request, scratch)
    row = result.ram_bytes_for(max(BUFFERS)) / max(BUFFERS)
    return {
        "case": case,
        "tensor_bytes_per_element": cal.raw_element_bytes if cal else None,
        "allocator_bytes_per_element": cal.memory_element_bytes if cal else None,
        "tensors_per_element": cal.tensors_per_element if cal else None,
        "row_bytes_per_element": row,
        "measured_peak_bytes_per_element": measured,
        "row/measured": row / measured if measured else None,
        "buffers": list(BUFFERS),
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", nargs="+", help="presets, family shapes, many_tensors...")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "ram.json")
    args = parser.parse_args(argv)
    from bench_estimate import PRESETS, _shape_names

    known = [*PRESETS, *_shape_names(), *EXTRA]
    cases = args.cases or ["small", *_shape_names(), *EXTRA]
    unknown = [c for c in cases if c not in known]
    if unknown:
        print(
            f"✗ --cases {' '.join(unknown)}: expected some of {', '.join(known)}", file=sys.stderr
        )
        return 2
    rows = []
    with tempfile.TemporaryDirectory(prefix="dlckpt-bench-ram-") as scratch:
        for case in cases:
            row = measure(case, Path(scratch) / case)
            rows.append(row)
            ratio = row["row/measured"]
            print(
                f"  {case:20s} data {row['tensor_bytes_per_element']:>6,} B, allocator "
                f"{row['allocator_bytes_per_element']:>6,} B, {row['tensors_per_element']:>2} "
                f"tensors; row {row['row_bytes_per_element']:>8,.0f} B vs peak RSS "
                f"{row['measured_peak_bytes_per_element'] or 0:>8,.0f} B per element: "
                f"{'n/a' if ratio is None else f'{ratio:.2f}'}",
                flush=True,
            )
    ratios = [r["row/measured"] for r in rows if r["row/measured"]]
    if ratios:
        print(f"  row/measured: min {min(ratios):.2f}, max {max(ratios):.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"rows": rows}, indent=1) + "\n")
    print(f"  wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
