"""make diagnose: each cause of `Could not append to the internal temporary file` made real.

Small tmpfs mounts stand in for the job's temp folder (we run as root; each test skips with
the reason where mounting is refused). The checkpoint size is the project's measured
estimate of the `small` config, measured once per session and cached.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import re
import resource
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import ROOT, SMALL_CHEAP, run_script, script_env, tmpfs_mount

from dlckpt.units import format_size

SCRIPT = "./diagnose.py"  # run_script: a "/" means relative to scripts/
SMALL = ["--config-name", "small", *SMALL_CHEAP]
NO_TEMP_VARIABLES = ["TEST_TMPDIR=", "TMPDIR=", "TMP="]


@pytest.fixture
def cached(small_estimate_cache, monkeypatch: pytest.MonkeyPatch):
    """The session's estimate, with its cache in effect for in-process runs."""
    cache, result = small_estimate_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    return result


def _buffer_needing(result, at_most: int) -> int:
    """The largest buffer whose estimated checkpoint (the central figure) is within `at_most`."""
    low, high = 1, 2
    while result.bytes_for(high) <= at_most:
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if result.bytes_for(middle) <= at_most else (low, middle)
    assert low >= 8, at_most
    return low


@pytest.fixture
def tmpfs_4m(tmp_path: Path) -> Iterator[Path]:
    """A real 4 MiB tmpfs."""
    with tmpfs_mount(tmp_path / "small-tmpfs", "size=4m") as folder:
        yield folder


def _diagnose(capsys, *args: str) -> tuple[int, list[str], dict]:
    """Run diagnose.main in this process; (exit code, stdout lines, report)."""
    from diagnose import main

    report = Path(os.environ["XDG_CACHE_HOME"]).parent / f"report-{os.getpid()}.json"
    report.unlink(missing_ok=True)
    code = main([*SMALL, "--report", str(report), *args])
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return code, out.out.splitlines(), json.loads(report.read_text())


PASS = "✓ THIS CONFIG FITS WHERE THE JOB STAGES ITS SAVES: "


def _most_likely(lines: list[str]) -> str:
    """The MOST LIKELY CAUSE line: the last one, or the one before the ✓ pass line when no
    cause was found (and only then)."""
    found = not lines[-1].startswith(PASS)
    line = lines[-1] if found else lines[-2]
    assert line.startswith("MOST LIKELY CAUSE: "), lines[-5:]
    assert found != line.startswith("MOST LIKELY CAUSE: nothing here explains it"), lines[-5:]
    return line


def test_a_pipeline_that_fits_everywhere_is_not_explained(small_estimate_cache, tmp_path):
    """A real process whose TMPDIR has room: exit 0, 'nothing here explains it', next steps."""
    cache, result = small_estimate_cache
    big = tmp_path / "big"
    big.mkdir()
    env = script_env(XDG_CACHE_HOME=str(cache), TMPDIR=str(big))
    env.pop("TEST_TMPDIR", None)
    env.pop("TMP", None)
    report = tmp_path / "r.json"
    completed = run_script(SCRIPT, *SMALL, "--report", str(report), env=env)
    assert completed.returncode == 0, completed.stdout + completed.stderr
    lines = completed.stdout.splitlines()
    assert _most_likely(lines).startswith("MOST LIKELY CAUSE: nothing here explains it")
    assert f"fits in TMPDIR={big}" in lines[-2]
    # What someone checking a fix reads last: the config fits, for the environment read.
    assert lines[-1].startswith(PASS) and f"fits in TMPDIR={big} (" in lines[-1]
    assert "environment: this shell" in lines[-1]
    assert "Next things to try:" in completed.stdout
    data = json.loads(report.read_text())
    assert data["exit_code"] == 0 and data["cause_found"] is False
    assert data["checkpoint_bytes"] == result.original_bytes
    assert data["temp_folder"]["path"] == str(big)
    assert {f["verdict"] for f in data["findings"]} <= {"ruled out", "cannot tell"}


def test_a_small_tmpfs_as_tmpdir(cached, tmpfs_4m, capsys):
    buffer = 1000
    code, lines, report = _diagnose(
        capsys, f"dataloader.shuffle_buffer_size={buffer}", *NO_TEMP_VARIABLES,
        f"TMPDIR={tmpfs_4m}",
    )  # fmt: skip
    need = cached.bytes_for(buffer)
    assert need > 4 * 2**20 and report["checkpoint_bytes"] == need
    assert code == 1
    line = _most_likely(lines)
    assert line.startswith(f"MOST LIKELY CAUSE: TMPDIR={tmpfs_4m} (a 4.0 MiB tmpfs")
    assert line.endswith(f"the checkpoint needs {format_size(need)} there")
    # The fixes: a folder with room, and a buffer whose measured checkpoint fits this one.
    fix = report["findings"][0]["fix"]
    assert "export TMPDIR=" in fix
    found = re.search(
        r"dataloader\.shuffle_buffer_size=([\d,]+) \(a (.+?) checkpoint per process: fits ", fix
    )
    assert found, fix
    smaller = int(found.group(1).replace(",", ""))
    assert found.group(2) == format_size(cached.bytes_for(smaller))
    # It fits with the advice's margin at the upper end of the estimate's ±.
    upper = cached.bytes_for(smaller) * (1 + cached.uncertainty_for(smaller))
    assert upper <= 0.9 * report["temp_folder"]["free_bytes"]


def test_test_tmpdir_over_a_big_tmpdir_from_the_jobs_env_file(cached, tmpfs_4m, tmp_path, capsys):
    big = tmp_path / "big"
    big.mkdir()
    env_file = tmp_path / "job.env"
    env_file.write_text(f"HOME=/root\nexport TEST_TMPDIR='{tmpfs_4m}'\nTMPDIR={big}\n# comment\n")
    code, lines, report = _diagnose(
        capsys, "dataloader.shuffle_buffer_size=1000", "--env-file", str(env_file)
    )
    assert code == 1
    line = _most_likely(lines)
    assert line.startswith(f"MOST LIKELY CAUSE: TEST_TMPDIR={tmpfs_4m} (a 4.0 MiB tmpfs")
    assert f"overrides TMPDIR={big} (" in line
    assert line.endswith(f"the checkpoint needs {format_size(report['checkpoint_bytes'])} there")
    # Only the job's variables are read: its HOME (for fix folders it can write), not "# comment".
    assert report["environment"] == {
        "HOME": "/root", "TEST_TMPDIR": str(tmpfs_4m), "TMPDIR": str(big)
    }  # fmt: skip
    assert "unset TEST_TMPDIR" in "\n".join(lines)


def test_leftover_staging_files_filling_a_smalltmpfs_mount(cached, tmpfs_4m, capsys):
    leftovers = [tmpfs_4m / f"tmp_file_tensorflow_{i}_1764460000" for i in (1, 2, 3)]
    for path in leftovers:
        path.write_bytes(os.urandom(1_000_000))  # 3 MB of killed saves' staging files
    free = os.statvfs(tmpfs_4m).f_bavail * os.statvfs(tmpfs_4m).f_frsize
    buffer = _buffer_needing(cached, 2_000_000)
    need = cached.bytes_for(buffer)
    assert free < need <= free + 3_000_000  # fits only once the leftovers are gone
    code, lines, _ = _diagnose(
        capsys, f"dataloader.shuffle_buffer_size={buffer}", *NO_TEMP_VARIABLES,
        f"TMPDIR={tmpfs_4m}",
    )  # fmt: skip
    assert code == 1
    line = _most_likely(lines)
    assert line.startswith("MOST LIKELY CAUSE: 3 leftover tmp_file_tensorflow_* file(s) hold ")
    assert f"of {tmpfs_4m} (a 4.0 MiB tmpfs" in line
    assert "find " in "\n".join(lines) and "-delete" in "\n".join(lines)  # printed, not run
    assert all(path.stat().st_size == 1_000_000 for path in leftovers)  # nothing deleted


def test_eight_processes_per_host_against_a_folder_that_holds_one(cached, tmpfs_4m, capsys):
    buffer = _buffer_needing(cached, 1_000_000)
    need = cached.bytes_for(buffer)
    free = os.statvfs(tmpfs_4m).f_bavail * os.statvfs(tmpfs_4m).f_frsize
    assert need <= free < 8 * need
    code, lines, report = _diagnose(
        capsys, f"dataloader.shuffle_buffer_size={buffer}", "estimate.processes_per_host=8",
        *NO_TEMP_VARIABLES, f"TMPDIR={tmpfs_4m}",
    )  # fmt: skip
    assert code == 1
    line = _most_likely(lines)
    assert line.startswith(
        f"MOST LIKELY CAUSE: 8 processes per host each stage {format_size(need)}"
    )
    assert f"together they need {format_size(8 * need)}" in line
    assert report["processes_per_host"] == 8
    # One process fits the same folder: nothing explains a failure then.
    code, lines, _ = _diagnose(
        capsys, f"dataloader.shuffle_buffer_size={buffer}", "estimate.processes_per_host=1",
        *NO_TEMP_VARIABLES, f"TMPDIR={tmpfs_4m}",
    )  # fmt: skip
    assert code == 0 and "nothing here explains it" in _most_likely(lines)
    assert lines[-1].startswith(PASS) and "(8 processes" not in lines[-1]
    # What to try next leaves out what was given: the variables and the process count.
    hints = "\n".join(lines)
    assert "pass its variables" not in hints and "set estimate.processes_per_host" not in hints
    assert "run `make diagnose` there" in hints


def test_an_inode_exhaustedtmpfs_mount(cached, tmp_path, capsys):
    with tmpfs_mount(tmp_path / "no-inodes", "size=4m,nr_inodes=16") as folder:
        for index in range(64):
            try:
                (folder / f"f{index}").touch()
            except OSError as error:
                assert error.errno == errno.ENOSPC
                break
        assert os.statvfs(folder).f_favail == 0
        code, lines, _ = _diagnose(
            capsys, "dataloader.shuffle_buffer_size=64", *NO_TEMP_VARIABLES, f"TMPDIR={folder}"
        )
    assert code == 1
    line = _most_likely(lines)
    assert line.startswith(f"MOST LIKELY CAUSE: TMPDIR={folder} (tmpfs) has 0 free inodes of 16")


def test_a_file_size_limit_in_the_process(small_estimate_cache, tmp_path):
    """A real `ulimit -f` (RLIMIT_FSIZE) in the diagnosing process, below the checkpoint."""
    cache, result = small_estimate_cache
    limit = 1_000_000
    assert result.bytes_for(1000) > limit
    env = script_env(XDG_CACHE_HOME=str(cache), TMPDIR=str(tmp_path))
    env.pop("TEST_TMPDIR", None)
    env.pop("TMP", None)

    def limit_file_size() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    completed = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "diagnose.py"), *SMALL,
         "dataloader.shuffle_buffer_size=1000"],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300, check=False,
        preexec_fn=limit_file_size,
    )  # fmt: skip
    assert completed.returncode == 1, completed.stdout + completed.stderr
    line = _most_likely(completed.stdout.splitlines())
    assert line.startswith(
        f"MOST LIKELY CAUSE: the file-size limit (ulimit -f) is {format_size(limit)}"
    )


def test_a_given_checkpoint_size_skips_the_measurement(tmpfs_4m, capsys, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmpfs_4m.parent / "no-cache"))
    code, lines, report = _diagnose(
        capsys, "--checkpoint-size", "91MB", *NO_TEMP_VARIABLES, f"TEST_TMPDIR={tmpfs_4m}"
    )
    assert code == 1
    assert report["checkpoint_bytes"] == 91_000_000
    assert report["checkpoint_source"] == "--checkpoint-size"
    assert not any("Measuring the checkpoint size" in line for line in lines)
    assert _most_likely(lines) == (
        f"MOST LIKELY CAUSE: TEST_TMPDIR={tmpfs_4m} (a 4.0 MiB tmpfs, 4.0 MiB free) is too small; "
        "the checkpoint needs 86.8 MiB there"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--env-file", "/no/such/job.env"], "--env-file /no/such/job.env: cannot read it"),
        (
            ["estimate.processes_per_host=0"],
            "estimate.processes_per_host=0: expected an integer >= 1",
        ),
        (["--checkpoint-size", "12XB"], "--checkpoint-size '12XB': expected a size"),
    ],
)
def test_bad_input_exits_2_with_one_line(args, message, tmp_path):
    report = tmp_path / "r.json"
    completed = run_script(
        SCRIPT, *SMALL, "--report", str(report), *args, env=script_env(), timeout=120
    )
    assert completed.returncode == 2, completed.stdout + completed.stderr
    assert message in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    assert json.loads(report.read_text())["exit_code"] == 2  # the report is written on every exit


def test_env_file_formats(tmp_path):
    from dlckpt.errors import UsageError
    from dlckpt.job_env import job_environment, parse_env_file

    shell = tmp_path / "job.env"
    shell.write_text("export TMPDIR=\"/scratch/a b\"\nTMP='/t'\n\nPATH=/bin\n")
    assert parse_env_file(shell) == {"TMPDIR": "/scratch/a b", "TMP": "/t", "PATH": "/bin"}
    environ = tmp_path / "environ"  # a copy of /proc/PID/environ
    environ.write_bytes(b"TEST_TMPDIR=/x\0TMPDIR=/y\0")
    assert parse_env_file(environ) == {"TEST_TMPDIR": "/x", "TMPDIR": "/y"}
    env, source = job_environment(environ, {"TMPDIR": "", "TMP": "/z"}, {"TMPDIR": "/shell"})
    assert env == {"TEST_TMPDIR": "/x", "TMP": "/z"}  # `KEY=` unsets, the shell is not used
    assert source.startswith(f"--env-file {environ}")
    bad = tmp_path / "bad.env"
    bad.write_text("1TMPDIR=/x\n")
    with pytest.raises(UsageError, match=r"line 1: '1TMPDIR=/x' is not KEY=VALUE"):
        parse_env_file(bad)


def test_a_fix_folder_is_one_the_jobs_user_can_write(tmpfs_4m, tmp_path):
    """Run as root for a job that runs as `nobody` with HOME=/root (mode 700): /root is no
    fix for that job. Its own HOME (owned by it) is, and /tmp (sticky, world-writable)."""
    from dlckpt.tempdir import roomy_folder

    assert os.geteuid() == 0 and (os.stat("/root").st_mode & 0o777) == 0o700
    job_root = roomy_folder(1, str(tmpfs_4m), {"USER": "nobody", "HOME": "/root"})
    assert job_root is not None and job_root[0] != "/root"
    assert roomy_folder(1, str(tmpfs_4m), {"HOME": "/root"}) == (
        "/root",
        pytest.approx(job_root[1], rel=0.01),
    )  # this shell's own user (root) may write it
    nobody = pwd.getpwnam("nobody")
    home = Path(tempfile.mkdtemp(prefix="home-of-nobody-", dir="/tmp"))  # /tmp: reachable
    try:
        os.chown(home, nobody.pw_uid, nobody.pw_gid)
        found = roomy_folder(1, str(tmpfs_4m), {"USER": "nobody", "HOME": str(home)})
        assert found is not None and found[0] == str(home)
        # The same folder where that user cannot reach it (tmp_path's parents are mode 700).
        hidden = tmp_path / "hidden-home"
        hidden.mkdir()
        os.chown(hidden, nobody.pw_uid, nobody.pw_gid)
        found = roomy_folder(1, str(tmpfs_4m), {"USER": "nobody", "HOME": str(hidden)})
        assert found is not None and found[0] != str(hidden)
    finally:
        home.rmdir()
    # A user this host does not know (the job's container): only what every user may write.
    roots = Path(tempfile.mkdtemp(prefix="home-of-root-", dir="/tmp"))  # reachable by all
    try:
        roots.chmod(0o755)  # root's, not writable by others
        unknown = {"USER": "trainer-not-on-this-host", "HOME": str(roots)}
        found = roomy_folder(1, str(tmpfs_4m), unknown)
        assert found is not None and found[0] != str(roots)
        roots.chmod(0o777)
        assert roomy_folder(1, str(tmpfs_4m), unknown) == (
            str(roots),
            pytest.approx(found[1], rel=0.01),
        )
    finally:
        roots.rmdir()


def test_other_writers_leave_out_tensorflows_own_files(tmp_path):
    """AutoGraph's generated files (this tool's own measurement writes them) and staging
    leftovers are not "other writers"; a real recent file is, counted by its blocks."""
    from dlckpt.diagnose.checks import _recent_other_bytes

    (tmp_path / "__autograph_generated_filexyz12.py").write_bytes(b"x" * 50_000)
    (tmp_path / "tmp_file_tensorflow_0_abc").write_bytes(b"x" * 50_000)
    nested = tmp_path / "other-job"
    nested.mkdir()
    (nested / "shard.bin").write_bytes(os.urandom(200_000))
    total, count, scanned, capped = _recent_other_bytes(str(tmp_path))
    assert count == 1 and 200_000 <= total < 300_000
    assert scanned == 4 and not capped
