"""check_disk_space.sh's body: free space of every folder a checkpoint passes through, and RAM.

Each location is marked against what the small-buffer and the full test need (flags,
defaults, or the measured estimate of a config). Standard library only, so the bash
entry point works with any python3; sizes are Python integers, so no size overflows.
Exit 0 every location fits, 1 one does not (or is missing), 2 bad input.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from dlckpt.errors import UsageError
from dlckpt.job_env import (
    THIS_SHELL,
    applied_environ,
    job_environment,
    processes_from_env,
    split_env_assignments,
)
from dlckpt.runtime import environment as runtime_env
from dlckpt.tempdir import tf_temp_dir
from dlckpt.units import format_size, parse_size

EXIT_FITS, EXIT_DOES_NOT_FIT, EXIT_USAGE = 0, 1, 2
ROW_FORMAT = "{:<36} {:<34} {:>10}  {:<14} {:<14}"
DESCRIPTION = """\
Free space of TensorFlow's temp folder (and which variable chose it), /tmp,
LOCAL_STAGING_DIR, home, the current folder, and available RAM, each marked
against what a test needs.

Exit codes: 0 every location fits, 1 one does not, 2 bad input."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        raise UsageError(f"check_disk_space.sh: {message} (see -h)")

    def format_help(self) -> str:
        return "U" + super().format_help()[1:]  # "Usage:", as the bash script always said


def parser(prog: str = "check_disk_space.sh") -> argparse.ArgumentParser:
    parse = _Parser(
        prog=prog,
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parse.add_argument(
        "--small",
        default="500MB",
        metavar="SIZE",
        help="need of the small-buffer test (default 500MB)",
    )
    parse.add_argument(
        "--full", default="200GB", metavar="SIZE", help="need of the full test (default 200GB)"
    )
    parse.add_argument(
        "--for",
        dest="which",
        default="both",
        choices=("small", "full", "both"),
        help="which column decides the exit code (default both)",
    )
    parse.add_argument(
        "--config-name",
        metavar="NAME",
        help="take both needs from the measured estimate of this config "
        "(runs the small-buffer script with --estimate-only; cached)",
    )
    parse.add_argument("--config-dir", metavar="DIR", help="your own folder of configs")
    parse.add_argument(
        "--env-file",
        type=Path,
        metavar="FILE",
        help="the job's environment (`env > job.env` where it runs): its TMPDIR, "
        "LOCAL_STAGING_DIR, HOME and process count are checked instead of this shell's",
    )
    parse.add_argument(
        "overrides",
        nargs="*",
        metavar="key=value",
        help="Hydra overrides; upper-case KEY=VALUE (TMPDIR=/scratch) sets the job's variable",
    )
    return parse  # fmt: skip


@dataclass
class Row:
    label: str
    path: str
    free: int | None  # None: not measured (unset or missing)
    status: str = ""  # "", "unset" or "missing"


def needs_from_config(args: argparse.Namespace, job_args: list[str]) -> tuple[int, int]:
    """(small-buffer bytes, full bytes) from the small-buffer script's --estimate-only report.

    The full need is what training's save of the configured buffer puts in TensorFlow's temp
    folder: one checkpoint per process on the host (`job_args`, the job's environment, and
    `estimate.processes_per_host` decide how many).
    """
    config_args = [*(["--config-name", args.config_name] if args.config_name else [])]
    config_args += [*(["--config-dir", args.config_dir] if args.config_dir else [])]
    config_args += [*args.overrides, *job_args]
    with tempfile.TemporaryDirectory(prefix="dlckpt-disk-check-") as folder:
        report = Path(folder) / "estimate.json"
        done = subprocess.run(
            [sys.executable, "-m", "dlckpt", "estimate", "--force", "--report", str(report),
             *config_args],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, check=False,
        )  # fmt: skip
        if done.returncode != 0:
            reason = (done.stderr.strip().splitlines() or ["no message"])[-1].removeprefix("✗ ")
            raise UsageError(f"the estimate for {' '.join(config_args)} failed: {reason}")
        answer = json.loads(report.read_text())
    full = next(
        row["required_bytes"]
        for row in answer["configured_locations"]
        if row["role"].startswith("TensorFlow temp folder")
    )
    return int(answer["estimate"]["tested_bytes"]), int(full)


def free_bytes(folder: str) -> int:
    stats = os.statvfs(folder)
    return stats.f_bavail * stats.f_frsize


def available_ram() -> int:
    """MemAvailable from /proc/meminfo (bytes); os.sysconf's free pages elsewhere."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def folder_row(label: str, value: str | None) -> Row:
    """A folder's row: measured where it is, never at a parent (a missing one says so)."""
    if not value:
        return Row(label, "(unset)", None, "unset")
    path = Path(value).expanduser()
    if not path.is_dir():
        return Row(label, value, None, "missing")
    return Row(label, value, free_bytes(str(path)))


def locations(env: dict[str, str], home: str | None = None) -> tuple[list[Row], str | None]:
    """The rows for the environment `env` (the job's variables over this shell's) and the
    job's `home` (default: this user's)."""
    tf_folder, tf_variable, warning = tf_temp_dir(env)
    rows = [
        folder_row(f"TensorFlow temp folder ({tf_variable})", tf_folder),
        folder_row("/tmp", "/tmp"),
        folder_row("LOCAL_STAGING_DIR", env.get("LOCAL_STAGING_DIR")),
        folder_row("home", home or str(Path.home())),
        folder_row("current folder", os.getcwd()),
        Row("RAM (available)", "-", available_ram()),
    ]
    return rows, warning


def mark(free: int, need: int) -> str:
    return "OK" if free >= need else "NOT OK"


def report(rows: list[Row], small: int, full: int, which: str) -> tuple[list[str], int]:
    """The table's lines and the exit code: 1 when a counted column says NOT OK."""
    lines = [ROW_FORMAT.format("location", "path", "free", "small-buffer", "full test")]
    status = EXIT_FITS
    for row in rows:
        if row.status == "unset":
            lines.append(ROW_FORMAT.format(row.label, row.path, "-", "-", "-"))
            continue
        if row.status == "missing" or row.free is None:
            lines.append(ROW_FORMAT.format(row.label, row.path, "missing", "NOT OK", "NOT OK"))
            status = EXIT_DOES_NOT_FIT
            continue
        small_mark, full_mark = mark(row.free, small), mark(row.free, full)
        if (small_mark != "OK" and which != "full") or (full_mark != "OK" and which != "small"):
            status = EXIT_DOES_NOT_FIT
        lines.append(
            ROW_FORMAT.format(row.label, row.path, format_size(row.free), small_mark, full_mark)
        )
    return lines, status


def run(argv: Sequence[str], prog: str = "check_disk_space.sh") -> int:
    args = parser(prog).parse_intermixed_args(list(argv))
    assignments, args.overrides = split_env_assignments(args.overrides)
    for override in args.overrides:
        if "=" not in override:
            raise UsageError(f"{prog}: unknown argument {override!r} (see -h)")
    job_env, environment = job_environment(args.env_file, assignments, os.environ)
    env = applied_environ(os.environ, job_env, args.env_file is not None, assignments)
    job_args = [*(["--env-file", str(args.env_file)] if args.env_file else [])]
    job_args += [f"{key}={value}" for key, value in assignments.items()]
    small, full = parse_size(args.small, "--small"), parse_size(args.full, "--full")
    source = "flags/defaults"
    if args.config_name or args.config_dir or args.overrides:
        small, full = needs_from_config(args, job_args)
        source = "measured estimate of --config-name " + (args.config_name or "config")
        full_text = format_size(full)
    else:
        full, full_text = _per_host(full, job_env)
    rows, warning = locations(env, job_env.get("HOME"))
    lines, status = report(rows, small, full, args.which)
    print(runtime_env.current().line())  # which python ran this (and the estimate, if any)
    print(
        f"thresholds: {source}; small-buffer test needs {format_size(small)}, full test {full_text}"
    )
    checked = "the job's environment" if args.env_file else "this shell's environment"
    if environment != THIS_SHELL and not args.env_file:
        checked = "this shell's environment with the job's variables"
    print(f"checked in {checked} ({environment})")
    print("\n".join(lines))
    if warning:
        print(f"⚠ {warning}")
    # TensorFlow's GCS filesystem reads GCS_* variables (timeouts, retries, caches); a large
    # checkpoint's upload is bounded by GCS_WRITE_REQUEST_TIMEOUT_SECS, so show what is set.
    from dlckpt.storage.tf_gcs import tf_gcs_settings

    settings = tf_gcs_settings()
    if settings:
        print("TensorFlow GCS settings:")
        print("\n".join(f"  {name}={value}" for name, value in settings.items()))
    for row in rows:
        if row.status == "missing":
            print(f"✗ {row.label}={row.path}: no such folder (create it, or point it elsewhere)")
    if status != EXIT_FITS:
        print(
            "✗ a location does not fit: free space there, or point TMPDIR / LOCAL_STAGING_DIR "
            "at a bigger disk"
        )
    return status


def _per_host(full: int, job_env: dict[str, str]) -> tuple[int, str]:
    """--full is one process's save; the job's processes per host each stage their own
    (the small-buffer test is one process, so its need stays as given)."""
    found = processes_from_env(job_env)
    if found is None or found[0] == 1:
        return full, format_size(full)
    processes, how = found
    total = full * processes
    return (
        total,
        f"{format_size(total)} ({processes} processes per host × {format_size(full)}: {how})",
    )


def main(argv: Sequence[str] | None = None, prog: str = "check_disk_space.sh") -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv, prog)
    except UsageError as error:
        print(f"✗ {error}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
