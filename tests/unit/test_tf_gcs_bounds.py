"""The GCS_* bounds on TensorFlow's waits for the embedded server, and the transfer-failure line."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from dlckpt.storage.embedded.server import EmbeddedGcs
from dlckpt.storage.tf_gcs import (
    EMBEDDED_BOUNDS,
    is_transfer_error,
    tool_bounds,
    transfer_failure_line,
    wait_settings_text,
)

# TensorFlow 2.21's own texts, from saves to the embedded server with its front SIGKILLed,
# fake-gcs-server SIGKILLed, and the front SIGSTOPped.
KILLED = (
    "All 2 retry attempts failed. The last failure: Error executing an HTTP request: libcurl "
    "code 7 meaning 'Could not connect to server', error details: Failed to connect to "
    "127.0.0.1 port 39175 after 0 ms"
)
EMPTY_REPLY = (
    "All 2 retry attempts failed. The last failure: Error executing an HTTP request: libcurl "
    "code 52 meaning 'Server returned nothing (no headers, no data)'"
)
TIMED_OUT = "Error executing an HTTP request: libcurl code 28 meaning 'Timeout was reached'"
PIPELINE = "ValueError: Tensor's shape (3,) is not compatible with supplied shape (4,)"
URI = "gs://bucket/run/iterator"


def test_the_users_own_settings_win_over_the_tools_bounds():
    bounds = tool_bounds({"GCS_REQUEST_IDLE_TIMEOUT_SECS": "120"})
    assert "GCS_REQUEST_IDLE_TIMEOUT_SECS" not in bounds  # the user's 120 stays in force
    assert bounds["GCS_RETRY_CONFIG_MAX_RETRIES"] == EMBEDDED_BOUNDS["GCS_RETRY_CONFIG_MAX_RETRIES"]
    assert tool_bounds({}) == EMBEDDED_BOUNDS


@pytest.mark.parametrize("text", [KILLED, EMPTY_REPLY, TIMED_OUT])
def test_tensorflows_request_failures_are_transfer_failures(text):
    assert is_transfer_error(text)
    line = transfer_failure_line(text, URI, environ=EMBEDDED_BOUNDS)
    assert line is not None
    assert line.startswith(f"TensorFlow's gs:// filesystem could not complete a request to {URI}")
    assert "; TensorFlow: " + text[:40] in line
    assert line.endswith(
        "its wait is set by GCS_REQUEST_IDLE_TIMEOUT_SECS=15, "
        "GCS_REQUEST_CONNECTION_TIMEOUT_SECS=5, GCS_RETRY_CONFIG_MAX_RETRIES=1"
    )


def test_a_pipeline_error_is_not_a_transfer_failure():
    assert not is_transfer_error(PIPELINE)
    assert transfer_failure_line(PIPELINE, URI) is None


def test_a_users_bucket_without_settings_is_told_which_ones_set_the_wait():
    text = wait_settings_text({})
    assert "TensorFlow's defaults (10 retries)" in text
    assert "GCS_REQUEST_IDLE_TIMEOUT_SECS" in text and "GCS_RETRY_CONFIG_MAX_RETRIES" in text


def _server(tmp_path: Path, front: int, server: int) -> EmbeddedGcs:
    workdir = tmp_path / "dlckpt-gcs-x"
    workdir.mkdir(exist_ok=True)
    return EmbeddedGcs(
        endpoint="http://127.0.0.1:1", workdir=workdir, ca_file=workdir / "ca.pem",
        front_pid=front, server_pid=server, server_port=1,
    )  # fmt: skip


def test_a_real_process_gone_or_stopped_is_named_even_for_any_error_text(tmp_path):
    sleepers = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])]
    sleepers.append(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]))
    front, server = (process.pid for process in sleepers)
    try:
        embedded = _server(tmp_path, front, server)
        assert embedded.trouble() is None
        assert transfer_failure_line(PIPELINE, URI, embedded) is None
        sleepers[1].send_signal(signal.SIGSTOP)
        _wait_for_state(server, "T")
        stopped = f"the embedded GCS server's fake-gcs-server (pid {server}) is stopped (SIGSTOP)"
        assert embedded.trouble() == stopped + " and answers nothing"
        sleepers[0].kill()
        sleepers[0].wait()
        gone = f"the embedded GCS server's HTTPS front (pid {front}) is gone"
        assert embedded.trouble() == gone
        line = transfer_failure_line(PIPELINE, URI, embedded)
        assert line is not None and line.startswith(gone + "; TensorFlow: ValueError")
    finally:
        for process in sleepers:
            process.kill()
            process.wait()


def _wait_for_state(pid: int, state: str) -> None:
    import time

    from dlckpt.storage.embedded.server import process_state

    for _ in range(200):
        if process_state(pid) == state:
            return
        time.sleep(0.01)
    raise AssertionError(f"pid {pid} never reached state {state}")


def test_storage_without_room_for_the_checkpoint_names_the_folder_and_the_fixes(tmp_path):
    import os

    embedded = _server(tmp_path, os.getpid(), os.getpid())
    assert transfer_failure_line("HTTP 500", URI, embedded, needed_bytes=1000) is None
    line = transfer_failure_line("HTTP 500", URI, embedded, needed_bytes=10**18)
    assert line is not None
    assert line.startswith(f"the embedded GCS server's storage {tmp_path} is full: ")
    assert "the checkpoint needs ~" in line and "Fixes: export TMPDIR=" in line
    assert line.endswith("(TensorFlow: HTTP 500)")
