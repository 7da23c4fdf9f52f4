"""The estimate and the preflight, as every script runs them before it fills a buffer.

Measure the checkpoint (estimate.estimator), say whether the configured buffer fits where
the job writes, show the folders this run fills, answer --fit-budget (preflight.fit) and
refuse (exit 3) a save that cannot fit (preflight.locations). Every "how big may the buffer
be" answer comes from one search over the same rows (locations.largest_fitting_buffer).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from dlckpt.errors import EXIT_PASSED, EXIT_PREFLIGHT, PreflightRefusal
from dlckpt.estimate.estimator import EstimateResult, estimate
from dlckpt.job_env import THIS_SHELL, processes_from_env
from dlckpt.preflight.fit import fit_budget
from dlckpt.preflight.locations import (
    Location,
    RowsAt,
    bucket_factors,
    check_locations,
    checkpoints_in_the_bucket,
    configured_fit_line,
    configured_locations,
    largest_fitting_buffer,
    locations_table,
    scenario_locations,
)
from dlckpt.preflight.locations import (
    preflight as refuse_or_warn,
)
from dlckpt.report import write_report
from dlckpt.tempdir import tf_temp_dir
from dlckpt.units import format_size, parse_size


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
) -> EstimateResult:
    """Estimate the checkpoint (measured, cached or formula), show where its bytes go, refuse.

    Production answers first: the line saying whether the configured buffer's checkpoint
    (what training saves) fits TensorFlow's temp folder, RAM and the bucket, and with
    --estimate-only its own table; then the table of the folders this run will fill.

    On a refusal the JSON report (`report` plus the estimate and locations, exit_code 3)
    is written before PreflightRefusal propagates, so a refused run still says why.

    `scenario` is "small_buffer", "local_staging" or "full" (see locations.scenario_locations);
    `tested_buffer` is the buffer the run will fill (default: the configured one);
    `locations(estimate) -> [Location]` replaces the scenario's default rows;
    `tested_line` (how the tested buffer was chosen) is printed after the first headline.
    Prints the headline lines, the locations tables and the --fit-budget answer; raises
    PreflightRefusal (exit 3) naming the path unless --force. Returns an EstimateResult
    whose `.locations` and `.fit_budget` hold the report's `locations` and `fit_budget`;
    the report also gets `configured_locations` and `configured_fits`.
    """
    budget = _budget_arg(args)
    result = estimate(cfg, tested_buffer=tested_buffer, scratch_root=scratch_root, say=say)
    _say_headlines(result, say, tested_line)
    job_env = getattr(args, "job_env", None)
    processes, job = _say_job_sizes(cfg, result, job_env or {}, say)
    # A run of the configured buffer (the full test, or --buffer-size at the configured
    # size) fills its own folders with what training saves: its answers count its rows.
    configured_run = result.tested_buffer == result.original_buffer
    separate = scenario != "full" or not configured_run
    plan = _Rows(scenario, locations, processes, configured_run)
    rows = check_locations(plan.run(result))
    estimate_only = getattr(args, "estimate_only", False)
    production = _answer_for_production(result, args, plan, rows, job, say, separate=separate)
    _say_run_rows(result, rows, say, separate, estimate_only)
    if getattr(args, "fit_budget", None) is not None:
        result.fit_budget = fit_budget(result, budget, processes, plan.job, say)
    _refuse_or_warn(result, args, plan, rows, (report or {}, production), say)
    if report is not None:
        report.update({**estimate_report(result), **production})
    return result


@dataclass
class _Rows:
    """The rows a run is held to: its own (`run`: the scenario's, or the caller's
    `locations`) and the job's at the configured buffer (`job`). Every buffer the run
    advises fits `advised`: the run's own rows and, for a run of the configured buffer
    (`configured_run`), the job's too, each on its own."""

    scenario: str
    locations: Callable[[Any], list[Any]] | None
    processes: int
    configured_run: bool

    def job(self, sized: Any) -> list[Location]:
        return configured_locations(sized, self.processes)

    def run(self, sized: Any) -> list[Location]:
        built = self.locations(sized) if self.locations is not None else None
        return built if built is not None else scenario_locations(self.scenario, sized)

    @property
    def advised(self) -> list[RowsAt]:
        return [self.run, self.job] if self.configured_run else [self.run]


def _say_job_sizes(
    cfg: DictConfig, result: EstimateResult, job_env: Mapping[str, str], say: Callable[[str], None]
) -> tuple[int, dict[str, Any]]:
    """The processes per host and, when they, the hosts or max_to_keep multiply the
    checkpoint, the JOB CHECKPOINTS line; returns (processes per host, job_sizes)."""
    processes, source = processes_per_host(cfg, job_env)
    if processes > 1:
        say(f"Processes per host saving at once: {processes} ({source})")
    job = job_sizes(result, processes)
    if job["per_host"] != job["per_process"] or job["bucket"] != job["per_host"]:
        say(job_sizes_line(result, processes, job))
    return processes, job


def _answer_for_production(
    result: EstimateResult,
    args: argparse.Namespace,
    plan: _Rows,
    rows: list[Location],
    job: dict[str, Any],
    say: Callable[[str], None],
    *,
    separate: bool,
) -> dict[str, Any]:
    """Whether the configured buffer fits where the job writes (its line, and with
    --estimate-only its table, when the run's rows are shown `separate`ly); returns the
    report's production keys."""
    # A run of the configured buffer fills its own rows too: the headline counts them, so
    # it cannot say FITS above a table that refuses.
    also = [row for row in rows if not row.ok] if plan.configured_run else []
    configured = _say_configured_answer(
        result, plan.processes, say,
        table=getattr(args, "estimate_only", False) and separate, also=also,
        environment=getattr(args, "env_source", THIS_SHELL),
        advice_rows=plan.advised if plan.configured_run else [plan.job],
    )  # fmt: skip
    return {
        "job_sizes": job,
        "configured_locations": [row.report() for row in configured],
        "configured_fits": all(row.ok for row in configured) and not also,
    }


def _refuse_or_warn(
    result: EstimateResult,
    args: argparse.Namespace,
    plan: _Rows,
    rows: list[Location],
    written: tuple[dict[str, Any], dict[str, Any]],
    say: Callable[[str], None],
) -> None:
    """Raise PreflightRefusal (exit 3) when the run's rows cannot hold its save, after
    writing the report (`written`: the caller's, and the production keys) with the refusal;
    with --force, say what would have refused."""
    job_env = getattr(args, "job_env", None)
    environment = getattr(args, "env_source", THIS_SHELL)
    try:
        warnings = refuse_or_warn(
            rows, result, plan.advised, force=getattr(args, "force", False),
            env=job_env if environment != THIS_SHELL else None,
        )  # fmt: skip
    except PreflightRefusal as refusal:
        write_report(
            args.report,
            {**written[0], **estimate_report(result), **written[1], "refusal": str(refusal),
             "passed": False, "exit_code": EXIT_PREFLIGHT},
        )  # fmt: skip
        raise
    for warning in warnings:
        say(f"⚠ PREFLIGHT WOULD REFUSE (--force): {warning}")


def _say_configured_answer(
    result: EstimateResult,
    processes: int,
    say: Callable[[str], None],
    *,
    table: bool,
    also: list[Location],
    environment: str,
    advice_rows: list[RowsAt],
) -> list[Location]:
    """The production answer: does the configured buffer's checkpoint (what training saves,
    `processes` of them per host) fit where the job writes, and the rows of this run that
    `also` fail (a run of the configured buffer); its table when `table`. When it does not
    fit, the line names the largest buffer whose `advice_rows` all fit (the same search and
    rows as the run's own refusal advice)."""
    configured = check_locations(configured_locations(result, processes))
    largest = None
    if not all(row.ok for row in [*configured, *also]):
        largest = largest_fitting_buffer(advice_rows, result)
    if table:
        say(
            f"Where the configured buffer's checkpoint goes ({result.original_buffer:,} "
            "elements, what training saves):"
        )
        say(locations_table(configured))
    say(configured_fit_line(configured, result, environment, largest, run_rows=also))
    return configured


def _say_run_rows(
    result: EstimateResult,
    rows: list[Location],
    say: Callable[[str], None],
    separate: bool,
    estimate_only: bool,
) -> None:
    """The folders this run fills (or would, with --estimate-only), already checked."""
    if separate and estimate_only:
        say(
            f"The folders a test run would fill (buffer {result.tested_buffer:,}; "
            "--estimate-only fills none):"
        )
    elif separate:
        say(f"The folders this run fills (buffer {result.tested_buffer:,}):")
    say(locations_table(rows))
    _, _, tmp_warning = tf_temp_dir()
    if tmp_warning:
        say(f"⚠ {tmp_warning}")
    result.locations = [row.report() for row in rows]


def job_sizes(result: EstimateResult, processes: int) -> dict[str, Any]:
    """The configured buffer's checkpoints for the whole job, in bytes (the estimate, without
    its ±): per process; per host (`processes` staged at once in its temp folder); in the
    bucket at its peak (times hosts, processes and estimate.max_to_keep + 1)."""
    each = result.original_bytes
    kept = result.checkpoints_in_bucket
    return {
        "buffer": result.original_buffer,
        "uncertainty": result.uncertainty,
        "per_process": each,
        "per_host": each * processes,
        "bucket": each * checkpoints_in_the_bucket(result, processes),
        "hosts": result.num_hosts,
        "processes_per_host": processes,
        "checkpoints_in_bucket": kept,
    }


def job_sizes_line(result: EstimateResult, processes: int, job: dict[str, Any]) -> str:
    """`JOB CHECKPOINTS at shuffle_buffer_size N (±u): X per process; Y per host (…); Z in
    the bucket (…)`."""
    stated = f" (±{job['uncertainty']:.0%})" if job["uncertainty"] is not None else ""
    bucket = bucket_factors(job["hosts"], processes, job["checkpoints_in_bucket"])
    return (
        f"JOB CHECKPOINTS at shuffle_buffer_size {job['buffer']:,}{stated}: "
        f"{format_size(job['per_process'])} per process; {format_size(job['per_host'])} per "
        f"host ({processes} staged at once in its temp folder); {format_size(job['bucket'])} "
        f"in the bucket ({bucket})"
    )


def processes_per_host(cfg: DictConfig, job_env: Mapping[str, str]) -> tuple[int, str]:
    """(processes per host that each save a checkpoint, where the figure comes from):
    estimate.processes_per_host, else the job's LOCAL_WORLD_SIZE or CUDA_VISIBLE_DEVICES,
    else 1. The shell's own devices are not counted: the job may run elsewhere."""
    configured = cfg.estimate.get("processes_per_host")  # validated: config.estimate_settings
    if configured is not None:
        return int(configured), "estimate.processes_per_host"
    found = processes_from_env(job_env)
    return found if found is not None else (1, "one process: set estimate.processes_per_host")


def _budget_arg(args: argparse.Namespace) -> int | None:
    """--fit-budget SIZE in bytes; None for no budget or the tightest location."""

    fit_budget = getattr(args, "fit_budget", None)
    if fit_budget in (None, "tightest"):
        return None
    return parse_size(fit_budget)


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
