"""What a failed or interrupted run could not remove, so its last line can say where it is.

Cleanup after a failure must never hide the failure: each cleanup step is bounded (see
FAILURE_PATH_* and storage), never raises, and notes here what it could not remove.
`cli.common.run_main` adds these notes to the run's last line.
"""

from __future__ import annotations

# One storage request on the failure path (list, delete) waits at most this long, and the
# whole removal of a run prefix at most FAILURE_PATH_BUDGET_SECONDS, without retries:
# after a transfer error or an interrupt the endpoint is often the thing that is broken.
FAILURE_PATH_TIMEOUT_SECONDS = 5.0
FAILURE_PATH_BUDGET_SECONDS = 15.0

_left_behind: list[str] = []


def note_left_behind(text: str) -> None:
    """Record one thing the run wrote and could not remove ("gs://b/p/run/: 2 objects ...")."""
    if text not in _left_behind:
        _left_behind.append(text)


def left_behind() -> list[str]:
    return list(_left_behind)


def reset() -> None:
    """Forget the notes (a new run in the same process, e.g. a test calling main())."""
    _left_behind.clear()


def summary() -> str:
    """'' when everything was removed, else '; may be left: A; B'."""
    return "; may be left: " + "; ".join(_left_behind) if _left_behind else ""
