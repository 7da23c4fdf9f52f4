"""Multi-host test: every process's iterator checkpoint saved at once, restored and compared.

One real process per (host, process) on this machine (--hosts times --processes-per-host),
each building your pipeline for its own shard: the builder gets `process_index` and
`process_count` as keyword arguments when it takes them, and every process has
DLCKPT_PROCESS_INDEX / DLCKPT_PROCESS_COUNT set (for `${oc.env:DLCKPT_PROCESS_INDEX}` in a
config). The processes of one host share its temp folder. After a barrier they all save
through TensorFlow's own gs:// writer under <run prefix>/process_{i}-of-{n}/ (the embedded
GCS server, or GCS_TEST_BUCKET), then each restores in a new process and compares bit for
bit. Across processes: shards that read the same elements are reported.

Exit codes: 0 every process resumed exactly, 1 one did not, died, or the restore would
use another process count (--restore-processes), 2 bad input.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from typing import Any

from dlckpt.cli.common import common_parser, load_from_args, parse_args, run_main, say_runtime
from dlckpt.cli.small_buffer import tested_buffer_size
from dlckpt.config import parse_positive_int, shuffle_buffer_size
from dlckpt.multihost.run import Job, gcs_destination, refuse_a_new_process_count, run_multi_host
from dlckpt.preflight.locations import multi_host_locations
from dlckpt.preflight.run import estimate_and_preflight, estimate_report
from dlckpt.report import write_report
from dlckpt.roundtrip.scenario import open_destination

SCRIPT = "multi_host"
TIMEOUT_SECONDS = 900.0


def main(argv: Sequence[str] | None = None, prog: str = "dlckpt multi-host") -> int:
    parser = common_parser(prog, __doc__.splitlines()[0])
    parser.add_argument("--hosts", default="2", help="hosts to stand in for (default 2)")
    parser.add_argument(
        "--processes-per-host", default="2", help="processes on each host (default 2)"
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
    report: dict[str, Any] = {"script": SCRIPT}
    return run_main(lambda: _run(parser, argv, report), argv, report)


def _run(parser: Any, argv: Sequence[str] | None, report: dict[str, Any]) -> int:
    args = parse_args(parser, argv)
    hosts = parse_positive_int(args.hosts, "--hosts")
    per_host = parse_positive_int(args.processes_per_host, "--processes-per-host")
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
    if refuse_a_new_process_count(job) is not None:  # answered before anything is measured
        print(buffer_line)
        code = run_multi_host(job, report)
    else:
        with open_destination(os.environ.get("GCS_TEST_BUCKET"), embedded_when_unset=True) as where:
            destination = gcs_destination(where)
            estimate = estimate_and_preflight(
                cfg, args, scenario="small_buffer", tested_buffer=tested, report=report,
                tested_line=buffer_line, locations=_rows(destination, job.count),
            )  # fmt: skip
            code = run_multi_host(job, report, destination, estimate)
        report.update(estimate_report(estimate))
    write_report(args.report, report)
    return code


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


def _rows(destination: Any, processes: int) -> Any:
    embedded = bool(getattr(destination, "ephemeral", False))

    def rows(estimate: Any) -> list[Any]:
        return multi_host_locations(
            estimate,
            processes,
            embedded_dir=tempfile.gettempdir() if embedded else None,
            gcs_uri=destination.location.uri(),
        )

    return rows
