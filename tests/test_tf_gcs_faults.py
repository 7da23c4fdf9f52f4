"""Faults on TensorFlow's gs:// path in a small-buffer run against its own embedded server.

Real faults, no mocks: the server's HTTPS front, a process the script started, is sent a
real SIGKILL or SIGSTOP once the preflight is printed (the fill and the save follow); its
storage sits on a real 20 MB tmpfs that the checkpoint does not fit. Each run must end in
one `✗ TRANSFER FAILED` line naming the cause, exit 1, with its report written and
nothing left in its temp folder (the run's scratch, the server's storage, TensorFlow's
staging and autograph files). Without the tool's GCS_* bounds TensorFlow waited 785 s on
the killed front (storage.tf_gcs.EMBEDDED_BOUNDS); the subprocess timeout here is a guard
against hanging the suite, not a timing claim.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import SCRIPTS_DIR, script_env
from test_tf_gcs import SMALL_BUFFER_SCRIPT, SMALL_CONFIG, TOO_BIG

GUARD_SECONDS = 600
# The preflight table's last row: printed after the estimate, before the fill and the save.
AFTER_PREFLIGHT = "embedded GCS server RAM"
FRONT_MODULE = "dlckpt.storage.embedded.front"


def _child_running(parent: int, module: str) -> int:
    """The PID of `parent`'s child whose command line runs `module`."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and module.encode() in command:
            return int(entry.name)
    raise AssertionError(f"no child of {parent} runs {module}")


def _run(
    env: dict[str, str],
    report: Path,
    *extra: str,
    fault: int | None = None,
    after: str = AFTER_PREFLIGHT,
):
    """Run the script; send `fault` to its embedded server's front once a line starts with
    `after`. Returns (exit code, output, report, front PID or None)."""
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS_DIR / SMALL_BUFFER_SCRIPT), *SMALL_CONFIG, "--report",
         str(report), *extra],
        env={**env, "PYTHONUNBUFFERED": "1"}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    guard = threading.Timer(GUARD_SECONDS, process.kill)
    guard.start()
    lines, front = [], None
    try:
        assert process.stdout is not None
        for line in process.stdout:
            lines.append(line)
            if fault is not None and front is None and line.startswith(after):
                front = _child_running(process.pid, FRONT_MODULE)
                os.kill(front, fault)
        code = process.wait()
    finally:
        guard.cancel()
    assert code != -signal.SIGKILL, "the run was still going after the guard: " + "".join(lines)
    return code, "".join(lines), json.loads(report.read_text()), front


def _failure_line(output: str) -> str:
    assert "Traceback" not in output, output
    [line] = [line for line in output.splitlines() if line.startswith("✗")]
    return line


@pytest.fixture
def fault_env(tmp_path: Path, script_estimate_cache: str) -> dict[str, str]:
    temp = tmp_path / "tmp"
    temp.mkdir()
    env = script_env(TMPDIR=str(temp), XDG_CACHE_HOME=script_estimate_cache)
    env.pop("TEST_TMPDIR", None)
    return env


@pytest.mark.slow
@pytest.mark.parametrize(
    ("fault", "cause"),
    [(signal.SIGKILL, "is gone"), (signal.SIGSTOP, "is stopped (SIGSTOP) and answers nothing")],
    ids=["killed", "frozen"],
)
def test_a_dead_or_frozen_embedded_server_ends_the_gs_save_as_a_transfer_failure(
    fault, cause, fault_env, tmp_path
):
    code, output, report, front = _run(fault_env, tmp_path / "report.json", fault=fault)
    assert front is not None, output
    line = _failure_line(output)
    assert code == 1, output
    assert line.startswith("✗ TRANSFER FAILED: saving to gs://dlckpt-test/dlckpt-small-buffer-")
    assert f"the embedded GCS server's HTTPS front (pid {front}) {cause}" in line
    assert "TensorFlow: " in line and "its wait is set by GCS_REQUEST_IDLE_TIMEOUT_SECS=15" in line
    # The watch said why the save was waiting before TensorFlow gave up.
    assert f"⚠ the embedded GCS server's HTTPS front (pid {front}) {cause}" in output
    assert report["exit_code"] == 1
    assert report["verification"]["failure"] == line.removeprefix("✗ ")
    assert report["checkpoint"]["tf_gcs_bounds"]["GCS_REQUEST_IDLE_TIMEOUT_SECS"] == "15"
    assert report["checkpoint"]["tf_gcs_settings"] == {}  # the user set none
    assert os.listdir(fault_env["TMPDIR"]) == []


@pytest.mark.slow
def test_the_embedded_servers_full_storage_is_a_transfer_failure_naming_the_folder(
    small_disk, tmp_path, script_estimate_cache
):
    """TensorFlow stages in a roomy TEST_TMPDIR; the server keeps its objects in TMPDIR, a
    20 MB tmpfs that ~26 MB does not fit. The preflight refuses; past --force the save fails."""
    staging = tmp_path / "staging"
    staging.mkdir()
    env = script_env(
        TMPDIR=str(small_disk), TEST_TMPDIR=str(staging), XDG_CACHE_HOME=script_estimate_cache
    )
    code, output, report, _ = _run(
        env, tmp_path / "report.json", "--buffer-size", TOO_BIG, "--force"
    )
    line = _failure_line(output)
    assert code == 1, output
    assert "⚠ PREFLIGHT WOULD REFUSE (--force): embedded GCS server storage" in output
    assert line.startswith("✗ TRANSFER FAILED: saving to gs://dlckpt-test/"), line
    assert f"the embedded GCS server's storage {small_disk} is full: " in line
    assert "Fixes: export TMPDIR=" in line and "GCS_TEST_BUCKET=gs://" in line
    assert report["exit_code"] == 1
    assert report["verification"]["failure"] == line.removeprefix("✗ ")
    assert os.listdir(small_disk) == [] and os.listdir(staging) == []


@pytest.mark.slow
def test_a_server_killed_between_the_save_and_the_restore_is_a_transfer_failure(
    fault_env, tmp_path
):
    """The checkpoint is in the bucket; the new process cannot read it back. That is not a
    checkpoint that does not restore: the line says the server is gone."""
    code, output, report, front = _run(
        fault_env, tmp_path / "report.json", fault=signal.SIGKILL, after="✓ Saved the iterator"
    )
    line = _failure_line(output)
    assert code == 1, output
    assert line.startswith("✗ TRANSFER FAILED: restoring from gs://dlckpt-test/"), line
    assert f"the embedded GCS server's HTTPS front (pid {front}) is gone" in line
    assert report["verification"]["failure"] == line.removeprefix("✗ ")
    assert os.listdir(fault_env["TMPDIR"]) == []
