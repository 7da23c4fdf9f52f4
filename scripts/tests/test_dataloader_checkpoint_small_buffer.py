#!/usr/bin/env python3
"""Small-buffer test: prove the dataloader checkpoint restores exactly, cheaply.

Prints the checkpoint size the configured shuffle buffer would write, reduces the buffer
(100 by default; the config on disk is never modified), then saves the iterator, copies
it to the destination (GCS_TEST_BUCKET, or an embedded GCS server when unset), restores
it in a new process and compares every batch bit for bit.

Exit codes: 0 passed, 1 the checkpoint failed a check, 2 bad input, 3 preflight refused.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from typing import Any

from _common import (
    EXIT_FAILED,
    EXIT_PASSED,
    common_parser,
    format_bytes,
    format_gb,
    load_from_args,
    open_destination,
    parse_args,
    parse_positive_int,
    run_main,
    run_round_trip,
    shuffle_buffer_size,
    with_buffer_size,
)
from _estimate import formula_bytes, measured_sample_bytes
from _pipeline import instantiate_dataset
from _report import write_report
from _storage import new_run_prefix

SCRIPT = "small_buffer"


def main(argv: Sequence[str] | None = None) -> int:
    parser = common_parser("test_dataloader_checkpoint_small_buffer.py", __doc__.splitlines()[0])
    parser.add_argument(
        "--buffer-size",
        help="shuffle buffer for the test (default: roundtrip.small_buffer_size, 100)",
    )
    return run_main(lambda: _run(parser, argv))


def _run(parser: Any, argv: Sequence[str] | None) -> int:
    args = parse_args(parser, argv)
    cfg = load_from_args(args)
    original_buffer = shuffle_buffer_size(cfg)
    tested_buffer = parse_positive_int(
        args.buffer_size if args.buffer_size is not None else cfg.roundtrip.small_buffer_size,
        "--buffer-size",
    )
    tested_cfg = with_buffer_size(cfg, tested_buffer)

    sample_bytes = cfg.estimate.bytes_per_sample
    sample_source = "estimate.bytes_per_sample"
    if sample_bytes is None:
        sample_bytes = measured_sample_bytes(instantiate_dataset(tested_cfg.dataloader))
        sample_source = "measured sample"
    overhead = cfg.estimate.formula_overhead
    original_bytes = formula_bytes(original_buffer, sample_bytes, overhead)
    tested_bytes = formula_bytes(tested_buffer, sample_bytes, overhead)
    print(f"Config: {args.config_name} · dataloader: {cfg.dataloader._target_}")
    print(
        f"ORIGINAL CONFIG CHECKPOINT SIZE ESTIMATE: {format_gb(original_bytes)} "
        f"(formula: {original_buffer:,} × {format_bytes(sample_bytes)} {sample_source} × {overhead})"
    )
    print(f"Reducing dataloader.shuffle_buffer_size {original_buffer:,} → {tested_buffer:,} for the test")
    print(
        f"NEW CONFIG CHECKPOINT SIZE ESTIMATE: {format_gb(tested_bytes)} "
        f"(formula: {tested_buffer:,} × {format_bytes(sample_bytes)} × {overhead})"
    )

    run_prefix = new_run_prefix("small-buffer")
    with open_destination(os.environ.get("GCS_TEST_BUCKET"), embedded_when_unset=True) as destination:
        outcome = run_round_trip(
            tested_cfg, scratch_root=None, destination=destination, run_prefix=run_prefix, keep=args.keep
        )
    exit_code = EXIT_PASSED if outcome.passed else EXIT_FAILED
    print("✓ ALL TESTS PASSED" if outcome.passed else f"✗ {outcome.failure}")
    for note in outcome.notes:
        print(f"  ({note})")

    write_report(
        args.report,
        {
            "script": SCRIPT,
            "config_name": args.config_name,
            "shuffle_buffer_size": {"original": original_buffer, "tested": tested_buffer},
            "estimate": {
                "method": "formula",
                "original_bytes": original_bytes,
                "tested_bytes": tested_bytes,
                "formula_original_bytes": original_bytes,
                "bytes_per_sample": sample_bytes,
                "bytes_per_sample_source": sample_source,
            },
            "checkpoint": {
                "uri": outcome.checkpoint_uri,
                "bytes": outcome.checkpoint_bytes,
                "files": outcome.checkpoint_files,
                "save_seconds": round(outcome.save_seconds, 3),
                "restore_seconds": round(outcome.restore_seconds, 3),
            },
            "verification": {
                "batches_compared": outcome.batches_compared,
                "passed": outcome.passed,
                "first_mismatch": outcome.first_mismatch,
                "failure": outcome.failure,
            },
            "passed": outcome.passed,
            "exit_code": exit_code,
        },
    )
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
