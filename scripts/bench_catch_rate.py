#!/usr/bin/env python3
"""Catch rate: how often the round trip fails each pipeline that does not resume exactly.

Runs every pipeline of dlckpt/bench/pipelines/resume_pipelines.py (nondeterministic map,
interleave and options; an unseeded random op under IGNORE and WARN; an unseeded
reshuffle across an epoch boundary) through the same round trip as the small-buffer test
(save, restore in a new process, compare the window), `--runs` times each, at the buffer
and batch size the tests use, and prints caught/runs per pipeline. Writes
bench/catch_rate.json. Not a test: the rate is a property measured over repeated runs.

    nox -s bench  (or: python scripts/bench_catch_rate.py --runs 20)
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

# (pipeline, shuffle buffer, batch size): the same spread as tests/test_verdicts.py.
VARIANTS = [
    ("nondeterministic_map", 10, 1),
    ("nondeterministic_interleave", 100, 8),
    ("nondeterministic_options", 1000, 32),
    ("unseeded_random_ignore", 1000, 4),
    ("unseeded_random_warn", 50, 16),
    ("reshuffled_epochs_no_seed", 10, 2),
]


def catch_once(target: str, buffer: int, batch: int) -> dict[str, Any]:
    """One round trip: whether it failed, and at which compared batch."""
    from omegaconf import OmegaConf

    from dlckpt.config import Settings
    from dlckpt.roundtrip.scenario import run_round_trip

    cfg = OmegaConf.merge(
        OmegaConf.structured(Settings),
        {
            "dataloader": {
                "_target_": f"dlckpt.bench.pipelines.resume_pipelines.{target}",
                "shuffle_buffer_size": buffer,
                "batch_size": batch,
            }
        },
    )
    with tempfile.TemporaryDirectory(prefix="dlckpt-catch-") as scratch:
        outcome = run_round_trip(
            cfg,  # type: ignore[arg-type]
            scratch_root=Path(scratch), destination=None, run_prefix="dlckpt-catch",
            keep=False, say=lambda _: None,
        )  # fmt: skip
    mismatch = outcome.first_mismatch or {}
    return {
        "caught": outcome.failure is not None,
        "batch": mismatch.get("batch"),
        "window": outcome.window_batches,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="round trips per pipeline")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "catch_rate.json")
    args = parser.parse_args(argv)
    results = []
    for target, buffer, batch in VARIANTS:
        started = time.perf_counter()
        runs = [catch_once(target, buffer, batch) for _ in range(args.runs)]
        caught = sum(bool(r["caught"]) for r in runs)
        batches = [r["batch"] for r in runs if r["batch"] is not None]
        results.append(
            {
                "pipeline": target,
                "shuffle_buffer_size": buffer,
                "batch_size": batch,
                "caught": caught,
                "runs": args.runs,
                "window_batches": runs[0]["window"],
                "first_mismatch_batch": [min(batches), max(batches)] if batches else None,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        row = results[-1]
        print(
            f"{target:30s} buffer {buffer:5d} batch {batch:3d}: caught {caught}/{args.runs} "
            f"(window {row['window_batches']} batches, first mismatch at batches "
            f"{row['first_mismatch_batch']}, {row['seconds']} s)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "variants": results}, indent=2) + "\n")
    print(f"Wrote {args.out}")
    return 0 if all(r["caught"] == r["runs"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
