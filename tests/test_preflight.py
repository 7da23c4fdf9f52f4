"""The preflight guard on a real small disk (a 20 MB tmpfs), the locations, TF's temp folder."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from conftest import run_script, script_env

SCRIPT = "test_dataloader_checkpoint_small_buffer.py"
# 64x64 + 16x16 frames, window 2: ~26 KB a sample, so a 5,000-element buffer needs ~100 MB.
BIG_BUFFER = [
    "--buffer-size",
    "5000",
    "dataloader.image_size=64",
    "estimate.calibration_buffer_sizes=[8,32]",  # a cheap calibration: still measured
    "estimate.calibration_offsets=[0]",
]
# The script runs here share one estimate cache (script_estimate_cache) on one pytest-xdist
# worker (--dist=loadgroup): the calibration is measured once.
pytestmark = pytest.mark.xdist_group("preflight")


def _refusal(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 3, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_a_save_that_cannot_fit_is_refused_with_exit_3_naming_the_path(
    small_disk, tmp_path, script_estimate_cache
):
    report = tmp_path / "r.json"
    env = script_env(TMPDIR=str(small_disk), XDG_CACHE_HOME=script_estimate_cache)
    env.pop("TEST_TMPDIR", None)
    env.pop("TMP", None)
    result = run_script(
        SCRIPT, "--config-name", "small", "--report", str(report), *BIG_BUFFER, env=env
    )
    line = _refusal(result)
    assert line.startswith("✗ PREFLIGHT REFUSED: ")
    assert f"{small_disk}: needs " in line and " free" in line
    assert "dataloader.shuffle_buffer_size=" in line and "make small-buffer" in line
    assert "export TMPDIR=" in line  # another disk with room exists on any test machine
    # It stopped before the round trip, and left nothing in the folder it checked.
    assert "Saved the iterator" not in result.stdout
    assert list(small_disk.iterdir()) == []
    table = result.stdout
    assert "NOT OK" in table and str(small_disk) in table

    # The buffer it proposes does fit: the same run with it passes the preflight.
    proposed = line.split("dataloader.shuffle_buffer_size=")[1].split(" ")[0].replace(",", "")
    fits = run_script(
        SCRIPT, "--config-name", "small", "--estimate-only", *BIG_BUFFER[2:],
        "--buffer-size", proposed, env=env,
    )  # fmt: skip
    assert fits.returncode == 0, fits.stdout + fits.stderr
    assert "NOT OK" not in fits.stdout


def test_force_runs_past_the_refusal(small_disk, tmp_path, script_estimate_cache):
    env = script_env(TMPDIR=str(small_disk), XDG_CACHE_HOME=script_estimate_cache)
    report = tmp_path / "r.json"
    result = run_script(
        SCRIPT, "--config-name", "small", "--estimate-only", "--force", "--report", str(report),
        *BIG_BUFFER, env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "PREFLIGHT WOULD REFUSE (--force)" in result.stdout
    rows = json.loads(report.read_text())["locations"]
    on_small_disk = [row for row in rows if row["path"] == str(small_disk)]
    assert on_small_disk and not any(row["ok"] for row in on_small_disk)
    assert all(row["free_bytes"] <= 20 * 2**20 for row in on_small_disk)
    assert list(small_disk.iterdir()) == []


def test_rows_on_one_disk_are_checked_against_their_sum(small_disk):
    from dlckpt.preflight.locations import Location, check_locations

    one = check_locations([Location("scratch", str(small_disk), 12_000_000)])
    assert one[0].ok and 0 < one[0].free_bytes <= 20 * 2**20
    two = check_locations(
        [
            Location("scratch", str(small_disk), 12_000_000),
            Location("download", str(small_disk / "sub"), 12_000_000),
        ]
    )
    assert [row.ok for row in two] == [False, False]
    assert list(small_disk.iterdir()) == []  # checking writes nothing, not even the sub folder


def test_tf_temp_folder_is_resolved_as_tensorflow_does(tmp_path):
    from dlckpt.tempdir import tf_temp_dir

    a, b, c = (tmp_path / name for name in "abc")
    for folder in (a, b, c):
        folder.mkdir()
    path, variable, warning = tf_temp_dir({"TEST_TMPDIR": str(a), "TMPDIR": str(b), "TMP": str(c)})
    assert (path, variable) == (str(a), "TEST_TMPDIR")
    assert f"TEST_TMPDIR={a} silently overrides TMPDIR={b}" in warning
    assert tf_temp_dir({"TMPDIR": str(b), "TMP": str(c)}) == (str(b), "TMPDIR", None)
    assert tf_temp_dir({"TMPDIR": str(tmp_path / "missing"), "TMP": str(c)}) == (
        str(c),
        "TMP",
        None,
    )
    assert tf_temp_dir({}) == ("/tmp", "default", None)
    assert tf_temp_dir({"TEST_TMPDIR": str(a), "TMPDIR": str(a)})[2] is None


def test_ram_that_cannot_hold_the_buffer_is_refused():
    import psutil

    from dlckpt.errors import PreflightRefusal
    from dlckpt.estimate.estimator import EstimateResult
    from dlckpt.preflight.locations import RAM, RAM_ROW, Location, check_locations, preflight

    available = psutil.virtual_memory().available
    per_sample = 1_000_000
    buffer = available // per_sample * 2
    estimate = EstimateResult(
        method="formula", original_buffer=buffer, tested_buffer=buffer,
        original_bytes=buffer * per_sample, tested_bytes=buffer * per_sample,
        formula_original_bytes=buffer * per_sample, formula_tested_bytes=buffer * per_sample,
        bytes_per_sample=per_sample, bytes_per_sample_source="test",
    )  # fmt: skip

    def rows_at(sized):  # type: ignore[no-untyped-def]
        return [Location(RAM_ROW, RAM, sized.ram_bytes_for(sized.tested_buffer))]

    rows = check_locations(rows_at(estimate))
    assert not rows[0].ok
    with pytest.raises(PreflightRefusal) as refused:
        preflight(rows, estimate, rows_at, force=False)
    message = str(refused.value)
    assert message.startswith(f"{RAM_ROW}: needs ")
    largest = int(
        message.split("dataloader.shuffle_buffer_size=")[1].split(" ")[0].replace(",", "")
    )
    assert 0 < largest * per_sample <= available
    # --force turns the same refusal into a warning. Available RAM moves between the two
    # calls (other test workers run beside this one), so the figures may differ by a few.
    forced = preflight(rows, estimate, rows_at, force=True)
    assert [re.sub(r"[\d,.]+", "N", m) for m in forced] == [re.sub(r"[\d,.]+", "N", message)]
