"""Termination signals as interrupts, and child processes that die with their parent.

`interrupts_raise()` makes SIGINT, SIGTERM and SIGHUP raise `Interrupted` (a KeyboardInterrupt,
so every existing `except KeyboardInterrupt` / `finally` cleanup runs) carrying the
shell's exit code for that signal: 130, 143, 129. `timeout`, CI cancellation and batch
schedulers send SIGTERM; a closed terminal sends SIGHUP.

A signal that arrives while the main thread runs TensorFlow's code is held until that
call returns, then raised: raising inside TensorFlow can crash the process. Only the first
signal raises: later ones arrive while that cleanup runs and are ignored, so a terminal's
Ctrl-C to the whole process group cannot cut a cleanup short.
The cleanup is bounded (every storage call on the failure path has a deadline, see
storage); as a last guard a watchdog ends the process CLEANUP_LIMIT_SECONDS after the
first signal, with the signal's exit code and a line saying so.

`die_with_parent(command)` wraps a child's command line so that Linux kills the child
(SIGKILL) when the process that started it ends, even by SIGKILL, which no handler sees.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from types import FrameType
from typing import Any, NoReturn

# Exit code 128 + N, as a shell reports a process ended by signal N.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
CLEANUP_LIMIT_SECONDS = 90.0
_PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


class Interrupted(KeyboardInterrupt):
    """A termination signal arrived: `exit_code` is 128 + its number, `name` e.g. SIGTERM."""

    def __init__(self, signum: int) -> None:
        self.signum = signum
        self.name = signal.Signals(signum).name
        self.exit_code = EXIT_CODES.get(signal.Signals(signum), 128 + signum)
        super().__init__(self.name)


# Packages inside whose code a signal is held rather than raised. An exception raised in
# TensorFlow's own Python code, between two of its native calls or from a signal check
# inside one, can leave its C++ state half-built: CI saw the saving process segfault in
# SaveV2's argument conversion after a SIGTERM mid-save, and abort with "corrupted size vs.
# prev_size" after a SIGINT.
HOLD_INSIDE_PACKAGES = ("tensorflow", "keras", "tf_keras")
REDELIVERY_POLL_SECONDS = 0.05


@functools.cache
def _held_package_dirs() -> tuple[str, ...]:
    """The folders of HOLD_INSIDE_PACKAGES that are installed (found without importing)."""
    folders = []
    for name in HOLD_INSIDE_PACKAGES:
        with contextlib.suppress(ImportError, ValueError):
            spec = importlib.util.find_spec(name)
            # TensorFlow's __init__ adds Keras's folders (or None) to its own search path.
            for folder in (spec.submodule_search_locations or []) if spec else []:
                if isinstance(folder, str):
                    folders.append(os.path.join(os.path.realpath(folder), ""))
    return tuple(folders)


def inside_held_package(frame: FrameType | None) -> bool:
    """True when any frame of this stack runs code of a HOLD_INSIDE_PACKAGES package."""
    folders = _held_package_dirs()
    while frame is not None:
        if os.path.realpath(frame.f_code.co_filename).startswith(folders):
            return True
        frame = frame.f_back
    return False


class _Block:
    """The state of one interrupts_raise block: the first signal, and whether it was raised.

    A signal that lands while the main thread is inside a HOLD_INSIDE_PACKAGES package is
    held; a daemon thread sends it again to the main thread once that thread is back in
    other code, where the handler raises it. The watchdog starts at the first signal, held
    or not, so a TensorFlow call that never returns still ends the process in time.
    """

    def __init__(self, limit_seconds: float) -> None:
        self.limit_seconds = limit_seconds
        self.first: int | None = None
        self.raised = False
        self.closing = False
        self.watchdog: threading.Timer | None = None
        self.redelivery: threading.Thread | None = None
        self.lock = threading.Lock()

    def handler(self, signum: int, frame: FrameType | None) -> None:
        # After the first signal a cleanup runs: let it finish. Once the block is closing,
        # raising would cut the closing short and leave an armed watchdog behind, which
        # would end the process later, wherever it then is.
        if self.raised or self.closing:
            return
        if self.first is None:
            self.first = signum
            # Kept before it starts: a nested handler run that raises during start() must
            # not leave a running timer that close() cannot cancel.
            self.watchdog = _watchdog(Interrupted(signum), self.limit_seconds, frame)
            self.watchdog.start()
        if inside_held_package(frame):
            if self.redelivery is None:
                self.redelivery = threading.Thread(target=self._redeliver, daemon=True)
                self.redelivery.start()
            return
        self.raised = True
        interrupt = Interrupted(self.first)
        _received[:] = [interrupt]
        raise interrupt

    def _redeliver(self) -> None:
        main = threading.main_thread().ident
        assert main is not None and self.first is not None
        while True:
            with self.lock:  # close() takes it: no signal is sent once the block is closing
                if self.raised or self.closing:
                    return
                if not inside_held_package(sys._current_frames().get(main)):
                    signal.pthread_kill(main, self.first)
            time.sleep(REDELIVERY_POLL_SECONDS)

    def close(self) -> None:
        with self.lock:
            self.closing = True
        if self.redelivery is not None:
            self.redelivery.join()
        # A system call: a signal the redelivery sent is taken now, by this block's handler
        # (which ignores it), not after the old handlers are back.
        signal.sigpending()

    def cancel_watchdog(self) -> None:
        if self.watchdog is not None:
            self.watchdog.cancel()


@contextlib.contextmanager
def interrupts_raise(limit_seconds: float = CLEANUP_LIMIT_SECONDS) -> Iterator[None]:
    """Inside the block SIGINT, SIGTERM and SIGHUP raise `Interrupted`; the old handlers after.

    A signal ignored when the block starts (SIG_IGN: `nohup`, a background job's SIGINT)
    stays ignored.

    A signal that arrives while TensorFlow's code runs in the main thread is raised when
    that call returns (see _Block). Outside the main thread (where Python cannot set
    handlers) the block runs unchanged.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    block = _Block(limit_seconds)
    _received.clear()
    previous: dict[signal.Signals, Any] = {}
    try:  # installed inside the try: a signal in between still reaches the finally
        for signum in EXIT_CODES:
            # A signal the parent ignores stays ignored: `nohup` ignores SIGHUP so that a
            # long run outlives its terminal, and a shell's background job (`cmd &`)
            # ignores SIGINT so that Ctrl-C at the prompt does not reach it.
            if signal.getsignal(signum) is not signal.SIG_IGN:
                previous[signum] = signal.signal(signum, block.handler)
        yield
    finally:
        # The handler runs wherever the main thread is, inside close() too: had it raised
        # there, the rest would be skipped and the watchdog left armed, to end the process
        # 90 s later wherever it then is. It raises once per block at most, so a second
        # close() cannot be cut short.
        try:
            block.close()
        except KeyboardInterrupt:  # the first signal, landing just as the block ends
            block.close()
        for signum, old in previous.items():
            signal.signal(signum, old)
        block.cancel_watchdog()


# The interrupt the innermost block raised, if any: a library may catch it mid-operation and
# raise an error of its own instead (OmegaConf did), and the run must still end as interrupted.
_received: list[Interrupted] = []


def received_interrupt() -> Interrupted | None:
    """The signal that arrived in the current `interrupts_raise` block, if one did."""
    return _received[0] if _received else None


def exit_code(interrupt: KeyboardInterrupt) -> int:
    """130 for a plain Ctrl-C, else the code `Interrupted` carries."""
    return getattr(interrupt, "exit_code", EXIT_CODES[signal.SIGINT])


def signal_name(interrupt: KeyboardInterrupt) -> str:
    return getattr(interrupt, "name", "SIGINT")


WATCHDOG_THREAD = "dlckpt-cleanup-watchdog"


def _watchdog(
    interrupt: Interrupted, limit_seconds: float, frame: FrameType | None = None
) -> threading.Timer:
    """A daemon timer (not started) that ends the process `limit_seconds` after it starts
    unless cancelled. Its thread's name says which signal armed it and where the main
    thread then was."""

    def expire() -> None:
        sys.stderr.write(
            f"✗ interrupted by {interrupt.name}; cleanup did not finish within "
            f"{limit_seconds:.0f} s, so some of the run's own files may be left\n"
        )
        sys.stderr.flush()
        os._exit(interrupt.exit_code)

    timer = threading.Timer(limit_seconds, expire)
    where = f"{frame.f_code.co_filename}:{frame.f_lineno}" if frame is not None else "?"
    timer.name = f"{WATCHDOG_THREAD} ({interrupt.name} at {where})"
    timer.daemon = True
    return timer


def exit_process(code: int) -> NoReturn:
    """End this script's process with `code` now, skipping the interpreter's finalization.

    Call it only once main() has returned: its cleanup has run, its last line is printed and
    its report written. Finalization would then stop TensorFlow's threads, and one of them
    that calls back into Python at that moment (a tf.data thread running a Python function)
    is ended by a forced unwind that TensorFlow's C++ catches: the process aborts
    ("FATAL: exception not rethrown", SIGABRT) instead of exiting with `code`. CI saw
    exactly that after a SIGTERM during the estimate.
    """
    import atexit

    # atexit functions still run: TensorFlow's autograph removes its generated files there.
    with contextlib.suppress(Exception):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


# --- children that die with their parent ----------------------------------------------


def die_with_parent(command: Sequence[str]) -> list[str]:
    """`command` prefixed so that the child is killed (SIGKILL) when this process ends.

    The prefix is this file run as a launcher: it asks Linux for a parent-death signal
    (prctl PR_SET_PDEATHSIG, kept across exec), checks the parent is still there, then
    execs `command` in its place (same PID). Popen's preexec_fn could do the same, but it
    is unsafe in a process with threads (TensorFlow starts many). The signal follows the
    *thread* that started the child: start children from the main thread. Elsewhere than
    Linux the command is returned unchanged. No maintained PyPI package wraps this one
    call (python-prctl and pyprctl are unmaintained), hence ctypes.
    """
    if not sys.platform.startswith("linux"):
        return list(command)
    return [sys.executable, "-m", "dlckpt.runtime.signals", str(os.getpid()), "--", *command]


def set_parent_death_signal(sig: int = signal.SIGKILL) -> bool:
    """Ask Linux to send `sig` to this process when its parent ends (prctl PR_SET_PDEATHSIG);
    False where that is not available (elsewhere than Linux)."""
    if not sys.platform.startswith("linux"):
        return False
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
    except OSError:
        return False
    if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    return True


def _launch(argv: list[str]) -> int:
    """Launcher entry: `runtime.signals.py PARENT_PID -- command...`."""
    parent, separator, *command = argv
    if separator != "--" or not command:
        sys.stderr.write("usage: runtime.signals.py PARENT_PID -- command ...\n")
        return 2
    set_parent_death_signal(signal.SIGKILL)
    if os.getppid() != int(parent):  # the parent ended before the signal was armed
        return 129
    os.execvp(command[0], command)
    return 127  # not reached: execvp replaces this process or raises


if __name__ == "__main__":
    sys.exit(_launch(sys.argv[1:]))
