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
from omegaconf import DictConfig, OmegaConf

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_PREFLIGHT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130

Destination = LocalDestination | GcsDestination

__all__ = [
    "EXIT_FAILED", "EXIT_INTERRUPTED", "EXIT_PASSED", "EXIT_PREFLIGHT", "EXIT_USAGE",
    "Destination", "RoundTripOutcome", "check_report_path", "common_parser", "format_bytes",
    "format_gb", "is_disk_full", "load_config", "open_destination",
    "parse_positive_int", "run_main",
    "run_round_trip", "shuffle_buffer_size", "with_buffer_size",
]  # fmt: skip


class _Parser(argparse.ArgumentParser):
    def error(
        self, message: str
    ) -> Any:  # argparse's own exit 2 would print usage + traceback-free text
        raise UsageError(f"{self.prog}: {message}")


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description)
    parser.add_argument(
        "--config-name", default="config", help="config in conf/ or --config-dir (default: config)"
    )
    parser.add_argument(
        "--config-dir", type=Path, help="your own folder of configs, searched before conf/"
    )
    parser.add_argument("--report", type=Path, help="write a JSON report here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's checkpoint after a pass"
    )
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
            yield GcsDestination(client, GcsLocation(EMBEDDED_BUCKET, ""))
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
            if keep:
                say(f"Kept {outcome.checkpoint_uri} (--keep)")
            else:
                destination.remove(run_prefix)
        elif uploaded and outcome.failure not in (None, "interrupted"):
            outcome.notes.append(
                f"the checkpoint is kept for inspection at {outcome.checkpoint_uri}"
            )


# --- measured estimate, locations and preflight (issue 3) ---------------------------------


def add_estimate_args(parser: argparse.ArgumentParser) -> None:
    """--estimate-only, --fit-budget [SIZE], --force: the options `estimate_and_preflight` reads."""
    parser.add_argument(
        "--estimate-only", action="store_true",
        help="measure the checkpoint size, print the locations table and exit (no round trip)",
    )  # fmt: skip
    parser.add_argument(
        "--fit-budget", nargs="?", const="tightest", metavar="SIZE",
        help="print the largest shuffle_buffer_size whose checkpoint fits SIZE (e.g. 15GB; "
        "default: the free space of the tightest location)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true", help="run even when the preflight check refuses"
    )


def estimate_and_preflight(
    cfg: DictConfig,
    args: argparse.Namespace,
    *,
    scenario: str,
    tested_buffer: int | None = None,
    locations: Callable[[Any], list[Any]] | None = None,
    scratch_root: Path | None = None,
    say: Callable[[str], None] = print,
) -> Any:
    """Estimate the checkpoint (measured, cached or formula), show where its bytes go, refuse.

    `scenario` is "small_buffer", "local_staging" or "full" (see _locations.scenario_locations);
    `tested_buffer` is the buffer the run will fill (default: the configured one);
    `locations(estimate) -> [Location]` replaces the scenario's default rows.
    Prints the headline lines, the locations table and the --fit-budget answer; raises
    PreflightRefusal (exit 3) naming the path unless --force. Returns an EstimateResult
    whose `.locations` and `.fit_budget` hold the report's `locations` and `fit_budget`.
    """
    import _locations
    from _estimate import estimate

    budget = None
    fit_budget = getattr(args, "fit_budget", None)
    if fit_budget not in (None, "tightest"):
        budget = _locations.parse_size(fit_budget)
    result = estimate(cfg, tested_buffer=tested_buffer, scratch_root=scratch_root, say=say)
    say(f"ORIGINAL CONFIG CHECKPOINT SIZE ESTIMATE: {result.headline('original')}")
    if result.tested_buffer != result.original_buffer:
        say(
            f"Reducing dataloader.shuffle_buffer_size {result.original_buffer:,} → "
            f"{result.tested_buffer:,} for the test"
        )
        say(f"NEW CONFIG CHECKPOINT SIZE ESTIMATE: {result.headline('tested')}")
    if result.calibration is not None:
        cal = result.calibration
        per_element, _ = cal.per_element(result.original_buffer)
        say(
            f"  measured: {format_bytes(per_element)} per buffered element + "
            f"{format_bytes(cal.fixed_bytes(result.original_buffer))} fixed "
            f"(prefetch/map buffers, ~{cal.extra_elements(result.original_buffer):.0f} elements); "
            + ("cached measurement" if result.cached else f"calibration took {cal.seconds:.1f} s")
        )
    for note in result.notes:
        say(f"  note: {note}")
    if locations is not None:
        rows = locations(result)
    else:
        rows = _locations.scenario_locations(scenario, result)
    rows = _locations.check_locations(rows)
    _, _, tmp_warning = _locations.tf_temp_dir()
    say(_locations.locations_table(rows))
    if tmp_warning:
        say(f"⚠ {tmp_warning}")
    result.locations = [row.report() for row in rows]
    if fit_budget is not None:
        source = "your budget" if budget is not None else "the tightest location"
        budget = budget if budget is not None else _locations.tightest_budget(rows)
        largest = result.largest_buffer_within(budget)
        result.fit_budget = {
            "budget_bytes": budget,
            "shuffle_buffer_size": largest,
            "estimated_bytes": result.bytes_for(largest) if largest else 0,
        }
        if largest:
            say(
                "FIT BUDGET: the largest shuffle_buffer_size whose checkpoint fits in "
                f"{format_gb(budget)} ({source}) is {largest:,} "
                f"(~{format_gb(result.bytes_for(largest))} + uncertainty)"
            )
        else:
            say(f"FIT BUDGET: no shuffle_buffer_size fits in {format_gb(budget)} ({source})")
    for warning in _locations.preflight(rows, result, force=getattr(args, "force", False)):
        say(f"⚠ PREFLIGHT WOULD REFUSE (--force): {warning}")
    return result


def estimate_report(result: Any) -> dict[str, Any]:
    """The report's `estimate`, `locations` and `fit_budget` keys for an EstimateResult."""
    return {
        "estimate": result.report(),
        "locations": list(getattr(result, "locations", [])),
        "fit_budget": getattr(result, "fit_budget", None),
    }
