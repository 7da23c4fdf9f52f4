"""The failed job's environment as the diagnosis sees it: --env-file, KEY=VALUE, accelerators.

The shell `make diagnose` runs in is often not the job's, so the job's temp-folder variables
come from a copy of its environment (`env > job.env`, or /proc/PID/environ) and from
upper-case KEY=VALUE arguments; the processes per host from the accelerators found.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from dlckpt.errors import UsageError

TEMP_VARIABLES = ("TEST_TMPDIR", "TMPDIR", "TMP")
# The job environment's variables the diagnosis reads (everything else in --env-file is ignored).
JOB_VARIABLES = (*TEMP_VARIABLES, "CUDA_VISIBLE_DEVICES")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def parse_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines (`export`, quotes and # comments allowed) or a NUL-separated
    /proc/PID/environ copy. UsageError (exit 2) naming the line otherwise."""
    try:
        data = Path(path).expanduser().read_bytes()
    except OSError as error:
        raise UsageError(
            f"--env-file {path}: cannot read it ({error.strerror}); expected a file of "
            "KEY=VALUE lines (e.g. `env > job.env` in the job's shell)"
        ) from None
    text = data.decode(errors="replace")
    lines = text.split("\0") if "\0" in text else text.splitlines()
    env: dict[str, str] = {}
    for number, raw in enumerate(lines, start=1):
        line = raw.strip() if "\0" not in text else raw
        if not line or line.startswith("#"):
            continue
        if line.startswith("export "):
            line = line[len("export ") :].strip()
        key, sep, value = line.partition("=")
        if not sep or not _NAME.fullmatch(key):
            if "\0" not in text and "=" not in line and env:
                continue  # the continuation of a multi-line value printed by `env`
            raise UsageError(
                f"--env-file {path}, line {number}: {raw.strip()[:60]!r} is not KEY=VALUE "
                "(expected lines such as TMPDIR=/scratch, as `env` prints them)"
            )
        env[key] = _unquote(value.strip() if "\0" not in text else value)
    return env


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
        return value[1:-1]
    return value


def split_env_assignments(items: Sequence[str]) -> tuple[dict[str, str], list[str]]:
    """Positional arguments: upper-case `TMPDIR=/x` are the job's environment, the rest Hydra's."""
    env: dict[str, str] = {}
    overrides: list[str] = []
    for item in items:
        key, sep, value = item.partition("=")
        if sep and key.isupper() and _NAME.fullmatch(key):
            env[key] = value
        else:
            overrides.append(item)
    return env, overrides


def job_environment(
    env_file: Path | None, assignments: Mapping[str, str], base: Mapping[str, str]
) -> tuple[dict[str, str], str]:
    """The job's variables: --env-file (else this shell's), then KEY=VALUE; `KEY=` unsets."""
    source = "this shell"
    if env_file is not None:
        chosen: Mapping[str, str] = parse_env_file(env_file)
        source = f"--env-file {env_file}"
    else:
        chosen = base
    env = {k: v for k, v in chosen.items() if k in JOB_VARIABLES}
    for key, value in assignments.items():
        if value:
            env[key] = value
        else:
            env.pop(key, None)
    if assignments:
        source += " + " + " ".join(f"{k}={v}" for k, v in assignments.items())
    return env, source


def detect_processes(env: Mapping[str, str]) -> tuple[int, str]:
    """(processes, how it was found): one process per accelerator the job would use."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        if devices:
            return len(devices), f"CUDA_VISIBLE_DEVICES={visible}: {len(devices)} GPU(s)"
    dev = Path("/dev")
    gpus = [p.name for p in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)]
    if gpus:
        return len(gpus), f"{len(gpus)} GPU(s) in /dev (nvidia0..)"
    chips = [p.name for p in dev.glob("accel*") if re.fullmatch(r"accel\d+", p.name)]
    if chips:
        return len(chips), f"{len(chips)} TPU chip(s) in /dev (accel0..)"
    return 1, "no GPU or TPU device in /dev"
