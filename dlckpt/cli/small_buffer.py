"""Small-buffer test: prove the dataloader checkpoint restores exactly, cheaply.

Prints the checkpoint size the configured shuffle buffer would write, reduces the buffer
(100 by default; the config on disk is never modified), then saves the iterator, copies
it straight to gs:// with TensorFlow's own GCS filesystem, as a training job does
(GCS_TEST_BUCKET, or an embedded GCS server when unset; a local folder is saved into
directly), restores it in a new process straight from there and compares every batch bit
for bit.

Before the round trip it measures the real checkpoint size of your pipeline (saves at a
few small buffers, extrapolated), shows every folder the bytes go through and refuses
(exit 3) a run that cannot fit. --estimate-only stops there; --fit-budget SIZE prints the
largest buffer whose checkpoint fits; --force runs anyway.

Exit codes: 0 passed, 1 the checkpoint failed a check, 2 bad input, 3 preflight refused,
4 an unexpected error before a verdict, 130 / 143 / 129 interrupted (SIGINT / SIGTERM /
SIGHUP).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from dlckpt.cli.common import (
    add_estimate_args,
    common_parser,
    load_from_args,
    parse_args,
    run_main,
    say_runtime,
)
from dlckpt.config import parse_positive_int, shuffle_buffer_size, with_buffer_size
from dlckpt.preflight.run import estimate_and_preflight, finish_estimate_only
from dlckpt.roundtrip.scenario import (
    finish,
    open_destination,
    run_round_trip,
    tensorflow_gcs_locations,
    tensorflow_gcs_locations_for,
)
from dlckpt.storage.transfer import new_run_prefix
from dlckpt.strategies.compare import strategies_pointer_line

SCRIPT = "small_buffer"


def main(
    argv: Sequence[str] | None = None, prog: str = "test_dataloader_checkpoint_small_buffer.py"
) -> int:
    parser = common_parser(prog, __doc__.splitlines()[0])
    parser.add_argument(
        "--buffer-size",
        help="shuffle buffer for the test (default: roundtrip.small_buffer_size, 100)",
    )
    add_estimate_args(parser)
    report: dict[str, Any] = {"script": SCRIPT}
    return run_main(lambda: _run(parser, argv, report), argv, report)


def tested_buffer_size(original: int, small: int, explicit: int | None) -> tuple[int, str]:
    """The buffer the test fills, and the line that says how it was chosen.

    --buffer-size wins; otherwise min(configured, roundtrip.small_buffer_size), so a
    small configured buffer is tested as it is rather than "reduced" upwards.
    """
    if explicit is not None:
        verb = "Reducing" if explicit < original else "Changing"
        return explicit, (
            f"{verb} dataloader.shuffle_buffer_size {original:,} → {explicit:,} for the test "
            "(--buffer-size)"
        )
    if original <= small:
        return original, (
            f"Testing the configured dataloader.shuffle_buffer_size {original:,} as it is "
            f"(not above roundtrip.small_buffer_size={small:,})"
        )
    return small, f"Reducing dataloader.shuffle_buffer_size {original:,} → {small:,} for the test"


def _run(parser: Any, argv: Sequence[str] | None, report: dict[str, Any]) -> int:
    args = parse_args(parser, argv)
    report["config_name"] = args.config_name
    cfg = load_from_args(args)
    original_buffer = shuffle_buffer_size(cfg)
    small = parse_positive_int(cfg.roundtrip.small_buffer_size, "roundtrip.small_buffer_size")
    explicit = (
        parse_positive_int(args.buffer_size, "--buffer-size")
        if args.buffer_size is not None
        else None
    )
    tested_buffer, buffer_line = tested_buffer_size(original_buffer, small, explicit)
    report["shuffle_buffer_size"] = {"original": original_buffer, "tested": tested_buffer}
    say_runtime(args)
    print(f"Config: {args.config_name} · dataloader: {cfg.dataloader._target_}")
    if args.estimate_only:
        estimate_and_preflight(
            cfg,
            args,
            scenario="small_buffer",
            tested_buffer=tested_buffer,
            report=report,
            tested_line=buffer_line,
            locations=tensorflow_gcs_locations_for(os.environ.get("GCS_TEST_BUCKET")),
        )
        return finish_estimate_only(args, report)

    # The destination is checked first: a bad bucket fails in a second, not after the estimate.
    bucket = os.environ.get("GCS_TEST_BUCKET")
    with open_destination(bucket, embedded_when_unset=True) as destination:
        estimate = estimate_and_preflight(
            cfg,
            args,
            scenario="small_buffer",
            tested_buffer=tested_buffer,
            report=report,
            tested_line=buffer_line,
            locations=tensorflow_gcs_locations(destination),
        )
        outcome = run_round_trip(
            with_buffer_size(cfg, tested_buffer),
            scratch_root=None,
            destination=destination,
            run_prefix=new_run_prefix("small-buffer"),
            keep=args.keep,
            tensorflow_gcs=True,  # straight to gs:// as training saves (a folder: locally)
            expected_bytes=estimate.tested_bytes,
        )
    return finish(
        args,
        report,
        outcome,
        closing_lines=(strategies_pointer_line(pipeline=str(cfg.dataloader._target_)),),
        estimate=estimate,
    )
