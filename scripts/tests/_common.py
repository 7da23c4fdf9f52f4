"""What the three scripts share: command line, exit codes, destination, the round trip.

The concerns live in sibling modules, each small enough to read at once:
_config (Hydra loading), _pipeline (the reference dataloader), _roundtrip (save,
restore in a new process, compare), _estimate (sizes), _storage (local folder and GCS),
_report (formatting and the JSON report). This module wires them for a script.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from _config import load_config, parse_positive_int, shuffle_buffer_size, with_buffer_size
from _errors import PreflightRefusal, UsageError
from _report import check_report_path, format_bytes, format_gb
from _storage import (
    EMBEDDED_BUCKET,
    GcsDestination,
    GcsLocation,
    LocalDestination,
    TransferError,
    embedded_gcs_server,
    make_client,
    parse_gcs_uri,
)

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_PREFLIGHT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

Destination = LocalDestination | GcsDestination

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_PASSED", "EXIT_PREFLIGHT", "EXIT_USAGE",
    "Destination", "RoundTripOutcome", "check_report_path", "common_parser", "format_bytes",
    "format_gb", "load_config", "open_destination", "parse_positive_int", "run_main",
    "run_round_trip", "shuffle_buffer_size", "with_buffer_size",
]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> Any:  # argparse's own exit 2 would print usage + traceback-free text
        raise UsageError(f"{self.prog}: {message}")


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description)
    parser.add_argument("--config-name", default="config", help="config in conf/ or --config-dir (default: config)")
    parser.add_argument("--config-dir", type=Path, help="your own folder of configs, searched before conf/")
    parser.add_argument("--report", type=Path, help="write a JSON report here")
    parser.add_argument("--keep", action="store_true", help="keep the run's checkpoint after a pass")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    check_report_path(args.report)
    return args


def load_from_args(args: argparse.Namespace) -> DictConfig:
    return load_config(args.config_name, args.overrides, args.config_dir)


def run_main(body: Callable[[], int]) -> int:
    """Run a script body, turning the project's exceptions into its exit codes and one line."""
    try:
        return body()
    except UsageError as error:
        print(f"✗ {error}", file=sys.stderr)
        return EXIT_USAGE
    except PreflightRefusal as error:
        print(f"✗ PREFLIGHT REFUSED: {error}", file=sys.stderr)
        return EXIT_PREFLIGHT
    except KeyboardInterrupt:
        print("✗ interrupted; the run's own files were removed", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- destination -----------------------------------------------------------------------


@contextlib.contextmanager
def open_destination(setting: str | None, *, embedded_when_unset: bool) -> Iterator[Destination | None]:
    """The GCS_TEST_BUCKET destination: gs://bucket[/prefix], a local folder, or (unset) the embedded server."""
    if not setting:
        if not embedded_when_unset:
            yield None
            return
        with embedded_gcs_server() as endpoint:
            client = make_client()
            client.create_bucket(EMBEDDED_BUCKET)
            print(
                f"Destination: embedded GCS server at {endpoint}, gs://{EMBEDDED_BUCKET} "
                "(set GCS_TEST_BUCKET=gs://bucket/prefix for your own bucket)"
            )
            yield GcsDestination(client, GcsLocation(EMBEDDED_BUCKET, ""))
        return
    if setting.startswith("gs://"):
        destination = GcsDestination(make_client(), parse_gcs_uri(setting))
        destination.check_bucket()
        print(f"Destination: {destination.location.uri()}")
        yield destination
        return
    if "://" in setting:
        parse_gcs_uri(setting)  # raises the one-line usage error
    local = LocalDestination.from_setting(setting)
    print(f"Destination: local folder {local.root}")
    yield local


# --- the round trip ----------------------------------------------------------------------


@dataclass
class RoundTripOutcome:
    checkpoint_uri: str = ""
    checkpoint_bytes: int = 0
    checkpoint_files: int = 0
    save_seconds: float = 0.0
    restore_seconds: float = 0.0
    batches_compared: int = 0
    first_mismatch: dict[str, Any] | None = None
    failure: str | None = None  # the ✗ line when the check failed
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return self.failure is None


def run_round_trip(
    cfg: DictConfig,
    *,
    scratch_root: Path | None,
    destination: Destination | None,
    run_prefix: str,
    keep: bool,
    say: Callable[[str], None] = print,
) -> RoundTripOutcome:
    """Save after K batches, take N more, restore in a new process (through `destination`), compare.

    Only the run's own scratch folder and `run_prefix` at the destination are ever removed:
    the prefix after a pass (unless `keep`) or an interrupt; the scratch folder always.
    """
    from _pipeline import instantiate_dataset
    from _roundtrip import UnsaveablePipeline, first_mismatch, restore_in_new_process, save_iterator, take_digests

    settings = cfg.roundtrip
    dataloader_cfg = OmegaConf.to_container(cfg.dataloader, resolve=True)
    outcome = RoundTripOutcome()
    scratch = Path(tempfile.mkdtemp(prefix=f"{run_prefix}-", dir=scratch_root))
    uploaded = False
    try:
        iterator = iter(instantiate_dataset(cfg.dataloader))
        for _ in range(settings.batches_before_save):
            next(iterator)
        try:
            saved = save_iterator(iterator, scratch / "checkpoint")
        except UnsaveablePipeline as error:
            outcome.failure = f"CHECKPOINT CANNOT BE SAVED: {error}"
            return outcome
        outcome.checkpoint_bytes, outcome.checkpoint_files = saved.bytes, saved.files
        outcome.save_seconds = saved.save_seconds
        outcome.checkpoint_uri = str(saved.prefix.parent)
        say(
            f"✓ Saved the iterator after {settings.batches_before_save} batches: "
            f"{saved.files} files, {format_bytes(saved.bytes)} in {saved.save_seconds:.1f} s"
        )
        expected = take_digests(iterator, settings.batches_to_compare)
        del iterator

        restore_prefix = saved.prefix
        if destination is not None:
            files = sorted(saved.prefix.parent.iterdir())
            uploaded = True
            destination.put(files, run_prefix)
            outcome.checkpoint_uri = destination.uri(run_prefix)
            fetched = destination.fetch(run_prefix, scratch / "downloaded")
            restore_prefix = fetched[0].parent / saved.prefix.name
            say(f"✓ Copied to {outcome.checkpoint_uri} and back, every file's size and crc32c verified")

        result = restore_in_new_process(dataloader_cfg, restore_prefix, len(expected), scratch)
        outcome.restore_seconds = result.restore_seconds
        outcome.batches_compared = len(result.digests)
        if result.error:
            outcome.failure = f"CHECKPOINT DOES NOT RESTORE: {result.error}"
            return outcome
        say(f"✓ Restored in a new process in {result.restore_seconds:.1f} s")
        mismatch = first_mismatch(expected, result.digests)
        if mismatch is not None:
            outcome.first_mismatch = {"batch": mismatch.batch, "key": mismatch.key}
            outcome.failure = f"CHECKPOINT DOES NOT RESUME EXACTLY: {mismatch.describe()}"
            return outcome
        keys = len(expected[0]) if expected else 0
        say(f"✓ {len(expected)} batches after the restore match the original bit for bit ({keys} keys each)")
        return outcome
    except TransferError as error:
        outcome.failure = f"TRANSFER FAILED: {error}"
        return outcome
    except KeyboardInterrupt:
        outcome.failure = "interrupted"
        if uploaded and destination is not None:
            destination.remove(run_prefix)
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if uploaded and destination is not None and outcome.failure is None:
            if keep:
                say(f"Kept {outcome.checkpoint_uri} (--keep)")
            else:
                destination.remove(run_prefix)
        elif uploaded and outcome.failure not in (None, "interrupted"):
            outcome.notes.append(f"the checkpoint is kept for inspection at {outcome.checkpoint_uri}")
