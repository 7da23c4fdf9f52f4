"""Diagnose `Could not append to the internal temporary file` on this host, for your config.

Measures the checkpoint your configured shuffle buffer writes, resolves the folder
TensorFlow's gs:// writer stages it in (TEST_TMPDIR, TMPDIR, TMP, /tmp) for the failed
job's environment, and checks every cause: variables pointing somewhere small, a tmpfs,
several processes per host, leftover tmp_file_tensorflow_* files, quota, inodes, the
file-size limit, other writers. Prints a table and, last, the MOST LIKELY CAUSE line.

The job's environment: --env-file FILE (`env > job.env` in the job's shell, or a copy of
/proc/PID/environ), then upper-case KEY=VALUE arguments (e.g. TMPDIR=/scratch; `KEY=`
unsets). Lower-case key=value arguments are Hydra overrides, as in the other scripts.

Exit codes: 0 nothing here explains a failure (the last line then says the config fits, ✓),
1 a cause was found, 2 bad input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dlckpt.cli.common import common_parser, load_from_args, parse_args, run_main, say_runtime
from dlckpt.config import shuffle_buffer_size
from dlckpt.diagnose.checks import (
    Job,
    diagnose,
    findings_table,
    most_likely_line,
    next_steps,
    pass_line,
)
from dlckpt.errors import EXIT_FAILED, EXIT_PASSED
from dlckpt.job_env import (
    TEMP_VARIABLES,
    detect_processes,
)
from dlckpt.paths import WORK_DIR
from dlckpt.report import write_report
from dlckpt.units import parse_size

SCRATCH = WORK_DIR / "diagnose"  # the estimate's saves, away from the folder checked


def main(argv: Sequence[str] | None = None, prog: str = "diagnose.py") -> int:
    parser = common_parser(prog, __doc__.splitlines()[0])
    parser.add_argument(
        "--checkpoint-size", metavar="SIZE",
        help="use this checkpoint size per process (e.g. 91MB) instead of measuring the config",
    )  # fmt: skip
    report: dict[str, Any] = {"script": "diagnose"}
    return run_main(lambda: _run(parser, argv, report), argv, report)


def _run(parser: Any, argv: Sequence[str] | None, report: dict[str, Any]) -> int:
    args = parse_args(parser, argv)
    report["config_name"] = args.config_name
    env, env_source = args.job_env, args.env_source  # parse_args read the job's environment
    cfg = load_from_args(args)
    say_runtime(args)
    print(f"Config: {args.config_name} · dataloader: {cfg.dataloader._target_}")
    shown = ", ".join(f"{k}={env[k]}" if env.get(k) else f"{k} unset" for k in TEMP_VARIABLES)
    print(f"Job environment ({env_source}): {shown}")
    job = _job(cfg, args, env, env_source)
    print(f"Processes per host saving at once: {job.processes} ({job.processes_source})")
    result = diagnose(job)
    print(
        f"TensorFlow stages gs:// writes in: {result.folder.path} ({result.variable}; "
        f"{result.folder.describe()})"
    )
    print(findings_table(result.findings))
    best = result.most_likely
    if best is None:
        print("Nothing here explains it. Next things to try:")
        for step in next_steps(job, result.folder):
            print(f"  - {step}")
    line = most_likely_line(result)
    exit_code = EXIT_FAILED if best is not None else EXIT_PASSED
    report.update(result.report(), cause_found=best is not None, exit_code=exit_code)
    write_report(args.report, report)
    print(line)
    if best is None:  # what someone checking a fix reads: the config fits, checked
        print(pass_line(result))
    return exit_code


def _processes(cfg: Any, env: dict[str, str]) -> tuple[int, str, bool]:
    """(processes per host, where the figure comes from, whether it was only detected)."""
    configured = cfg.estimate.get("processes_per_host")
    if configured is None:
        processes, found = detect_processes(env)
        source = f"detected: {found}"
        if processes == 1:
            source += "; set estimate.processes_per_host=N if N processes save"
        return processes, source, processes > 1
    return int(configured), "estimate.processes_per_host", False  # validated when read


def _job(cfg: Any, args: Any, env: dict[str, str], env_source: str) -> Job:
    """The checkpoint per process (measured, or --checkpoint-size) and the processes per host."""
    processes, source, detected = _processes(cfg, env)
    buffer = shuffle_buffer_size(cfg)
    if args.checkpoint_size is not None:
        size = parse_size(args.checkpoint_size, "--checkpoint-size")
        return Job(env, env_source, size, "--checkpoint-size", processes, source, detected,
                   lambda _folder, _processes: 0)  # fmt: skip
    from omegaconf import OmegaConf

    from dlckpt.estimate.estimator import estimate

    # The processes do not change one process's checkpoint: keep them out of the cache key.
    measured = OmegaConf.to_container(cfg, resolve=True)
    assert isinstance(measured, dict)
    measured["estimate"]["processes_per_host"] = None
    SCRATCH.mkdir(parents=True, exist_ok=True)
    result = estimate(OmegaConf.create(measured), scratch_root=SCRATCH)
    print(
        f"CHECKPOINT OF THE CONFIGURED BUFFER ({buffer:,} elements), per process: "
        f"{result.headline('original')}"
    )
    how = "measured" if result.calibration is not None else "formula"
    checkpoint_source = f"{how}, buffer {buffer:,}"
    return Job(
        env, env_source, result.original_bytes, checkpoint_source, processes, source, detected,
        _largest_fitting(result), result.bytes_for,
    )  # fmt: skip


def _largest_fitting(result: Any) -> Any:
    """(folder, processes) -> the largest buffer whose `processes` checkpoints fit the folder,
    by the one search every advice uses."""
    from dlckpt.preflight.locations import Location, largest_fitting_buffer

    def largest(folder: str, processes: int) -> int:
        def rows(sized: Any) -> list[Location]:
            return [Location("staging folder", folder, sized.original_bytes * processes)]

        return largest_fitting_buffer(rows, result)

    return largest
