#!/usr/bin/env python3
"""How long TensorFlow's gs:// save waits on an embedded server that died or froze mid-save.

Each case runs in a fresh process (TensorFlow reads its GCS_* settings once, at import):
an iterator over a shuffle buffer of --megabytes 256 KiB frames is filled, its save to
gs:// through the embedded server starts, and --fault-after seconds later the server's
HTTPS front is sent SIGKILL ("killed") or SIGSTOP ("frozen"). Printed and written to
bench/tf_gcs_fault.json: the seconds from the save's start until TensorFlow raised, and
the end of its error, with the tool's bounds (storage.tf_gcs.EMBEDDED_BOUNDS) and, with
--with-defaults, with TensorFlow's own settings (about 13 minutes for "killed"; "frozen"
may wait for the hour of GCS_WRITE_REQUEST_TIMEOUT_SECS's default).

    python scripts/bench_tf_gcs_fault.py
    python scripts/bench_tf_gcs_fault.py --with-defaults --faults killed
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FAULTS = {"killed": signal.SIGKILL, "frozen": signal.SIGSTOP}


def _child(fault: str, megabytes: int, fault_after: float) -> dict[str, object]:
    """One save with one fault, in this (fresh) process."""
    from dlckpt.runtime.tf_import import import_tensorflow
    from dlckpt.storage.embedded.server import applied, embedded_gcs

    # The server alone, without the tool's bounds: this process's environment decides.
    with embedded_gcs() as server, applied(server.env):
        server.create_bucket("dlckpt-bench")
        tf = import_tensorflow()
        frame = 256 * 1024
        dataset = tf.data.Dataset.range(10**9).map(lambda i: tf.fill([frame], tf.cast(i, tf.uint8)))
        iterator = iter(dataset.shuffle(megabytes * 4, seed=1))
        next(iterator)
        timer = threading.Timer(fault_after, os.kill, (server.front_pid, FAULTS[fault]))
        started = time.monotonic()
        timer.start()
        try:
            tf.train.Checkpoint(iterator=iterator).write("gs://dlckpt-bench/run/iterator")
            error = "saved before the fault"
        except Exception as raised:  # TensorFlow's AbortedError, reported as measured
            text = " ".join(str(raised).split())
            error = text[text.find("All ") :][:160] if "All " in text else text[:160]
        seconds = time.monotonic() - started
        os.kill(server.front_pid, signal.SIGCONT)
    return {"seconds": round(seconds, 1), "error": error}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=64)
    parser.add_argument("--fault-after", type=float, default=0.1)
    parser.add_argument("--with-defaults", action="store_true")
    parser.add_argument("--faults", nargs="+", choices=sorted(FAULTS), default=sorted(FAULTS))
    parser.add_argument("--child", choices=sorted(FAULTS))
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.megabytes, args.fault_after)))
        return 0
    from dlckpt.storage.tf_gcs import EMBEDDED_BOUNDS

    results = []
    for settings in ("tool's bounds", "TensorFlow's defaults")[: 2 if args.with_defaults else 1]:
        for fault in args.faults:
            env = {k: v for k, v in os.environ.items() if not k.startswith("GCS_")}
            if settings == "tool's bounds":
                env.update(EMBEDDED_BOUNDS)
            command = [sys.executable, __file__, "--child", fault, "--megabytes",
                       str(args.megabytes), "--fault-after", str(args.fault_after)]  # fmt: skip
            done = subprocess.run(command, env=env, cwd=ROOT, capture_output=True, text=True)
            lines = done.stdout.strip().splitlines()
            result = (
                json.loads(lines[-1])
                if done.returncode == 0 and lines
                else {"error": done.stderr[-300:]}
            )
            results.append({"settings": settings, "fault": fault, **result})
            print(
                f"{settings:22}  {fault:6}  {result.get('seconds', '?')} s  {result['error'][-90:]}"
            )
    out = ROOT / "bench" / "tf_gcs_fault.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"megabytes": args.megabytes, "results": results}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
