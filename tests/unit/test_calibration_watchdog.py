"""The calibration worker stops once its caller has left (a signal), before cleanup runs.

Until it stops it may trace more functions, and TensorFlow's autograph writes a file for
each into the temp folder: one written after the exit functions ran is left behind (CI
saw `__autograph_generated_file*.py` left after a SIGTERM during the estimate).
"""

from __future__ import annotations

import _thread
import signal
import threading
import time

import pytest

from dlckpt.errors import UsageError
from dlckpt.estimate.watchdog import Stage, StageCancelled, run_with_stall_limit


def _busy_worker(beats: list[float], ended: list[BaseException]):
    def work(stage: Stage) -> None:
        try:
            while True:
                stage.beat("working")
                beats.append(time.monotonic())
                time.sleep(0.01)
        except BaseException as error:
            ended.append(error)
            raise

    return work


def test_an_interrupt_stops_the_worker_before_the_caller_goes_on():
    beats: list[float] = []
    ended: list[BaseException] = []
    timer = threading.Timer(0.3, _thread.interrupt_main)  # a Ctrl-C in the main thread
    # interrupt_main does nothing while SIGINT is ignored (a suite started in the
    # background), and the busy worker never stalls: the test would wait forever.
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            run_with_stall_limit(_busy_worker(beats, ended), limit_seconds=60, poll_seconds=0.02)
        left = time.monotonic()
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, previous)
    assert [type(error) for error in ended] == [StageCancelled]
    assert beats and beats[-1] <= left  # nothing ran after the caller went on


def test_a_stall_is_one_usage_error_and_the_worker_is_told_to_stop():
    release = threading.Event()
    ended: list[BaseException] = []

    def work(stage: Stage) -> None:
        stage.beat("waiting for an element")
        release.wait(10)  # stuck, as inside a TensorFlow call that never yields
        try:
            stage.beat()
        except BaseException as error:
            ended.append(error)
            raise

    with pytest.raises(UsageError, match=r"made no progress for 0\.2 s while waiting for"):
        run_with_stall_limit(work, limit_seconds=0.2, poll_seconds=0.02)
    release.set()
    for thread in threading.enumerate():
        if thread.name == "dlckpt-calibration":
            thread.join(5)
    assert [type(error) for error in ended] == [StageCancelled]
