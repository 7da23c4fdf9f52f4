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


@dataclass
class Stage:
    """What the watchdog sees of the worker: the last sign of progress and a folder to watch."""

    name: str = "starting"
    last_progress: float = field(default_factory=time.monotonic)
    watched: Path | None = None
    watched_bytes: int = -1

    def beat(self, name: str | None = None) -> None:
        self.last_progress = time.monotonic()
        if name is not None:
            self.name = name


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

    def target() -> None:
        try:
            outcome["value"] = work(stage)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="dlckpt-calibration", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll_seconds)
        if stage.watched is not None:
            size = _folder_bytes(stage.watched)
            if size != stage.watched_bytes:
                stage.watched_bytes = size
                stage.beat()
        if thread.is_alive() and time.monotonic() - stage.last_progress > limit_seconds:
            raise UsageError(
                f"estimate: the pipeline made no progress for {limit_seconds:g} s while "
                f"{stage.name} (estimate.calibration_timeout_seconds={limit_seconds:g}); "
                "check that it yields elements (a filter that drops everything never does), "
                "or raise the limit"
            )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]
