"""One process of a job started by the user's own launcher (torchrun, srun, a TPU pod).

Stages: check the run id is new → process 0 measures the checkpoint and checks its host's
folders (a refusal stops every peer) → every process runs its round trip, saving at once
after a barrier in the bucket → sends its result to the bucket → process 0 gathers every
result (naming the processes that sent none in time) into the job's verdict
(`run.conclude`, as on one machine) → removes the run's meeting objects.

Only process 0's exit code carries the verdict: the others exit 0 once their result is in
the bucket, because a launcher that stops every process when one exits non-zero (torchrun
does) would otherwise stop process 0 before it can say which process failed and why.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dlckpt.errors import EXIT_PASSED, EXIT_USAGE
from dlckpt.multihost.layout import Process
from dlckpt.multihost.meeting import FOLDER, Meeting
from dlckpt.multihost.run import Job, Outcome, conclude, refuse_a_new_process_count, say_result
from dlckpt.multihost.worker import run_and_answer
from dlckpt.storage.transfer import one_line
from dlckpt.tempdir import tf_temp_dir
from dlckpt.units import format_size

if TYPE_CHECKING:
    from dlckpt.estimate.estimator import EstimateResult
    from dlckpt.multihost.launcher import Launch
    from dlckpt.storage.gcs import GcsDestination


def run_launched(
    job: Job,
    launch: Launch,
    destination: GcsDestination,
    report: dict[str, Any],
    *,
    measure: Callable[[], EstimateResult],
    gather_seconds: float,
) -> int:
    """Run this process's part of the job; returns its exit code (see the module's note).
    `measure` (process 0 only) estimates and preflights, raising PreflightRefusal (exit 3)."""
    process = launch.process
    report.update(launch={"index": process.index, "count": process.count,
                          "host": process.host, "per_host": launch.per_host,
                          "source": launch.source, "run_id": launch.run_id})  # fmt: skip
    job.say(launch.line())
    refusal = refuse_a_new_process_count(job)
    if refusal is not None:  # every process sees the same flags: all refuse alike
        return conclude(job, Outcome(failure=refusal), report, None)
    meeting = Meeting(destination, f"dlckpt-multi-host-{launch.run_id}", process)
    meeting.check_unused()
    try:
        return _take_part(job, launch, meeting, report, measure, gather_seconds)
    except BaseException as error:
        if not isinstance(error, Exception):  # a signal: the peers hear it, briefly
            name = getattr(error, "name", "SIGINT")  # runtime.signals.Interrupted has it
            meeting.interrupted(f"interrupted by {name}", keep=job.keep)
        raise


def _take_part(
    job: Job,
    launch: Launch,
    meeting: Meeting,
    report: dict[str, Any],
    measure: Callable[[], EstimateResult],
    gather_seconds: float,
) -> int:
    """This process's round trip between its peers', then its result or (process 0) the
    job's verdict."""
    process = launch.process
    estimate = _measure_first(meeting, measure, gather_seconds) if process.index == 0 else None
    spec = {
        "config_name": job.config_name,
        "config_dir": str(job.config_dir) if job.config_dir else None,
        "overrides": job.overrides,
        "bucket_uri": meeting.destination.location.uri(),
        "run_prefix": meeting.run_prefix,
        "keep": job.keep,
    }
    _, result = run_and_answer(spec, process, lambda: meeting.barrier(job.barrier_seconds))
    if not result.get("passed") and not result.get("peer_missing"):
        with contextlib.suppress(Exception):  # peers still at the barrier stop waiting
            meeting.abort(str(result.get("failure"))[:200])
    if meeting.duplicate:  # its index is another process's: no result under that name
        job.say(f"✗ {result.get('failure')}")
        report.update(passed=False, exit_code=EXIT_USAGE, failure=result.get("failure"))
        return EXIT_USAGE
    if process.index != 0:
        gone = meeting.final_abort()
        if gone is not None:  # process 0 stopped or is done: no verdict will read it
            meeting.forget_own()
            job.say(f"· {process.label()}: the run is over without it ({gone}): no result sent")
            report.update(passed=False, exit_code=EXIT_PASSED, failure=f"process 0: {gone}")
            return EXIT_PASSED
    result["temp_folder"] = temp_folder_here()
    where = meeting.send_report(result)
    if process.index != 0:
        return _say_own(job, launch, result, where, report)
    try:
        return _verdict(job, launch, meeting, report, estimate, gather_seconds)
    except Exception as error:  # bad input found while gathering: the peers stop too
        with contextlib.suppress(Exception):
            meeting.abort(one_line(error, 160))
        raise
    finally:
        meeting.remove(keep_checkpoints=job.keep, everyone_reported=meeting.all_reported)


def _measure_first(
    meeting: Meeting, measure: Callable[[], EstimateResult], gather_seconds: float
) -> EstimateResult:
    """Process 0's estimate and preflight. Whatever stops it stops the peers at the barrier;
    after a refusal or bad input it waits (up to `gather_seconds`) for the peers to say they
    stopped, so that removing the run's meeting objects leaves nothing in the bucket."""
    try:
        return measure()
    except BaseException as error:
        with contextlib.suppress(Exception):
            meeting.abort(one_line(error, 160))
        if isinstance(error, Exception):  # not a signal: that answer must not wait
            with contextlib.suppress(Exception):
                meeting.gather(gather_seconds, but_self=True)
                meeting.remove(keep_checkpoints=False)
        raise


def _say_own(
    job: Job, launch: Launch, result: dict[str, Any], where: str, report: dict[str, Any]
) -> int:
    """A process other than 0: its own line and report; exit 0 now its result is sent."""
    say_result(job, launch.process, result)
    job.say(f"Result sent to {where}: process 0 gives the job's verdict")
    report.update(
        {k: v for k, v in result.items() if k not in ("fingerprints", "lines")},
        verdict_by="process 0", exit_code=EXIT_PASSED,
    )  # fmt: skip
    return EXIT_PASSED


def _verdict(
    job: Job,
    launch: Launch,
    meeting: Meeting,
    report: dict[str, Any],
    estimate: EstimateResult | None,
    gather_seconds: float,
) -> int:
    """Process 0: every process's result from the bucket, then the job's verdict."""
    count = launch.process.count
    job.say(f"Gathering {count} results from {meeting.uri()}/{FOLDER}/ (up to "
            f"{gather_seconds:.0f} s)")  # fmt: skip
    results, missing = meeting.gather(gather_seconds)
    job.layout = [
        Process(i, count, int(results.get(i, {}).get("host", i // launch.per_host)))
        for i in range(count)
    ]
    job.hosts = len({p.host for p in job.layout})
    unheard = {
        i: f"no result in {meeting.uri()}/{FOLDER}/ within {gather_seconds:.0f} s of process "
        "0's own: look at that process's output (it did not start, died, or cannot reach "
        "the bucket)"
        for i in missing
    }
    if estimate is not None:
        report["host_temp_folders"] = check_host_folders(job, results, estimate)
    outcome = Outcome(results=results, unheard=unheard, stopped_by=meeting.aborted())
    return conclude(job, outcome, report, estimate)


def temp_folder_here() -> dict[str, Any]:
    """This process's TensorFlow temp folder (where its gs:// writer stages the checkpoint):
    path, the variable that chose it, its free bytes, and this host's name."""
    folder, source, _ = tf_temp_dir()
    return {"path": folder, "source": source, "free_bytes": shutil.disk_usage(folder).free,
            "hostname": socket.gethostname()}  # fmt: skip


def check_host_folders(
    job: Job, results: dict[int, dict[str, Any]], estimate: EstimateResult
) -> list[dict[str, Any]]:
    """Every host's temp folder against its processes' checkpoints at the configured buffer
    (the JOB CHECKPOINTS figure per process, times the processes sharing that folder):
    process 0's preflight saw only its own host. A ⚠ line per folder that cannot hold them
    (a warning, as the configured buffer's fit is on one host), else one ✓ line."""
    folders: dict[tuple[int, str], dict[str, Any]] = {}
    for _, result in sorted(results.items()):
        seen = result.get("temp_folder")
        if not seen:  # a process that stopped before it could say
            continue
        key = (int(result.get("host", 0)), str(seen["path"]))
        entry = folders.setdefault(key, {**seen, "host": key[0], "processes": 0})
        entry["processes"] += 1
        entry["free_bytes"] = min(entry["free_bytes"], int(seen["free_bytes"]))
    rows = []
    for entry in folders.values():
        entry["needed_bytes"] = estimate.original_bytes * entry["processes"]
        entry["fits"] = entry["needed_bytes"] <= entry["free_bytes"]
        rows.append(entry)
    stated = f" (±{estimate.uncertainty:.0%})" if estimate.uncertainty is not None else ""
    for row in rows:
        if not row["fits"]:
            job.say(
                f"⚠ HOST {row['host']}'S TEMP FOLDER CANNOT HOLD ITS CHECKPOINTS AT THE "
                f"CONFIGURED BUFFER: {row['path']} ({row['source']}) on {row['hostname']} has "
                f"{format_size(row['free_bytes'])} free; {_its(row['processes'])} stage "
                f"{format_size(row['needed_bytes'])}{stated}{_at_once(row['processes'])} at "
                "shuffle_buffer_size "
                f"{estimate.original_buffer:,}: the job's saves would fail there with `Could "
                "not append to the internal temporary file`"
            )
    if rows and all(row["fits"] for row in rows):
        least = min(rows, key=lambda r: r["free_bytes"] - r["needed_bytes"])
        job.say(
            f"✓ Every host's TensorFlow temp folder holds its processes' checkpoints at "
            f"shuffle_buffer_size {estimate.original_buffer:,}: {_folders(len(rows))}, the "
            f"tightest {least['path']} on host {least['host']} ({format_size(least['free_bytes'])} "
            f"free for {format_size(least['needed_bytes'])}{stated})"
        )
    return rows


def _its(processes: int) -> str:
    return "its process would" if processes == 1 else f"its {processes} processes would"


def _at_once(processes: int) -> str:
    return "" if processes == 1 else " at once"


def _folders(count: int) -> str:
    return "1 folder" if count == 1 else f"{count} folders"
