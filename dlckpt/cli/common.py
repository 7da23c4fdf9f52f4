"""What every script shares: the command line, the exit codes, the estimate and preflight.

The concerns live in sibling modules, each small enough to read at once: _config (Hydra
loading), _pipeline (the reference dataloader), _roundtrip (save, restore in a new
process, compare), _estimate (measured and formula sizes), _locations (where the bytes
go, the preflight), _storage (local folder and GCS), _scenario (one run: destination,
round trip, verdict, report), _report (formatting and the JSON file), _signals (SIGTERM
and SIGHUP as interrupts, children that die with the parent), _cleanup (what a failed run
could not remove).
"""

from __future__ import annotations

import argparse
import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dlckpt.config import load_config
from dlckpt.errors import PreflightRefusal, UsageError
from dlckpt.report import (
    reset_report,
    start_report,
    write_exit_report,
    write_report,
)
from dlckpt.runtime.signals import exit_code, interrupts_raise, received_interrupt, signal_name

EXIT_PASSED, EXIT_FAILED, EXIT_USAGE, EXIT_PREFLIGHT, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# Something unexpected stopped the run before it reached a verdict (not a failed check).
EXIT_ERROR = 4


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
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="Hydra overrides")
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse the command line; check --report is writable and clear a stale report there."""
    args = parser.parse_intermixed_args(list(sys.argv[1:] if argv is None else argv))
    start_report(args.report, script=parser.prog)
    return args


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
    _signals: the same cleanup runs for each). What a cleanup could not remove is named.
    """
    from dlckpt.runtime import cleanup as _cleanup

    report = report if report is not None else {}
    _cleanup.reset()
    reset_report()
    with interrupts_raise():  # the last lines too: a second signal must not cut them off
        try:
            code, line = body(), ""
        except UsageError as error:
            code, line = EXIT_USAGE, f"✗ {error}"
        except PreflightRefusal as error:
            code, line = EXIT_PREFLIGHT, f"✗ PREFLIGHT REFUSED: {error}"
        except KeyboardInterrupt as interrupt:
            code, line = exit_code(interrupt), _interrupted_line(interrupt)
        except Exception as error:
            wrapped = _wrapped_interrupt(error) or received_interrupt()
            if wrapped is not None:  # a library (OmegaConf) re-raised a signal as its own error
                code, line = exit_code(wrapped), _interrupted_line(wrapped)
            else:
                code, line = _unexpected(error, argv)
        problem = write_exit_report(
            code, line.removeprefix("✗ "), report, fallback=_report_path(argv)
        )
        if line:
            print(line, file=sys.stderr)
        elif _cleanup.left_behind():  # a pass or a failed check whose cleanup fell short
            print(f"⚠ {_cleanup.summary().removeprefix('; ')}", file=sys.stderr)
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
    from dlckpt.runtime import cleanup as _cleanup

    left = _cleanup.summary()
    return f"✗ interrupted by {signal_name(interrupt)}; " + (
        f"could not remove all the run's own files{left}"
        if left
        else "the run's own files were removed"
    )


# --- measured estimate, locations and preflight (issue 3) ---------------------------------


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


def estimate_and_preflight(
    cfg: DictConfig,
    args: argparse.Namespace,
    *,
    scenario: str,
    tested_buffer: int | None = None,
    locations: Callable[[Any], list[Any]] | None = None,
    scratch_root: Path | None = None,
    report: dict[str, Any] | None = None,
    say: Callable[[str], None] = print,
    tested_line: str | None = None,
) -> Any:
    """Estimate the checkpoint (measured, cached or formula), show where its bytes go, refuse.

    Production answers first: the line saying whether the configured buffer's checkpoint
    (what training saves) fits TensorFlow's temp folder, RAM and the bucket, and with
    --estimate-only its own table; then the table of the folders this run will fill.

    On a refusal the JSON report (`report` plus the estimate and locations, exit_code 3)
    is written before PreflightRefusal propagates, so a refused run still says why.

    `scenario` is "small_buffer", "local_staging" or "full" (see _locations.scenario_locations);
    `tested_buffer` is the buffer the run will fill (default: the configured one);
    `locations(estimate) -> [Location]` replaces the scenario's default rows;
    `tested_line` (how the tested buffer was chosen) is printed after the first headline.
    Prints the headline lines, the locations tables and the --fit-budget answer; raises
    PreflightRefusal (exit 3) naming the path unless --force. Returns an EstimateResult
    whose `.locations` and `.fit_budget` hold the report's `locations` and `fit_budget`;
    the report also gets `configured_locations` and `configured_fits`.
    """
    from dlckpt.estimate.estimator import estimate
    from dlckpt.preflight import locations as _locations

    budget = _budget_arg(args)
    result = estimate(cfg, tested_buffer=tested_buffer, scratch_root=scratch_root, say=say)
    _say_headlines(result, say, tested_line)
    processes = int(cfg.estimate.get("processes_per_host") or 1)
    configured = _locations.check_locations(_locations.configured_locations(result, processes))
    separate = scenario != "full" or result.tested_buffer != result.original_buffer
    estimate_only = getattr(args, "estimate_only", False)
    if estimate_only and separate:
        say(
            f"Where the configured buffer's checkpoint goes ({result.original_buffer:,} "
            "elements, what training saves):"
        )
        say(_locations.locations_table(configured))
    say(_locations.configured_fit_line(configured, result))
    production = {
        "configured_locations": [row.report() for row in configured],
        "configured_fits": all(row.ok for row in configured),
    }
    rows = locations(result) if locations is not None else None
    rows = _locations.check_locations(
        rows if rows is not None else _locations.scenario_locations(scenario, result)
    )
    if separate and estimate_only:
        say(
            f"The folders a test run would fill (buffer {result.tested_buffer:,}; "
            "--estimate-only fills none):"
        )
    elif separate:
        say(f"The folders this run fills (buffer {result.tested_buffer:,}):")
    say(_locations.locations_table(rows))
    _, _, tmp_warning = _locations.tf_temp_dir()
    if tmp_warning:
        say(f"⚠ {tmp_warning}")
    result.locations = [row.report() for row in rows]
    if getattr(args, "fit_budget", None) is not None:
        tightest = _locations.tightest_budget(configured) // processes
        ram_limit = _locations.ram_buffer_limit(configured, result)
        ram_limit = None if ram_limit is None else ram_limit // processes
        result.fit_budget = _fit_budget(result, budget, tightest, say, ram_limit)
    try:
        warnings = _locations.preflight(rows, result, force=getattr(args, "force", False))
    except PreflightRefusal as refusal:
        write_report(
            args.report,
            {**(report or {}), **estimate_report(result), **production,
             "refusal": str(refusal), "passed": False, "exit_code": EXIT_PREFLIGHT},
        )  # fmt: skip
        raise
    for warning in warnings:
        say(f"⚠ PREFLIGHT WOULD REFUSE (--force): {warning}")
    if report is not None:
        report.update({**estimate_report(result), **production})
    return result


def _budget_arg(args: argparse.Namespace) -> int | None:
    """--fit-budget SIZE in bytes; None for no budget or the tightest location."""
    from dlckpt.preflight import locations as _locations

    fit_budget = getattr(args, "fit_budget", None)
    if fit_budget in (None, "tightest"):
        return None
    return _locations.parse_size(fit_budget)


def _say_headlines(result: Any, say: Callable[[str], None], tested_line: str | None) -> None:
    say(f"ORIGINAL CONFIG CHECKPOINT SIZE ESTIMATE: {result.headline('original')}")
    if tested_line:
        say(tested_line)
    if result.tested_buffer != result.original_buffer:
        say(f"NEW CONFIG CHECKPOINT SIZE ESTIMATE: {result.headline('tested')}")
    for line in result.describe():
        say(line)
    for note in result.notes:
        say(f"  note: {note}")


def _fit_budget(
    result: Any,
    budget: int | None,
    tightest: int,
    say: Callable[[str], None],
    ram_limit: int | None = None,
) -> dict[str, Any]:
    """--fit-budget: whether the configured buffer fits, then the largest buffer that does.

    `ram_limit` (the largest buffer host RAM holds) caps the answer, so following it passes
    the preflight's RAM row too.
    """
    from dlckpt.estimate.estimator import format_size

    source = "your budget" if budget is not None else "the tightest location"
    budget = budget if budget is not None else tightest
    original = result.original_buffer
    configured_need = result.bytes_for(original) * (1 + (result.uncertainty or 0.0))
    configured_fits = configured_need <= budget
    largest = result.largest_buffer_within(budget)
    largest = largest if ram_limit is None else min(largest, ram_limit)
    verdict = "fits" if configured_fits else "does NOT fit"
    configured = (
        f"the configured shuffle_buffer_size {original:,} "
        f"(~{format_size(result.bytes_for(original))} + uncertainty) {verdict} in "
        f"{format_size(budget)} ({source}); "
    )
    if largest:
        say(
            f"FIT BUDGET: {configured}the largest shuffle_buffer_size whose checkpoint fits in "
            f"{format_size(budget)} ({source}) is {largest:,} "
            f"(~{format_size(result.bytes_for(largest))} + uncertainty)"
        )
    else:
        say(f"FIT BUDGET: {configured}no shuffle_buffer_size fits in {format_size(budget)}")
    return {
        "budget_bytes": budget,
        "shuffle_buffer_size": largest,
        "estimated_bytes": result.bytes_for(largest) if largest else 0,
        "configured_buffer": original,
        "configured_fits": configured_fits,
    }


def finish_estimate_only(args: argparse.Namespace, report: dict[str, Any]) -> int:
    """--estimate-only: the estimate and the locations are printed; write the report, exit 0."""
    print("✓ ESTIMATE ONLY: no checkpoint was filled or saved (--estimate-only)")
    write_report(args.report, {**report, "passed": True, "exit_code": EXIT_PASSED})
    return EXIT_PASSED


def estimate_report(result: Any) -> dict[str, Any]:
    """The report's `estimate`, `locations` and `fit_budget` keys for an EstimateResult."""
    return {
        "estimate": result.report(),
        "locations": list(getattr(result, "locations", [])),
        "fit_budget": getattr(result, "fit_budget", None),
    }
