"""`dlckpt multi-host --launcher`: real processes started as a launcher starts ranks.

No torchrun or srun here: each test starts the processes itself with the variables those
launchers set (RANK/WORLD_SIZE/…, SLURM_PROCID/SLURM_NTASKS/…), one TMPDIR per stand-in
host, all meeting in a bucket of the real GCS server on 127.0.0.1. The tests assert each
process's exit code and lines, process 0's verdict and report, and that the run's prefix
in the bucket, the hosts' temp folders and the processes are gone afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from conftest import ROOT, script_env, tmpfs_mount
from test_multi_host import _config

GUARD_SECONDS = 600  # a hang must not hold the suite; not a timing claim


def _launch(
    tmp_path: Path, gcs_server, bucket, ranks: dict[int, dict[str, str]], *args: str,
    small_temp: int | None = None,
):  # fmt: skip
    """Start one process per entry of `ranks` (rank -> the launcher's variables) at once,
    each with its own TMPDIR (rank `small_temp`'s on a real 20 MB tmpfs); returns {rank:
    (exit code, output)}, process 0's report, and the bucket's names under the run prefix
    afterwards."""
    with contextlib.ExitStack() as mounts:
        if small_temp is not None:
            mounts.enter_context(tmpfs_mount(tmp_path / f"host-{small_temp}", "size=20m"))
        return _start_and_wait(tmp_path, gcs_server, bucket, ranks, args)


def _start_and_wait(tmp_path, gcs_server, bucket, ranks, args):  # type: ignore[no-untyped-def]
    started = {}
    for rank, variables in ranks.items():
        temp = tmp_path / f"host-{rank}"
        temp.mkdir(exist_ok=True)
        env = script_env(TMPDIR=str(temp), GCS_TEST_BUCKET=f"gs://{bucket.name}/jobs",
                         **gcs_server.env, **variables)  # fmt: skip
        env.pop("TEST_TMPDIR", None)
        report = tmp_path / "report.json"  # the same command line for every rank
        started[rank] = subprocess.Popen(
            [sys.executable, "-m", "dlckpt", "multi-host", "--launcher", "--report",
             str(report), *args],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    guards = [threading.Timer(GUARD_SECONDS, p.kill) for p in started.values()]
    for guard in guards:
        guard.start()
    try:
        ended = {rank: (p.communicate()[0], p.returncode) for rank, p in started.items()}
    finally:
        for guard in guards:
            guard.cancel()
    results = {rank: (code, output) for rank, (output, code) in ended.items()}
    for rank, (_, output) in results.items():
        assert "Traceback" not in output, output
        assert os.listdir(tmp_path / f"host-{rank}") == [], output  # TensorFlow's staging too
    report = json.loads((tmp_path / "report.json").read_text())  # process 0's: the verdict
    for rank in set(results) - {0}:  # the others' beside it, named after their process
        (name,) = [p.name for p in tmp_path.glob(f"report.process_{rank}-of-*.json")]
        assert json.loads((tmp_path / name).read_text())["exit_code"] == results[rank][0]
    left = [blob.name for blob in bucket.list_blobs(prefix="jobs/")]
    return results, report, left


@pytest.mark.slow
def test_ranks_started_as_torchrun_starts_them_meet_in_the_bucket_and_pass(
    tmp_path, gcs_server, gcs_bucket
):
    """Host 1's temp folder is a real 20 MB tmpfs: the test's buffer (100) fits it, the
    configured one (100,000: ~40 MB per process) does not, which process 0 says of host 1
    (its own preflight sees only host 0)."""
    conf = _config(tmp_path / "conf", "sharded_dataset")
    run_id = f"t{secrets.token_hex(3)}"
    ranks = {
        rank: {"RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": "0", "LOCAL_WORLD_SIZE": "1",
               "GROUP_RANK": str(rank), "TORCHELASTIC_RUN_ID": run_id}
        for rank in (0, 1)
    }  # fmt: skip
    results, report, left = _launch(
        tmp_path, gcs_server, gcs_bucket, ranks, "--config-dir", str(conf), "--config-name",
        "mh", "dataloader.shuffle_buffer_size=100000", small_temp=1,
    )  # fmt: skip
    (code0, out0), (code1, out1) = results[0], results[1]
    assert code0 == 0, out0
    assert code1 == 0, out1
    prefix = f"gs://{gcs_bucket.name}/jobs/dlckpt-multi-host-{run_id}"
    assert (
        f"Launched: process 0 (host 0) of 2 (1 per host; from torchrun's RANK/WORLD_SIZE), run id {run_id}"
        in out0
    )
    assert "✓ process 1 (host 1): saved " in out1 and f"{prefix}/process_1-of-2, restored" in out1
    assert (
        f"Result sent to {prefix}/meeting/report-1-of-2.json: process 0 gives the job's verdict"
        in out1
    )
    for index in (0, 1):
        assert f"✓ process {index} (host {index}): saved " in out0
        assert f"to {prefix}/process_{index}-of-2, restored in a new process: " in out0
    assert "✓ Shards are disjoint: " in out0
    assert "✓ Sizes at buffer 100, real against estimated: per process " in out0
    assert (
        f"⚠ HOST 1'S TEMP FOLDER CANNOT HOLD ITS CHECKPOINTS AT THE CONFIGURED BUFFER: "
        f"{tmp_path / 'host-1'} (TMPDIR) on "
    ) in out0
    folders = {row["host"]: row for row in report["host_temp_folders"]}
    assert folders[1]["free_bytes"] <= 20 * 2**20 < folders[1]["needed_bytes"]
    assert folders[0]["fits"] and not folders[1]["fits"]
    assert folders[0]["path"] == str(tmp_path / "host-0")
    assert out0.rstrip().endswith("✓ ALL TESTS PASSED (2 processes on 2 hosts)"), out0
    assert report["exit_code"] == 0 and len(report["processes"]) == 2
    assert report["launch"]["run_id"] == run_id and report["sent_no_report"] == {}
    assert report["global_checks"] == {"overlapping_shards": [], "all_resumed_in_step": True}
    assert left == []  # checkpoints and meeting objects: the run prefix is gone


@pytest.mark.slow
def test_a_rank_that_never_starts_is_named_by_process_0(tmp_path, gcs_server, gcs_bucket):
    """srun's variables for 3 tasks, only 2 started: the barrier and the gathering each end
    at their bound, and process 0 names the missing one. The gathering waits longer than
    the barrier, so process 1's result (sent when its own wait at the barrier ends) is in
    however the two processes' starts are skewed by load."""
    conf = _config(tmp_path / "conf", "sharded_dataset")
    job = f"{secrets.randbelow(10**6)}"
    ranks = {
        rank: {"SLURM_PROCID": str(rank), "SLURM_NTASKS": "3", "SLURM_NODEID": str(rank),
               "SLURM_NNODES": "3", "SLURM_JOB_ID": job}
        for rank in (0, 1)
    }  # fmt: skip
    results, report, left = _launch(
        tmp_path, gcs_server, gcs_bucket, ranks, "--config-dir", str(conf), "--config-name",
        "mh", "--barrier-timeout", "10", "--gather-timeout", "20",
    )  # fmt: skip
    (code0, out0), (code1, out1) = results[0], results[1]
    assert code0 == 1, out0
    assert code1 == 0, out1  # its result is in the bucket: process 0 gives the verdict
    # Whichever of the two waited longer at the barrier gave up first and stopped the other.
    assert "· process 1 (host 1): " in out1
    assert "processes [2] did not reach the save within 10 s" in out1
    verdict, note = out0.rstrip().splitlines()[-2:]
    assert verdict.startswith(
        f"✗ PROCESS 2 (HOST 2) SENT NO REPORT: no result in gs://{gcs_bucket.name}/jobs/"
        f"dlckpt-multi-host-{job}/meeting/ within 20 s of process 0's own"
    ), verdict
    assert report["exit_code"] == 1 and list(report["sent_no_report"]) == ["2"]
    # Process 2 may still start: the ABORT that stops it stays, and process 0 says so.
    folder = f"jobs/dlckpt-multi-host-{job}"
    assert left == [f"{folder}/meeting/ABORT"]
    assert note == (
        f"⚠ may be left: gs://{gcs_bucket.name}/{folder}/meeting/ABORT stays so that the "
        "processes still running stop; remove the run's folder once they have: `gcloud "
        f"storage rm -r gs://{gcs_bucket.name}/{folder}/`"
    )


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--run-id", "r1"), "--run-id: only with --launcher"),
        (("--gather-timeout", "9"), "--gather-timeout: only with --launcher"),
        (("--launcher",), "no process index found: expected --process-index/--process-count"),
        (("--launcher", "--process-index", "0", "--process-count", "2"), "no run id every process shares"),
        (("--launcher", "--process-index", "0", "--process-count", "2", "--run-id", "r"),
         "GCS_TEST_BUCKET='': expected gs://bucket/prefix"),
    ],
)  # fmt: skip
def test_launcher_input_that_cannot_work_is_one_line_exit_2(tmp_path, args, expected):
    from conftest import run_in_process

    report = tmp_path / "report.json"
    env = script_env()
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "TF_CONFIG", "TPU_WORKER_ID"):
        env.pop(name, None)
    result = run_in_process(
        "multi_host.py", "--config-name", "small", "--report", str(report), *args, env=env
    )
    assert result.returncode == 2, result.stdout + result.stderr
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert expected in lines[-1] and "Traceback" not in result.stderr
    assert json.loads(report.read_text())["exit_code"] == 2


def test_process_0_stopped_before_the_save_stops_its_peers_and_leaves_nothing(
    tmp_path, gcs_server, gcs_bucket
):
    """Process 0's builder raises while it measures the checkpoint: its one line, exit 2;
    its peer stops at the barrier on the ABORT in the bucket (not after the barrier's
    bound), and process 0 removes the run's objects once the peer has said so."""
    conf = _config(tmp_path / "conf", "sharded_dataset", raises_on=0)
    ranks = {rank: {"RANK": str(rank), "WORLD_SIZE": "2"} for rank in (0, 1)}
    results, report, left = _launch(
        tmp_path, gcs_server, gcs_bucket, ranks, "--config-dir", str(conf), "--config-name",
        "mh", "--run-id", f"r{secrets.token_hex(3)}", "--barrier-timeout", "300",
    )  # fmt: skip
    (code0, out0), (code1, out1) = results[0], results[1]
    assert code0 == 2, out0
    assert out0.rstrip().splitlines()[-1] == (
        "✗ dataloader: user_pipelines.sharded_dataset raised ValueError while building the "
        "dataset: no shard list for process 0"
    ), out0
    assert code1 == 0, out1
    assert "· process 1 (host 1): stopped before its save: process 0 failed (UsageError: " in out1
    assert report["exit_code"] == 2
    assert left == []


def test_launch_ranks_refuses_a_rank_count_that_is_not_a_number():
    from conftest import run_in_process

    result = run_in_process("launch_ranks.py", "--ranks", "0")
    assert result.returncode == 2
    assert result.stderr.strip() == "✗ --ranks='0': expected a positive integer, e.g. 100"


def test_a_run_id_an_earlier_run_left_marks_under_is_refused(tmp_path, gcs_server, gcs_bucket):
    """A ready mark only this process writes, left by an earlier run that died: reusing its
    run id would let the barrier pass before the peers are ready."""
    from conftest import run_in_process

    gcs_bucket.blob("jobs/dlckpt-multi-host-r1/meeting/ready-0-of-2").upload_from_string(b"{}")
    env = script_env(GCS_TEST_BUCKET=f"gs://{gcs_bucket.name}/jobs", **gcs_server.env)
    result = run_in_process(
        "multi_host.py", "--launcher", "--process-index", "0", "--process-count", "2",
        "--run-id", "r1", "--config-name", "small", env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"✗ --run-id: gs://{gcs_bucket.name}/jobs/dlckpt-multi-host-r1/meeting/ holds ready-0-of-2 "
        "of process 0: another process of this run was started with the same index, or an "
        "earlier run used this run id: give every process its own index and every run a new "
        "--run-id (or remove that folder)"
    )
    # Nothing of the earlier run was removed; an ABORT stops whatever run it would join.
    assert [b.name for b in gcs_bucket.list_blobs()] == [
        "jobs/dlckpt-multi-host-r1/meeting/ABORT",
        "jobs/dlckpt-multi-host-r1/meeting/ready-0-of-2",
    ]


def test_processes_that_disagree_on_the_count_are_bad_input_not_a_pass(
    tmp_path, gcs_server, gcs_bucket, small_estimate_cache
):
    """A peer started with WORLD_SIZE=3 while process 0 has 2 (its mark is in the meeting):
    process 0 answers exit 2 naming the counts, instead of checking a 2-process job."""
    from conftest import SMALL_CHEAP, run_in_process

    gcs_bucket.blob("jobs/dlckpt-multi-host-c1/meeting/ready-1-of-3").upload_from_string(b"{}")
    env = script_env(GCS_TEST_BUCKET=f"gs://{gcs_bucket.name}/jobs",
                     XDG_CACHE_HOME=str(small_estimate_cache[0]), **gcs_server.env)  # fmt: skip
    result = run_in_process(
        "multi_host.py", "--launcher", "--process-index", "0", "--process-count", "2",
        "--run-id", "c1", "--config-name", "small", *SMALL_CHEAP, "--barrier-timeout", "60",
        env=env,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "✗ process count: process 1 of this run says the job has 3 processes, process 0 says "
        f"2 (gs://{gcs_bucket.name}/jobs/dlckpt-multi-host-c1/meeting/ready-1-of-3): every "
        "process must be started with the same count (WORLD_SIZE, SLURM_NTASKS, --process-count)"
    )
    assert "ALL TESTS PASSED" not in result.stdout


@pytest.mark.slow
def test_two_processes_claiming_one_index_are_told_apart(tmp_path, gcs_server, gcs_bucket):
    """Both say RANK=1: the bucket lets only one create its ready mark; the other answers
    exit 2 naming the index and sends no result, and the run stops."""
    conf = _config(tmp_path / "conf", "sharded_dataset")
    ranks = {0: {"RANK": "1", "WORLD_SIZE": "2"}, 1: {"RANK": "1", "WORLD_SIZE": "2"}}
    started = {}
    for key, variables in ranks.items():
        env = script_env(GCS_TEST_BUCKET=f"gs://{gcs_bucket.name}/jobs", **gcs_server.env,
                         **variables)  # fmt: skip
        started[key] = subprocess.Popen(
            [sys.executable, "-m", "dlckpt", "multi-host", "--launcher", "--run-id", "d1",
             "--config-dir", str(conf), "--config-name", "mh", "--barrier-timeout", "120"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    ended = {key: (p.communicate(timeout=GUARD_SECONDS)[0], p.returncode)
             for key, p in started.items()}  # fmt: skip
    codes = sorted(code for _, code in ended.values())
    assert codes == [0, 2], ended
    refused = next(output for output, code in ended.values() if code == 2)
    stopped = next(output for output, code in ended.values() if code == 0)
    assert (
        f"✗ process index 1: another process of this run already claimed it (gs://"
        f"{gcs_bucket.name}/jobs/dlckpt-multi-host-d1/meeting/ready-1-of-2)"
    ) in refused, refused
    assert (
        "· process 1 (host 1): stopped before its save: process 1 failed (process index 1: "
        in stopped
    )
    names = {b.name.rsplit("/", 1)[1] for b in gcs_bucket.list_blobs(prefix="jobs/")}
    assert "report-1-of-2.json" in names and "ABORT" in names  # one result, the stopped one's


@pytest.mark.slow
def test_a_rank_stopped_by_sigterm_is_named_at_once(tmp_path, gcs_server, gcs_bucket):
    """SIGTERM to process 1 while it waits at the save: on its way out it tells the meeting
    (ABORT and a result saying so), so process 0 names it instead of waiting out
    --gather-timeout (300 s here: a wait would end in `SENT NO REPORT`)."""
    import time

    conf = _config(tmp_path / "conf", "sharded_dataset")
    env = script_env(GCS_TEST_BUCKET=f"gs://{gcs_bucket.name}/jobs", **gcs_server.env)
    started = {}
    for rank in (0, 1):
        started[rank] = subprocess.Popen(
            [sys.executable, "-m", "dlckpt", "multi-host", "--launcher", "--process-index",
             str(rank), "--process-count", "2", "--run-id", "s1", "--config-dir", str(conf),
             "--config-name", "mh", "--gather-timeout", "300"],
            env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )  # fmt: skip
    mark = gcs_bucket.blob("jobs/dlckpt-multi-host-s1/meeting/ready-1-of-2")
    deadline = time.monotonic() + GUARD_SECONDS
    while not mark.exists() and started[1].poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    started[1].send_signal(signal.SIGTERM)
    out1 = started[1].communicate(timeout=GUARD_SECONDS)[0]
    out0 = started[0].communicate(timeout=GUARD_SECONDS)[0]
    assert started[1].returncode == 128 + signal.SIGTERM, out1
    assert started[0].returncode == 1, out0
    assert out0.rstrip().splitlines()[-1] == "✗ PROCESS 1 (HOST 1) FAILED: interrupted by SIGTERM"
    assert [b.name for b in gcs_bucket.list_blobs(prefix="jobs/")] == []


def test_a_rank_that_comes_after_the_verdict_stops_and_sends_nothing(
    tmp_path, gcs_server, gcs_bucket, small_estimate_cache
):
    """Process 0 gives up at the barrier and gives its verdict; process 1 starts only then.
    It must not save alone on the marks left: it stops at the ABORT, sends no result and
    removes its own mark, so only the ABORT (noted by process 0) is left."""
    from conftest import SMALL_CHEAP, run_in_process

    env = script_env(GCS_TEST_BUCKET=f"gs://{gcs_bucket.name}/jobs",
                     XDG_CACHE_HOME=str(small_estimate_cache[0]), **gcs_server.env)  # fmt: skip
    job = ["--launcher", "--process-count", "2", "--run-id", "late1", "--config-name", "small",
           *SMALL_CHEAP, "--barrier-timeout", "3", "--gather-timeout", "3"]  # fmt: skip
    first = run_in_process("multi_host.py", "--process-index", "0", *job, env=env)
    assert first.returncode == 1, first.stdout + first.stderr
    late = run_in_process("multi_host.py", "--process-index", "1", *job, env=env)
    assert late.returncode == 0, late.stdout + late.stderr
    assert (
        "· process 1 (host 1): the run is over without it (processes [1] did not reach the "
        "save within 3 s): no result sent"
    ) in late.stdout
    assert "saved" not in late.stdout and "✓ process 1" not in late.stdout
    assert [b.name for b in gcs_bucket.list_blobs()] == [
        "jobs/dlckpt-multi-host-late1/meeting/ABORT"
    ]
