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
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dlckpt.errors import EXIT_PASSED
from dlckpt.multihost.layout import Process
from dlckpt.multihost.meeting import FOLDER, Meeting
from dlckpt.multihost.run import Job, Outcome, conclude, refuse_a_new_process_count
from dlckpt.multihost.worker import run_and_answer

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
    estimate = _measure_first(meeting, measure, gather_seconds) if process.index == 0 else None
    spec = {
        "config_name": job.config_name,
        "config_dir": str(job.config_dir) if job.config_dir else None,
        "overrides": job.overrides,
        "bucket_uri": destination.location.uri(),
        "run_prefix": meeting.run_prefix,
        "keep": job.keep,
    }
    _, result = run_and_answer(spec, process, lambda: meeting.barrier(job.barrier_seconds))
    if not result.get("passed") and not result.get("peer_missing"):
        with contextlib.suppress(Exception):  # peers still at the barrier stop waiting
            meeting.abort(str(result.get("failure"))[:200])
    where = meeting.send_report(result)
    if process.index != 0:
        return _say_own(job, launch, result, where, report)
    try:
        return _verdict(job, launch, meeting, report, estimate, gather_seconds)
    finally:
        meeting.remove(keep_checkpoints=job.keep)


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
            meeting.abort(f"{type(error).__name__}: {' '.join(str(error).split())[:160]}")
        if isinstance(error, Exception):  # not a signal: that answer must not wait
            with contextlib.suppress(Exception):
                meeting.gather(gather_seconds, but_self=True)
                meeting.remove(keep_checkpoints=False)
        raise


def _say_own(
    job: Job, launch: Launch, result: dict[str, Any], where: str, report: dict[str, Any]
) -> int:
    """A process other than 0: its own line and report; exit 0 now its result is sent."""
    label = launch.process.label()
    for line in result.get("lines", []):
        if line.startswith("⚠") or line.startswith("  "):
            job.say(f"{label}: {line.strip()}")
    if result.get("passed"):
        verification = result["verification"]
        job.say(f"✓ {label}: restored in a new process: {verification['batches_compared']} "
                "batches match bit for bit")  # fmt: skip
    else:
        job.say(f"{'·' if result.get('peer_missing') else '✗'} {label}: {result.get('failure')}")
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
    return conclude(job, Outcome(results=results, unheard=unheard), report, estimate)
