"""Children forked from a warm process (runtime.warm): each is a new process in what a
restore reads, ends as asked, and goes with the process that asked for it. Real processes
and signals; the functions below run in the children."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from dlckpt.runtime import warm

# The server imports this module (the calls' module) before it forks: numpy's global
# generator then exists there, and children would all inherit its state unless reseeded.
np.random.get_state()

HERE = str(Path(__file__).parent)


def describe(argv: list[str]) -> int:
    """Run in a child: write what the child sees to argv[0]."""
    print("a line on stdout")
    print("a line on stderr", file=sys.stderr)
    Path(argv[0]).write_text(
        json.dumps(
            {
                "tmpdir": os.environ.get("TMPDIR"),
                "tempfile": __import__("tempfile").gettempdir(),
                "cwd": os.getcwd(),
                "numpy": int(np.random.randint(2**31)),
                "python": random.random(),
                "sigint_ignored": signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
                "pid": os.getpid(),
            }
        )
    )
    return 3


def sleep_long(argv: list[str]) -> int:
    """Run in a child: say where it is, then sleep."""
    Path(argv[0]).write_text(json.dumps({"pid": os.getpid(), "server": os.getppid()}))
    time.sleep(120)
    return 0


def end_by_signal(argv: list[str]) -> int:
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(30)
    return 0


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": HERE, "TMPDIR": os.environ.get("TMPDIR", "/tmp"), **extra}


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    # A zombie is gone for this purpose: it runs nothing.
    status = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    return status == "Z"


def test_each_child_is_new_in_what_it_reads(tmp_path: Path) -> None:
    """Environment, folder and output as the request gives them; numpy's and
    Python's generators seeded anew, as in a new process (two restores drawing the same
    numbers would hide an unseeded draw at build time from the comparison)."""
    import numpy as np

    seen = []
    for index in range(2):
        output, result = tmp_path / f"out{index}.txt", tmp_path / f"seen{index}.json"
        (tmp_path / f"t{index}").mkdir()
        code = warm.run(
            "test_warm:describe", [str(result)], env=_env(TMPDIR=str(tmp_path / f"t{index}")),
            cwd=str(tmp_path), output=str(output), timeout=60,
        )  # fmt: skip
        assert code == 3
        assert output.read_text().splitlines() == ["a line on stdout", "a line on stderr"]
        seen.append(json.loads(result.read_text()))
    # One server for both (the temp folder is the child's own), each child its own folder.
    assert [s["tmpdir"] for s in seen] == [str(tmp_path / "t0"), str(tmp_path / "t1")]
    assert [s["tempfile"] for s in seen] == [s["tmpdir"] for s in seen]
    assert all(s["cwd"] == str(tmp_path) for s in seen)  # PYTHONPATH: it imported this file
    assert seen[0]["pid"] != seen[1]["pid"] != os.getpid()
    assert seen[0]["numpy"] != seen[1]["numpy"] and seen[0]["python"] != seen[1]["python"]
    assert np.random.randint(2**31) not in {s["numpy"] for s in seen}
    assert not any(s["sigint_ignored"] for s in seen)  # the server's own ignore is not theirs


def test_a_child_past_its_timeout_is_killed_and_one_ended_by_a_signal_says_which(tmp_path):
    where = tmp_path / "where.json"
    started = time.monotonic()
    code = warm.run(
        "test_warm:sleep_long", [str(where)], env=_env(), cwd=str(tmp_path),
        output=str(tmp_path / "out.txt"), timeout=2,
    )  # fmt: skip
    assert code is None and time.monotonic() - started < 60
    assert _gone(json.loads(where.read_text())["pid"])
    code = warm.run(
        "test_warm:end_by_signal", [], env=_env(), cwd=str(tmp_path),
        output=str(tmp_path / "out.txt"), timeout=60,
    )  # fmt: skip
    assert code == -signal.SIGTERM


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_the_server_and_its_child_go_with_the_process_that_asked(tmp_path: Path, sig) -> None:
    """A run killed while its restore runs takes the restore with it, as a plain child
    does (the parent-death signal, twice: the server's, then the child's)."""
    where = tmp_path / "where.json"
    requester = textwrap.dedent(f"""
        from dlckpt.runtime import warm
        warm.enable()
        warm.run("test_warm:sleep_long", [{str(where)!r}], env=dict(__import__("os").environ),
                 cwd={str(tmp_path)!r}, output={str(tmp_path / "out.txt")!r}, timeout=300)
    """)
    process = subprocess.Popen([sys.executable, "-c", requester], env=_env())
    deadline = time.monotonic() + 120
    while not where.exists() or not where.read_text():
        assert process.poll() is None and time.monotonic() < deadline
        time.sleep(0.1)
    pids = json.loads(where.read_text())
    process.send_signal(sig)
    process.wait(timeout=30)
    while not (_gone(pids["pid"]) and _gone(pids["server"])):
        assert time.monotonic() < deadline, pids
        time.sleep(0.1)


def test_a_server_started_from_a_thread_that_ended_is_started_again(tmp_path: Path) -> None:
    """The parent-death signal follows the thread that started the server: once that
    thread ends, the server is gone, and the next restore must not fail on it."""
    import threading

    codes: list[int | None] = []

    def restore_once(name: str) -> None:
        # A variable read at start (TF_*): a server of its own, started from this thread.
        environment = _env(TF_WARM_THREAD="1")
        output, seen = tmp_path / f"{name}.txt", str(tmp_path / f"{name}.json")
        code = warm.run(
            "test_warm:describe", [seen], env=environment, cwd=str(tmp_path),
            output=str(output), timeout=60,
        )  # fmt: skip
        codes.append(code)

    thread = threading.Thread(target=restore_once, args=("in-thread",))
    thread.start()
    thread.join()
    time.sleep(1)  # the signal reaches the server once the thread has exited
    restore_once("after")
    assert codes == [3, 3]
