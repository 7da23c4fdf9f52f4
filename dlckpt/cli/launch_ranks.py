"""Try `multi-host --launcher` on this machine: N processes started as torchrun starts ranks.

Each process gets torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE,
GROUP_RANK, TORCHELASTIC_RUN_ID) and runs `python -m dlckpt multi-host --launcher` with
the other arguments given here. They meet in GCS_TEST_BUCKET=gs://bucket/prefix or, when it
is unset, in the embedded GCS server this command starts. Their lines are printed as they
come, prefixed `[rankN]:`; process 0's last lines are the job's verdict. On a cluster,
run the same `multi-host --launcher` command under torchrun, srun or a TPU pod's
--worker=all instead.

Exit code: process 0's (the job's verdict), else the first other process's that failed.
"""

from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import Sequence

from dlckpt.config import parse_positive_int
from dlckpt.errors import EXIT_USAGE, UsageError
from dlckpt.runtime.signals import die_with_parent


def main(argv: Sequence[str] | None = None, prog: str = "dlckpt launch-ranks") -> int:
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--ranks", default="2", help="processes to start (default 2)")
    parser.add_argument(
        "--ranks-per-host", help="processes per stand-in host (default: all on one host)"
    )
    args, rest = parser.parse_known_args(list(sys.argv[1:] if argv is None else argv))
    try:
        ranks = parse_positive_int(args.ranks, "--ranks")
        per_host = parse_positive_int(args.ranks_per_host or ranks, "--ranks-per-host")
    except UsageError as error:
        print(f"✗ {error}", file=sys.stderr)
        return EXIT_USAGE
    if os.environ.get("GCS_TEST_BUCKET"):
        return _run(ranks, per_host, rest, {})
    from dlckpt.storage.embedded.server import embedded_gcs

    with embedded_gcs() as server:
        server.create_bucket("dlckpt-launch")
        print(f"Embedded GCS server at {server.endpoint}: GCS_TEST_BUCKET=gs://dlckpt-launch/jobs")
        return _run(
            ranks, per_host, rest, {**server.env, "GCS_TEST_BUCKET": "gs://dlckpt-launch/jobs"}
        )


def _run(ranks: int, per_host: int, rest: list[str], extra: dict[str, str]) -> int:
    """Start every rank at once; their lines as they come, prefixed `[rankN]:` as torchrun
    prefixes them; the exit code once all have ended."""
    run_id = f"launch-{secrets.token_hex(4)}"
    started = []
    for rank in range(ranks):
        env = {**os.environ, **extra, "RANK": str(rank), "WORLD_SIZE": str(ranks),
               "LOCAL_RANK": str(rank % per_host), "LOCAL_WORLD_SIZE": str(per_host),
               "GROUP_RANK": str(rank // per_host), "TORCHELASTIC_RUN_ID": run_id}  # fmt: skip
        command = [sys.executable, "-m", "dlckpt", "multi-host", "--launcher", *rest]
        started.append(subprocess.Popen(
            die_with_parent(command), env=env, stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, text=True,
        ))  # fmt: skip
    lock = threading.Lock()
    readers = [
        threading.Thread(target=_relay, args=(rank, process, lock), daemon=True)
        for rank, process in enumerate(started)
    ]
    for reader in readers:
        reader.start()
    codes = [process.wait() for process in started]
    for reader in readers:
        reader.join()
    print(f"Exit codes by rank: {codes} (rank 0's is the job's verdict)")
    return codes[0] or next((code for code in codes if code), 0)


def _relay(rank: int, process: subprocess.Popen[str], lock: threading.Lock) -> None:
    assert process.stdout is not None
    for line in process.stdout:
        with lock:
            print(f"[rank{rank}]: {line.rstrip()}", flush=True)
