"""The small-buffer script as a person runs it: its lines, exit codes, report and cleanup."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SCRIPTS_DIR, SMALL_CHEAP, run_in_process, run_script, script_env

SCRIPT = "test_dataloader_checkpoint_small_buffer.py"


def _one_clear_line(result: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_default_config_prints_both_estimates_and_passes():
    """`make small-buffer` on the default config, end to end, as a new user runs it, with
    the cheap calibration (two buffers, one offset): the preset's measurement at its own
    settings is held to a real save in test_estimate.py, and measuring 256x256 frames at
    them costs ~3 min of CPU on two busy cores."""
    result = run_script(SCRIPT, *SMALL_CHEAP)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    original = re.search(
        r"^ORIGINAL CONFIG CHECKPOINT SIZE ESTIMATE: ([\d.]+) GiB \(measured ±(\d+)%; README's rule of thumb 174.6 GiB\)$",
        out,
        re.M,
    )
    tested = re.search(
        r"^NEW CONFIG CHECKPOINT SIZE ESTIMATE: ([\d.]+) MiB \(measured ±\d+%; README's rule of thumb 71.5 MiB\)$",
        out,
        re.M,
    )
    assert original and tested, out
    # The measured figure is below the formula's (TensorFlow compresses the state) but of its order.
    assert 40 < float(original.group(1)) < 174.6
    assert float(tested.group(1)) < 71.5
    assert "Destination: embedded GCS server at http://127.0.0.1:" in out
    lines = out.rstrip().splitlines()
    assert lines[-1] == "✓ ALL TESTS PASSED"
    # The summary points to the fix: the smallest strategy measured, or how to measure it.
    assert "make strategies" in lines[-2] and "DISK_SPACE_SOLUTIONS.md" in lines[-2]


def test_user_pipeline_and_bucket_with_report(tmp_path: Path, gcs_server, gcs_bucket):
    """A bucket of the user's own (the embedded server with its variables, as a real one)."""
    (tmp_path / "mine.yaml").write_text(
        "dataloader:\n  _target_: user_pipelines.plain_dataset\n  shuffle_buffer_size: 50000\n"
    )
    sentinel = gcs_bucket.blob("team/keep-me.txt")
    sentinel.upload_from_string(b"someone else's object")
    report = tmp_path / "r.json"
    result = run_script(
        SCRIPT,
        "--config-dir", str(tmp_path), "--config-name", "mine", "--report", str(report),
        "roundtrip.batches_to_compare=4",
        env=script_env(GCS_TEST_BUCKET=f"gs://{gcs_bucket.name}/team", **gcs_server.env),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"Destination: gs://{gcs_bucket.name}/team" in result.stdout
    data = json.loads(report.read_text())
    assert data["script"] == "small_buffer"
    assert data["config_name"] == "mine"
    assert data["shuffle_buffer_size"] == {"original": 50000, "tested": 100}
    assert data["estimate"]["method"] == "measured"
    assert data["estimate"]["original_bytes"] > 0
    # 16x16x3 uint8 image + int64 label = 776 bytes a sample; 50,000 x 776 x 1.5.
    assert data["estimate"]["formula_original_bytes"] == 58_200_000
    assert data["checkpoint"]["uri"].startswith(f"gs://{gcs_bucket.name}/team/dlckpt-small-buffer-")
    assert data["checkpoint"]["bytes"] > 100 * 16 * 16 * 3 and data["checkpoint"]["files"] == 2
    # The real save is held against the estimate for the tested buffer, every run.
    cross = data["estimate_cross_check"]
    assert cross["actual_bytes"] == data["checkpoint"]["bytes"] and cross["buffer_size"] == 100
    verification = data["verification"]
    # 100 buffered elements in batches of 4, then 10 batches more: never only the 4 asked.
    assert verification["batches_compared"] == verification["window_batches"] >= 100 // 4 + 10
    assert verification["elements_compared"] == 4 * verification["batches_compared"]
    assert verification["window_covers_buffers"] is True and verification["passed"] is True
    assert verification["risks"] == [] and verification["risks_checked"]
    assert verification["first_mismatch"] is None and verification["failure"] is None
    assert [c["source"] for c in verification["comparisons"]] == [
        "bucket (gs://, TensorFlow's filesystem)"
    ]
    assert data["checkpoint"]["writer"] == "tensorflow-gcs"
    assert data["passed"] is True and data["exit_code"] == 0
    # The run removed its own prefix after the pass and nothing else.
    names = [blob.name for blob in gcs_bucket.client.list_blobs(gcs_bucket.name)]
    assert names == ["team/keep-me.txt"]


def test_a_checkpoint_that_does_not_resume_exits_1_naming_batch_and_key(tmp_path: Path):
    (tmp_path / "aug.yaml").write_text(
        "dataloader:\n  _target_: user_pipelines.stateful_augmentation_dataset\n  shuffle_buffer_size: 1000\n"
    )
    report = tmp_path / "r.json"
    result = run_in_process(
        SCRIPT, "--config-dir", str(tmp_path), "--config-name", "aug", "--buffer-size", "20",
        "--report", str(report), env=script_env(GCS_TEST_BUCKET=str(tmp_path)),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    assert re.search(
        r"^✗ CHECKPOINT DOES NOT RESUME EXACTLY.*: batch \d+, key image: ", result.stdout, re.M
    )
    data = json.loads(report.read_text())
    assert data["verification"]["first_mismatch"]["key"] == "image"
    assert data["passed"] is False and data["exit_code"] == 1


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (["--config-name", "nope"], {}, "no such config; available: config, octo_pretrain, openvla, rlds, small"),
        (["estimate.nope=1"], {}, "Could not override 'estimate.nope'"),
        (["--buffer-size", "0"], {}, "--buffer-size='0': expected a positive integer"),
        (["dataloader.shuffle_buffer_size=lots"], {}, "dataloader.shuffle_buffer_size='lots': expected a positive integer"),
        (["--config-dir", "/nonexistent/dir"], {}, "/nonexistent/dir: no such folder"),
        ([], {"GCS_TEST_BUCKET": "s3://bucket/x"}, "expected gs://bucket[/prefix]"),
        ([], {"GCS_TEST_BUCKET": "gs://Bad_Bucket"}, "expected gs://bucket[/prefix]"),
        ([], {"GCS_TEST_BUCKET": "/nonexistent/folder"}, "no such folder"),
        (["dataloader._target_=nowhere.build"], {"GCS_TEST_BUCKET": "/tmp"}, "'nowhere.build' does not import"),
        (["--report", "/nonexistent/r.json"], {}, "--report /nonexistent/r.json: its folder does not exist"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(args, env, expected):
    result = run_script(SCRIPT, *args, env=script_env(**env))
    assert result.returncode == 2, result.stdout + result.stderr
    assert expected in _one_clear_line(result)


def test_missing_bucket_exits_2(gcs_endpoint: str):
    result = run_script(
        SCRIPT, "--config-name", "small",
        env=script_env(GCS_TEST_BUCKET="gs://no-such-bucket-here/x", STORAGE_EMULATOR_HOST=gcs_endpoint),
    )  # fmt: skip
    assert result.returncode == 2
    assert "bucket 'no-such-bucket-here' does not exist" in _one_clear_line(result)


def test_ctrl_c_leaves_nothing_in_the_run_prefix(tmp_path: Path, small_default_estimate):
    destination = tmp_path / "dest"
    destination.mkdir()
    process = subprocess.Popen(
        [sys.executable, str(SCRIPTS_DIR / SCRIPT), "--config-name", "small"],
        env=script_env(GCS_TEST_BUCKET=str(destination), PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None
    for line in process.stdout:
        if line.startswith(("✓ Copied to", "✓ Uploaded to")):
            # The checkpoint is now in the run prefix; the restore process is starting.
            assert any(destination.iterdir())
            process.send_signal(signal.SIGINT)
            break
    else:
        pytest.fail("the run never reached the copy")
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 130, stderr
    assert "interrupted" in stderr and "Traceback" not in stderr
    assert list(destination.iterdir()) == []


def test_broken_config_files_exit_2_with_one_line(tmp_path: Path):
    (tmp_path / "broken.yaml").write_text("dataloader: [unclosed\n")
    (tmp_path / "typo.yaml").write_text(
        "dataloader:\n  _target_: user_pipelines.plain_dataset\n  shuffle_buffer_size: 10\n  batch_sise: 4\n"
    )
    broken = run_script(SCRIPT, "--config-dir", str(tmp_path), "--config-name", "broken")
    assert broken.returncode == 2
    assert _one_clear_line(broken).startswith("✗ config 'broken': ")
    typo = run_script(
        SCRIPT, "--config-dir", str(tmp_path), "--config-name", "typo",
        env=script_env(GCS_TEST_BUCKET=str(tmp_path)),
    )  # fmt: skip
    assert typo.returncode == 2
    line = _one_clear_line(typo)
    assert "user_pipelines.plain_dataset does not accept these settings" in line
    assert "batch_sise" in line
    folder = run_script(SCRIPT, "--report", str(tmp_path))
    assert folder.returncode == 2
    assert "is a folder" in _one_clear_line(folder)
