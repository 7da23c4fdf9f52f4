"""One run of a scenario: the destination, the round trip, the verdict and the report.

The three scripts differ in where the checkpoint is saved and which folders the preflight
checks; what they do with it is here, once: open the GCS_TEST_BUCKET destination, save
after K batches, restore in a new process (through the destination), compare, print the
✓/✗ verdict and write the JSON report.
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _report import format_bytes, write_report
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
from omegaconf import DictConfig, OmegaConf

EXIT_PASSED, EXIT_FAILED = 0, 1

Destination = LocalDestination | GcsDestination


# --- destination -----------------------------------------------------------------------


@contextlib.contextmanager
def open_destination(
    setting: str | None, *, embedded_when_unset: bool
) -> Iterator[Destination | None]:
    """GCS_TEST_BUCKET: gs://bucket[/prefix], a local folder, or (unset) the embedded server."""
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
            yield GcsDestination(client, GcsLocation(EMBEDDED_BUCKET, ""), ephemeral=True)
        return
    if setting.startswith("gs://"):
        location = parse_gcs_uri(setting)  # before the client: a malformed URI is a usage error
        destination = GcsDestination(make_client(), location)
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
    # One entry per restore-and-compare: {"source", "path", "passed", "batches", "restore_seconds"}.
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    staged_path: str = ""  # where the checkpoint was saved when the caller named the folder

    @property
    def passed(self) -> bool:
        return self.failure is None


# Texts TensorFlow (or the OS) uses when a checkpoint write runs out of room. The first is
# TensorFlow's GCS writer, which stages each whole file in its temp folder before upload.
DISK_FULL_TEXTS = (
    "Could not append to the internal temporary file",
    "Could not write to the internal temporary file",
    "The internal temporary file is not writable",
    "No space left on device",
    "Disk quota exceeded",
    "File too large",
)


def is_disk_full(error: BaseException) -> bool:
    """True when a save failed for lack of room (disk, quota, or file-size limit)."""
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    return any(text in str(error) for text in DISK_FULL_TEXTS)


def _tf_message(error: BaseException) -> str:
    text = " ".join(str(error).split())
    for known in DISK_FULL_TEXTS:
        if known in text:
            return known
    return text[:160]


def run_round_trip(
    cfg: DictConfig,
    *,
    scratch_root: Path | None,
    destination: Destination | None,
    run_prefix: str,
    keep: bool,
    say: Callable[[str], None] = print,
    checkpoint_dir: Path | None = None,
    compare_before_upload: bool = False,
    disk_full_hint: str = "",
) -> RoundTripOutcome:
    """Save after K batches, take N more, restore in a new process (through `destination`), compare.

    The checkpoint is saved into `checkpoint_dir` when given (the caller's folder: never
    removed here), else into a scratch folder under `scratch_root`. With
    `compare_before_upload` the saved copy is restored and compared first; with a
    `destination` the checkpoint is then uploaded, downloaded into a fresh folder and
    restored and compared again from that copy. Without either, the saved copy is compared.

    Only the run's own scratch folder and `run_prefix` at the destination are ever removed:
    the prefix after a pass (unless `keep`), after an upload that did not complete, or
    after an interrupt; the scratch folder always. A save that runs out of room becomes a
    failure naming the folder and its free space, followed by `disk_full_hint`.
    """
    from _pipeline import instantiate_dataset
    from _roundtrip import (
        UnsaveablePipeline,
        first_mismatch,
        restore_in_new_process,
        save_iterator,
        take_digests,
    )

    settings = cfg.roundtrip
    dataloader_cfg: dict[str, Any] = OmegaConf.to_container(cfg.dataloader, resolve=True)  # type: ignore[assignment]
    outcome = RoundTripOutcome()
    scratch = Path(tempfile.mkdtemp(prefix=f"{run_prefix}-", dir=scratch_root))
    save_dir = checkpoint_dir if checkpoint_dir is not None else scratch / "checkpoint"
    uploaded = False

    def restore_and_compare(source: str, prefix: Path, expected: list[Any]) -> bool:
        result = restore_in_new_process(dataloader_cfg, prefix, len(expected), scratch)
        outcome.restore_seconds = result.restore_seconds
        outcome.batches_compared = len(result.digests)
        record = {
            "source": source,
            "path": str(prefix.parent),
            "passed": False,
            "batches": len(result.digests),
            "restore_seconds": round(result.restore_seconds, 3),
        }
        outcome.comparisons.append(record)
        if result.error:
            outcome.failure = f"CHECKPOINT DOES NOT RESTORE ({source}): {result.error}"
            return False
        mismatch = first_mismatch(expected, result.digests)
        if mismatch is not None:
            outcome.first_mismatch = {"batch": mismatch.batch, "key": mismatch.key}
            outcome.failure = (
                f"CHECKPOINT DOES NOT RESUME EXACTLY ({source}): {mismatch.describe()}"
            )
            return False
        record["passed"] = True
        keys = len(expected[0]) if expected else 0
        say(f"✓ Restored in a new process from the {source} in {result.restore_seconds:.1f} s")
        say(
            f"✓ {len(expected)} batches after the restore match the original bit for bit "
            f"({keys} keys each)"
        )
        return True

    try:
        iterator = iter(instantiate_dataset(cfg.dataloader))
        for _ in range(settings.batches_before_save):
            next(iterator)
        try:
            saved = save_iterator(iterator, save_dir)
        except UnsaveablePipeline as error:
            outcome.failure = f"CHECKPOINT CANNOT BE SAVED: {error}"
            return outcome
        except Exception as error:
            if not is_disk_full(error):
                raise
            free = shutil.disk_usage(save_dir).free if save_dir.exists() else 0
            outcome.failure = (
                f"CHECKPOINT DID NOT FIT: saving the iterator into {save_dir} failed "
                f"({_tf_message(error)}); {format_bytes(free)} free there"
                + (f"; {disk_full_hint}" if disk_full_hint else "")
            )
            return outcome
        outcome.checkpoint_bytes, outcome.checkpoint_files = saved.bytes, saved.files
        outcome.save_seconds = saved.save_seconds
        outcome.checkpoint_uri = str(saved.prefix.parent)
        if checkpoint_dir is not None:
            outcome.staged_path = str(checkpoint_dir)
        say(
            f"✓ Saved the iterator after {settings.batches_before_save} batches into "
            f"{saved.prefix.parent}: {saved.files} files, {format_bytes(saved.bytes)} "
            f"in {saved.save_seconds:.1f} s"
        )
        expected = take_digests(iterator, settings.batches_to_compare)
        del iterator

        if (compare_before_upload or destination is None) and not restore_and_compare(
            "saved copy", saved.prefix, expected
        ):
            return outcome
        if destination is not None:
            files = sorted(saved.prefix.parent.iterdir())
            uploaded = True
            try:
                destination.put(files, run_prefix)
            except TransferError:
                uploaded = False
                destination.remove(run_prefix)  # no marker: the objects are of no use
                raise
            outcome.checkpoint_uri = destination.uri(run_prefix)
            fetched = destination.fetch(run_prefix, scratch / "downloaded")
            say(
                f"✓ Copied to {outcome.checkpoint_uri} and back into a fresh folder: "
                f"{len(fetched)} files, every size and crc32c verified"
            )
            downloaded_prefix = scratch / "downloaded" / saved.prefix.name
            restore_and_compare("downloaded copy", downloaded_prefix, expected)
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
            if keep and getattr(destination, "ephemeral", False):
                say("--keep: the embedded server's copy goes when it stops; set GCS_TEST_BUCKET")
            elif keep:
                say(f"Kept {outcome.checkpoint_uri} (--keep)")
            else:
                destination.remove(run_prefix)
        elif (
            uploaded
            and outcome.failure not in (None, "interrupted")
            and not getattr(destination, "ephemeral", False)
        ):
            outcome.notes.append(
                f"the checkpoint is kept for inspection at {outcome.checkpoint_uri}"
            )


def round_trip_report(outcome: RoundTripOutcome) -> dict[str, Any]:
    """The report's `checkpoint` and `verification` keys."""
    return {
        "checkpoint": {
            "uri": outcome.checkpoint_uri,
            "bytes": outcome.checkpoint_bytes,
            "files": outcome.checkpoint_files,
            "save_seconds": round(outcome.save_seconds, 3),
            "restore_seconds": round(outcome.restore_seconds, 3),
        },
        "verification": {
            "batches_compared": outcome.batches_compared,
            "comparisons": outcome.comparisons,
            "passed": outcome.passed,
            "first_mismatch": outcome.first_mismatch,
            "failure": outcome.failure,
        },
    }


def finish(
    args: argparse.Namespace,
    report: dict[str, Any],
    outcome: RoundTripOutcome,
    closing_lines: tuple[str, ...] = (),
) -> int:
    """Print the verdict (last line: ✓ ALL TESTS PASSED or the ✗ line), write the report."""
    exit_code = EXIT_PASSED if outcome.passed else EXIT_FAILED
    for line in closing_lines:
        print(line)
    print("✓ ALL TESTS PASSED" if outcome.passed else f"✗ {outcome.failure}")
    for note in outcome.notes:
        print(f"  ({note})")
    write_report(
        args.report,
        {**report, **round_trip_report(outcome), "passed": outcome.passed, "exit_code": exit_code},
    )
    return exit_code
