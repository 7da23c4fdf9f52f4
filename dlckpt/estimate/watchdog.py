"""The calibration's stall watchdog: a stage that stops making progress ends the estimate.

A stage reports progress (elements read, bytes written); no progress for the configured
limit (estimate.calibration_timeout_seconds) raises a one-line error naming the stage.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlckpt.errors import UsageError

# How long the caller waits, once it leaves (a signal, a stall), for the worker to stop at
# its next sign of progress. Until it stops it may still trace functions, and TensorFlow's
# autograph writes a file for each into the temp folder, removed by an atexit function
# registered only then: one written after the process's exit functions ran is left behind.
# A worker stuck inside TensorFlow makes no progress and so writes nothing; it is abandoned.
CANCEL_WAIT_SECONDS = 10.0


class StageCancelled(BaseException):
    """Raised in the worker at its next sign of progress once the caller has left.

    A BaseException: a pipeline's or the estimator's `except Exception` must not keep the
    worker going.
    """


@dataclass
class Stage:
    """What the watchdog sees of the worker: the last sign of progress and a folder to watch."""

    name: str = "starting"
    last_progress: float = field(default_factory=time.monotonic)
    watched: Path | None = None
    watched_bytes: int = -1
    cancelled: threading.Event = field(default_factory=threading.Event)

    def beat(self, name: str | None = None) -> None:
        """Record progress; raises StageCancelled in the worker once the caller has left."""
        if self.cancelled.is_set():
            raise StageCancelled(self.name)
        self.last_progress = time.monotonic()
        if name is not None:
            self.name = name


def _watch(done: threading.Event, stage: Stage, limit_seconds: float, poll_seconds: float) -> None:
    """Wait for the worker; UsageError when it shows no progress for `limit_seconds`."""
    while not done.wait(poll_seconds):
        if stage.watched is not None:
            size = _folder_bytes(stage.watched)
            if size != stage.watched_bytes:
                stage.watched_bytes = size
                stage.beat()
        if time.monotonic() - stage.last_progress > limit_seconds:
            raise UsageError(
                f"estimate: the pipeline made no progress for {limit_seconds:g} s while "
                f"{stage.name} (estimate.calibration_timeout_seconds={limit_seconds:g}); "
                "check that it yields elements (a filter that drops everything never does), "
                "or raise the limit"
            )


def _folder_bytes(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except OSError:
        return -1


def run_with_stall_limit(
    work: Callable[[Stage], Any], limit_seconds: float, poll_seconds: float = 0.25
) -> Any:
    """Run `work(stage)` in a daemon thread; UsageError when it shows no progress for the limit.

    A pipeline that never yields (a filter that drops everything) blocks inside TensorFlow
    where nothing can interrupt it; the daemon thread is abandoned and the process can exit.
    """
    stage = Stage()
    outcome: dict[str, Any] = {}
    # An Event, not Thread.join: a join cut short by a signal can return at once ever after
    # (CPython 3.11 leaves the thread's lock in that state), which would skip the wait below.
    done = threading.Event()

    def target() -> None:
        try:
            outcome["value"] = work(stage)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error
        finally:
            done.set()

    thread = threading.Thread(target=target, name="dlckpt-calibration", daemon=True)
    thread.start()
    try:
        _watch(done, stage, limit_seconds, poll_seconds)
    except UsageError:  # a stall: the worker is stuck inside TensorFlow, not worth a wait
        stage.cancelled.set()
        raise
    except BaseException:  # a signal: stop the worker before the caller cleans up
        stage.cancelled.set()
        done.wait(CANCEL_WAIT_SECONDS)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
