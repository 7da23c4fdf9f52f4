"""scripts/tests/check_disk_space.sh as a person runs it: every location, thresholds, exit codes."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, SCRIPTS_DIR, SMALL_CHEAP, script_env

SCRIPT = SCRIPTS_DIR / "check_disk_space.sh"


def _run(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environment = script_env(PYTHON=sys.executable, **env)
    for name in ("TEST_TMPDIR", "TMP", "LOCAL_STAGING_DIR"):
        if name not in env:
            environment.pop(name, None)
    return subprocess.run(
        ["bash", str(SCRIPT), *args], env=environment, cwd=ROOT, capture_output=True, text=True,
        timeout=300, check=False,
    )  # fmt: skip


def _row(out: str, label: str) -> list[str]:
    line = next(line for line in out.splitlines() if line.startswith(label))
    return line.split()


def test_help_exits_0():
    result = _run("-h")
    assert result.returncode == 0, result.stderr
    assert "Usage: check_disk_space.sh" in result.stdout and "--config-name NAME" in result.stdout


def test_every_location_is_reported_and_a_small_disk_fails(small_disk, tmp_path):
    staging = tmp_path / "staging"
    staging.mkdir()
    result = _run(
        "--for", "small", "--small", "100MB", TMPDIR=str(small_disk), LOCAL_STAGING_DIR=str(staging)
    )
    assert result.returncode == 1, result.stdout + result.stderr
    out = result.stdout
    assert "small-buffer test needs 95.4 MiB" in out
    tf_row = _row(out, "TensorFlow temp folder (TMPDIR)")
    assert str(small_disk) in tf_row and tf_row[-4:] == ["NOT", "OK", "NOT", "OK"]
    assert "MiB" in tf_row  # the tmpfs's ~20 MiB
    for label in ("/tmp ", "LOCAL_STAGING_DIR", "home", "current folder", "RAM (available)"):
        assert _row(out, label), label
    assert str(staging) in _row(out, "LOCAL_STAGING_DIR")
    assert "✗ a location does not fit" in out

    fits = _run("--for", "small", "--small", "1MB", TMPDIR=str(small_disk))
    assert fits.returncode == 0, fits.stdout
    assert _row(fits.stdout, "TensorFlow temp folder (TMPDIR)")[-3:] == ["OK", "NOT", "OK"]


def test_test_tmpdir_overriding_tmpdir_is_named(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    result = _run("--for", "small", "--small", "1KB", TEST_TMPDIR=str(a), TMPDIR=str(b))
    assert result.returncode == 0, result.stdout + result.stderr
    assert str(a) in _row(result.stdout, "TensorFlow temp folder (TEST_TMPDIR)")
    assert f"TEST_TMPDIR={a} silently overrides TMPDIR={b}" in result.stdout


@pytest.mark.parametrize(
    "args, expected",
    [
        (["--small", "12XB"], "--small '12XB': expected a size such as"),
        (["--small", "1,5GB"], "--small '1,5GB': commas are ambiguous"),
        (["--small", "0"], "--small '0': expected a size above zero"),
        (["--for", "never"], "argument --for: invalid choice: 'never'"),
        (["--what"], "unrecognized arguments: --what"),
        (["stray"], "unknown argument 'stray'"),
        (["--small"], "argument --small: expected one argument"),
        (["--full"], "argument --full: expected one argument"),
        (["--for"], "argument --for: expected one argument"),
        (["--config-name"], "argument --config-name: expected one argument"),
        (["--config-dir"], "argument --config-dir: expected one argument"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, expected):
    result = _run(*args)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert result.stdout == ""


def test_huge_sizes_do_not_overflow_into_ok(tmp_path):
    """Past 2^63 bytes bash's arithmetic wrapped to a negative need, so every row was OK."""
    for size in ("9223372036854775808", "18446744073709551617", "99999999TB"):
        result = _run("--for", "small", "--small", size, TMPDIR=str(tmp_path))
        assert result.returncode == 1, (size, result.stdout + result.stderr)
        assert _row(result.stdout, "TensorFlow temp folder (TMPDIR)")[-4:-2] == ["NOT", "OK"]


def test_a_missing_staging_folder_is_reported_missing_not_measured_at_its_parent(tmp_path):
    missing = tmp_path / "no-such-staging"
    result = _run("--small", "1KB", "--full", "1KB", LOCAL_STAGING_DIR=str(missing))
    assert result.returncode == 1, result.stdout + result.stderr
    assert _row(result.stdout, "LOCAL_STAGING_DIR") == [
        "LOCAL_STAGING_DIR",
        str(missing),
        "missing",
        "NOT",
        "OK",
        "NOT",
        "OK",
    ]
    assert f"✗ LOCAL_STAGING_DIR={missing}: no such folder" in result.stdout
    assert not missing.exists()


@pytest.mark.parametrize(("processes", "code"), [(8, 1), (1, 0)])
def test_the_jobs_env_file_is_checked_not_this_shells(small_disk, tmp_path, processes, code):
    """The job stages in a 20 MB tmpfs with 8 processes a host; this shell's TMPDIR is roomy.
    3 MB a process fits the tmpfs once, not eight times."""
    env_file = tmp_path / "job.env"
    env_file.write_text(f"TMPDIR={small_disk}\nLOCAL_WORLD_SIZE={processes}\nHOME={tmp_path}\n")
    result = _run(
        "--for", "full", "--small", "1KB", "--full", "3MB", "--env-file", str(env_file),
        TMPDIR=str(tmp_path),
    )  # fmt: skip
    assert result.returncode == code, result.stdout + result.stderr
    out = result.stdout
    assert f"checked in the job's environment (--env-file {env_file})" in out
    tf_row = _row(out, "TensorFlow temp folder (TMPDIR)")
    assert tf_row[4] == str(small_disk)
    if processes == 8:
        assert "full test 22.9 MiB (8 processes per host × 2.9 MiB: LOCAL_WORLD_SIZE=8)" in out
        assert tf_row[-2:] == ["NOT", "OK"]
    else:
        assert "full test 2.9 MiB" in out and tf_row[-1] == "OK"
    assert _row(out, "home")[1] == str(tmp_path)


def test_thresholds_come_from_the_measured_estimate(small_estimate_cache):
    cache, _ = small_estimate_cache  # the session's measured estimate (SMALL_CHEAP)
    result = _run(
        "--config-name", "small", "--for", "small", *SMALL_CHEAP, XDG_CACHE_HOME=str(cache)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    runtime, first = result.stdout.splitlines()[:2]
    assert runtime.startswith(f"Runtime: Python {sys.version.split()[0]} ({sys.executable})")
    assert first.startswith(
        "thresholds: measured estimate of --config-name small; small-buffer test needs "
    )
    assert " KiB, full test " in first  # the small preset's checkpoints are a few hundred KB


def test_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    if not Path(shellcheck).exists():
        pytest.skip("shellcheck is not installed (it is in the lint group)")
    result = subprocess.run([shellcheck, str(SCRIPT)], capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stdout


def test_bad_input_a_missing_interpreter_is_exit_2_with_one_line():
    done = subprocess.run(
        ["bash", str(SCRIPT)], capture_output=True, text=True, check=False, timeout=60,
        env=script_env(PYTHON="/no/such/python3"),
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "✗ PYTHON=/no/such/python3: no such interpreter (expected the path of a python3, or unset)"
    ]
    assert done.stdout == ""
