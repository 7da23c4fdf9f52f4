"""Original full-buffer test: round-trip the production config's checkpoint as training saves it.

The configured shuffle buffer is used as is (250,000 elements in conf/config.yaml). The
iterator is saved straight to gs:// with TensorFlow's own GCS filesystem (GCS_TEST_BUCKET,
or an embedded GCS server when unset), which stages every checkpoint file whole in its
temp folder (TEST_TMPDIR, else TMPDIR, else TMP, else /tmp; --tmpdir sets it) before the
upload, exactly as a training job's save does; a new process restores it straight from
gs:// and compares. With GCS_TEST_BUCKET a local folder, the save goes into a scratch
folder under the temp folder and is copied there.

The preflight runs first: it measures the checkpoint size, shows every folder the bytes
go through and refuses a save that cannot fit (exit 3; --estimate-only stops there,
--force runs anyway). A save that still runs out of room ends with the figure and the
fix, never TensorFlow's raw error.

Exit codes: 0 passed, 1 the checkpoint failed a check, 2 bad input, 3 preflight refused.
"""

from __future__ import annotations

import os
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
from dlckpt.paths import command, doc
from dlckpt.preflight.locations import scenario_locations
from dlckpt.preflight.run import estimate_and_preflight, finish_estimate_only
from dlckpt.roundtrip.scenario import (
    finish,
    open_destination,
    run_round_trip,
    tensorflow_gcs_locations,
    tensorflow_gcs_locations_for,
)
from dlckpt.storage.transfer import new_run_prefix
from dlckpt.units import format_size

SCRIPT = "original"


def tensorflow_temp_dir(option: Path | None = None) -> tuple[Path, str]:
    """The folder TensorFlow stages gs:// writes in, and where that choice came from.

    Without `option` it is resolved as TensorFlow resolves it (tempdir.tf_temp_dir), so
    the run saves where the preflight table says. With `option` (--tmpdir), TMPDIR (and
    TEST_TMPDIR, if set, since TensorFlow reads it first) are pointed at it for this
    process and the restore process it starts.
    """
    from dlckpt.tempdir import tf_temp_dir

    if option is not None:
        source = "--tmpdir"
        folder = Path(option).expanduser()
    else:
        path, source, _ = tf_temp_dir()
        folder = Path(path)
    if not folder.is_dir():
        raise UsageError(
            f"{source}={folder}: no such folder (expected a folder with room for the checkpoint)"
        )
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise UsageError(f"{source}={folder}: folder is not writable ({error.strerror})") from None
    folder = folder.resolve()
    if option is not None:
        os.environ["TMPDIR"] = str(folder)
        if os.environ.get("TEST_TMPDIR"):
            os.environ["TEST_TMPDIR"] = str(folder)
    return folder, source


def main(argv: Sequence[str] | None = None, prog: str = "test_dataloader_checkpoint.py") -> int:
    parser = common_parser(prog, __doc__.splitlines()[0])
    parser.add_argument(
        "--tmpdir",
        type=Path,
        help="TensorFlow's temp folder for this run (default: TEST_TMPDIR, TMPDIR, TMP, /tmp)",
    )
    add_estimate_args(parser)
    report: dict[str, Any] = {"script": SCRIPT}
    return run_main(lambda: _run(parser, argv, report), argv, report)


def _locations(temp_dir: Path) -> Any:
    """The preflight's rows for this run: the checkpoint and its downloaded copy in `temp_dir`.

    The run saves where TensorFlow's gs:// writer would stage the files and copies with
    google-cloud-storage, so TensorFlow's own staging row would count the folder twice.
    """

    def rows(estimate: Any) -> list[Any]:
        found = scenario_locations(
            "full", estimate, scratch_dir=str(temp_dir), download_dir=str(temp_dir)
        )
        return [row for row in found if not row.role.startswith("TensorFlow temp folder")]

    return rows


def _preflight(
    cfg: Any, args: Any, temp_dir: Path, report: dict[str, Any], destination: Any = None
) -> Any:
    return estimate_and_preflight(
        cfg,
        args,
        scenario="full",
        locations=(
            tensorflow_gcs_locations(destination)
            if destination is not None
            else tensorflow_gcs_locations_for(os.environ.get("GCS_TEST_BUCKET"))
        )
        or _locations(temp_dir),
        scratch_root=temp_dir,
        report=report,
    )


def _run(parser: Any, argv: Sequence[str] | None, report: dict[str, Any]) -> int:
    args = parse_args(parser, argv)
    temp_dir, temp_source = tensorflow_temp_dir(args.tmpdir)
    cfg = load_from_args(args)
    buffer = shuffle_buffer_size(cfg)
    header = (
        f"Config: {args.config_name} · dataloader: {cfg.dataloader._target_} · buffer {buffer:,}",
        f"TensorFlow temp folder: {temp_dir} (from {temp_source})",
    )
    report.update(
        {
            "config_name": args.config_name,
            "shuffle_buffer_size": {"original": buffer, "tested": buffer},
            "tensorflow_temp_dir": {"path": str(temp_dir), "source": temp_source},
        }
    )
    if args.estimate_only:
        say_runtime(args)
        print(*header, sep="\n")
        _preflight(cfg, args, temp_dir, report)
        return finish_estimate_only(args, report)

    with open_destination(
        os.environ.get("GCS_TEST_BUCKET"), embedded_when_unset=True
    ) as destination:
        say_runtime(args)
        print(*header, sep="\n")
        estimate = _preflight(cfg, args, temp_dir, report, destination)
        outcome = run_round_trip(
            cfg,
            scratch_root=temp_dir,
            destination=destination,
            run_prefix=new_run_prefix("original"),
            keep=args.keep,
            tensorflow_gcs=True,  # straight to gs:// as training saves (a folder: locally)
            expected_bytes=estimate.original_bytes,
            disk_full_hint=(
                f"this config's checkpoint needs ~{format_size(estimate.original_bytes)} there; "
                "fix: "
                f"TMPDIR=/path/on/a/bigger/disk {command('original')} (or --tmpdir), stage it "
                f"on a disk you choose with {command('local-staging')}, or prove the restore "
                f"cheaply with {command('small-buffer')} (see {doc('QUICK_FIX.md')})"
            ),
        )
    return finish(args, report, outcome, estimate=estimate)
