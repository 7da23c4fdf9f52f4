#!/usr/bin/env python3
"""Catch rate: how often the round trip fails each pipeline that does not resume exactly.

Runs every pipeline of dlckpt/bench/pipelines/resume_pipelines.py (nondeterministic map,
interleave and options; an unseeded random op under IGNORE and WARN; an unseeded
reshuffle across an epoch boundary) and the unseeded shuffles off the graph's main line of
graph_pipelines.py (a file list under interleave, mixture sources, a zip side, inside
flat_map, a Dataset.load reader; a mixture and Dataset.random without a seed, a dataset
captured by flat_map or concatenated with itself, a global shuffle) through the same round
trip as the small-buffer test (save, restore in a new process, compare the window), `--runs`
times each, at the buffer and batch size the tests use, and prints caught/runs per pipeline
and how each ended
(diverged, cannot verify, cannot be saved). Writes bench/catch_rate.json. Not a test: the
rate is a property measured over repeated runs.

    nox -s bench  (or: python scripts/bench_catch_rate.py --runs 20 [--only NAME ...])
"""

from __future__ import annotations

import argparse
import collections
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

RESUME = "dlckpt.bench.pipelines.resume_pipelines"
GRAPH = "dlckpt.bench.pipelines.graph_pipelines"
# (module, pipeline, shuffle buffer, batch size): the same spread as tests/test_verdicts.py
# and tests/test_graph_shuffles.py. The graph pipelines' off-line shuffles are unseeded.
VARIANTS = [
    (RESUME, "nondeterministic_map", 10, 1),
    (RESUME, "nondeterministic_interleave", 100, 8),
    (RESUME, "nondeterministic_options", 1000, 32),
    (RESUME, "unseeded_random_ignore", 1000, 4),
    (RESUME, "unseeded_random_warn", 50, 16),
    (RESUME, "reshuffled_epochs_no_seed", 10, 2),
    (GRAPH, "file_list_under_interleave", 16, 4),
    (GRAPH, "mixture_of_shuffled_sources", 16, 4),
    (GRAPH, "zipped_with_a_shuffled_side", 16, 4),
    (GRAPH, "shuffle_inside_flat_map", 16, 4),
    (GRAPH, "loaded_with_a_shuffling_reader", 16, 4),
    (GRAPH, "mixture_drawn_without_a_seed", 16, 4),
    (GRAPH, "random_numbers_zipped_in", 16, 4),
    (GRAPH, "captured_by_flat_map", 16, 4),
    (GRAPH, "concatenated_with_itself", 16, 4),
    (GRAPH, "global_shuffle_repeated", 16, 4),
    (GRAPH, "file_list_ordered_at_build", 16, 4),
    (GRAPH, "fused_shuffle_and_repeat", 16, 4),
    (GRAPH, "manifest_written_at_build", 16, 4),
    (RESUME, "nondeterministic_inside_flat_map", 10, 4),
]
# How a caught run ended: the start of its ✗ line.
ENDINGS = {
    "CHECKPOINT DOES NOT RESUME EXACTLY": "diverged",
    "CANNOT VERIFY AN EXACT RESUME": "cannot verify",
    "CHECKPOINT CANNOT BE SAVED": "cannot be saved",
}


def catch_once(module: str, target: str, buffer: int, batch: int) -> dict[str, Any]:
    """One round trip: whether it failed, how, and at which compared batch."""
    from omegaconf import OmegaConf

    from dlckpt.config import Settings
    from dlckpt.roundtrip.scenario import run_round_trip

    with tempfile.TemporaryDirectory(prefix="dlckpt-catch-") as scratch:
        dataloader: dict[str, Any] = {
            "_target_": f"{module}.{target}", "shuffle_buffer_size": buffer, "batch_size": batch,
        }  # fmt: skip
        if target == "loaded_with_a_shuffling_reader":
            dataloader["path"] = str(Path(scratch) / "saved")
        if target == "manifest_written_at_build":
            dataloader["path"] = scratch  # the manifest, written at each build
        cfg = OmegaConf.merge(OmegaConf.structured(Settings), {"dataloader": dataloader})
        outcome = run_round_trip(
            cfg,  # type: ignore[arg-type]
            scratch_root=Path(scratch), destination=None, run_prefix="dlckpt-catch",
            keep=False, say=lambda _: None,
        )  # fmt: skip
    mismatch = outcome.first_mismatch or {}
    failure = outcome.failure or ""
    ending = next((name for start, name in ENDINGS.items() if failure.startswith(start)), None)
    return {
        "caught": outcome.failure is not None,
        "ending": ending if outcome.failure is not None else "passed",
        "batch": mismatch.get("batch"),
        "window": outcome.window_batches,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=20, help="round trips per pipeline")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "catch_rate.json")
    names = [target for _, target, _, _ in VARIANTS]
    parser.add_argument("--only", nargs="+", choices=names, help="these pipelines only")
    args = parser.parse_args(argv)
    # Hundreds of restores in this one process: each forked from a warm process that has
    # imported TensorFlow once (runtime.warm), still a new process apart from this one.
    from dlckpt.runtime import warm

    warm.enable()
    results = []
    for module, target, buffer, batch in VARIANTS:
        if args.only and target not in args.only:
            continue
        started = time.perf_counter()
        runs = [catch_once(module, target, buffer, batch) for _ in range(args.runs)]
        caught = sum(bool(r["caught"]) for r in runs)
        batches = [r["batch"] for r in runs if r["batch"] is not None]
        endings = collections.Counter(r["ending"] for r in runs)
        results.append(
            {
                "pipeline": target,
                "shuffle_buffer_size": buffer,
                "batch_size": batch,
                "caught": caught,
                "runs": args.runs,
                "endings": dict(endings),
                "window_batches": runs[0]["window"],
                "first_mismatch_batch": [min(batches), max(batches)] if batches else None,
                "seconds": round(time.perf_counter() - started, 1),
            }
        )
        row = results[-1]
        how = ", ".join(f"{name} {count}" for name, count in endings.most_common())
        print(
            f"{target:30s} buffer {buffer:5d} batch {batch:3d}: caught {caught}/{args.runs} "
            f"({how}; window {row['window_batches']} batches, first mismatch at batches "
            f"{row['first_mismatch_batch']}, {row['seconds']} s)",
            flush=True,
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"runs": args.runs, "variants": results}, indent=2) + "\n")
    print(f"Wrote {args.out}")
    return 0 if all(r["caught"] == r["runs"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
