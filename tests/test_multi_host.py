"""`dlckpt multi-host`: real processes, one per (host, process), against the embedded server.

Each run starts 2 x 2 real processes that save at once through TensorFlow's gs:// writer;
the tests assert the exit code, the promised lines, the report's per-process entries,
and that no process and no scratch folder is left.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from conftest import ROOT, script_env
from test_reliability import _gone

GUARD_SECONDS = 600  # a hang must not hold the suite; not a timing claim
WORKER = "dlckpt.multihost.worker"


def _config(folder: Path, target: str, **settings: object) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    lines = [f"  _target_: user_pipelines.{target}", "  shuffle_buffer_size: 32"]
    lines += [f"  {key}: {value}" for key, value in settings.items()]
    # The job's sizes are measured: cheaply (two buffers, one offset), still measured.
    cheap = "estimate:\n  calibration_buffer_sizes: [8, 32]\n  calibration_offsets: [0]\n"
    (folder / "mh.yaml").write_text("dataloader:\n" + "\n".join(lines) + "\n" + cheap)
    return folder


def _multi_host(tmp_path: Path, *args: str, kill_worker: int | None = None):
    """Run the command with TMPDIR in the test's folder; optionally SIGKILL one worker once
    it has reached the barrier before the save. Returns (exit code, output, report)."""
    temp = tmp_path / "tmp"
    temp.mkdir()
    report = tmp_path / "report.json"
    env = script_env(TMPDIR=str(temp))
    env.pop("TEST_TMPDIR", None)
    process = subprocess.Popen(
        [sys.executable, "-m", "dlckpt", "multi-host", "--report", str(report), *args],
        env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    guard = threading.Timer(GUARD_SECONDS, process.kill)
    guard.start()
    seen: set[int] = set()
    watch = threading.Thread(
        target=_watch_children, args=(process, seen, temp, kill_worker), daemon=True
    )
    watch.start()
    try:
        output, _ = process.communicate()
    finally:
        guard.cancel()
    watch.join()
    assert process.returncode != -signal.SIGKILL, output
    assert "Traceback" not in output, output
    assert os.listdir(temp) == [], (os.listdir(temp), output)  # scratch and hosts' folders
    assert _gone(sorted(seen), within=15) == [], output  # workers, restores, the server
    return process.returncode, output, json.loads(report.read_text())


def _watch_children(
    process: subprocess.Popen[str], seen: set[int], temp: Path, kill_worker: int | None
) -> None:
    """Collect every process the command starts while it runs; with `kill_worker`, SIGKILL
    that worker as soon as its ready file is there (it is then at the save)."""
    import psutil

    while process.poll() is None:
        try:
            children = psutil.Process(process.pid).children(recursive=True)
        except psutil.NoSuchProcess:
            return
        seen.update(child.pid for child in children)
        if kill_worker is not None and list(temp.glob(f"*/barrier/ready-{kill_worker}")):
            for child in children:
                with contextlib.suppress(psutil.Error):
                    cmdline = child.cmdline()
                    if WORKER in cmdline and cmdline[-1] == str(kill_worker):
                        child.kill()
                        kill_worker = None
        time.sleep(0.02)


@pytest.mark.slow
def test_two_hosts_of_two_processes_pass_with_disjoint_shards(tmp_path):
    conf = _config(tmp_path / "conf", "sharded_dataset")
    code, output, report = _multi_host(
        tmp_path, "--config-dir", str(conf), "--config-name", "mh", "estimate.max_to_keep=2"
    )
    assert code == 0, output
    assert "Started 4 processes (2 hosts × 2)" in output
    for index, host in [(0, 0), (1, 0), (2, 1), (3, 1)]:
        assert f"✓ process {index} (host {host}): saved " in output
        assert f"/process_{index}-of-4, restored in a new process: " in output
    assert "✓ Shards are disjoint: " in output and "SHARDS OVERLAP" not in output
    assert output.rstrip().endswith("✓ ALL TESTS PASSED (4 processes on 2 hosts)")
    assert report["exit_code"] == 0 and len(report["processes"]) == 4
    uris = [p["checkpoint"]["uri"] for p in report["processes"]]
    assert [uri.rsplit("/", 1)[1] for uri in uris] == [f"process_{i}-of-4" for i in range(4)]
    assert all(p["checkpoint"]["writer"] == "tensorflow-gcs" for p in report["processes"])
    assert report["global_checks"] == {"overlapping_shards": [], "all_resumed_in_step": True}

    # The whole job's figures: the configured buffer's checkpoints per process, per host and
    # in the bucket (2 hosts x 2 processes x 3 kept); the tested buffer's held to real saves.
    job = report["job_sizes"]
    assert (job["hosts"], job["processes_per_host"], job["checkpoints_in_bucket"]) == (2, 2, 3)
    assert job["per_host"] == 2 * job["per_process"] and job["bucket"] == 12 * job["per_process"]
    assert "JOB CHECKPOINTS at shuffle_buffer_size 32 (±" in output
    assert "in the bucket (2 hosts × 2 processes × 3 checkpoints: max_to_keep 2 + the " in output
    real = [p["checkpoint"]["bytes"] for p in report["processes"]]
    sizes = report["sizes"]
    assert sizes["bucket"]["real"] == sum(real)
    assert sizes["per_host"]["real_max"] == max(real[0] + real[1], real[2] + real[3])
    each = sizes["per_process"]["estimated"]
    assert (sizes["per_host"]["estimated"], sizes["bucket"]["estimated"]) == (2 * each, 4 * each)
    checks = report["estimate"]["cross_checks"]
    assert sorted(c["actual_bytes"] for c in checks) == sorted(real)
    assert all(c["within"] and abs(c["error"]) <= c["uncertainty"] for c in checks)
    assert "✓ Sizes at buffer 32, real against estimated: per process " in output


@pytest.mark.slow
def test_a_pipeline_that_forgets_to_shard_is_reported(tmp_path):
    conf = _config(tmp_path / "conf", "plain_dataset", image_size=8)
    code, output, report = _multi_host(
        tmp_path, "--config-dir", str(conf), "--config-name", "mh", "--hosts", "1"
    )
    assert code == 0, output  # every process resumes: the overlap is a finding
    assert "⚠ SHARDS OVERLAP in the windows compared (1 of 1 pairs of processes): " in output
    assert "processes 0 and 1 read " in output and "shard by process_index" in output
    assert report["global_checks"]["overlapping_shards"][0].startswith("processes 0 and 1 read")


@pytest.mark.slow
def test_one_process_that_does_not_resume_fails_the_run_naming_it(tmp_path):
    conf = _config(tmp_path / "conf", "sharded_dataset", unseeded_on=1)
    code, output, report = _multi_host(
        tmp_path, "--config-dir", str(conf), "--config-name", "mh", "--hosts", "1"
    )
    assert code == 1, output
    assert "✓ process 0 (host 0): saved " in output
    assert "✗ process 1 (host 0): CHECKPOINT CANNOT BE SAVED: " in output
    last = output.rstrip().splitlines()[-1]
    assert last.startswith("✗ PROCESS 1 (HOST 0) FAILED: CHECKPOINT CANNOT BE SAVED: "), last
    assert [p["passed"] for p in report["processes"]] == [True, False]


def test_a_builder_that_raises_on_one_process_is_bad_input_in_one_line(tmp_path):
    conf = _config(tmp_path / "conf", "sharded_dataset", raises_on=1)
    code, output, report = _multi_host(
        tmp_path, "--config-dir", str(conf), "--config-name", "mh", "--hosts", "1"
    )
    assert code == 2, output
    failures = [line for line in output.splitlines() if line.startswith("✗")]
    assert failures == [
        "✗ PROCESS 1 (HOST 0) FAILED: dataloader: user_pipelines.sharded_dataset raised "
        "ValueError while building the dataset: no shard list for process 1"
    ], output
    assert report["exit_code"] == 2


def test_a_restore_with_another_process_count_is_refused(tmp_path):
    code, output, report = _multi_host(
        tmp_path, "--config-name", "small", "--restore-processes", "2"
    )
    assert code == 1, output
    last = output.rstrip().splitlines()[-1]
    assert last.startswith(
        "✗ CANNOT RESUME WITH A DIFFERENT PROCESS COUNT: the job writes 4 iterator "
        "checkpoints (process_{i}-of-4), one per process, and would restore them with 2"
    ), last
    assert "make strategies" in last
    assert "Started" not in output  # refused before any process
    assert report["exit_code"] == 1 and report["processes"] == []


@pytest.mark.slow
def test_a_process_killed_at_the_save_is_named_and_nothing_is_left(tmp_path):
    conf = _config(tmp_path / "conf", "sharded_dataset")
    code, output, report = _multi_host(
        tmp_path, "--config-dir", str(conf), "--config-name", "mh", kill_worker=2
    )
    assert code == 1, output
    last = output.rstrip().splitlines()[-1]
    assert last == "✗ PROCESS 2 (HOST 1) DIED: killed by SIGKILL", last
    assert report["died"] == {"2": "killed by SIGKILL"}
