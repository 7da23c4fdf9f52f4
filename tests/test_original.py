"""The original full-buffer script: saved to gs:// by TensorFlow, staged in its temp folder."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from conftest import SCRIPTS_DIR, run_script, script_env

from dlckpt.units import format_size

SCRIPT = "test_dataloader_checkpoint.py"


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


@pytest.mark.slow
def test_round_trip_under_the_tensorflow_temp_folder(tmp_path, small_default_estimate):
    """TMPDIR from the environment picks the folder; the embedded GCS server is the destination."""
    temp = tmp_path / "tf-temp"
    temp.mkdir()
    report = tmp_path / "report.json"
    result = run_script(
        SCRIPT, "--config-name", "small", "--report", str(report), env=script_env(TMPDIR=str(temp))
    )

    assert result.returncode == 0, result.stdout + result.stderr
    lines = _lines(result.stdout)
    assert f"TensorFlow temp folder: {temp.resolve()} (from TMPDIR)" in lines
    assert any(
        line.startswith("Destination: embedded GCS server at http://127.0.0.1:") for line in lines
    )
    [saved] = [line for line in lines if line.startswith("✓ Saved the iterator after 3 batches")]
    assert saved.startswith("✓ Saved the iterator after 3 batches straight to gs://dlckpt-test/")
    assert f"(staged in {temp.resolve()} from TMPDIR, " in saved
    assert any(line.startswith("✓ Restored in a new process from the bucket") for line in lines)
    assert lines[-1] == "✓ ALL TESTS PASSED"
    assert list(temp.iterdir()) == []  # the run's scratch folder is gone

    data = json.loads(report.read_text())
    assert data["passed"] is True
    assert data["tensorflow_temp_dir"] == {"path": str(temp.resolve()), "source": "TMPDIR"}
    assert data["checkpoint"]["uri"].startswith("gs://dlckpt-test/dlckpt-original-")
    assert data["checkpoint"]["writer"] == "tensorflow-gcs"
    assert data["checkpoint"]["tf_temp_dir"] == str(temp.resolve())
    # Polled every 20 ms: this small checkpoint's staging files may come and go unseen, and
    # then the line must say so rather than print a size of 0.
    peak = data["checkpoint"]["tf_temp_peak_bytes"]
    if peak is None:
        assert saved.endswith("too brief to see when polled every 20 ms)")
    else:
        assert 0 < peak <= data["checkpoint"]["bytes"]
        assert saved.endswith(f", at most {format_size(peak)})")
    sources = [c["source"] for c in data["verification"]["comparisons"]]
    assert sources == ["bucket (gs://, TensorFlow's filesystem)"]


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs RLIMIT_FSIZE")
def test_a_save_that_runs_out_of_room_ends_with_the_figure_and_the_fix(
    tmp_path, small_default_estimate
):
    """A file-size limit makes TensorFlow's checkpoint write fail as a full disk would."""
    import resource

    # The run fills a 400-element buffer (~3 MB checkpoint); the preflight's calibration
    # saves at most 64 elements (~0.6 MB), so only the run's own save hits the limit.
    limit = 1_500_000

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    temp = tmp_path / "tf-temp"
    temp.mkdir()
    script = str(SCRIPTS_DIR / SCRIPT)
    result = subprocess.run(
        [
            sys.executable,
            script,
            "--config-name",
            "small",
            "--tmpdir",
            str(temp),
            "dataloader.shuffle_buffer_size=400",
        ],
        env=script_env(),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        preexec_fn=limit_file_size,
    )

    assert result.returncode == 1, result.stdout + result.stderr
    [failure] = [line for line in _lines(result.stdout + result.stderr) if line.startswith("✗")]
    # TensorFlow's gs:// writer stages the file in --tmpdir and cannot append past the limit.
    assert failure.startswith(
        f"✗ CHECKPOINT DID NOT FIT: TensorFlow's gs:// writer stages each checkpoint file in "
        f"TMPDIR={temp.resolve()} and ran out of room "
        "(Could not append to the internal temporary file): needs ~"
    ), failure
    assert "Fixes: export TMPDIR=" in failure
    assert "Traceback" not in result.stderr and "INTERNAL:" not in result.stdout + result.stderr
    assert list(temp.iterdir()) == []


def test_preflight_refuses_a_checkpoint_that_cannot_fit(tmp_path, small_default_estimate):
    """A buffer no disk can hold: exit 3 before anything is filled or saved."""
    temp = tmp_path / "tf-temp"
    temp.mkdir()
    result = run_script(
        SCRIPT, "--config-name", "small", "dataloader.shuffle_buffer_size=100000000000",
        env=script_env(TMPDIR=str(temp)), timeout=120,
    )  # fmt: skip

    assert result.returncode == 3, result.stdout + result.stderr
    assert len(_lines(result.stderr)) == 1
    assert result.stderr.startswith("✗ PREFLIGHT REFUSED: ")
    assert str(temp.resolve()) in result.stderr and "Fixes: " in result.stderr
    assert "Traceback" not in result.stderr
    assert list(temp.iterdir()) == []


@pytest.mark.parametrize(
    ("args", "extra_env", "expected"),
    [
        (["--tmpdir", "/no/such/folder"], {}, "--tmpdir=/no/such/folder: no such folder"),
        ([], {"GCS_TEST_BUCKET": "gs://bucket//p"}, "empty, '.' or '..' segment"),
    ],
    ids=["tmpdir-missing", "bucket-malformed"],
)
def test_bad_input_exits_2_with_one_line(args, extra_env, expected, tmp_path):
    result = run_script(
        SCRIPT, "--config-name", "small", *args, env=script_env(**extra_env), timeout=60
    )

    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stdout == ""
    assert _lines(result.stderr) == [result.stderr.strip()]
    assert result.stderr.startswith("✗ ") and expected in result.stderr
