"""New processes forked from a warm one: TensorFlow imported once, each child a fork of it.

A restore runs in a new process so that nothing of the saving process's state reaches it
(roundtrip.child). A new Python process spends ~2 s of CPU importing TensorFlow before it
does anything (`/usr/bin/time python -c "import tensorflow"`: 3.3 s user+sys on this
2-core VM; a restore child took 2.2-3.1 s in all, measured per process with getrusage).
A process that runs many restores (the catch-rate bench, the test suite's in-process round
trips) can fork each child from a warm process instead: a server that has imported
TensorFlow and this package, nothing of the user's, and forks on request. Off unless a
caller turns it on (enable()): a script's one restore starts a plain new process.

What a forked child shares with the server, and so with its siblings (never with the
process that saved, which the restore is compared to): the hash seed and the address
layout. What it gets anew: the environment, working folder and output of the request, the
signal dispositions the server started with; numpy's and Python's global generators
reseeded from the OS, as a new process seeds them; TensorFlow's runtime, which importing
does not start (one native thread after the import, no eager context). What is read
when a process starts or TensorFlow is imported is the server's: the working folder and
PYTHONPATH (sys.path), and the variables TensorFlow, its gs:// filesystem and the
interpreter read then (_READ_AT_START). A request that differs in those gets a server of
its own, started with them.

Protocol (one JSON line each way, one child at a time): the requester writes
{"call": "module:function", "argv": [...], "env": {...}, "cwd": ..., "output": path};
the server forks, answers {"pid": N}, then {"status": code} when the child ends (code as
subprocess gives it: negative for a signal). The server dies with its requester (the
parent-death signal) and on EOF; a child dies with the server.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import subprocess
import sys
import threading
from typing import Any

from dlckpt.runtime.signals import die_with_parent, set_parent_death_signal

# Variables read when the interpreter starts or TensorFlow is imported (its C++ runtime,
# its gs:// filesystem's settings and credentials, proxies, thread libraries): a server
# per set of their values. Every other variable is set in the child before it runs.
_READ_AT_START = (
    "PYTHON", "TF_", "GCS_", "GOOGLE_", "CLOUDSDK_", "STORAGE_", "NO_GCE", "CUDA", "XLA_",
    "LD_", "OMP_", "KMP_", "MKL", "GRPC_", "HTTP", "NO_PROXY", "CURL_", "SSL_", "http", "no_",
)  # fmt: skip
# This package's own, read when a run asks for it (the bucket a test run saves to).
_READ_LATER = frozenset({"GCS_TEST_BUCKET"})
_HANDLED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_MAX_SERVERS = 3  # a test worker meets a few (PYTHONPATH with the test pipelines, the cases)

_enabled = False
_servers: dict[str, _Server] = {}
_lock = threading.Lock()


def enable(on: bool = True) -> None:
    """Fork this process's restore children from a warm process from now on (see module
    doc); `on=False` goes back to plain new processes and stops the servers."""
    global _enabled
    _enabled = on
    if not on:
        close_all()


def enabled() -> bool:
    return _enabled


def run(
    call: str,
    argv: list[str],
    *,
    env: dict[str, str],
    cwd: str,
    output: str,
    timeout: float | None,
) -> int | None:
    """Run `call` ("module:function", returning an exit code) with `argv` in a child forked
    from the warm server for `env`; its stdout and stderr go to the file `output`.

    Returns the child's exit code (negative: the signal that ended it; -SIGKILL when the
    server died under it, taking it along), or None when it was still running after
    `timeout` seconds (it is then killed). A server found dead before it forked is
    started again, once; raises OSError when that one fails too.
    """
    request = {"call": call, "argv": argv, "env": env, "cwd": cwd, "output": output}
    with _lock:
        for attempt in range(2):
            server = _server_for(env, cwd, call.partition(":")[0])
            try:
                return server.run(request, timeout)
            except _ServerGone:
                # Its parent-death signal follows the thread that started it: a server
                # started from a thread that has ended is gone.
                _servers.pop(server.key, None)
                server.close()
                if attempt:
                    raise
        raise AssertionError  # not reached


class _ServerGone(OSError):
    """The warm server ended before it forked the child."""


def close_all() -> None:
    """Stop every warm server this process started."""
    with _lock:
        for server in list(_servers.values()):
            server.close()
        _servers.clear()


def _server_for(env: dict[str, str], cwd: str, preload: str) -> _Server:
    # The temp folder (TMPDIR, TEST_TMPDIR, TMP) is not among them: TensorFlow reads it
    # each time it makes a temp file, so each child's own is its request's.
    read_at_start = {
        k: v for k, v in sorted(env.items())
        if k.startswith(_READ_AT_START) and k not in _READ_LATER
    }  # fmt: skip
    key = json.dumps([read_at_start, cwd, preload])
    server = _servers.get(key)
    if server is not None and server.alive():
        return server
    if server is not None:
        _servers.pop(key).close()
    while len(_servers) >= _MAX_SERVERS:
        _servers.pop(next(iter(_servers))).close()
    _servers[key] = server = _Server(key, env, cwd, preload)
    return server


class _Server:
    """The requester's handle on one warm server process."""

    def __init__(self, key: str, env: dict[str, str], cwd: str, preload: str) -> None:
        self.key = key
        self.process = subprocess.Popen(
            die_with_parent([sys.executable, "-m", "dlckpt.runtime.warm", preload]),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            env=env,
            cwd=cwd,
            text=True,
        )

    def alive(self) -> bool:
        return self.process.poll() is None

    def run(self, request: dict[str, Any], timeout: float | None) -> int | None:
        """Send `request` (see the module doc); the child's code, None at the timeout."""
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(json.dumps(request) + "\n")
            self.process.stdin.flush()
            pid = self._answer(None)["pid"]
        except OSError as error:  # a broken pipe, or no answer
            raise _ServerGone(f"the warm process has ended ({error})") from error
        try:
            return int(self._answer(timeout)["status"])
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            with contextlib.suppress(OSError):
                self._answer(None)  # the server reaps it and says so
            return None
        except OSError:  # the server died, and the child with it (its parent-death signal)
            self.close()
            return -signal.SIGKILL
        except BaseException:  # an interrupt: the child goes with the run
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self.close()
            raise

    def _answer(self, timeout: float | None) -> dict[str, Any]:
        assert self.process.stdout is not None
        if timeout is not None:
            ready, _, _ = select.select([self.process.stdout], [], [], timeout)
            if not ready:
                raise TimeoutError
        line = self.process.stdout.readline()
        if not line:
            raise OSError("the warm process ended without an answer")
        answer: dict[str, Any] = json.loads(line)
        return answer

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.process.stdin is not None:
                self.process.stdin.close()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


# --- the server ------------------------------------------------------------------------


def _serve(preload: list[str]) -> int:
    """The warm process: import TensorFlow and the modules the children call (`preload`),
    then fork a child per request until stdin closes."""
    import importlib

    from dlckpt.runtime.tf_import import import_tensorflow

    dispositions = {sig: signal.getsignal(sig) for sig in _HANDLED}
    for sig in _HANDLED:  # the requester answers interrupts; this server dies with it
        signal.signal(sig, signal.SIG_IGN)
    import_tensorflow()
    for name in preload:
        importlib.import_module(name)

    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            _child(request, dispositions)  # never returns
        _say({"pid": pid})
        _, status = os.waitpid(pid, 0)
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _say({"status": code})
    return 0


def _say(answer: dict[str, Any]) -> None:
    sys.stdout.write(json.dumps(answer) + "\n")
    sys.stdout.flush()


def _child(request: dict[str, Any], dispositions: dict[Any, Any]) -> None:
    """In the forked child: become the process the request describes, run, exit."""
    code = 1
    try:
        set_parent_death_signal(signal.SIGKILL)
        for sig, disposition in dispositions.items():
            signal.signal(sig, disposition if disposition is not None else signal.SIG_DFL)
        _become(request)
        module_name, _, function = request["call"].partition(":")
        module = __import__(module_name, fromlist=[function])
        code = int(getattr(module, function)(list(request["argv"])))
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else 1
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        from dlckpt.runtime.signals import exit_process

        exit_process(code)


def _become(request: dict[str, Any]) -> None:
    """The request's environment, folder and output; fresh global generators."""
    import random
    import tempfile

    os.environ.clear()
    os.environ.update(request["env"])
    os.chdir(request["cwd"])
    tempfile.tempdir = None  # found again from this environment's TMPDIR
    output = os.open(request["output"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    nothing = os.open(os.devnull, os.O_RDONLY)  # not the server's request pipe
    for source, target in ((nothing, 0), (output, 1), (output, 2)):
        os.dup2(source, target)
    os.close(output)
    os.close(nothing)
    random.seed()  # as a new process seeds them (Python reseeds its own at fork too)
    if "numpy" in sys.modules:
        sys.modules["numpy"].random.seed()


if __name__ == "__main__":
    sys.exit(_serve(sys.argv[1:]))
