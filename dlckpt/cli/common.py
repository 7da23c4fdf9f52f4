"""The command line every script shares: the parser, the run wrapper, one line per exit.

`run_main` turns every outcome into an exit code (errors.EXIT_*), one `✗` line and the
JSON report, whatever stopped the run. The work itself lives in the engine's folders:
config, pipeline, roundtrip, estimate, preflight, storage, diagnose, strategies.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dlckpt.config import load_config
from dlckpt.errors import (
    EXIT_ERROR,
    EXIT_FAILED,
    EXIT_PREFLIGHT,
    EXIT_USAGE,
    CheckFailed,
    PreflightRefusal,
    UsageError,
)
from dlckpt.job_env import (
    APPLIED_VARIABLES,
    applied_environ,
    job_environment,
    split_env_assignments,
)
from dlckpt.pipeline.build import read_failure
from dlckpt.report import (
    reset_report,
    start_report,
    write_exit_report,
)
from dlckpt.runtime import cleanup
from dlckpt.runtime import environment as runtime_env
from dlckpt.runtime.signals import exit_code, interrupts_raise, received_interrupt, signal_name


class _Parser(argparse.ArgumentParser):
    def error(
        self, message: str
    ) -> Any:  # argparse's own exit 2 would print usage + traceback-free text
        raise UsageError(f"{self.prog}: {message}")


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    parser = _Parser(prog=prog, description=description)
    parser.add_argument(
        "--config-name", default="config", help="config in conf/ or --config-dir (default: config)"
    )
    parser.add_argument(
        "--config-dir", type=Path, help="your own folder of configs, searched before conf/"
    )
    parser.add_argument("--report", type=Path, help="write a JSON report here")
    parser.add_argument(
        "--keep", action="store_true", help="keep the run's checkpoint after a pass"
    )
    parser.add_argument(
        "--debug", action="store_true", help="show the traceback of an unexpected error"
    )
    parser.add_argument(
        "--env-file", type=Path,
        help="the job's environment (`env > job.env` in its shell, or /proc/PID/environ): "
        "its TMPDIR, TEST_TMPDIR, TMP, GCS_TEST_BUCKET, LOCAL_STAGING_DIR, HOME, USER, "
        "LOCAL_WORLD_SIZE and CUDA_VISIBLE_DEVICES are checked instead of this shell's",
    )  # fmt: skip
    parser.add_argument(
        "overrides", nargs="*", metavar="key=value",
        help="Hydra overrides; upper-case KEY=VALUE (TMPDIR=/scratch) sets the job's variable",
    )  # fmt: skip
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; check --report is writable and clear a stale report there.

    The job's environment (--env-file, then upper-case KEY=VALUE arguments) replaces this
    shell's APPLIED_VARIABLES for the rest of the run (run_main restores them): every folder
    and bucket is then checked where the job writes. `args.job_env` holds all its
    JOB_VARIABLES (the process count, HOME and USER shape the answers); `args.env_source`
    says which environment that is ("this shell", or "--env-file job.env + TMPDIR=/x").
    """
    args = parser.parse_intermixed_args(_bare_fit_budget(sys.argv[1:] if argv is None else argv))
    start_report(args.report, script=parser.prog)
    args.runtime = runtime_env.current()
    args.runtime_note = runtime_env.supported(args.runtime)  # a too old TensorFlow: exit 2
    assignments, args.overrides = split_env_assignments(args.overrides)
    args.job_env, args.env_source = job_environment(args.env_file, assignments, os.environ)
    applied = applied_environ(os.environ, args.job_env, args.env_file is not None, assignments)
    for name in APPLIED_VARIABLES:
        if name in applied:
            os.environ[name] = applied[name]
        else:
            os.environ.pop(name, None)  # unset in the job, or `KEY=`
    # Python's temp folder is the job's too: tempfile keeps the first one it found (an
    # import may already have asked), so it is found again from these variables.
    tempfile.tempdir = None
    return args


def say_runtime(args: argparse.Namespace) -> None:
    """The first line of a run whose input was accepted (bad input stays one `✗` line):
    which interpreter, TensorFlow and environment run it (a verdict is about them), and a
    note for a TensorFlow newer than any tested. Each command calls it before its header."""
    print(args.runtime.line())
    if args.runtime_note:
        print(args.runtime_note)


def _bare_fit_budget(argv: Sequence[str]) -> list[str]:
    """`--fit-budget` followed by an override or an option means the tightest location: argparse
    would take `dataloader.shuffle_buffer_size=3000` as its SIZE."""
    items = list(argv)
    for index, item in enumerate(items):
        following = items[index + 1] if index + 1 < len(items) else None
        if (
            item == "--fit-budget"
            and following is not None
            and ("=" in following or following.startswith("-"))
        ):
            items.insert(index + 1, "tightest")
    return items


def load_from_args(args: argparse.Namespace) -> DictConfig:
    return load_config(args.config_name, args.overrides, args.config_dir)


def _report_path(argv: Sequence[str] | None) -> Path | None:
    """--report's value from the raw arguments (the parser may be what failed)."""
    args = list(sys.argv[1:] if argv is None else argv)
    for index, arg in enumerate(args):
        if arg == "--report" and index + 1 < len(args):
            return Path(args[index + 1])
        if arg.startswith("--report="):
            return Path(arg.split("=", 1)[1])
    return None


def run_main(
    body: Callable[[], int],
    argv: Sequence[str] | None = None,
    report: dict[str, Any] | None = None,
) -> int:
    """Run a script body, turning every exception into an exit code, one line and the report.

    `report` is the dict the body fills as it goes; unless the body wrote the report
    itself, it is written to --report with `exit_code` (and `error`) on every exit.
    Exit codes: 2 bad input, 3 preflight refused, 4 an unexpected error (--debug prints
    its traceback), 130 / 143 / 129 interrupted by SIGINT / SIGTERM / SIGHUP (see
    runtime.signals: the same cleanup runs for each). What a cleanup could not remove is named.
    """
    report = report if report is not None else {}
    report["runtime"] = runtime_env.current().as_report()
    cleanup.reset()
    reset_report()
    environment = dict(os.environ)  # parse_args applies the job's; restored on the way out
    try:
        return _run_body(body, argv, report)
    finally:
        os.environ.clear()
        os.environ.update(environment)
        tempfile.tempdir = None  # the caller's, not the job's, from here on


def _run_body(body: Callable[[], int], argv: Sequence[str] | None, report: dict[str, Any]) -> int:
    with interrupts_raise():  # the last lines too: a second signal must not cut them off
        try:
            code, line = body(), ""
        except UsageError as error:
            code, line = EXIT_USAGE, f"✗ {error}"
        except PreflightRefusal as error:
            code, line = EXIT_PREFLIGHT, f"✗ PREFLIGHT REFUSED: {error}"
        except CheckFailed as error:
            code, line = EXIT_FAILED, f"✗ {error}"
        except KeyboardInterrupt as interrupt:
            code, line = exit_code(interrupt), _interrupted_line(interrupt)
        except Exception as error:
            wrapped = _wrapped_interrupt(error) or received_interrupt()
            unreadable = read_failure(error)
            if wrapped is not None:  # a library (OmegaConf) re-raised a signal as its own error
                code, line = exit_code(wrapped), _interrupted_line(wrapped)
            elif unreadable is not None:
                code, line = EXIT_USAGE, f"✗ {unreadable}"
            else:
                code, line = _unexpected(error, argv)
        problem = write_exit_report(
            code, line.removeprefix("✗ "), report, fallback=_report_path(argv)
        )
        if line:
            print(line, file=sys.stderr)
        elif cleanup.left_behind():  # a pass or a failed check whose cleanup fell short
            print(f"⚠ {cleanup.summary().removeprefix('; ')}", file=sys.stderr)
        if problem:
            print(f"✗ {problem}", file=sys.stderr)
            return code or EXIT_USAGE
        return code


def _wrapped_interrupt(error: BaseException) -> KeyboardInterrupt | None:
    """The interrupt behind `error`, when a library caught it and raised its own exception."""
    seen: set[int] = set()
    link: BaseException | None = error
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return None


def _unexpected(error: Exception, argv: Sequence[str] | None) -> tuple[int, str]:
    if "--debug" in (sys.argv[1:] if argv is None else argv):
        traceback.print_exc()
    detail = " ".join(str(error).split())[:300]
    return EXIT_ERROR, (
        f"✗ ERROR: the run stopped before a verdict: {type(error).__name__}: {detail} "
        "(not a checkpoint failure; --debug shows the traceback)"
    )


def _interrupted_line(interrupt: KeyboardInterrupt) -> str:
    left = cleanup.summary()
    return f"✗ interrupted by {signal_name(interrupt)}; " + (
        f"could not remove all the run's own files{left}"
        if left
        else "the run's own files were removed"
    )


def add_estimate_args(parser: argparse.ArgumentParser) -> None:
    """--estimate-only, --fit-budget [SIZE], --force: the options `estimate_and_preflight` reads."""
    parser.add_argument(
        "--estimate-only", action="store_true",
        help="measure the checkpoint size, print the locations table and exit (no round trip)",
    )  # fmt: skip
    parser.add_argument(
        "--fit-budget", nargs="?", const="tightest", metavar="SIZE",
        help="print the largest shuffle_buffer_size whose checkpoint fits SIZE (e.g. 15GB; "
        "default: the free space of the tightest location)",
    )  # fmt: skip
    parser.add_argument(
        "--force", action="store_true", help="run even when the preflight check refuses"
    )
