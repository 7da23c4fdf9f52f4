"""Multi-host test: every process's iterator checkpoint saved at once, restored and compared.

One real process per (host, process) on this machine (--hosts times --processes-per-host),
each building your pipeline for its own shard: the builder gets `process_index` and
`process_count` as keyword arguments when it takes them, and every process has
DLCKPT_PROCESS_INDEX / DLCKPT_PROCESS_COUNT set (for `${oc.env:DLCKPT_PROCESS_INDEX}` in a
config). The processes of one host share its temp folder. After a barrier they all save
through TensorFlow's own gs:// writer under <run prefix>/process_{i}-of-{n}/ (the embedded
GCS server, or GCS_TEST_BUCKET), then each restores in a new process and compares bit for
bit. Across processes: shards that read the same elements are reported.

Under your own launcher (--launcher: torchrun, srun, a TPU pod's --worker=all), this
command is one process of the job: it reads its index and count from the launcher
(multihost.launcher), saves under GCS_TEST_BUCKET with its peers, and process 0 gathers
every process's result from the bucket into the verdict (multihost.launched).

Exit codes: 0 every process resumed exactly, 1 one did not, died, or the restore would
use another process count (--restore-processes), 2 bad input, 3 the preflight refused.
Under --launcher only process 0's code is the verdict; the others exit 0 once their
result is in the bucket.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

from dlckpt.cli.common import common_parser, load_from_args, parse_args, run_main, say_runtime
from dlckpt.cli.small_buffer import tested_buffer_size
from dlckpt.config import parse_positive_int, shuffle_buffer_size
from dlckpt.errors import UsageError
from dlckpt.multihost.launched import run_launched
from dlckpt.multihost.launcher import Launch, read_launch
from dlckpt.multihost.run import Job, gcs_destination, refuse_a_new_process_count, run_multi_host
from dlckpt.preflight.locations import multi_host_locations
from dlckpt.preflight.run import estimate_and_preflight, estimate_report
from dlckpt.report import start_report, write_report
from dlckpt.roundtrip.scenario import open_destination

SCRIPT = "multi_host"
TIMEOUT_SECONDS = 900.0
# Under a launcher, hosts start minutes apart and process 0 measures the checkpoint first.
BARRIER_SECONDS = 900.0
GATHER_SECONDS = 900.0


def main(argv: Sequence[str] | None = None, prog: str = "dlckpt multi-host") -> int:
    parser = common_parser(prog, __doc__.splitlines()[0])
    parser.add_argument("--hosts", default="2", help="hosts to stand in for (default 2)")
    parser.add_argument(
        "--processes-per-host",
        help="processes on each host (default 2; under --launcher, the launcher's)",
    )
    parser.add_argument(
        "--buffer-size",
        help="the shuffle buffer each process fills (default: min(configured, "
        "roundtrip.small_buffer_size), as small-buffer tests)",
    )
    parser.add_argument(
        "--restore-processes",
        help="the process count the job resumes with (default: the same): another count is "
        "refused, since an iterator's state cannot be resharded",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="run even when the preflight says the run's folders or RAM cannot hold it",
    )
    _launcher_arguments(parser)
    report: dict[str, Any] = {"script": SCRIPT}
    return run_main(lambda: _run(parser, argv, report), argv, report)


def _run(parser: Any, argv: Sequence[str] | None, report: dict[str, Any]) -> int:
    args = parse_args(parser, argv)
    launch = _launch(args)
    if launch is not None and launch.process.index != 0 and args.report is not None:
        # Every rank gets the same command line: only process 0's report is at the path.
        name = f"{args.report.stem}.{launch.process.name}{args.report.suffix}"
        args.report = args.report.with_name(name)
        start_report(args.report, script=parser.prog)
    hosts = launch.hosts if launch else parse_positive_int(args.hosts, "--hosts")
    per_host = (
        launch.per_host
        if launch
        else parse_positive_int(args.processes_per_host or "2", "--processes-per-host")
    )
    restore = (
        parse_positive_int(args.restore_processes, "--restore-processes")
        if args.restore_processes is not None
        else None
    )
    args.overrides = [*args.overrides, *_job_shape(args.overrides, hosts, per_host)]
    cfg = load_from_args(args)  # bad input answered here, before any process starts
    original = shuffle_buffer_size(cfg)
    small = parse_positive_int(cfg.roundtrip.small_buffer_size, "roundtrip.small_buffer_size")
    explicit = parse_positive_int(args.buffer_size, "--buffer-size") if args.buffer_size else None
    tested, buffer_line = tested_buffer_size(original, small, explicit)
    report.update(config_name=args.config_name, hosts=hosts, processes_per_host=per_host)
    report["shuffle_buffer_size"] = {"original": original, "tested": tested}
    say_runtime(args)
    print(f"Config: {args.config_name} · dataloader: {cfg.dataloader._target_}")
    job = Job(
        config_name=args.config_name,
        config_dir=args.config_dir,
        overrides=[*args.overrides, f"dataloader.shuffle_buffer_size={tested}"],
        hosts=hosts,
        per_host=per_host,
        restore_processes=restore,
        keep=args.keep,
        timeout_seconds=TIMEOUT_SECONDS,
    )
    measure = _Measure(cfg, args, report, tested, buffer_line)
    if launch is not None:
        code = _run_launched(args, job, launch, report, measure)
    elif refuse_a_new_process_count(job) is not None:  # answered before anything is measured
        print(buffer_line)
        code = run_multi_host(job, report)
    else:
        with open_destination(os.environ.get("GCS_TEST_BUCKET"), embedded_when_unset=True) as where:
            destination = gcs_destination(where)
            estimate = measure(_rows(destination, job.count, job.count))
            code = run_multi_host(job, report, destination, estimate)
    for estimate in measure.estimates:  # with the cross-checks the run added
        report.update(estimate_report(estimate))
    write_report(args.report, report)
    return code


def _launcher_arguments(parser: Any) -> None:
    parser.add_argument(
        "--launcher",
        action="store_true",
        help="run as one process of a job your launcher started (torchrun, srun, a TPU "
        "pod): index and count from the launcher's variables or the flags below; every "
        "process meets in GCS_TEST_BUCKET",
    )
    parser.add_argument("--process-index", help="this process's index (with --launcher)")
    parser.add_argument("--process-count", help="the job's process count (with --launcher)")
    parser.add_argument(
        "--run-id",
        help="an id every process of this run shares, new for each run (with --launcher; "
        "default: torchrun's TORCHELASTIC_RUN_ID or Slurm's SLURM_JOB_ID)",
    )
    parser.add_argument(
        "--barrier-timeout",
        help=f"seconds each process waits at the save for its peers (with --launcher; "
        f"default {BARRIER_SECONDS:.0f}: process 0 measures the checkpoint first)",
    )
    parser.add_argument(
        "--gather-timeout",
        help=f"seconds process 0 waits for every result (with --launcher; default "
        f"{GATHER_SECONDS:.0f})",
    )


def _launch(args: Any) -> Launch | None:
    """This process's place under --launcher (UsageError, exit 2, when it cannot be read);
    None without it, where the launcher-only flags are refused."""
    if not args.launcher:
        for flag in ("process_index", "process_count", "run_id", "barrier_timeout",
                     "gather_timeout"):  # fmt: skip
            if getattr(args, flag) is not None:
                raise UsageError(
                    f"--{flag.replace('_', '-')}: only with --launcher (one process of a job "
                    "your launcher started); without it this command starts every process"
                )
        return None
    return read_launch(
        os.environ, index=args.process_index, count=args.process_count,
        per_host=args.processes_per_host, run_id=args.run_id,
    )  # fmt: skip


def _run_launched(args: Any, job: Job, launch: Launch, report: dict[str, Any], measure: Any) -> int:
    setting = os.environ.get("GCS_TEST_BUCKET") or ""
    if not setting.startswith("gs://"):
        raise UsageError(
            f"multi-host --launcher: GCS_TEST_BUCKET={setting!r}: expected gs://bucket/prefix, "
            "the bucket where every process saves and process 0 gathers the results"
        )
    job.barrier_seconds = parse_positive_int(
        args.barrier_timeout or int(BARRIER_SECONDS), "--barrier-timeout"
    )
    gather = parse_positive_int(args.gather_timeout or int(GATHER_SECONDS), "--gather-timeout")
    with open_destination(setting, embedded_when_unset=False) as where:
        destination = gcs_destination(where)
        rows = _rows(destination, launch.per_host, launch.process.count)
        code = run_launched(
            job, launch, destination, report,
            measure=lambda: measure(rows), gather_seconds=float(gather),
        )  # fmt: skip
    return code


class _Measure:
    """The estimate at the tested buffer and the preflight of the rows it is called with
    (PreflightRefusal, exit 3, when refused); what it measured stays in `estimates`, for the
    report after the run has added its cross-checks."""

    def __init__(self, cfg: Any, args: Any, report: dict[str, Any], tested: int, line: str) -> None:
        self.cfg, self.args, self.report, self.tested, self.line = cfg, args, report, tested, line
        self.estimates: list[Any] = []

    def __call__(self, rows: Any) -> Any:
        estimate = estimate_and_preflight(
            self.cfg, self.args, scenario="small_buffer", tested_buffer=self.tested,
            report=self.report, tested_line=self.line, locations=rows,
        )  # fmt: skip
        self.estimates.append(estimate)
        return estimate


def _job_shape(overrides: Sequence[str], hosts: int, per_host: int) -> list[str]:
    """The job's size figures count --hosts and --processes-per-host, unless the command line
    sets estimate.num_hosts / estimate.processes_per_host for a larger production job."""
    given = {item.split("=", 1)[0].lstrip("+") for item in overrides}
    shape = []
    if "estimate.num_hosts" not in given:
        shape.append(f"estimate.num_hosts={hosts}")
    if "estimate.processes_per_host" not in given:
        shape.append(f"estimate.processes_per_host={per_host}")
    return shape


def _rows(destination: Any, processes: int, in_bucket: int) -> Any:
    embedded = bool(getattr(destination, "ephemeral", False))

    def rows(estimate: Any) -> list[Any]:
        return multi_host_locations(
            estimate,
            processes,
            embedded_dir=tempfile.gettempdir() if embedded else None,
            gcs_uri=destination.location.uri(),
            in_bucket=in_bucket,
        )

    return rows
