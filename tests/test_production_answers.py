"""make estimate answers for the configured buffer (what training saves) before the test's own."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import SMALL_CHEAP, tmpfs_mount

from dlckpt.units import format_bytes

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
    need = format_bytes(result.bytes_for(CONFIGURED))
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
        f"{format_bytes(result.bytes_for(CONFIGURED))}, "
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
    code, lines, report = run("--fit-budget", "1GB")
    assert code == 0
    fit = next(line for line in lines if line.startswith("FIT BUDGET"))
    assert fit.startswith(f"FIT BUDGET: the configured shuffle_buffer_size {CONFIGURED:,} (~")
    assert " + uncertainty) fits in 1.0 GB (your budget); the largest " in fit
    assert report["fit_budget"]["configured_fits"] is True
    assert report["fit_budget"]["shuffle_buffer_size"] > CONFIGURED
