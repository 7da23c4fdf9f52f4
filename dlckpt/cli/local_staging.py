"""Local-staging test: save the checkpoint on a local disk you choose, then send it through GCS.

The iterator is saved into LOCAL_STAGING_DIR (required: an existing, writable folder on a
disk with room for the checkpoint), restored from there in a new process and compared
bit for bit. When GCS_TEST_BUCKET is set (gs://bucket/prefix), the staged checkpoint is
then uploaded with google-cloud-storage, every object checked against its staged file
(size and crc32c), downloaded into a fresh folder, and restored and compared again from
that copy. An unset GCS_TEST_BUCKET means no upload. The staged copy is kept
(LOCAL_STAGING_DIR/<run prefix>/) unless --clean.

The preflight runs first: it measures the checkpoint size, shows the folders the bytes go
through (the staged copy and the downloaded one both live in LOCAL_STAGING_DIR) and
refuses a run that cannot fit (exit 3; --estimate-only stops there, --force runs anyway).

Exit codes: 0 passed, 1 the checkpoint failed a check, 2 bad input, 3 preflight refused.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from dlckpt.cli.common import (
    add_estimate_args,
    common_parser,
    load_from_args,
    parse_args,
    run_main,
    say_runtime,
)
from dlckpt.config import shuffle_buffer_size
from dlckpt.errors import UsageError
from dlckpt.preflight.locations import scenario_locations
from dlckpt.preflight.run import estimate_and_preflight, finish_estimate_only
from dlckpt.roundtrip.scenario import finish, open_destination, run_round_trip
from dlckpt.storage.transfer import new_run_prefix
from dlckpt.units import format_size

SCRIPT = "local_staging"
STAGING_VARIABLE = "LOCAL_STAGING_DIR"


def staging_folder(value: str | None) -> Path:
    """LOCAL_STAGING_DIR as an existing folder this process can write, or a one-line UsageError."""
    if not value:
        raise UsageError(
            f"{STAGING_VARIABLE} is not set: set it to a folder on a disk with room for the "
            f"checkpoint, e.g. {STAGING_VARIABLE}=/mnt/scratch "
            "(make local-staging defaults to .work/local-staging)"
        )
    folder = Path(value).expanduser()
    if not folder.exists():
        raise UsageError(
            f"{STAGING_VARIABLE}={value}: no such folder (create it, or choose another)"
        )
    if not folder.is_dir():
        raise UsageError(f"{STAGING_VARIABLE}={value}: is a file, not a folder (expected a folder)")
    try:  # the real test: os.access says yes to root on a read-only mount
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(
            f"{STAGING_VARIABLE}={value}: folder is not writable ({error.strerror}); "
            "choose a folder you can write"
        ) from None
    return folder.resolve()


def main(
    argv: Sequence[str] | None = None, prog: str = "test_dataloader_checkpoint_local_staging.py"
) -> int:
    parser = common_parser(prog, __doc__.splitlines()[0])
    parser.add_argument(
        "--clean",
        action="store_true",
        help="remove the staged copy in LOCAL_STAGING_DIR after a pass (default: keep it)",
    )
    add_estimate_args(parser)
    report: dict[str, Any] = {"script": SCRIPT}
    return run_main(lambda: _run(parser, argv, report), argv, report)


def _preflight(
    cfg: Any, args: Any, staging_root: Path, bucket: str | None, report: dict[str, Any]
) -> Any:
    """PREFLIGHT HOOK: issue 3's measured estimate, the locations table and the refusal.

    Rows: the staged copy and (with a bucket) the downloaded copy in LOCAL_STAGING_DIR,
    host RAM, and GCS. TensorFlow's gs:// staging folder is not used here: the upload
    goes through google-cloud-storage from the staged copy.
    """

    def rows(estimate: Any) -> list[Any]:
        found = scenario_locations(
            "local_staging",
            estimate,
            staging_dir=str(staging_root),
            download_dir=str(staging_root),
            gcs_uri=bucket,
        )
        skip = ["TensorFlow temp folder"] + ([] if bucket else ["download folder", "GCS total"])
        return [row for row in found if not row.role.startswith(tuple(skip))]

    return estimate_and_preflight(
        cfg,
        args,
        scenario="local_staging",
        locations=rows,
        scratch_root=staging_root,
        report=report,
    )


def _run(parser: Any, argv: Sequence[str] | None, report: dict[str, Any]) -> int:
    args = parse_args(parser, argv)
    staging_root = staging_folder(os.environ.get(STAGING_VARIABLE))
    cfg = load_from_args(args)
    buffer = shuffle_buffer_size(cfg)
    bucket = os.environ.get("GCS_TEST_BUCKET") or None
    header = (
        f"Config: {args.config_name} · dataloader: {cfg.dataloader._target_} · buffer {buffer:,}"
    )
    report.update(
        {
            "config_name": args.config_name,
            "shuffle_buffer_size": {"original": buffer, "tested": buffer},
        }
    )
    if args.estimate_only:
        say_runtime(args)
        print(header)
        _preflight(cfg, args, staging_root, bucket, report)
        return finish_estimate_only(args, report)

    run_prefix = new_run_prefix("local-staging")
    with open_destination(bucket, embedded_when_unset=False) as destination:
        say_runtime(args)
        print(header)
        if destination is None:
            print("Destination: none (GCS_TEST_BUCKET is not set: the staged copy is not uploaded)")
        estimate = _preflight(cfg, args, staging_root, bucket, report)
        staged = staging_root / run_prefix
        try:
            outcome = run_round_trip(
                cfg,
                scratch_root=staging_root,
                destination=destination,
                run_prefix=run_prefix,
                keep=args.keep,
                checkpoint_dir=staged,
                compare_before_upload=True,
                disk_full_hint=(
                    f"the checkpoint needs ~{format_size(estimate.original_bytes)}: point "
                    f"{STAGING_VARIABLE} at a disk with more room"
                ),
            )
        except BaseException:
            # A save cut short is of no use; a saved checkpoint is the user's: kept.
            if not (staged / "iterator.index").exists():
                shutil.rmtree(staged, ignore_errors=True)
            raise
    if not outcome.checkpoint_files:  # the save itself failed: a partial copy is of no use
        shutil.rmtree(staged, ignore_errors=True)
    if outcome.passed and args.clean:
        shutil.rmtree(staged, ignore_errors=True)
        print(f"Removed the staged copy {staged} (--clean)")
    elif staged.exists():
        print(f"Staged copy kept in {staged} (--clean removes it)")
    report["staging"] = {"path": str(staged), "kept": staged.exists()}
    return finish(args, report, outcome, estimate=estimate)
