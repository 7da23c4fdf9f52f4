"""TensorFlow's own gs:// filesystem against the embedded GCS server, end to end, no mocks.

TensorFlow runs in fresh processes (tests/tf_gcs_job.py) with only the embedded server's
variables (storage.embedded.server.tensorflow_env); google-cloud-storage checks what landed. The
production failure is reproduced on a real small tmpfs, and the server's processes are
checked by PID after a stop and after its parent is SIGKILLed.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import TESTS_DIR, script_env

JOB = TESTS_DIR / "tf_gcs_job.py"
SMALL_BUFFER = 40  # ~2.6 MB checkpoint (64 KiB elements)
BIG_BUFFER = 400  # ~26 MB checkpoint: more than the 20 MB small_disk holds
TF_ERROR = "Could not append to the internal temporary file"


def run_job(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(JOB), *args],
        env=env, cwd=TESTS_DIR, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip


def object_names(gcs_client, bucket, prefix: str) -> list[str]:
    return sorted(blob.name for blob in gcs_client.list_blobs(bucket, prefix=prefix))


@pytest.mark.slow
def test_checkpoint_to_gs_restores_exactly_in_a_new_process(
    gcs_server, gcs_client, gcs_bucket, tmp_path
):
    """Save in one process, restore in another, straight from gs://; tf.io.gfile on the way.

    The gfile part writes an empty file (TensorFlow's `Transfer-Encoding: identity` POST)
    and a body holding an HTTP head's text, which must land unchanged: google-cloud-storage
    reads the same bytes through the same server.
    """
    import hashlib

    env = script_env(**gcs_server.env)
    uri = f"gs://{gcs_bucket.name}/run/iterator"
    folder = f"gs://{gcs_bucket.name}/files"

    saved = run_job("save", uri, str(SMALL_BUFFER), str(tmp_path / "saved.json"), folder, env=env)
    assert saved.returncode == 0, saved.stderr[-2000:]
    restored = run_job("restore", uri, str(SMALL_BUFFER), str(tmp_path / "restored.json"), env=env)
    assert restored.returncode == 0, restored.stderr[-2000:]

    expected = json.loads((tmp_path / "saved.json").read_text())
    assert expected["path"] == uri
    assert json.loads((tmp_path / "restored.json").read_text())["digests"] == expected["digests"]
    names = object_names(gcs_client, gcs_bucket, "run/")
    assert names == ["run/iterator.data-00000-of-00001", "run/iterator.index"]
    shard = gcs_bucket.get_blob("run/iterator.data-00000-of-00001")
    assert shard.size > SMALL_BUFFER * 64 * 1024  # the shuffle buffer's frames are in it

    files = expected["gfile"]
    assert files["read"] == files["written"]
    assert files["listed"] == ["empty.bin", "large.bin", "small.txt"]
    for name, digest in files["written"].items():
        data = gcs_bucket.blob(f"files/{name}").download_as_bytes()
        assert hashlib.sha256(data).hexdigest() == digest, name


@pytest.mark.slow
def test_small_tmpfs_reproduces_the_production_error_and_leaves_nothing(
    gcs_server, gcs_client, gcs_bucket, small_disk, tmp_path
):
    """TensorFlow stages the whole file in TMPDIR; 20 MB cannot take ~26 MB: the raw error."""
    from dlckpt.tempdir import tf_temp_dir

    env = script_env(**gcs_server.env, TMPDIR=str(small_disk))
    env.pop("TEST_TMPDIR", None)
    assert tf_temp_dir(env)[:2] == (str(small_disk), "TMPDIR")

    uri = f"gs://{gcs_bucket.name}/run/iterator"
    result = run_job("save", uri, str(BIG_BUFFER), str(tmp_path / "saved.json"), env=env)

    assert result.returncode == 1
    assert TF_ERROR in result.stderr
    assert "[Op:SaveV2]" in result.stderr
    assert object_names(gcs_client, gcs_bucket, "run") == []  # no partial object
    assert os.listdir(small_disk) == []  # the temp file went with the failure


def test_server_processes_and_storage_are_gone_after_stop(tmp_path):
    from dlckpt.storage.embedded.server import embedded_gcs, process_gone

    with embedded_gcs(tmp_path, bucket="stop-check") as server:
        assert not process_gone(server.front_pid)
        assert not process_gone(server.server_pid)
        assert server.data_dir.is_dir()
        assert server.workdir.parent == tmp_path
    assert process_gone(server.front_pid)
    assert process_gone(server.server_pid)
    assert not server.workdir.exists()


_PARENT = """
import json, sys, time
from dlckpt.storage.embedded.server import embedded_gcs
with embedded_gcs(sys.argv[1], bucket="orphan-check") as server:
    print(json.dumps({"pids": server.pids, "workdir": str(server.workdir)}), flush=True)
    time.sleep(600)
"""


def test_server_dies_with_a_sigkilled_parent(tmp_path):
    from dlckpt.storage.embedded.server import process_gone

    parent = subprocess.Popen(
        [sys.executable, "-c", _PARENT, str(tmp_path)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert parent.stdout is not None
        started = json.loads(parent.stdout.readline())
        assert not any(process_gone(pid) for pid in started["pids"])
    finally:
        parent.send_signal(signal.SIGKILL)
        parent.wait()
    deadline = time.monotonic() + 60  # generous: a busy machine, not a timing claim
    while time.monotonic() < deadline and not all(process_gone(p) for p in started["pids"]):
        time.sleep(0.2)
    assert all(process_gone(pid) for pid in started["pids"]), started
    while time.monotonic() < deadline and Path(started["workdir"]).exists():
        time.sleep(0.2)
    assert not Path(started["workdir"]).exists()


def test_front_serves_concurrent_uploads_and_keeps_connections_alive(gcs_server, gcs_bucket):
    """Eight google-cloud-storage uploads at once, then three requests on one connection."""
    import hashlib
    import http.client
    from concurrent.futures import ThreadPoolExecutor

    payloads = {f"c/{i}": os.urandom(1024 * 1024 + i) for i in range(8)}
    with ThreadPoolExecutor(8) as pool:
        list(
            pool.map(lambda kv: gcs_bucket.blob(kv[0]).upload_from_string(kv[1]), payloads.items())
        )
    for name, data in payloads.items():
        assert (
            hashlib.sha256(gcs_bucket.blob(name).download_as_bytes()).digest()
            == hashlib.sha256(data).digest()
        )

    host, port = gcs_server.endpoint.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=30)
    sockets = set()
    for _ in range(3):
        connection.request("GET", f"/storage/v1/b/{gcs_bucket.name}/o?prefix=c/")
        response = connection.getresponse()
        assert response.status == 200
        assert len(json.loads(response.read())["items"]) == 8
        sockets.add(id(connection.sock))
    connection.close()
    assert len(sockets) == 1  # the same connection served all three


# --- the scripts' gs:// write path ------------------------------------------------------

SMALL_BUFFER_SCRIPT = "test_dataloader_checkpoint_small_buffer.py"
# 64x64 + 16x16 frames, window 2: ~26 KB a sample; 1,000 elements need ~26 MB, more than
# the 20 MB tmpfs holds, while 100 elements (~3 MB) fit it with room to spare.
TOO_BIG = "1000"
SCRIPT_SECONDS = 900  # generous: a busy 2-core machine, not a timing claim
SMALL_CONFIG = ["--config-name", "small", "dataloader.image_size=64",
                "estimate.calibration_buffer_sizes=[8,32]", "estimate.calibration_offsets=[0]"]  # fmt: skip


def _failure_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stdout + result.stderr
    [line] = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("✗")]
    return line


def _small_tmpfs_env(gcs_server, gcs_bucket, temp: dict[str, str], cache: str) -> dict[str, str]:
    env = script_env(
        **gcs_server.env, **temp, GCS_TEST_BUCKET=f"gs://{gcs_bucket.name}/p", XDG_CACHE_HOME=cache
    )
    if "TEST_TMPDIR" not in temp:
        env.pop("TEST_TMPDIR", None)
    return env


def _assert_staging_line(line: str, variable: str, folder: Path) -> None:
    assert line.startswith(
        "✗ CHECKPOINT DID NOT FIT: TensorFlow's gs:// writer stages each checkpoint file in "
        f"{variable}={folder} and ran out of room ({TF_ERROR}): needs ~"
    ), line
    assert " free there. Fixes: " in line and "export " in line


@pytest.mark.slow
def test_preflight_fits_exactly_when_tensorflows_gs_save_succeeds(
    gcs_server, gcs_client, gcs_bucket, small_disk, tmp_path, script_estimate_cache
):
    """One 20 MB tmpfs as TMPDIR, two buffers on either side of what it holds.

    100 elements (~3 MB): the preflight says it fits and TensorFlow's gs:// save passes.
    1,000 (~26 MB): the preflight would refuse (it says so under --force); TensorFlow's
    save then fails and the run ends in one line (exit 1) leaving nothing in the bucket or
    the tmpfs. Then the same with the tmpfs as TEST_TMPDIR over a big TMPDIR: the trap is
    named. One test, so the three runs share one measured estimate.
    """
    from conftest import run_script

    env = _small_tmpfs_env(
        gcs_server, gcs_bucket, {"TMPDIR": str(small_disk)}, script_estimate_cache
    )
    env["GCS_WRITE_REQUEST_TIMEOUT_SECS"] = "600"

    def run(buffer: int, *extra: str) -> tuple[subprocess.CompletedProcess[str], dict]:
        report = tmp_path / f"report-{len(list(tmp_path.glob('report-*.json')))}.json"
        result = run_script(
            SMALL_BUFFER_SCRIPT, *SMALL_CONFIG, "--buffer-size", str(buffer), "--report",
            str(report), *extra, env=env, timeout=SCRIPT_SECONDS,
        )  # fmt: skip
        return result, json.loads(report.read_text())

    def fits(data: dict) -> bool:
        [row] = [row for row in data["locations"] if row["path"] == str(small_disk)]
        return bool(row["ok"])

    passed, data = run(100)
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert fits(data)
    checkpoint = data["checkpoint"]
    assert checkpoint["writer"] == "tensorflow-gcs"
    assert (checkpoint["tf_temp_dir"], checkpoint["tf_temp_dir_source"]) == (
        str(small_disk),
        "TMPDIR",
    )
    assert checkpoint["uri"].startswith(f"gs://{gcs_bucket.name}/p/dlckpt-small-buffer-")
    # TensorFlow staged the data file whole: the polled peak is of the checkpoint's size.
    assert checkpoint["bytes"] // 2 < checkpoint["tf_temp_peak_bytes"] <= checkpoint["bytes"]
    assert checkpoint["tf_gcs_settings"] == {"GCS_WRITE_REQUEST_TIMEOUT_SECS": "600"}
    assert "TensorFlow GCS setting: GCS_WRITE_REQUEST_TIMEOUT_SECS=600" in passed.stdout
    sources = [c["source"] for c in data["verification"]["comparisons"]]
    assert sources == ["bucket (gs://, TensorFlow's filesystem)"]

    # Without --force this is a refusal (exit 3, the same message: test_preflight.py);
    # with it, the run says what the preflight would refuse, then shows the save failing.
    failed, data = run(int(TOO_BIG), "--force")
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert not fits(data)
    assert "⚠ PREFLIGHT WOULD REFUSE (--force): TensorFlow temp folder" in failed.stdout
    _assert_staging_line(_failure_line(failed), "TMPDIR", small_disk)
    assert (data["exit_code"], data["checkpoint"]["writer"]) == (1, "tensorflow-gcs")
    assert object_names(gcs_client, gcs_bucket, "p/") == []  # no partial object, no pass left
    assert os.listdir(small_disk) == []

    # The trap: a small TEST_TMPDIR wins over a big TMPDIR, and the line says so.
    big = tmp_path / "big-tmp"
    big.mkdir()
    temp = {"TEST_TMPDIR": str(small_disk), "TMPDIR": str(big)}
    env = _small_tmpfs_env(gcs_server, gcs_bucket, temp, script_estimate_cache)
    trapped, data = run(int(TOO_BIG), "--force")
    assert trapped.returncode == 1, trapped.stdout + trapped.stderr
    line = _failure_line(trapped)
    _assert_staging_line(line, "TEST_TMPDIR", small_disk)
    assert f"unset TEST_TMPDIR: TensorFlow reads it before TMPDIR (TMPDIR={big})" in line
    assert "silently overrides TMPDIR" in trapped.stdout  # the table's warning said so first
    assert data["checkpoint"]["tf_temp_dir_source"] == "TEST_TMPDIR"
    assert object_names(gcs_client, gcs_bucket, "p/") == []
    assert os.listdir(small_disk) == [] and os.listdir(big) == []


def test_disk_check_shows_tensorflows_gcs_settings_only_when_set():
    from conftest import ROOT, SCRIPTS_DIR

    def disk_check(**extra: str) -> str:
        env = script_env(**extra)
        for name in [name for name in env if name.startswith("GCS_")]:
            if name not in extra:
                env.pop(name)
        result = subprocess.run(
            ["bash", str(SCRIPTS_DIR / "check_disk_space.sh"), "--small", "1KB", "--for", "small"],
            env=env, cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        return result.stdout

    shown = disk_check(GCS_WRITE_REQUEST_TIMEOUT_SECS="900", GCS_TEST_BUCKET="gs://b/p")
    assert "TensorFlow GCS settings:\n  GCS_WRITE_REQUEST_TIMEOUT_SECS=900\n" in shown
    assert "GCS_TEST_BUCKET" not in shown  # the project's own setting, not TensorFlow's
    assert "TensorFlow GCS settings" not in disk_check()


def test_tf_gcs_settings_lists_the_variables_tensorflow_reads():
    from dlckpt.storage.tf_gcs import tf_gcs_settings

    env = {"GCS_WRITE_REQUEST_TIMEOUT_SECS": "900", "GCS_TEST_BUCKET": "gs://b", "PATH": "/bin"}
    assert tf_gcs_settings(env) == {"GCS_WRITE_REQUEST_TIMEOUT_SECS": "900"}
    assert tf_gcs_settings({}) == {}


def test_embedded_servers_storage_and_memory_are_preflight_rows(small_disk, monkeypatch):
    """The server holds an upload whole: its RAM row counts with the buffer's against RAM."""
    import psutil

    from dlckpt.estimate.estimator import EstimateResult
    from dlckpt.preflight.locations import RAM, check_locations, tensorflow_gcs_locations
    from dlckpt.storage.embedded.server import SERVER_RAM_BASE_BYTES, SERVER_RAM_BYTES_PER_BYTE

    monkeypatch.setenv("TMPDIR", str(small_disk))
    monkeypatch.delenv("TEST_TMPDIR", raising=False)

    def rows_for(checkpoint: int) -> list:
        estimate = EstimateResult(
            method="formula", original_buffer=10, tested_buffer=10, original_bytes=checkpoint,
            tested_bytes=checkpoint, formula_original_bytes=checkpoint,
            formula_tested_bytes=checkpoint, bytes_per_sample=checkpoint // 10,
            bytes_per_sample_source="test",
        )  # fmt: skip
        return check_locations(tensorflow_gcs_locations(estimate, embedded_dir=str(small_disk)))

    # 6 MB staged by TensorFlow and 2 x 6 MB on the server (TensorFlow's rename is a copy
    # on GCS) fit the 20 MB disk; 12 MB does not.
    rows = rows_for(6 * 10**6)
    by_role = {row.role: row for row in rows}
    assert set(by_role) == {
        "TensorFlow temp folder for gs:// writes (TMPDIR)", "host RAM (the buffer while it is saved)",
        "embedded GCS server storage", "embedded GCS server RAM (holds an upload whole)",
    }  # fmt: skip
    server_ram = by_role["embedded GCS server RAM (holds an upload whole)"]
    assert server_ram.path == RAM
    assert server_ram.required_bytes == SERVER_RAM_BASE_BYTES + SERVER_RAM_BYTES_PER_BYTE * 6e6
    assert by_role["embedded GCS server storage"].required_bytes == 2 * 6 * 10**6
    assert all(row.ok for row in rows)
    assert not any(row.ok for row in rows_for(12 * 10**6) if row.path == str(small_disk))
    # A checkpoint whose server copy alone exceeds the RAM there is refused on RAM.
    huge = int(psutil.virtual_memory().available / SERVER_RAM_BYTES_PER_BYTE)
    assert not any(row.ok for row in rows_for(huge) if row.path == RAM)
