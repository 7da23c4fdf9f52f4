"""The local-staging script, run as a person runs it, against a real GCS server on loopback."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import run_in_process, run_script, script_env

from dlckpt.storage.transfer import MARKER_NAME

SCRIPT = "test_dataloader_checkpoint_local_staging.py"


def _stdout_lines(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in result.stdout.splitlines() if line.strip()]


@pytest.mark.slow
def test_staged_checkpoint_is_uploaded_verified_and_restored_from_gcs(
    gcs_endpoint, gcs_client, gcs_bucket, tmp_path, small_default_estimate
):
    """A bucket the test made (not the script), reached through STORAGE_EMULATOR_HOST."""
    staging = tmp_path / "staging"
    staging.mkdir()
    gcs_bucket.blob("p/beside-the-run.txt").upload_from_string(b"not the run's")
    report = tmp_path / "report.json"
    env = script_env(
        LOCAL_STAGING_DIR=str(staging),
        GCS_TEST_BUCKET=f"gs://{gcs_bucket.name}/p",
        STORAGE_EMULATOR_HOST=gcs_endpoint,
    )
    result = run_in_process(
        SCRIPT, "--config-name", "small", "--keep", "--report", str(report), env=env
    )

    assert result.returncode == 0, result.stdout + result.stderr
    lines = _stdout_lines(result)
    assert lines[-1] == "✓ ALL TESTS PASSED"
    assert any(line.startswith("✓ Restored in a new process from the saved copy") for line in lines)
    assert any(
        line.startswith("✓ Restored in a new process from the downloaded copy") for line in lines
    )
    assert any(
        line.startswith(f"✓ Copied to gs://{gcs_bucket.name}/p/dlckpt-local-staging-")
        for line in lines
    )
    matches = [
        line
        for line in lines
        if re.match(r"✓ \d+ batches \([\d,]+ elements\) after the restore match", line)
    ]
    assert len(matches) == 2  # from the staged copy, then from the downloaded one
    assert "Traceback" not in result.stderr

    [run] = list(staging.iterdir())  # the staged copy only: the scratch folder is gone
    staged = sorted(run.iterdir())
    assert {p.name for p in staged} == {"iterator.index", "iterator.data-00000-of-00001"}
    objects = {
        blob.name: blob for blob in gcs_client.list_blobs(gcs_bucket, prefix=f"p/{run.name}/")
    }
    assert set(objects) == {f"p/{run.name}/{p.name}" for p in staged} | {
        f"p/{run.name}/{MARKER_NAME}"
    }
    for path in staged:
        assert objects[f"p/{run.name}/{path.name}"].download_as_bytes() == path.read_bytes()
    assert gcs_bucket.blob("p/beside-the-run.txt").download_as_bytes() == b"not the run's"

    data = json.loads(report.read_text())
    assert data["passed"] is True and data["exit_code"] == 0
    assert [(c["source"], c["passed"]) for c in data["verification"]["comparisons"]] == [
        ("saved copy", True),
        ("downloaded copy", True),
    ]
    assert data["checkpoint"]["uri"] == f"gs://{gcs_bucket.name}/p/{run.name}"
    assert data["checkpoint"]["bytes"] == sum(p.stat().st_size for p in staged)


@pytest.mark.slow
def test_without_a_bucket_it_stages_compares_and_cleans(tmp_path, small_default_estimate):
    staging = tmp_path / "staging"
    staging.mkdir()
    result = run_in_process(
        SCRIPT, "--config-name", "small", "--clean", env=script_env(LOCAL_STAGING_DIR=str(staging))
    )

    assert result.returncode == 0, result.stdout + result.stderr
    lines = _stdout_lines(result)
    assert any(line.startswith("Destination: none (GCS_TEST_BUCKET is not set") for line in lines)
    assert any(line.startswith("✓ Restored in a new process from the saved copy") for line in lines)
    assert not any("downloaded copy" in line for line in lines)
    assert any(line.startswith("Removed the staged copy") for line in lines)
    assert lines[-1] == "✓ ALL TESTS PASSED"
    assert list(staging.iterdir()) == []


@contextlib.contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    """Make `folder` refuse new files, even to root (chmod alone does not stop root)."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        try:
            yield
        finally:
            folder.chmod(0o755)
        return
    chattr = shutil.which("chattr")
    if (
        chattr is None
        or subprocess.run([chattr, "+i", str(folder)], capture_output=True).returncode
    ):
        pytest.skip("running as root without chattr +i: cannot make a folder read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(folder)], check=True)


BAD_INPUT = {
    "staging-unset": ({}, "LOCAL_STAGING_DIR is not set"),
    "staging-missing": ({"LOCAL_STAGING_DIR": "{tmp}/no-such-folder"}, "no such folder"),
    "staging-is-a-file": ({"LOCAL_STAGING_DIR": "{tmp}/a-file"}, "is a file, not a folder"),
    "staging-read-only": ({"LOCAL_STAGING_DIR": "{tmp}/read-only"}, "folder is not writable"),
    "bucket-malformed": ({"GCS_TEST_BUCKET": "gs://Not_A_Bucket/p"}, "bucket name 'Not_A_Bucket'"),
    "bucket-not-gs": ({"GCS_TEST_BUCKET": "s3://bucket/p"}, "expected gs://bucket[/prefix]"),
    "bucket-missing": (
        {"GCS_TEST_BUCKET": "gs://no-such-bucket-anywhere/p", "emulator": "1"},
        "does not exist",
    ),
    "credentials-missing": (
        {"GCS_TEST_BUCKET": "gs://some-real-bucket/p", "no_credentials": "1"},
        "gcloud auth application-default login",
    ),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_exits_2_with_one_line_and_leaves_nothing(
    case, gcs_endpoint, gcs_client, tmp_path
):
    settings, expected = BAD_INPUT[case]
    staging = tmp_path / "staging"
    staging.mkdir()
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "read-only").mkdir()
    env = script_env(LOCAL_STAGING_DIR=str(staging))
    for name, value in settings.items():
        if name in ("LOCAL_STAGING_DIR", "GCS_TEST_BUCKET"):
            env[name] = value.format(tmp=tmp_path)
    if case == "staging-unset":
        env.pop("LOCAL_STAGING_DIR")
    if "emulator" in settings:
        env["STORAGE_EMULATOR_HOST"] = gcs_endpoint
    if "no_credentials" in settings:  # real GCS, and nowhere to find credentials
        home = tmp_path / "home"
        home.mkdir()
        env.pop("GOOGLE_APPLICATION_CREDENTIALS", None)
        env.update(HOME=str(home), CLOUDSDK_CONFIG=str(home), NO_GCE_CHECK="True")
    buckets_before = sorted(b.name for b in gcs_client.list_buckets())

    with _read_only(tmp_path / "read-only"):
        result = run_script(SCRIPT, "--config-name", "small", env=env, timeout=60)

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert result.stderr.startswith("✗ ") and expected in result.stderr
    assert "Traceback" not in result.stderr
    assert list(staging.iterdir()) == []
    assert list((tmp_path / "read-only").iterdir()) == []
    assert sorted(b.name for b in gcs_client.list_buckets()) == buckets_before
