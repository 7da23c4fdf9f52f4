"""The test suite's wall time under `make test` and where it goes (pytest --durations)."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

from dlckpt.bench.stats import timed

DURATION_LINE = re.compile(r"^\s*([0-9.]+)s\s+(call|setup|teardown)\s+(\S+)\s*$")
SUMMARY_LINE = re.compile(r"=+ (.*\b(passed|failed|error)\b.*) in ([0-9.]+)s")


def parse_durations(output: str) -> list[dict[str, Any]]:
    """The `--durations` table: [{"seconds", "phase", "test"}], slowest first."""
    rows = []
    for line in output.splitlines():
        match = DURATION_LINE.match(line)
        if match:
            rows.append(
                {"seconds": float(match.group(1)), "phase": match.group(2), "test": match.group(3)}
            )
    return sorted(rows, key=lambda row: -row["seconds"])


def run_suite(root: Path, durations: int = 15) -> dict[str, Any]:
    """Wall seconds of `make test` as it is (the noxfile's default pytest arguments), its
    summary line, and its `durations` slowest steps (PYTEST_ADDOPTS comes after pyproject's
    --durations=8, so it wins)."""
    extra = f"--durations={durations}"
    env = {**os.environ, "PYTEST_ADDOPTS": extra}
    seconds, completed = timed(
        lambda: subprocess.run(
            ["make", "test"], cwd=root, env=env, capture_output=True, text=True, check=False
        )
    )
    output = completed.stdout + completed.stderr
    summary = SUMMARY_LINE.search(output)
    return {
        "command": f"PYTEST_ADDOPTS={extra} make test",
        "seconds": seconds,
        "exit_code": completed.returncode,
        "summary": summary.group(1) if summary else None,
        "slowest": parse_durations(output),
    }
