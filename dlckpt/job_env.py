"""The job's environment, an input of every command: --env-file, KEY=VALUE, accelerators.

The shell a command runs in is often not the job's, so the job's temp-folder variables, its
bucket, staging folder, user and process count come from a copy of its environment
(`env > job.env`, or /proc/PID/environ) and from upper-case KEY=VALUE arguments; the
processes per host from those variables or the accelerators found.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from dlckpt.errors import UsageError

TEMP_VARIABLES = ("TEST_TMPDIR", "TMPDIR", "TMP")
# The job environment's variables the commands read (everything else in --env-file is ignored).
JOB_VARIABLES = (
    *TEMP_VARIABLES, "CUDA_VISIBLE_DEVICES", "LOCAL_WORLD_SIZE", "GCS_TEST_BUCKET",
    "LOCAL_STAGING_DIR", "HOME", "USER",
)  # fmt: skip
# The ones a command applies to its own process for the run (where it writes and uploads);
# the rest (HOME, USER, the process count) only shape the answers, so the tool's own cache,
# home and devices stay this shell's.
APPLIED_VARIABLES = (*TEMP_VARIABLES, "GCS_TEST_BUCKET", "LOCAL_STAGING_DIR")
THIS_SHELL = "this shell"
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
    source = THIS_SHELL
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


def applied_environ(
    base: Mapping[str, str],
    job_env: Mapping[str, str],
    replace: bool,
    assignments: Mapping[str, str],
) -> dict[str, str]:
    """`base` (this shell's variables) with the job's APPLIED_VARIABLES in their place.

    A variable the job sets replaces the shell's; one it lacks is removed when the whole
    environment came from the job (`replace`: --env-file) or was unset with `KEY=`.
    """
    env = dict(base)
    for name in APPLIED_VARIABLES:
        if name in job_env:
            env[name] = job_env[name]
        elif replace or name in assignments:
            env.pop(name, None)
    return env


def processes_from_env(env: Mapping[str, str]) -> tuple[int, str] | None:
    """(processes per host, how it was found) from the job's variables alone, or None:
    LOCAL_WORLD_SIZE (torchrun, Accelerate), else one per GPU in CUDA_VISIBLE_DEVICES."""
    local = env.get("LOCAL_WORLD_SIZE", "").strip()
    if local.isdigit() and int(local) >= 1:
        return int(local), f"LOCAL_WORLD_SIZE={local}"
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible:
        devices = [d for d in visible.split(",") if d.strip() and d.strip() != "-1"]
        if devices:
            return len(devices), f"CUDA_VISIBLE_DEVICES={visible}: {len(devices)} GPU(s)"
    return None


def detect_processes(env: Mapping[str, str]) -> tuple[int, str]:
    """(processes, how it was found): the job's variables, else one process per accelerator
    found on this host."""
    found = processes_from_env(env)
    if found is not None:
        return found
    dev = Path("/dev")
    gpus = [p.name for p in dev.glob("nvidia*") if re.fullmatch(r"nvidia\d+", p.name)]
    if gpus:
        return len(gpus), f"{len(gpus)} GPU(s) in /dev (nvidia0..)"
    chips = [p.name for p in dev.glob("accel*") if re.fullmatch(r"accel\d+", p.name)]
    if chips:
        return len(chips), f"{len(chips)} TPU chip(s) in /dev (accel0..)"
    return 1, "no GPU or TPU device in /dev"
