"""A signal the run's parent ignores stays ignored (nohup's SIGHUP, a background job's SIGINT).

Real signals sent to this process; no TensorFlow.
"""

from __future__ import annotations

import os
import signal
import time

import pytest

from dlckpt.runtime.signals import Interrupted, interrupts_raise


def test_a_signal_the_parent_ignores_stays_ignored_and_the_others_still_raise():
    previous = signal.signal(signal.SIGHUP, signal.SIG_IGN)  # as `nohup` starts a run
    try:
        with interrupts_raise():
            assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGHUP)  # the terminal closes: the run goes on
            time.sleep(0.05)
            with pytest.raises(Interrupted) as raised:
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(5)  # the handler raises at the next bytecode, long before
        assert raised.value.exit_code == 130
        assert signal.getsignal(signal.SIGHUP) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGHUP, previous)
