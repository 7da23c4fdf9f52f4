"""make estimate answers for the configured buffer (what training saves) before the test's own."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from conftest import SMALL_CHEAP, tmpfs_mount

from dlckpt.units import format_size

CONFIGURED = 3000  # ~24 MB of checkpoint for the `small` frames; the test buffer stays 16


@pytest.fixture
def estimate_only(small_estimate_cache, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys):
    """Run the small-buffer script's --estimate-only in this process: (exit, lines, report)."""
    from test_dataloader_checkpoint_small_buffer import main

    cache, result = small_estimate_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    for name in ("TEST_TMPDIR", "TMP"):
        monkeypatch.delenv(name, raising=False)

    def run(*args: str) -> tuple[int, list[str], dict]:
        report = tmp_path / "r.json"
        code = main(
            ["--config-name", "small", *SMALL_CHEAP, f"dataloader.shuffle_buffer_size={CONFIGURED}",
             "--estimate-only", "--report", str(report), *args]
        )  # fmt: skip
        return code, capsys.readouterr().out.splitlines(), json.loads(report.read_text())

    return result, run


def test_the_configured_buffer_comes_first_and_fits_in_one_line(
    estimate_only, tmp_path, monkeypatch
):
    result, run = estimate_only
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    monkeypatch.setenv("TMPDIR", str(roomy))
    code, lines, report = run()
    assert code == 0
    need = format_size(result.bytes_for(CONFIGURED))
    heading = f"Where the configured buffer's checkpoint goes ({CONFIGURED:,} elements, what training saves):"
    first = lines.index(heading)
    assert lines[first + 3].startswith("TensorFlow temp folder for gs:// writes (TMPDIR)")
    assert f" {roomy} " in lines[first + 3] and f" {need} " in lines[first + 3]
    fits = next(line for line in lines if line.startswith("✓ THE CONFIGURED BUFFER FITS"))
    assert fits.startswith(
        f"✓ THE CONFIGURED BUFFER FITS: shuffle_buffer_size {CONFIGURED:,} writes a {need} "
        f"checkpoint, which fits {roomy} ("
    )
    assert "make diagnose" in fits
    # The production answer precedes the test's own table.
    assert lines.index(fits) < lines.index(
        "The folders a test run would fill (buffer 16; --estimate-only fills none):"
    )
    assert report["configured_fits"] is True
    assert report["configured_locations"][0]["required_bytes"] == result.bytes_for(CONFIGURED)
    assert report["configured_locations"][0]["path"] == str(roomy)


def test_a_configured_buffer_that_does_not_fit_says_so_and_fit_budget_answers_for_it(
    estimate_only, tmp_path, monkeypatch
):
    result, run = estimate_only
    with tmpfs_mount(tmp_path / "tmpfs", "size=4m") as small:
        monkeypatch.setenv("TMPDIR", str(small))
        code, lines, report = run("--fit-budget")
    assert code == 0  # the test's 16-element buffer fits; only the configured one does not
    warning = next(line for line in lines if line.startswith("⚠ THE CONFIGURED BUFFER"))
    assert warning.startswith(
        f"⚠ THE CONFIGURED BUFFER DOES NOT FIT: shuffle_buffer_size {CONFIGURED:,}: "
        f"TensorFlow temp folder for gs:// writes (TMPDIR) {small} needs "
        f"{format_size(result.bytes_for(CONFIGURED))}, "
    )
    fit = next(line for line in lines if line.startswith("FIT BUDGET"))
    assert f"the configured shuffle_buffer_size {CONFIGURED:,} (~" in fit
    assert "does NOT fit in " in fit and "(the tightest location)" in fit
    assert report["configured_fits"] is False
    assert report["fit_budget"]["configured_fits"] is False
    assert report["fit_budget"]["budget_bytes"] <= 4 * 2**20
    largest = report["fit_budget"]["shuffle_buffer_size"]
    assert 0 < largest < CONFIGURED


def test_fit_budget_says_when_the_configured_buffer_fits(estimate_only, tmp_path, monkeypatch):
    _, run = estimate_only
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    code, lines, report = run("--fit-budget", "1GiB")
    assert code == 0
    fit = next(line for line in lines if line.startswith("FIT BUDGET"))
    assert fit.startswith(f"FIT BUDGET: the configured shuffle_buffer_size {CONFIGURED:,} (~")
    assert " + uncertainty) fits in 1.0 GiB (your budget); the largest " in fit
    assert report["fit_budget"]["configured_fits"] is True
    assert report["fit_budget"]["shuffle_buffer_size"] > CONFIGURED


def _advised(stderr: str) -> int | None:
    """The buffer a refusal advises; None where it says no buffer fits at all."""
    found = re.search(r"set dataloader\.shuffle_buffer_size=([\d,]+) or less", stderr)
    if found is None:
        assert "no buffer size fits every location" in stderr, stderr
        return None
    return int(found.group(1).replace(",", ""))


@pytest.mark.parametrize(
    "script", ["test_dataloader_checkpoint", "test_dataloader_checkpoint_small_buffer"]
)
def test_following_the_advice_passes_the_preflight_first_time(
    script, small_estimate_cache, tmp_path, monkeypatch, capsys
):
    """A property over refused configs, not one example: three real tmpfs sizes as TMPDIR,
    1, 3 and 8 processes per host, two configured buffers. Every refusal's advised buffer,
    rerun, passes the same preflight; and no run prints FITS above a refusal."""
    import importlib

    main = importlib.import_module(script).main
    cache, _ = small_estimate_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("GCS_TEST_BUCKET", str(tmp_path))  # a folder: no server rows
    for name in ("TEST_TMPDIR", "TMP"):
        monkeypatch.delenv(name, raising=False)
    full = script == "test_dataloader_checkpoint"

    def run(buffer: int, processes: int) -> tuple[int, str, str]:
        tested = [] if full else ["--buffer-size", str(buffer)]
        code = main(
            ["--config-name", "small", *SMALL_CHEAP, f"dataloader.shuffle_buffer_size={buffer}",
             f"estimate.processes_per_host={processes}", "--estimate-only", *tested]
        )  # fmt: skip
        out = capsys.readouterr()
        assert not ("✓ THE CONFIGURED BUFFER FITS" in out.out and "PREFLIGHT REFUSED" in out.err)
        return code, out.out, out.err

    advised_runs = 0
    for size in ("4m", "12m", "30m"):
        with tmpfs_mount(tmp_path / f"tmp-{size}", f"size={size}") as folder:
            monkeypatch.setenv("TMPDIR", str(folder))
            for processes in (1, 3, 8):
                for configured in (1_500, 40_000):
                    code, out, err = run(configured, processes)
                    if code == 0:
                        continue
                    assert code == 3, err
                    advised = _advised(err)
                    if advised is None:  # nothing fits: said so, and no buffer is offered
                        continue
                    if full:  # the headline above the refusal names the same buffer
                        assert f"fits: dataloader.shuffle_buffer_size={advised:,} (" in out
                    advised_runs += 1
                    code, out, err = run(advised, processes)
                    assert code == 0, (size, processes, configured, advised, err)
                    if full:  # the run fills the configured buffer: the headline agrees
                        assert "✓ THE CONFIGURED BUFFER FITS" in out, out
    assert advised_runs >= 6  # the property was exercised, not skipped by roomy folders


def test_fit_budget_holds_every_process_of_the_host(small_estimate_cache, monkeypatch, capsys):
    """--fit-budget is the room on one host: with 8 processes each saving its own
    checkpoint, the largest buffer's 8 checkpoints (at the upper end of the ±) fit it and
    one element more would not; with 1 process the answer is over 8 times larger."""
    from test_dataloader_checkpoint_small_buffer import main

    from dlckpt.config import load_config
    from dlckpt.estimate.estimator import estimate
    from dlckpt.preflight.locations import AtBuffer

    cache, _ = small_estimate_cache
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    result = estimate(load_config("small", SMALL_CHEAP), say=lambda _: None)
    assert result.cached  # the script reads the same entry
    budget = 64 * 2**20

    def largest(processes: int) -> tuple[int, str]:
        report = Path(cache).parent / f"fit-{processes}-{os.getpid()}.json"
        code = main(
            ["--config-name", "small", *SMALL_CHEAP, "dataloader.shuffle_buffer_size=250000",
             f"estimate.processes_per_host={processes}", "--estimate-only", "--fit-budget",
             "64MiB", "--report", str(report)]
        )  # fmt: skip
        assert code == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("FIT BUDGET"))
        answer = json.loads(report.read_text())["fit_budget"]
        assert answer["processes_per_host"] == processes and answer["budget_bytes"] == budget
        return answer["shuffle_buffer_size"], line

    eight, line = largest(8)
    assert "does NOT fit in 64.0 MiB (your budget)" in line and "× 8 processes per host" in line
    assert AtBuffer(result, eight).original_bytes * 8 <= budget
    assert AtBuffer(result, eight + 1).original_bytes * 8 > budget
    one, _ = largest(1)
    assert one > 8 * eight


@pytest.mark.parametrize(
    "script",
    [
        "test_dataloader_checkpoint_small_buffer",
        "test_dataloader_checkpoint_local_staging",
        "test_dataloader_checkpoint",
    ],
)
def test_the_jobs_env_file_is_what_every_command_checks(
    script, small_estimate_cache, tmp_path, monkeypatch, capsys
):
    """The shell has a roomy TMPDIR; the job (--env-file) stages in a real 4 MiB tmpfs with
    8 GPUs. The answers are for the job's folder and count, and say so; the shell's
    environment is left as it was."""
    import importlib

    main = importlib.import_module(script).main
    cache, result = small_estimate_cache
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    monkeypatch.setenv("XDG_CACHE_HOME", str(cache))
    monkeypatch.setenv("TMPDIR", str(roomy))
    monkeypatch.setenv("GCS_TEST_BUCKET", str(tmp_path))
    monkeypatch.setenv("LOCAL_STAGING_DIR", str(roomy))  # the local-staging script's folder
    for name in ("TEST_TMPDIR", "TMP", "CUDA_VISIBLE_DEVICES", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    configured = 600  # ~5 MB a process: over the job's 4 MiB, well within the shell's room
    args = ["--config-name", "small", *SMALL_CHEAP, f"dataloader.shuffle_buffer_size={configured}",
            "--estimate-only", "--report", str(tmp_path / "r.json")]  # fmt: skip

    assert main(args) == 0  # this shell: room enough
    shell = capsys.readouterr().out
    assert "✓ THE CONFIGURED BUFFER FITS" in shell and f"which fits {roomy} (" in shell
    assert "checked in this shell's environment (the job's own: --env-file job.env" in shell

    with tmpfs_mount(tmp_path / "job-tmp", "size=4m") as job_tmp:
        env_file = tmp_path / "job.env"
        env_file.write_text(
            f"TMPDIR={job_tmp}\nCUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7\nGCS_TEST_BUCKET={tmp_path}\n"
            f"LOCAL_STAGING_DIR={roomy}\n"
        )
        code = main([*args, "--env-file", str(env_file)])
        out, err = capsys.readouterr()
        report = json.loads((tmp_path / "r.json").read_text())
    assert os.environ["TMPDIR"] == str(roomy)  # the shell's, restored
    assert "Processes per host saving at once: 8 (CUDA_VISIBLE_DEVICES=0,1,2,3,4,5,6,7" in out
    warning = next(line for line in out.splitlines() if line.startswith("⚠ THE CONFIGURED"))
    assert f"(TMPDIR, 8 processes) {job_tmp} needs " in warning
    assert f"checked in the job's environment (--env-file {env_file})" in warning
    assert str(roomy) not in warning
    [job_row] = [r for r in report["configured_locations"] if r["path"] == str(job_tmp)]
    assert job_row["required_bytes"] == 8 * result.bytes_for(configured)
    if script == "test_dataloader_checkpoint":  # it fills the configured buffer: refused
        assert code == 3 and f"{job_tmp}" in err and "PREFLIGHT REFUSED" in err
        assert "THE CONFIGURED BUFFER FITS" not in out
    else:  # the test's own buffer fits; the answer for the configured one does not
        assert code == 0, err


def test_a_bare_fit_budget_before_an_override_means_the_tightest_location(
    small_estimate_cache, monkeypatch, capsys
):
    """`--fit-budget dataloader.shuffle_buffer_size=3000`: the override is not taken as SIZE."""
    from test_dataloader_checkpoint_small_buffer import main

    monkeypatch.setenv("XDG_CACHE_HOME", str(small_estimate_cache[0]))
    code = main(
        ["--config-name", "small", *SMALL_CHEAP, "--estimate-only", "--fit-budget",
         f"dataloader.shuffle_buffer_size={CONFIGURED}"]
    )  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0, out
    fit = next(line for line in out.splitlines() if line.startswith("FIT BUDGET"))
    assert f"shuffle_buffer_size {CONFIGURED:,} (~" in fit and "(the tightest location)" in fit
