"""Time to an answer: `--estimate-only` against filling the configured buffer, per preset."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from dlckpt.bench.child import run_child
from dlckpt.bench.stats import summary, timed
from dlckpt.paths import SCRIPTS_DIR

SMALL_BUFFER_SCRIPT = SCRIPTS_DIR / "test_dataloader_checkpoint_small_buffer.py"
# The fill measurement grows its buffer until filling takes at least this long.
MIN_FILL_SECONDS = 2.0


def preset_names(conf_dir: Path) -> list[str]:
    return sorted(path.stem for path in conf_dir.glob("*.yaml"))


def estimate_only(config: str, workdir: Path) -> dict[str, Any]:
    """Wall seconds of `small-buffer --estimate-only` with an empty estimate cache."""
    report = workdir / f"{config}-report.json"
    with tempfile.TemporaryDirectory(prefix="dlckpt-bench-cache-") as cache:
        env = {**os.environ, "XDG_CACHE_HOME": cache, "TF_CPP_MIN_LOG_LEVEL": "3"}
        command = [
            sys.executable, str(SMALL_BUFFER_SCRIPT), "--config-name", config,
            "--estimate-only", "--report", str(report),
        ]  # fmt: skip
        seconds, completed = timed(
            lambda: subprocess.run(command, env=env, capture_output=True, text=True, check=False)
        )
    data = json.loads(report.read_text()) if report.exists() else {}
    estimate = data.get("estimate") or {}
    return {
        "seconds": seconds,
        "exit_code": completed.returncode,
        "original_bytes": estimate.get("original_bytes"),
        "calibration_seconds": estimate.get("calibration_seconds"),
    }


def answer_row(
    config: str, configured: int, answer: dict[str, Any], filled: dict[str, Any]
) -> dict[str, Any]:
    """One preset's row; the fill figures are None when no repeat gave a rate."""
    rates = filled["elements_per_second"]
    fill_seconds = [configured / rate for rate in rates]
    return {
        "config": config,
        "shuffle_buffer_size": configured,
        "estimate_only": answer,
        "fill_measured_at_buffer": filled["buffer"],
        "fill_elements_per_second": summary(rates) if rates else None,
        "fill_seconds": summary(fill_seconds) if rates else None,
        "fill/estimate_only": (
            summary([s / answer["seconds"] for s in fill_seconds]) if rates else None
        ),
    }


def time_to_answer(
    presets: Sequence[str],
    fill_buffer: int,
    repeats: int,
    workdir: Path,
    say: Callable[[str], None],
) -> list[dict[str, Any]]:
    """Per preset: estimate-only seconds, fill rate (elements/s), fill time of its buffer.

    The fill rate is measured `repeats` times in a fresh process, at a buffer of at least
    `fill_buffer` elements (see child.fill); each gives one projected fill time (configured
    buffer / rate), so fill time / estimate time is min / median / max over those repeats.
    """
    from dlckpt.config import load_config, shuffle_buffer_size

    rows = []
    for config in presets:
        configured = shuffle_buffer_size(load_config(config))
        answer = estimate_only(config, workdir)
        request = {
            "config": config, "buffer": fill_buffer, "max_buffer": configured,
            "min_seconds": MIN_FILL_SECONDS, "repeats": repeats,
        }  # fmt: skip
        filled = run_child("fill", request, workdir / config)
        rows.append(answer_row(config, configured, answer, filled))
        row = rows[-1]
        fill_line = (
            f"fill {configured:,} elements at {row['fill_elements_per_second']['median']:.0f}/s "
            f"= {row['fill_seconds']['median']:.0f} s"
            if row["fill_seconds"]
            else "fill rate: cannot tell (filling was too fast to time against start-up)"
        )
        say(
            f"  {config}: --estimate-only {answer['seconds']:.1f} s "
            f"(exit {answer['exit_code']}), {fill_line}"
        )
    return rows
