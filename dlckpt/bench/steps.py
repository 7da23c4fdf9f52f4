"""The other benchmark scripts, run as steps of `make bench` in their own processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlckpt.bench.stats import timed


def run_step(
    root: Path, script: str, args: list[str], say: Callable[[str], None]
) -> dict[str, Any]:
    """Run scripts/<script> with `args`; wall seconds, exit code, the last lines it printed.

    A script that is not on this branch is recorded as skipped, with the reason.
    """
    path = root / "scripts" / script
    command = f"python scripts/{script} {' '.join(args)}".strip()
    if not path.exists():
        return {"command": command, "skipped": f"scripts/{script} is not on this branch"}
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    say(f"$ {command}")
    seconds, completed = timed(
        lambda: subprocess.run(
            [sys.executable, str(path), *args],
            cwd=root,
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
    )
    lines = completed.stdout.strip().splitlines()
    for line in lines[-12:]:
        say(f"  {line}")
    if completed.returncode != 0:
        for line in completed.stderr.strip().splitlines()[-3:]:
            say(f"  stderr: {line}")
    return {
        "command": command,
        "seconds": seconds,
        "exit_code": completed.returncode,
        "output_tail": lines[-20:],
    }


def other_benchmarks(
    root: Path,
    *,
    catch_runs: int,
    estimate_args: list[str],
    tf_gcs_args: list[str],
    say: Callable[[str], None],
) -> dict[str, Any]:
    """Estimator accuracy, catch rate and (when present) TensorFlow's gs:// path vs local."""
    steps = {
        "estimate_accuracy": run_step(root, "bench_estimate.py", estimate_args, say),
        "catch_rate": run_step(root, "bench_catch_rate.py", ["--runs", str(catch_runs)], say),
        "tf_gcs": run_step(root, "bench_tf_gcs.py", tf_gcs_args, say),
    }
    # The scripts write their own JSON beside ours; results.json carries a copy.
    written_by = (
        ("estimate_accuracy", "estimate.json"),
        ("catch_rate", "catch_rate.json"),
        ("tf_gcs", "tf_gcs.json"),
    )
    for name, written in written_by:
        path = root / "bench" / written
        if path.exists() and steps[name].get("exit_code") is not None:
            steps[name]["results"] = json.loads(path.read_text())
    return steps
