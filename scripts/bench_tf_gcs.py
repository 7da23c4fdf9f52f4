#!/usr/bin/env python3
"""Benchmark TensorFlow's gs:// path through the embedded GCS server against local saves.

One iterator with a shuffle buffer of --megabytes 1 MiB frames is filled once, then saved
and restored --repeats times each way, side by side in this process: tf.train.Checkpoint
to a local folder, and to gs:// through the HTTPS front (TensorFlow's own GCS filesystem,
which stages the whole file in its temp folder first). The front's own cost is measured
apart: the same file PUT as one resumable upload through the front and straight to
fake-gcs-server. The server's RSS (front + fake-gcs-server) is polled throughout.

Printed and written to bench/tf_gcs.json as min/median/max over the repeats:
  save_ratio     local save seconds / gs:// save seconds (throughput of gs:// vs local)
  restore_ratio  local restore seconds / gs:// restore seconds
  front_ratio    direct upload seconds / upload-through-the-front seconds
  server_peak_rss_bytes, server_rss_bytes_per_uploaded_byte (peak over baseline / object)

    python scripts/bench_tf_gcs.py                    # 256 MiB, 3 repeats
    python scripts/bench_tf_gcs.py --megabytes 1024 --repeats 5
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

FRAME_BYTES = 1024 * 1024
BUCKET = "bench"


class RssPoller:
    """The most resident memory the given processes held together, polled every 50 ms."""

    def __init__(self, pids: Sequence[int]) -> None:
        import psutil

        self.processes = [psutil.Process(pid) for pid in pids]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def current(self) -> int:
        return sum(process.memory_info().rss for process in self.processes)

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self.peak = max(self.peak, self.current())

    def __enter__(self) -> RssPoller:
        self.peak = self.current()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def _filled_iterator(megabytes: int) -> Any:
    import tensorflow as tf

    def frame(index: Any) -> Any:
        return tf.cast(
            tf.random.stateless_uniform([FRAME_BYTES], seed=tf.stack([index, 1]), maxval=256,
                                        dtype=tf.int32), tf.uint8)  # fmt: skip

    dataset = tf.data.Dataset.range(10**7).map(frame).shuffle(megabytes, seed=0)
    iterator = iter(dataset)
    next(iterator)  # fills the shuffle buffer
    return iterator


def _timed(work: Callable[[], Any]) -> float:
    started = time.perf_counter()
    work()
    return time.perf_counter() - started


def _put(port: int, path: Path, name: str) -> float:
    """One resumable upload of `path` (session + a single streamed PUT), seconds."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=600, blocksize=1 << 20)
    query = f"uploadType=resumable&name={name}"
    connection.request("POST", f"/upload/storage/v1/b/{BUCKET}/o?{query}", body=b"{}",
                       headers={"Content-Type": "application/json"})  # fmt: skip
    response = connection.getresponse()
    response.read()
    location = response.getheader("Location") or ""
    target = location.split("://", 1)[1].split("/", 1)[1]
    size = path.stat().st_size
    started = time.perf_counter()
    with path.open("rb") as body:
        connection.request("PUT", "/" + target, body=body,
                           headers={"Content-Length": str(size),
                                    "Content-Range": f"bytes 0-{size - 1}/{size}"})  # fmt: skip
        response = connection.getresponse()
        response.read()
    seconds = time.perf_counter() - started
    connection.close()
    if response.status != 200:
        raise RuntimeError(f"upload of {name} answered {response.status}")
    return seconds


def _spread(values: list[float]) -> dict[str, float]:
    return {
        "min": round(min(values), 3),
        "median": round(statistics.median(values), 3),
        "max": round(max(values), 3),
    }


def bench(megabytes: int, repeats: int, scratch: Path) -> dict[str, Any]:
    import tensorflow as tf

    from dlckpt.storage.embedded.server import applied, embedded_gcs

    rows: list[dict[str, float]] = []
    with embedded_gcs(scratch, bucket=BUCKET) as server, applied(server.env):
        iterator = _filled_iterator(megabytes)
        checkpoint = tf.train.Checkpoint(iterator=iterator)
        poller_pids = server.pids
        with RssPoller(poller_pids) as poller:
            baseline = poller.current()
            for repeat in range(repeats):
                local = scratch / f"local-{repeat}"
                remote = f"gs://{BUCKET}/run-{repeat}/iterator"
                local_save = _timed(partial(checkpoint.write, str(local / "iterator")))
                gs_save = _timed(partial(checkpoint.write, remote))
                local_restore = _timed(partial(checkpoint.read, str(local / "iterator")))
                gs_restore = _timed(partial(checkpoint.read, remote))
                shard = next(local.glob("iterator.data-*"))
                direct = _put(server.server_port, shard, f"direct-{repeat}")
                through = _put(int(server.endpoint.rsplit(":", 1)[1]), shard, f"front-{repeat}")
                size = sum(p.stat().st_size for p in local.iterdir())
                rows.append({
                    "checkpoint_bytes": size,
                    "local_save_s": local_save, "gs_save_s": gs_save,
                    "local_restore_s": local_restore, "gs_restore_s": gs_restore,
                    "direct_upload_s": direct, "front_upload_s": through,
                })  # fmt: skip
                shutil.rmtree(local)
                print(
                    f"repeat {repeat + 1}: {size / 1e6:.0f} MB; save local {local_save:.2f} s, "
                    f"gs:// {gs_save:.2f} s; restore local {local_restore:.2f} s, "
                    f"gs:// {gs_restore:.2f} s; upload direct {direct:.2f} s, "
                    f"through the front {through:.2f} s; server RSS peak "
                    f"{poller.peak / 1e6:.0f} MB",
                    flush=True,
                )
        peak = poller.peak
    checkpoint_bytes = rows[0]["checkpoint_bytes"]
    return {
        "megabytes": megabytes,
        "repeats": repeats,
        "checkpoint_bytes": checkpoint_bytes,
        "save_ratio": _spread([r["local_save_s"] / r["gs_save_s"] for r in rows]),
        "restore_ratio": _spread([r["local_restore_s"] / r["gs_restore_s"] for r in rows]),
        "front_ratio": _spread([r["direct_upload_s"] / r["front_upload_s"] for r in rows]),
        "gs_save_mb_per_s": _spread([checkpoint_bytes / r["gs_save_s"] / 1e6 for r in rows]),
        "local_save_mb_per_s": _spread([checkpoint_bytes / r["local_save_s"] / 1e6 for r in rows]),
        "server_baseline_rss_bytes": baseline,
        "server_peak_rss_bytes": peak,
        "server_rss_bytes_per_uploaded_byte": round((peak - baseline) / checkpoint_bytes, 3),
        "runs": rows,
    }


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=int, default=256, help="checkpoint size, MiB")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "tf_gcs.json")
    args = parser.parse_args(argv)
    if args.megabytes < 1 or args.repeats < 1:
        print("✗ --megabytes and --repeats: expected whole numbers >= 1", file=sys.stderr)
        return 2
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    scratch = Path(tempfile.mkdtemp(prefix="dlckpt-bench-tf-gcs-"))
    try:
        result = bench(args.megabytes, args.repeats, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    for key in ("save_ratio", "restore_ratio", "front_ratio"):
        spread = result[key]
        print(f"{key}: min {spread['min']}, median {spread['median']}, max {spread['max']}")
    print(
        f"server RSS: {result['server_baseline_rss_bytes'] / 1e6:.0f} MB at rest, peak "
        f"{result['server_peak_rss_bytes'] / 1e6:.0f} MB; "
        f"{result['server_rss_bytes_per_uploaded_byte']} bytes per uploaded byte"
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
