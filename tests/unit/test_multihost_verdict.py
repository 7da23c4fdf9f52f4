"""Process 0's verdict from the results in the bucket (multihost.run.conclude): pure."""

from __future__ import annotations

from dlckpt.multihost.run import Job, Outcome, conclude


def _passed(index: int) -> dict[str, object]:
    return {"index": index, "host": index, "passed": True, "exit_code": 0,
            "checkpoint": {"bytes": 1000, "uri": f"gs://b/run/process_{index}-of-2"},
            "verification": {"batches_compared": 5}}  # fmt: skip


def test_every_result_passing_is_not_a_pass_when_a_process_stopped_the_run():
    """A twin started with an index already taken is refused and writes ABORT after the
    barrier: every result in the bucket passed, yet the job ran with a process too many."""
    lines: list[str] = []
    job = Job("c", None, [], hosts=2, per_host=1, restore_processes=None, keep=False,
              timeout_seconds=1, say=lines.append)  # fmt: skip
    why = "process 1 failed (--run-id: … holds ready-1-of-2 of process 1: another process …)"
    report: dict[str, object] = {}
    outcome = Outcome(results={0: _passed(0), 1: _passed(1)}, stopped_by=why)
    assert conclude(job, outcome, report, None) == 1
    assert lines[-1] == f"✗ THE RUN WAS STOPPED: {why}"
    assert report["passed"] is False and report["exit_code"] == 1
    # Without the ABORT, the same results are a pass.
    lines.clear()
    outcome = Outcome(results={0: _passed(0), 1: _passed(1)})
    assert conclude(job, outcome, {}, None) == 0
    assert lines[-1] == "✓ ALL TESTS PASSED (2 processes on 2 hosts)"
