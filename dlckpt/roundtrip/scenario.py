"""One run of a scenario: the destination, the round trip, the verdict and the report.

The three scripts differ in where the checkpoint is saved and which folders the preflight
checks; what they do with it is here, once: open the GCS_TEST_BUCKET destination, save
after K batches, restore in a new process (through the destination), compare, print the
✓/✗ verdict and write the JSON report.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from dlckpt.errors import EXIT_FAILED, EXIT_PASSED, PipelineTooShort
from dlckpt.preflight.locations import tensorflow_gcs_locations as gs_write_rows
from dlckpt.report import write_report
from dlckpt.storage.gcs import (
    EMBEDDED_BUCKET,
    GcsDestination,
    GcsLocation,
    embedded_gcs_server,
    make_client,
    parse_gcs_uri,
)
from dlckpt.storage.local import LocalDestination
from dlckpt.storage.transfer import TransferError
from dlckpt.tempdir import disk_full_text, is_disk_full
from dlckpt.units import format_size

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
        with embedded_gcs_server() as server:
            client = make_client()
            client.create_bucket(EMBEDDED_BUCKET)
            print(
                f"Destination: embedded GCS server at {server.endpoint}, gs://{EMBEDDED_BUCKET} "
                "(set GCS_TEST_BUCKET=gs://bucket/prefix for your own bucket)"
            )
            yield GcsDestination(
                client, GcsLocation(EMBEDDED_BUCKET, ""), ephemeral=True, embedded=server
            )
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
    elements_compared: int = 0
    fresh_elements_compared: int = 0  # expected, see roundtrip.window.expected_fresh_elements
    window_batches: int = 0  # what the window planned (see roundtrip.window.Window)
    window_covers_buffers: bool = False
    risks: list[dict[str, str]] = field(default_factory=list)
    risks_checked: list[str] = field(default_factory=list)
    first_mismatch: dict[str, Any] | None = None
    failure: str | None = None  # the ✗ line when the check failed
    notes: list[str] = field(default_factory=list)
    # One entry per restore-and-compare: {"source", "path", "passed", "batches", "restore_seconds"}.
    comparisons: list[dict[str, Any]] = field(default_factory=list)
    staged_path: str = ""  # where the checkpoint was saved when the caller named the folder
    # "tensorflow-gcs" when TensorFlow wrote straight to gs://, "local" for a local save;
    # for the former, the folder it staged in, the variable that chose it, the most staged.
    writer: str = "local"
    tf_temp_dir: str | None = None
    tf_temp_dir_source: str | None = None
    tf_temp_peak_bytes: int | None = None
    tf_gcs_settings: dict[str, str] = field(default_factory=dict)  # the user's GCS_* set
    tf_gcs_bounds: dict[str, str] = field(default_factory=dict)  # the tool's, embedded server

    @property
    def passed(self) -> bool:
        return self.failure is None


@dataclass
class _RoundTrip:
    """What the stages of one round trip share."""

    cfg: DictConfig
    dataloader_cfg: dict[str, Any]
    outcome: RoundTripOutcome
    scratch: Path
    say: Callable[[str], None]
    analysis: Any = None  # pipeline.risks.PipelineAnalysis
    window: Any = None  # roundtrip.window.Window
    expected: Any = None  # roundtrip.digest.DigestStream
    embedded: Any = None  # storage.embedded.server.EmbeddedGcs behind a gs:// restore
    build_seeds: Any = None  # this build's random seeds (pipeline.seeds.Seeds; None: unread)
    restore_seeds: Any = None  # the restore process's build's
    restore_constants: Any = None  # the restore process's build's (pipeline.seeds.Constants)


def _name_risks(run: _RoundTrip, dataset: Any) -> None:
    """Walk the pipeline's graph for what can break an exact resume; plan the window."""
    from dlckpt.pipeline.risks import analyze
    from dlckpt.roundtrip.window import plan_window

    try:
        run.analysis = analyze(dataset)
    except Exception as error:  # a graph TensorFlow cannot serialize: plan without it
        from dlckpt.pipeline.risks import GraphUnreadable, unread_graph_analysis

        buffer = int(run.dataloader_cfg.get("shuffle_buffer_size") or 0)
        why = str(error) if isinstance(error, GraphUnreadable) else type(error).__name__
        run.analysis = unread_graph_analysis(why, buffer)
        run.say(
            f"⚠ Could not read the pipeline's graph: the window assumes one element a batch "
            f"({buffer:,} buffered)"
        )
    run.analysis.risks.extend(_seeded_only_later(run))
    run.window = plan_window(run.analysis, run.cfg.roundtrip)
    run.outcome.risks = [risk.report() for risk in run.analysis.risks]
    run.outcome.risks_checked = list(run.analysis.checked)
    run.outcome.window_batches = run.window.batches
    for risk in run.analysis.risks:
        run.say(f"⚠ Risk to an exact resume: {risk.line()}")


def _seeded_only_later(run: _RoundTrip) -> list[Any]:
    """An unverifiable risk when this process's first build of the pipeline had unseeded
    draws that this build has seeded (tf.random.set_seed runs after the pipeline is built):
    a job builds it once, unseeded."""
    from dlckpt.pipeline.risks import Risk
    from dlckpt.pipeline.seeds import first_build, unseeded

    first = first_build(run.dataloader_cfg)
    now = run.build_seeds = run.analysis.seeds
    if first is None or now is None or [op for op, *_ in first] != [op for op, *_ in now]:
        return []  # not the same draws (a builder may add one at some buffers): no claim
    if len(unseeded(first)) <= len(unseeded(now)):
        return []
    return [
        Risk(
            "unseeded_shuffle",
            f"{unseeded(first)[0]} without a seed when the pipeline is first built",
            "it is seeded only in later builds in this process (tf.random.set_seed runs after "
            "the pipeline is built), and a job builds it once: it draws from seeds the "
            "iterator checkpoint does not hold, so a resumed job reads another order",
            "call tf.random.set_seed(N) before building the pipeline, or pass seed=N to the op",
            unverifiable=True,
        )
    ]


def _fill(run: _RoundTrip, iterator: Any) -> None:
    """Read `batches_before_save` batches; PipelineTooShort when the data ends first."""
    before = int(run.cfg.roundtrip.batches_before_save)
    for read in range(before):
        try:
            next(iterator)
        except StopIteration:
            raise _too_short(read, before) from None


def _too_short(yielded: int, before: int) -> PipelineTooShort:
    return PipelineTooShort(
        f"dataloader: the pipeline yields {yielded} batch{'es' if yielded != 1 else ''} and "
        f"ends; the test needs {before + 1} (roundtrip.batches_before_save={before} before "
        f"the save, then at least 1 to compare): set roundtrip.batches_before_save="
        f"{max(yielded - 1, 0)} or lower, or add .repeat() to the dataloader"
    )


def _save(run: _RoundTrip, dataset: Any, iterator: Any, save_dir: Path, disk_full_hint: str) -> Any:
    """Save the iterator; None (and the ✗ line in the outcome) when it cannot be saved."""
    from dlckpt.ckpt_io import UnsaveablePipeline, save_iterator

    try:
        return save_iterator(iterator, save_dir)
    except UnsaveablePipeline as error:
        run.outcome.failure = f"CHECKPOINT CANNOT BE SAVED: {error.naming(dataset)}"
    except Exception as error:
        if not is_disk_full(error):
            raise
        free = shutil.disk_usage(save_dir).free if save_dir.exists() else 0
        run.outcome.failure = (
            f"CHECKPOINT DID NOT FIT: saving the iterator into {save_dir} failed "
            f"({disk_full_text(error)}); {format_size(free)} free there"
            + (f"; {disk_full_hint}" if disk_full_hint else "")
        )
    return None


def _read_expected(run: _RoundTrip, iterator: Any, dataset: Any) -> bool:
    """Digest the window's batches from the original iterator, within the time budget.

    False (and the ✗ line in the outcome) when the pipeline raises after the save: a job
    would fail there after its first save (Dataset.snapshot does while it writes, measured
    on TF 2.21 by a new user's check: InternalError, in one process, no restore involved).
    Raises UsageError (exit 2) when a new iterator that saves nothing fails as well, with
    the same error: the pipeline itself fails there (a new user's map failing at element
    60 was told about snapshots, exit 1). Not asked of a pipeline whose iterators share
    state on disk (a snapshot, a file cache): a new iterator reads what the first wrote.
    """
    import time

    from dlckpt.roundtrip.digest import take_digests
    from dlckpt.runtime.tf_import import import_tensorflow

    settings = run.cfg.roundtrip
    deadline = time.monotonic() + float(settings.window_seconds)
    try:
        run.expected = take_digests(iterator, run.window.batches, deadline)
    except import_tensorflow().errors.OpError as error:
        if run.analysis is not None and run.analysis.state_on_disk is False:
            _fails_without_a_save(run, dataset, error)
        detail = " ".join(str(error.message).split())[:300]
        run.outcome.failure = (
            "THE RUNNING PIPELINE FAILED AFTER THE SAVE: reading on from the iterator just "
            f"saved raised {type(error).__name__}: {detail}. A job would fail here after its "
            "first save (Dataset.snapshot does while it is still writing its snapshot: save "
            "only once the snapshot is complete, or drop the snapshot)"
        )
        return False
    if not run.expected.digests and run.expected.ended:
        raise _too_short(int(settings.batches_before_save), int(settings.batches_before_save))
    if run.expected.cut:
        run.say(
            f"⚠ Comparison window cut at {len(run.expected.digests)} of {run.window.batches} "
            f"batches by roundtrip.window_seconds={settings.window_seconds}: it does not cover "
            f"{run.window.reason()}; raise roundtrip.window_seconds to compare them all"
        )
    return True


def _fails_without_a_save(run: _RoundTrip, dataset: Any, error: Any) -> None:
    """Raise read_failure's UsageError when a new iterator of `dataset`, never saved, raises
    `error` again (same type and message, without TensorFlow's wrappers) within the
    batches the run read; return when it does not (or the window's time budget ends)."""
    import time

    from dlckpt.pipeline.build import read_failure
    from dlckpt.roundtrip.digest import take_digests
    from dlckpt.runtime.tf_import import import_tensorflow

    settings = run.cfg.roundtrip
    batches = int(settings.batches_before_save) + int(run.window.batches) + 1
    deadline = time.monotonic() + float(settings.window_seconds)
    try:
        take_digests(iter(dataset), batches, deadline)
    except import_tensorflow().errors.OpError as again:
        answer, first = read_failure(again), read_failure(error)
        if answer is not None and first is not None and str(answer) == str(first):
            raise answer from None


def _likely_cause(run: _RoundTrip) -> str:
    moved = _seeds_moved(run)
    if moved:
        return f"; likely cause: the pipeline's random seeds differ between two processes ({moved})"
    changed = _constants_moved(run)
    if changed:
        return (
            f"; likely cause: the pipeline's graph holds other constants in two processes "
            f"({changed})"
        )
    risks = run.analysis.risks if run.analysis is not None else []
    risks = [risk for risk in risks if risk.kind != "unread_graph"]  # a gap, not a cause
    if not risks:
        return ""
    return f"; likely cause: {risks[0].line()}"


def _restore_and_compare(run: _RoundTrip, source: str, prefix: Path | str) -> bool:
    """Restore in a new process from `prefix` (path or gs:// URI); compare with the expected."""
    from dlckpt.roundtrip.child import restore_in_new_process
    from dlckpt.roundtrip.digest import first_mismatch
    from dlckpt.storage.embedded.server import watched

    outcome, expected = run.outcome, run.expected
    # The restore process reads from the server: say at once when it dies or stops (the
    # process itself gives up under the GCS_* bounds it inherits).
    with watched(run.embedded, run.say, " during the restore: the restore process will fail"):
        result = restore_in_new_process(
            run.dataloader_cfg,
            prefix,
            expected,
            run.scratch,
            timeout_seconds=float(run.cfg.roundtrip.restore_timeout_seconds),
        )
    outcome.restore_seconds = result.restore_seconds
    outcome.batches_compared = len(result.stream.digests)
    run.restore_seeds, run.restore_constants = result.seeds, result.constants
    record = {
        "source": source,
        "path": str(prefix.parent) if isinstance(prefix, Path) else prefix.rsplit("/", 1)[0],
        "passed": False,
        "batches": len(result.stream.digests),
        "restore_seconds": round(result.restore_seconds, 3),
    }
    outcome.comparisons.append(record)
    if result.error:
        outcome.failure = _restore_failure(run, source, prefix, result.error)
        return False
    mismatch = first_mismatch(expected, result.stream)
    if mismatch is not None:
        outcome.first_mismatch = {"batch": mismatch.batch, "key": mismatch.key}
        outcome.failure = (
            f"CHECKPOINT DOES NOT RESUME EXACTLY ({source}): {mismatch.describe()}"
            + _likely_cause(run)
        )
        return False
    record["passed"] = True
    _say_match(run, result.restore_seconds, source)
    return True


def _say_match(run: _RoundTrip, restore_seconds: float, source: str) -> None:
    """A restore that matched: what the window covered (fresh elements, whether it passed
    every buffer held at save time) into the outcome, and its two ✓ lines."""
    from dlckpt.roundtrip.window import expected_fresh_elements

    outcome, expected = run.outcome, run.expected
    outcome.elements_compared = expected.elements
    per_batch = expected.elements / max(len(expected.digests), 1)
    buffered_elements = run.window.buffered_batches * per_batch
    outcome.fresh_elements_compared = expected_fresh_elements(expected.elements, buffered_elements)
    outcome.window_covers_buffers = not expected.cut and (
        expected.ended or len(expected.digests) >= run.window.batches
    )
    keys = len(expected.digests[0]) if expected.digests else 0
    run.say(f"✓ Restored in a new process from the {source} in {restore_seconds:.1f} s")
    if not expected.digests:
        run.say("⚠ No batch was compared after the restore: nothing was checked")
        return
    ending = ", then the end of data" if expected.ended else ""
    run.say(
        f"✓ {len(expected.digests)} batches ({expected.elements:,} elements) after the restore "
        f"match the original bit for bit ({keys} {'key' if keys == 1 else 'keys'} each{ending}): "
        + (
            f"{run.window.reason()}, ~{outcome.fresh_elements_compared:,} elements drawn fresh "
            "from upstream"
            if outcome.window_covers_buffers
            else f"cut by roundtrip.window_seconds before the {run.window.batches:,} planned"
            if expected.cut
            else "fewer than the buffers held at save time"
        )
    )


def _upload_and_compare(
    run: _RoundTrip, destination: Destination, saved: Any, run_prefix: str
) -> None:
    """Upload, download into a fresh folder, restore and compare from that copy."""
    run.outcome.checkpoint_uri = destination.uri(run_prefix)
    fetched = destination.fetch(run_prefix, run.scratch / "downloaded")
    run.say(
        f"✓ Copied to {run.outcome.checkpoint_uri} and back into a fresh folder: "
        f"{len(fetched)} files, every size and crc32c verified"
    )
    _restore_and_compare(run, "downloaded copy", run.scratch / "downloaded" / saved.prefix.name)


# --- TensorFlow's own gs:// writer (issue 13) --------------------------------------------


def tensorflow_gcs_locations(destination: Destination | None) -> Callable[[Any], list[Any]] | None:
    """The preflight's rows when TensorFlow saves straight to `destination`; None unless GCS."""
    if not isinstance(destination, GcsDestination):
        return None
    embedded = bool(getattr(destination, "ephemeral", False))
    return _tensorflow_gcs_rows(embedded, destination.location.uri())


def tensorflow_gcs_locations_for(setting: str | None) -> Callable[[Any], list[Any]] | None:
    """The same rows for GCS_TEST_BUCKET=`setting` without opening it (--estimate-only)."""
    if setting and not setting.startswith("gs://"):
        return None  # a local folder: the run saves locally
    return _tensorflow_gcs_rows(not setting, setting or f"gs://{EMBEDDED_BUCKET}")


def _tensorflow_gcs_rows(embedded: bool, uri: str) -> Callable[[Any], list[Any]]:
    def rows(estimate: Any) -> list[Any]:
        return gs_write_rows(
            estimate, embedded_dir=tempfile.gettempdir() if embedded else None, gcs_uri=uri
        )

    return rows


def _save_to_gcs(
    run: _RoundTrip,
    dataset: Any,
    iterator: Any,
    destination: GcsDestination,
    run_prefix: str,
    needed: int,
) -> Any:
    """Save straight to gs://<run prefix>/iterator through TensorFlow, as a training job does.

    None (and the ✗ line in the outcome) when it cannot be saved; a save that ran out of
    room where TensorFlow stages it leaves nothing under the run prefix.
    """
    from dlckpt.ckpt_io import CHECKPOINT_NAME, UnsaveablePipeline
    from dlckpt.storage.embedded.server import watched
    from dlckpt.storage.tf_gcs import (
        GIVE_UP_SECONDS,
        save_iterator_to_gcs,
        staging_full_line,
        transfer_failure_line,
    )

    outcome = run.outcome
    embedded = destination.embedded
    _record_tf_gcs_settings(run, embedded)
    uri = destination.location.uri(run_prefix, CHECKPOINT_NAME)
    try:
        with watched(
            embedded,
            run.say,
            f" during the save: the run ends in {GIVE_UP_SECONDS:.0f} s unless it answers again",
            give_up_after=GIVE_UP_SECONDS,
            on_stuck=lambda trouble: _abandon(run, uri, embedded, trouble),
        ):
            saved = save_iterator_to_gcs(iterator, uri)
    except UnsaveablePipeline as error:
        outcome.failure = f"CHECKPOINT CANNOT BE SAVED: {error.naming(dataset)}"
        return None
    except Exception as error:
        if not is_disk_full(error):
            line = transfer_failure_line(str(error), uri, embedded, needed)
            if line is None:
                raise
            raise TransferError(f"saving to {uri}: {line}") from None
        destination.remove(run_prefix)  # TensorFlow uploads a file only once it is whole
        outcome.failure = staging_full_line(disk_full_text(error), needed)
        return None
    _record_gcs_save(run, saved, destination.uri(run_prefix))
    return saved


def _record_tf_gcs_settings(run: _RoundTrip, embedded: Any) -> None:
    """Into the outcome: the writer, TensorFlow's temp folder (where it stages the save) and
    the GCS_* settings in force; each setting the user gave is said (the embedded server's
    own bounds are recorded apart)."""
    from dlckpt.storage.tf_gcs import tf_gcs_settings
    from dlckpt.tempdir import tf_temp_dir

    outcome = run.outcome
    outcome.writer = "tensorflow-gcs"
    outcome.tf_temp_dir, outcome.tf_temp_dir_source, _ = tf_temp_dir()
    outcome.tf_gcs_bounds = dict(embedded.bounds) if embedded is not None else {}
    outcome.tf_gcs_settings = {
        name: value
        for name, value in tf_gcs_settings().items()
        if name not in outcome.tf_gcs_bounds
    }
    for name, value in outcome.tf_gcs_settings.items():
        run.say(f"TensorFlow GCS setting: {name}={value}")


def _record_gcs_save(run: _RoundTrip, saved: Any, checkpoint_uri: str) -> None:
    """A save that reached the bucket (a storage.tf_gcs save result): into the outcome, and
    its ✓ line."""
    from dlckpt.storage.tf_gcs import staged_text

    outcome = run.outcome
    outcome.tf_temp_peak_bytes = saved.temp_peak_bytes or None  # None: not seen
    outcome.checkpoint_bytes, outcome.checkpoint_files = saved.bytes, saved.files
    outcome.save_seconds = saved.save_seconds
    outcome.checkpoint_uri = checkpoint_uri
    run.say(
        f"✓ Saved the iterator after {run.cfg.roundtrip.batches_before_save} batches straight "
        f"to {checkpoint_uri} with TensorFlow's own gs:// filesystem: {saved.files} "
        f"files, {format_size(saved.bytes)} in {saved.save_seconds:.1f} s ({staged_text(saved)})"
    )


def _restore_failure(run: _RoundTrip, source: str, prefix: Path | str, error: str) -> str:
    """A restore from gs:// that failed on the way (the server gone, a request that never
    completed) is a transfer failure, not a checkpoint that does not restore."""
    from dlckpt.storage.tf_gcs import transfer_failure_line

    if isinstance(prefix, str):
        line = transfer_failure_line(error, prefix, run.embedded)
        if line is not None:
            return f"TRANSFER FAILED: restoring from {prefix}: {line}"
    return f"CHECKPOINT DOES NOT RESTORE ({source}): {error}"


def _abandon(run: _RoundTrip, uri: str, embedded: Any, trouble: str) -> None:
    """The save watch's end of the run when the server stays dead or stopped (see
    storage.tf_gcs.abandon_save): the line, the report with this round trip's part."""
    from dlckpt.storage.tf_gcs import GIVE_UP_SECONDS, abandon_save, wait_settings_text

    line = (
        f"TRANSFER FAILED: saving to {uri}: {trouble} for {GIVE_UP_SECONDS:.0f} s, so the "
        "run ended without waiting for TensorFlow's retries (its wait is set by "
        f"{wait_settings_text()})"
    )
    run.outcome.failure = line
    abandon_save(line, round_trip_report(run.outcome), [run.scratch], embedded)


def _refuse_an_unverifiable_pass(run: _RoundTrip) -> None:
    """A match is not a pass when a risk lies beyond what any compared window reaches (an
    unseeded shuffle that draws again at a later pass): the run ends "cannot verify", exit 1."""
    gap = _unverified(run) if run.outcome.passed else None
    if gap is not None:
        run.outcome.failure = f"CANNOT VERIFY AN EXACT RESUME: {gap}"


def _unverified(run: _RoundTrip) -> str | None:
    """What a match leaves unverified (the text after "CANNOT VERIFY AN EXACT RESUME: "), or
    None: no batch compared; a risk no window reaches; seeds that differ between the two
    processes; a window cut before the epoch boundary it was planned past."""
    if run.expected is not None and not run.expected.digests:
        return (
            f"no batch was compared (roundtrip.window_seconds="
            f"{run.cfg.roundtrip.window_seconds} ran out before the first); raise it"
        )
    matched = f"the {run.outcome.batches_compared:,} batches compared match, but "
    risks = run.analysis.risks if run.analysis is not None else []
    # Thread timing (deterministic=False) and random state a save skips show only when they
    # happen to: a match over the window does not rule them out (a nondeterministic
    # interleave matched 52 batches and diverged at batch 350, in a new user's check).
    blocking = [r for r in risks if r.unverifiable] + [
        r for r in risks if not r.unverifiable and r.kind in ("deterministic", "stateful_op")
    ]  # a draw no window reaches first: no run could show it
    if blocking:
        more = f" ({len(blocking) - 1} more above)" if len(blocking) > 1 else ""
        return matched + blocking[0].line() + more
    moved = _seeds_moved(run)
    if moved:
        return matched + (
            f"the pipeline's random seeds differ between two processes that build it "
            f"({moved}): a resumed job draws from other seeds at its next pass; pass fixed "
            "seeds (shuffle(..., seed=N), not one drawn at run time) and call "
            "tf.random.set_seed(N) before building the pipeline"
        )
    changed = _constants_moved(run)
    if changed:
        return matched + (
            f"the pipeline's graph holds other constants in two processes that build it "
            f"({changed}): a resumed job may read other data; build it from fixed inputs (sort "
            "a file list; shuffle one with a seed: random.Random(N).shuffle(files), "
            "list_files(..., seed=N)) and keep values drawn at build time out of the graph"
        )
    short = _short_of_the_boundary(run)
    redrawing = [risk for risk in risks if risk.kind == "unseeded_shuffle"]
    if short and redrawing:
        # The window was planned past the next epoch's draw, but the time budget cut it.
        return matched + (
            f"they stop before the epoch boundary at compared batch {short:,} "
            f"(roundtrip.window_seconds={run.cfg.roundtrip.window_seconds} cut the window), "
            f"where {redrawing[0].line()}"
        )
    return None


def _seeds_moved(run: _RoundTrip) -> str | None:
    """How the seeds of the round trip's build (which starts from the random state of this
    process's first build: pipeline.seeds.as_first_build) differ from the restore
    process's build of the same config, or None (the same, or either unread)."""
    from dlckpt.pipeline.seeds import differing

    if run.build_seeds is None or run.restore_seeds is None:
        return None
    return differing(run.build_seeds, run.restore_seeds)


def _constants_moved(run: _RoundTrip) -> str | None:
    """A constant the round trip's build holds and the restore process's build of the same
    config does not (a file list shuffled at build time), or None (the same, or unread)."""
    from dlckpt.pipeline.seeds import differing_constants

    here = run.analysis.constants if run.analysis is not None else None
    if here is None or run.restore_constants is None:
        return None
    return differing_constants(here, run.restore_constants)


def _short_of_the_boundary(run: _RoundTrip) -> int | None:
    """The compared batch of the next epoch boundary when the window stopped before the
    batches planned past it (the time budget cut it), else None."""
    window, expected = run.window, run.expected
    if window is None or window.epoch_boundary_batch is None or expected is None:
        return None
    if expected.ended or len(expected.digests) >= window.batches:
        return None
    return window.epoch_boundary_batch


def _say_risks_checked(run: _RoundTrip) -> None:
    if run.outcome.passed and run.analysis is not None:
        if run.analysis.risks:
            run.say(
                "⚠ Matched this time, but the risks above can still break a resume in "
                "ways this run does not stage; fix them to make it certain"
            )
        elif run.analysis.checked:  # only when the graph was actually read
            run.say(f"✓ No risk to an exact resume found ({'; '.join(run.analysis.checked)})")


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
    tensorflow_gcs: bool = False,
    expected_bytes: int = 0,
    before_save: Callable[[], None] | None = None,
) -> RoundTripOutcome:
    """Save after K batches, read a window on, restore in a new process, compare.

    Stages: name the risks and plan the window (pipeline.risks, window) → fill → save →
    read the expected window → restore and compare (the saved copy, and/or the copy fetched back
    from `destination`). Only one iterator over the user's pipeline is alive at a time:
    the original is dropped before any restore starts.

    The checkpoint is saved into `checkpoint_dir` when given (the caller's folder: never
    removed here), else into a scratch folder under `scratch_root`. With
    `compare_before_upload` the saved copy is restored and compared first; with a
    `destination` the checkpoint is then uploaded, downloaded into a fresh folder and
    restored and compared again from that copy. Without either, the saved copy is compared.

    Only the run's own scratch folder and `run_prefix` at the destination are ever removed:
    the prefix after a pass (unless `keep`), after an upload that did not complete, or
    after an interrupt; the scratch folder always. A save that runs out of room becomes a
    failure naming the folder and its free space, followed by `disk_full_hint`.
    Raises PipelineTooShort (exit 2) when the data ends before the test can compare.

    With `tensorflow_gcs` and a GCS destination, TensorFlow saves straight to
    gs://<run prefix>/iterator and the new process restores straight from there, as a
    resumed training job does (`expected_bytes`, the estimate, goes into the line for a
    save that runs out of room where TensorFlow stages it). `before_save` runs between the
    fill and that save (multihost: every process waits for its peers, so they save at once).
    """
    dataloader_cfg: dict[str, Any] = OmegaConf.to_container(cfg.dataloader, resolve=True)  # type: ignore[assignment]
    # A run prefix may have folders (multihost: <run>/process_0-of-4); the scratch is flat.
    # Named first and made inside the try: a signal between mkdtemp's mkdir and its return
    # would leave a folder no finally knows of (CI saw one after a SIGHUP at the fill).
    scratch = Path(scratch_root or tempfile.gettempdir()) / (
        f"{run_prefix.replace('/', '-')}-{secrets.token_hex(4)}"
    )
    run = _RoundTrip(cfg, dataloader_cfg, RoundTripOutcome(), scratch, say)
    held = _RunPrefix(destination, run_prefix)
    try:
        scratch.mkdir(mode=0o700)
        if tensorflow_gcs and isinstance(destination, GcsDestination):
            _trip_through_tensorflow_gcs(run, held, destination, expected_bytes, before_save)
        else:
            save_dir = checkpoint_dir if checkpoint_dir is not None else scratch / "checkpoint"
            _trip_through_a_saved_copy(
                run, held, save_dir, checkpoint_dir is not None, compare_before_upload,
                disk_full_hint,
            )  # fmt: skip
    except TransferError as error:
        run.outcome.failure = f"TRANSFER FAILED: {error}"
    except KeyboardInterrupt:
        held.interrupted = True
        held.remove()
        raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        _release(run, held, keep)
    return run.outcome


@dataclass
class _RunPrefix:
    """The run's objects under `run_prefix` at the destination, and what may remove them.

    `written` is True from the moment something may exist under the prefix; only then
    is it removed (after a pass unless --keep, after an interrupt, after a failed upload).
    """

    destination: Destination | None
    run_prefix: str
    written: bool = False
    interrupted: bool = False

    def remove(self) -> None:
        if self.written and self.destination is not None:
            self.destination.remove(self.run_prefix)


def _open_and_fill(run: _RoundTrip) -> tuple[Any, Any]:
    """Build the pipeline, name its risks, plan the window and fill the buffers."""
    from dlckpt.pipeline.build import instantiate_dataset

    dataset = instantiate_dataset(run.cfg.dataloader)
    _name_risks(run, dataset)
    iterator = iter(dataset)
    _fill(run, iterator)
    return dataset, iterator


def _trip_through_tensorflow_gcs(
    run: _RoundTrip,
    held: _RunPrefix,
    destination: GcsDestination,
    expected_bytes: int,
    before_save: Callable[[], None] | None = None,
) -> None:
    """TensorFlow saves straight to gs://<run prefix>/iterator; a new process restores there."""
    run.embedded = destination.embedded
    dataset, iterator = _open_and_fill(run)
    if before_save is not None:
        before_save()
    held.written = True  # TensorFlow writes under the run prefix from here on
    try:
        on_gcs = _save_to_gcs(run, dataset, iterator, destination, held.run_prefix, expected_bytes)
    except TransferError:
        if not destination.ephemeral:  # the embedded server's storage goes when it stops
            held.remove()  # what reached the bucket is of no use
        held.written = False
        raise
    if on_gcs is None:
        held.written = False  # nothing is left under the run prefix
        return
    if not _read_expected(run, iterator, dataset):
        return
    del iterator, dataset  # one live iterator at a time
    _restore_and_compare(run, "bucket (gs://, TensorFlow's filesystem)", on_gcs.prefix)
    _refuse_an_unverifiable_pass(run)
    _say_risks_checked(run)


def _trip_through_a_saved_copy(
    run: _RoundTrip,
    held: _RunPrefix,
    save_dir: Path,
    staged: bool,
    compare_before_upload: bool,
    disk_full_hint: str,
) -> None:
    """Save into `save_dir`, compare that copy, and/or upload, fetch back and compare."""
    dataset, iterator = _open_and_fill(run)
    saved = _save(run, dataset, iterator, save_dir, disk_full_hint)
    if saved is None:
        return
    outcome = run.outcome
    outcome.checkpoint_bytes, outcome.checkpoint_files = saved.bytes, saved.files
    outcome.save_seconds = saved.save_seconds
    outcome.checkpoint_uri = str(saved.prefix.parent)
    if staged:
        outcome.staged_path = str(save_dir)
    run.say(
        f"✓ Saved the iterator after {run.cfg.roundtrip.batches_before_save} batches into "
        f"{saved.prefix.parent}: {saved.files} files, {format_size(saved.bytes)} "
        f"in {saved.save_seconds:.1f} s"
    )
    if not _read_expected(run, iterator, dataset):
        return
    del iterator, dataset  # one live iterator at a time (cache files, readers)
    destination = held.destination
    if (compare_before_upload or destination is None) and not _restore_and_compare(
        run, "saved copy", saved.prefix
    ):
        return
    if destination is not None:
        held.written = True
        try:
            destination.put(sorted(saved.prefix.parent.iterdir()), held.run_prefix)
        except TransferError:
            held.remove()  # no marker: the objects are of no use
            held.written = False
            raise
        _upload_and_compare(run, destination, saved, held.run_prefix)
    _refuse_an_unverifiable_pass(run)
    _say_risks_checked(run)


def _release(run: _RoundTrip, held: _RunPrefix, keep: bool) -> None:
    """After the run: remove the run prefix after a pass (unless --keep), or say it is kept."""
    outcome, destination = run.outcome, held.destination
    if not held.written or destination is None or held.interrupted:
        return
    ephemeral = getattr(destination, "ephemeral", False)
    if outcome.failure is None:
        if keep and ephemeral:
            run.say("--keep: the embedded server's copy goes when it stops; set GCS_TEST_BUCKET")
        elif keep:
            run.say(f"Kept {outcome.checkpoint_uri} (--keep)")
        else:
            held.remove()
    elif not ephemeral:
        outcome.notes.append(f"the checkpoint is kept for inspection at {outcome.checkpoint_uri}")


def round_trip_report(outcome: RoundTripOutcome) -> dict[str, Any]:
    """The report's `checkpoint` and `verification` keys."""
    return {
        "checkpoint": {
            "uri": outcome.checkpoint_uri,
            "bytes": outcome.checkpoint_bytes,
            "files": outcome.checkpoint_files,
            "save_seconds": round(outcome.save_seconds, 3),
            "restore_seconds": round(outcome.restore_seconds, 3),
            "writer": outcome.writer,
            "tf_temp_dir": outcome.tf_temp_dir,
            "tf_temp_dir_source": outcome.tf_temp_dir_source,
            "tf_temp_peak_bytes": outcome.tf_temp_peak_bytes,
            "tf_gcs_settings": outcome.tf_gcs_settings,
            "tf_gcs_bounds": outcome.tf_gcs_bounds,
        },
        "verification": {
            "batches_compared": outcome.batches_compared,
            "elements_compared": outcome.elements_compared,
            "fresh_elements_compared": outcome.fresh_elements_compared,
            "window_batches": outcome.window_batches,
            "window_covers_buffers": outcome.window_covers_buffers,
            "risks": outcome.risks,
            "risks_checked": outcome.risks_checked,
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
    estimate: Any = None,
) -> int:
    """Print the verdict (last line: ✓ ALL TESTS PASSED or the ✗ line), write the report.

    With the run's `estimate` (an estimate.estimator.EstimateResult) and a saved checkpoint, the
    real bytes are held against the estimate for the tested buffer (estimate.estimator.cross_check):
    the line is printed and the report gets `estimate_cross_check`. A real save outside the
    estimate's stated ± fails the run (exit 1): the sizes and the preflight rest on it.
    """
    failure = outcome.failure if not outcome.passed else None
    if estimate is not None and outcome.checkpoint_bytes > 0:
        from dlckpt.estimate.estimator import cross_check

        check = cross_check(estimate, estimate.tested_buffer, outcome.checkpoint_bytes)
        print(check.message())
        report["estimate_cross_check"] = check.report()
        if check.within is False and failure is None:
            failure = check.failure()
    for line in closing_lines:
        print(line)
    for note in outcome.notes:
        print(f"  ({note})")
    print("✓ ALL TESTS PASSED" if failure is None else f"✗ {failure}")
    exit_code = EXIT_PASSED if failure is None else EXIT_FAILED
    write_report(
        args.report,
        {**report, **round_trip_report(outcome), "passed": failure is None, "exit_code": exit_code},
    )
    return exit_code
