"""A multi-host round trip on this machine: one real process per (host, process).

Stages: refuse a restore with another process count → open the destination (the embedded
server, or GCS_TEST_BUCKET) → start every process (multihost.worker), each host's
processes sharing one temp folder → wait, naming a process that dies → per-process
verdicts → cross-process checks (shards that overlap) → one verdict line and the report.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlckpt.errors import EXIT_FAILED, EXIT_PASSED, EXIT_USAGE, UsageError
from dlckpt.multihost.layout import WHOLE, Process, overlaps, processes
from dlckpt.paths import command, doc
from dlckpt.units import format_size

if TYPE_CHECKING:
    from dlckpt.estimate.estimator import EstimateResult
    from dlckpt.storage.gcs import GcsDestination

WORKER_MODULE = "dlckpt.multihost.worker"
POLL_SECONDS = 0.2


@dataclass
class Job:
    """What the command line asked for."""

    config_name: str
    config_dir: Path | None
    overrides: list[str]
    hosts: int
    per_host: int
    restore_processes: int | None
    keep: bool
    timeout_seconds: float
    barrier_seconds: float = 120.0
    say: Callable[[str], None] = print
    # Under a launcher, each process's host as it reported it (else numbered host-major).
    layout: list[Process] | None = None

    @property
    def count(self) -> int:
        return len(self.layout) if self.layout else self.hosts * self.per_host

    def processes(self) -> list[Process]:
        return self.layout or processes(self.hosts, self.per_host)


@dataclass
class Outcome:
    failure: str | None = None
    results: dict[int, dict[str, Any]] = field(default_factory=dict)
    died: dict[int, str] = field(default_factory=dict)  # index -> how it ended
    # Under a launcher: index -> why process 0 has no result of it (nothing in the bucket).
    unheard: dict[int, str] = field(default_factory=dict)
    # Under a launcher: who stopped the run and why (its ABORT), when one did.
    stopped_by: str | None = None
    overlaps: list[str] = field(default_factory=list)
    sizes: dict[str, dict[str, int]] | None = None  # job_size_report

    def report(self) -> dict[str, Any]:
        per_process = [
            {k: v for k, v in result.items() if k not in ("fingerprints", "lines")}
            for _, result in sorted(self.results.items())
        ]
        return {
            "processes": per_process,
            "died": {str(k): v for k, v in self.died.items()},
            "sent_no_report": {str(k): v for k, v in self.unheard.items()},
            "sizes": self.sizes,
            "global_checks": {
                "overlapping_shards": self.overlaps,
                "all_resumed_in_step": self.failure is None,
            },
        }


def refuse_a_new_process_count(job: Job) -> str | None:
    """The ✗ text for restoring n processes' checkpoints with m processes, or None."""
    m, n = job.restore_processes, job.count
    if m is None or m == n:
        return None
    return (
        f"CANNOT RESUME WITH A DIFFERENT PROCESS COUNT: the job writes {n} iterator "
        f"checkpoints (process_{{i}}-of-{n}), one per process, and would restore them with "
        f"{m}: each holds its own shard's position and buffered elements, and a tf.data "
        "iterator's state restores only into the pipeline that wrote it (it cannot be split "
        f"or merged across shards). Keep {n} processes, or use an index-based strategy whose "
        f"state is a position any process count can recompute: {command('strategies')} "
        f"({doc('DISK_SPACE_SOLUTIONS.md')})"
    )


def _spec(job: Job, bucket_uri: str, run_prefix: str, scratch: Path) -> Path:
    spec = {
        "config_name": job.config_name,
        "config_dir": str(job.config_dir) if job.config_dir else None,
        "overrides": job.overrides,
        "count": job.count,
        "per_host": job.per_host,
        "bucket_uri": bucket_uri,
        "run_prefix": run_prefix,
        "barrier_dir": str(scratch / "barrier"),
        "barrier_seconds": job.barrier_seconds,
        "keep": job.keep,
    }
    (scratch / "barrier").mkdir()
    path = scratch / "spec.json"
    path.write_text(json.dumps(spec))
    return path


def _start(job: Job, spec: Path, scratch: Path) -> dict[int, subprocess.Popen[bytes]]:
    """One worker per process; a host's processes share `<scratch>/host-<h>/tmp` as TMPDIR."""
    from dlckpt.runtime.signals import die_with_parent

    started = {}
    for process in job.processes():
        temp = scratch / f"host-{process.host}" / "tmp"
        temp.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, **process.env(), "TMPDIR": str(temp)}
        env.pop("TEST_TMPDIR", None)  # the host's folder is where TensorFlow stages
        log = (scratch / f"log-{process.index}.txt").open("wb")
        command_line = [sys.executable, "-m", WORKER_MODULE, str(spec), str(process.index)]
        started[process.index] = subprocess.Popen(
            die_with_parent(command_line), env=env, stdout=log, stderr=log
        )
        log.close()
    return started


def _wait(
    job: Job, started: dict[int, subprocess.Popen[bytes]], scratch: Path, outcome: Outcome
) -> None:
    """Wait for every worker; one that ends without its result is named, and the others
    are told to stop waiting for it at the barrier. The whole run is held to the timeout."""
    deadline = time.monotonic() + job.timeout_seconds
    running = dict(started)
    while running:
        for index, popen in list(running.items()):
            code = popen.poll()
            if code is None:
                continue
            del running[index]
            result = scratch / f"result-{index}.json"
            if result.exists():
                outcome.results[index] = json.loads(result.read_text())
            else:
                outcome.died[index] = _ended(code)
            if index in outcome.died or not outcome.results[index].get("passed"):
                # Peers still waiting at the save for this one stop waiting.
                (scratch / "barrier" / "ABORT").touch()
        if running and time.monotonic() > deadline:
            for index, popen in running.items():
                popen.kill()
                popen.wait()
                outcome.died[index] = f"still running after {job.timeout_seconds:.0f} s, stopped"
            return
        time.sleep(POLL_SECONDS)


def _ended(code: int) -> str:
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exited {code} without a result"


def _say_processes(job: Job, outcome: Outcome, code: int) -> None:
    """One line per process, after its own warnings and notes (risks, a window the data
    cut short). Bad input (exit 2) stays the one last line; a process that only stopped
    waiting for a failed peer is not a ✗ of its own."""
    if code == EXIT_USAGE:
        return
    for process in job.processes():
        ended = outcome.died.get(process.index) or outcome.unheard.get(process.index)
        if ended:
            job.say(f"✗ {process.label()}: {ended}")
            continue
        say_result(job, process, outcome.results[process.index])


def say_result(job: Job, process: Process, result: dict[str, Any]) -> None:
    """A process's own warnings and notes, then its line (its worker `result`): ✓ restored
    exactly, ✗ failed, or · only stopped waiting for a failed peer."""
    label = process.label()
    for line in result.get("lines", []):
        if line.startswith("⚠") or line.startswith("  "):
            job.say(f"{label}: {line.strip()}")
    if result.get("peer_missing"):
        job.say(f"· {label}: {result.get('failure')}")
    elif not result.get("passed"):
        job.say(f"✗ {label}: {result.get('failure')}")
    else:
        checkpoint, verification = result["checkpoint"], result["verification"]
        job.say(
            f"✓ {label}: saved {format_size(checkpoint['bytes'])} to {checkpoint['uri']}, "
            f"restored in a new process: {verification['batches_compared']} batches match "
            "bit for bit"
        )


def _uneven_windows(job: Job, outcome: Outcome) -> str | None:
    """A ⚠ line when the processes compared different numbers of batches (one's data ended
    first): in training its peers go on without it, or wait for it at a collective."""
    counts = {i: r["verification"]["batches_compared"] for i, r in outcome.results.items()}
    if len(set(counts.values())) <= 1:
        return None
    shortest = min(counts, key=lambda i: counts[i])
    return (
        f"⚠ UNEVEN SHARDS: process {shortest}'s data ended after {counts[shortest]} batches "
        f"compared, its peers' after up to {max(counts.values())}: a process whose shard runs "
        "out first stops while the others go on (or waits for them at a collective)"
    )


def _first_failure(job: Job, outcome: Outcome) -> tuple[str | None, int]:
    """The ✗ text naming the first process that died or failed, and the exit code: a
    process that only stopped waiting for a failed peer is named last (the peer is the cause)."""
    ordered = sorted(
        job.processes(),
        key=lambda p: bool(outcome.results.get(p.index, {}).get("peer_missing")),
    )
    for process in ordered:
        if process.index in outcome.died:
            return f"{process.label().upper()} DIED: {outcome.died[process.index]}", EXIT_FAILED
        if process.index in outcome.unheard:
            text = outcome.unheard[process.index]
            return f"{process.label().upper()} SENT NO REPORT: {text}", EXIT_FAILED
        result = outcome.results[process.index]
        if not result.get("passed"):
            code = EXIT_USAGE if result.get("exit_code") == EXIT_USAGE else EXIT_FAILED
            return f"{process.label().upper()} FAILED: {result.get('failure')}", code
    if outcome.stopped_by is not None:  # every result passed, yet one process stopped it
        return f"THE RUN WAS STOPPED: {outcome.stopped_by}", EXIT_FAILED
    return None, EXIT_PASSED


def _cross_process_checks(job: Job, outcome: Outcome) -> bool:
    """Say what the processes' elements show; True when the shards are disjoint."""
    fingerprints = {i: r.get("fingerprints") or {} for i, r in outcome.results.items()}
    found = overlaps(fingerprints)
    outcome.overlaps = [overlap.line() for overlap in found]
    if found:
        more = len(found) - 3
        pairs = "; ".join(outcome.overlaps[:3]) + (f"; and {more} more" if more > 0 else "")
        job.say(
            f"⚠ SHARDS OVERLAP in the windows compared ({len(found)} of "
            f"{job.count * (job.count - 1) // 2} pairs of processes): {pairs}. Processes that "
            "read the same data train on it twice: shard by process_index (e.g. "
            "dataset.shard(process_count, process_index)), or give each process its own files"
        )
        return False
    total = sum(len(f.get(WHOLE, [])) for f in fingerprints.values())
    if total == 0:
        job.say("⚠ Cannot tell whether the shards overlap: no element could be fingerprinted")
        return False
    job.say(
        f"✓ Shards are disjoint: {total:,} elements across {job.count} processes, "
        "none read by two (matched whole and by every leaf that tells elements apart)"
    )
    return True


def run_multi_host(
    job: Job,
    report: dict[str, Any],
    destination: Any = None,
    estimate: EstimateResult | None = None,
) -> int:
    """Run the job; the exit code: 0 every process resumed exactly, 1 one did not (or died,
    its checkpoint fell outside the estimate's ±, or the restore would use another process
    count), 2 a process's input was bad. `destination` (from open_destination) is where the
    processes save; `estimate` (at the tested buffer) is held to their real checkpoints."""
    outcome = Outcome(failure=refuse_a_new_process_count(job))
    if outcome.failure is None:
        _run_processes(job, gcs_destination(destination), outcome)
    return conclude(job, outcome, report, estimate)


def conclude(
    job: Job, outcome: Outcome, report: dict[str, Any], estimate: EstimateResult | None
) -> int:
    """From every process's result (or how it ended) to the job's verdict: the per-process
    lines, the cross-process checks, the sizes, one last line; the report; the exit code."""
    code = EXIT_FAILED
    if outcome.failure is None:
        outcome.failure, code = _first_failure(job, outcome)
        _say_processes(job, outcome, code)
        if outcome.failure is None:
            _say_how_they_resumed(job, outcome)
        if outcome.failure is None and estimate is not None:
            outcome.failure = check_job_sizes(job, outcome, estimate)
    report.update(outcome.report())
    passed = outcome.failure is None
    job.say(
        f"✓ ALL TESTS PASSED ({job.count} processes on {job.hosts} "
        f"{'host' if job.hosts == 1 else 'hosts'})"
        if passed
        else f"✗ {outcome.failure}"
    )
    code = EXIT_PASSED if passed else code
    report.update(passed=passed, exit_code=code)
    return code


def check_job_sizes(job: Job, outcome: Outcome, estimate: EstimateResult) -> str | None:
    """Hold the estimate at the tested buffer to every process's real checkpoint, and say the
    job's figures: per process, per host (its processes' checkpoints staged at once) and in
    the bucket. Returns the failure text when a process's checkpoint is outside the stated ±
    (the job's figures and the preflight rest on it), else None."""
    from dlckpt.estimate.estimator import cross_check

    buffer = estimate.tested_buffer
    real = {i: int(r["checkpoint"]["bytes"]) for i, r in sorted(outcome.results.items())}
    checks = {i: cross_check(estimate, buffer, size) for i, size in real.items()}
    outcome.sizes = job_size_report(job, estimate, real)
    missed = [i for i, check in checks.items() if check.within is False]
    for index in missed:
        job.say(f"process {index}: {checks[index].message().lstrip()}")
    figures = outcome.sizes
    stated = estimate.uncertainty_for(buffer)
    within = (
        "; the README's rule of thumb states no ±"
        if stated is None
        else f": every process within the stated ±{stated:.1%}"
        if not missed
        else f": {len(missed)} of {job.count} outside the stated ±{stated:.1%}"
    )
    mark = "✗" if missed else "✓"
    job.say(
        f"{mark} Sizes at buffer {buffer:,}, real against estimated: per process "
        f"{_span(real.values())} against {format_size(figures['per_process']['estimated'])}; "
        f"per host ({job.per_host} at once in its temp folder) "
        f"{format_size(figures['per_host']['real_max'])} at most against "
        f"{format_size(figures['per_host']['estimated'])}; in the bucket ({job.count} "
        f"processes) {format_size(figures['bucket']['real'])} against "
        f"{format_size(figures['bucket']['estimated'])}{within}"
    )
    if missed:
        return checks[missed[0]].failure()
    return None


def _span(sizes: Any) -> str:
    low, high = min(sizes), max(sizes)
    return format_size(low) if low == high else f"{format_size(low)}–{format_size(high)}"


def job_size_report(
    job: Job, estimate: EstimateResult, real: dict[int, int]
) -> dict[str, dict[str, int]]:
    """The report's `sizes`: the estimate at the tested buffer per process, per host and in
    the bucket, beside the real checkpoints' (per host: the host that wrote the most)."""
    each = estimate.bytes_for(estimate.tested_buffer)
    hosts: dict[int, int] = {}
    for process in job.processes():
        hosts[process.host] = hosts.get(process.host, 0) + real.get(process.index, 0)
    return {
        "per_process": {
            "estimated": each,
            "real_min": min(real.values(), default=0),
            "real_max": max(real.values(), default=0),
        },
        "per_host": {"estimated": each * job.per_host, "real_max": max(hosts.values(), default=0)},
        "bucket": {"estimated": each * job.count, "real": sum(real.values())},
    }


def _say_how_they_resumed(job: Job, outcome: Outcome) -> None:
    disjoint = _cross_process_checks(job, outcome)
    uneven = _uneven_windows(job, outcome)
    if uneven:
        job.say(uneven)
    line = "✓ Every process resumed exactly where it saved, at the same step as its peers"
    if disjoint and not uneven:
        line += "; across them no element lost or repeated over the batches compared"
    job.say(line)


def _run_processes(job: Job, destination: GcsDestination, outcome: Outcome) -> None:
    """Start every process under a new run prefix and wait for them; the run's scratch
    (the barrier, the hosts' temp folders, the logs) is removed whatever happens."""
    from dlckpt.storage.transfer import new_run_prefix

    run_prefix = new_run_prefix("multi-host")
    scratch = Path(tempfile.mkdtemp(prefix=f"{run_prefix}-"))
    try:
        spec = _spec(job, destination.location.uri(), run_prefix, scratch)
        where = f"{destination.location.uri(run_prefix)}/process_{{i}}-of-{job.count}/"
        job.say(
            f"Started {job.count} processes ({job.hosts} host{'s' if job.hosts != 1 else ''} "
            f"× {job.per_host}), "
            f"each saving its iterator under {where}"
        )
        _wait(job, _start(job, spec, scratch), scratch, outcome)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def gcs_destination(destination: Any) -> GcsDestination:
    """`destination` when it is a bucket; UsageError (exit 2) for a local folder."""
    from dlckpt.storage.gcs import GcsDestination

    if not isinstance(destination, GcsDestination):
        raise UsageError(
            "multi-host: GCS_TEST_BUCKET is a local folder (expected gs://bucket/prefix, or "
            "unset for the embedded server): every process saves through TensorFlow's gs:// "
            "writer"
        )
    return destination
