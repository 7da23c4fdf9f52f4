"""Checkpoint save/restore and verified GCS transfers, each beside the plain operation.

Every repeat times the project's path and the plain path on the same bytes in the same
folder (or server), one right after the other, so the ratio of the two is taken under
the same load; the order alternates between repeats so neither always goes first.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlckpt.bench.stats import ratios, summary, timed
from dlckpt.ckpt_io import CHECKPOINT_NAME

CHUNK_BYTES = 8 * 1024 * 1024


def fsync_files(paths: list[Path]) -> None:
    """Flush each file to the disk (TensorFlow's checkpoint writer does not fsync)."""
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def evict_from_cache(paths: list[Path]) -> None:
    """Drop these files' pages from the page cache (fsync first), so a read goes to the disk.

    Only these files' pages: dropping the whole cache would slow everyone on the machine.
    """
    for path in paths:
        descriptor = os.open(path, os.O_RDONLY)
        try:
            os.fsync(descriptor)
            os.posix_fadvise(descriptor, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(descriptor)


def raw_write(path: Path, payload: bytes, total: int) -> None:
    """Write `total` bytes sequentially (repeating `payload`), then fsync."""
    with path.open("wb") as handle:
        left = total
        while left > 0:
            piece = payload[: min(left, len(payload))]
            handle.write(piece)
            left -= len(piece)
        handle.flush()
        os.fsync(handle.fileno())


def raw_read(path: Path) -> int:
    """Read the file sequentially in CHUNK_BYTES pieces; returns the bytes read."""
    total = 0
    with path.open("rb", buffering=0) as handle:
        while chunk := handle.read(CHUNK_BYTES):
            total += len(chunk)
    return total


def checkpoint_files(prefix: Path) -> list[Path]:
    return sorted(p for p in prefix.parent.iterdir() if p.name.startswith(prefix.name))


def _both_orders(repeat: int, first: Callable[[], None], second: Callable[[], None]) -> None:
    for work in (first, second) if repeat % 2 == 0 else (second, first):
        work()


def save_restore_vs_raw(
    iterator: Any, dataset: Any, folder: Path, repeats: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """tf.train.Checkpoint save (+fsync) and restore against a raw write (+fsync) and read.

    `iterator` is a filled iterator over `dataset`. A first, untimed save gives the size
    (and pays TensorFlow's one-time setup); each repeat then saves the iterator to
    `folder` and writes as many random bytes to a file in the same folder, evicts both
    from the page cache, and restores (restore_iterator) and reads them back.
    Returns seconds per step and the per-repeat ratios.
    """
    from dlckpt.ckpt_io import restore_iterator, save_iterator

    warmup = save_iterator(iterator, folder / "ckpt-warmup")
    shutil.rmtree(folder / "ckpt-warmup", ignore_errors=True)
    size = warmup.bytes
    payload = os.urandom(CHUNK_BYTES)  # incompressible, like the frames' sensor noise
    times: dict[str, list[float]] = {"save": [], "write": [], "restore": [], "read": []}
    sizes: list[int] = []
    for repeat in range(repeats):
        target = folder / f"ckpt-{repeat}"
        raw_path = folder / f"raw-{repeat}.bin"

        def save(target: Path = target) -> None:
            def work() -> None:
                sizes.append(save_iterator(iterator, target).bytes)
                fsync_files(checkpoint_files(target / CHECKPOINT_NAME))

            times["save"].append(timed(work)[0])

        def write(raw_path: Path = raw_path) -> None:
            times["write"].append(timed(lambda: raw_write(raw_path, payload, size))[0])

        def restore(target: Path = target) -> None:
            prefix = str(target / CHECKPOINT_NAME)
            times["restore"].append(timed(lambda: restore_iterator(dataset, prefix))[0])

        def read(raw_path: Path = raw_path) -> None:
            times["read"].append(timed(lambda: raw_read(raw_path))[0])

        _both_orders(repeat, save, write)
        evict_from_cache([*checkpoint_files(target / CHECKPOINT_NAME), raw_path])
        _both_orders(repeat, restore, read)
        shutil.rmtree(target, ignore_errors=True)
        raw_path.unlink(missing_ok=True)
        say(
            f"  repeat {repeat + 1}/{repeats}: {sizes[-1]:,} B, save {times['save'][-1]:.2f} s "
            f"vs write {times['write'][-1]:.2f} s, restore {times['restore'][-1]:.2f} s vs "
            f"read {times['read'][-1]:.2f} s"
        )
    return {
        "bytes": summary(sizes),
        "raw_bytes": size,
        "seconds": {key: summary(values) for key, values in times.items()},
        "save/raw_write": ratios(times["save"], times["write"]),
        "restore/raw_read": ratios(times["restore"], times["read"]),
    }


# --- GCS transfers ------------------------------------------------------------------------


class ServerProcesses:
    """The processes the embedded GCS server started (children of this one that appeared)."""

    def __init__(self, before: set[int]) -> None:
        import psutil

        me = psutil.Process()
        self.processes = [p for p in me.children(recursive=True) if p.pid not in before]

    @staticmethod
    def snapshot() -> set[int]:
        import psutil

        return {p.pid for p in psutil.Process().children(recursive=True)}

    def rss_bytes(self) -> int | None:
        """Summed RSS of the server's processes; None when it runs inside this process."""
        import psutil

        if not self.processes:
            return None
        total = 0
        for process in self.processes:
            try:
                total += process.memory_info().rss
            except psutil.Error:
                continue
        return total


def gcs_bucket(client: Any) -> Any:
    """The embedded server's bucket (created once; the server starts empty)."""
    from dlckpt.storage.gcs import EMBEDDED_BUCKET

    bucket = client.bucket(EMBEDDED_BUCKET)
    return bucket if bucket.exists() else client.create_bucket(EMBEDDED_BUCKET)


def plain_upload(bucket: Any, files: list[Path], prefix: str) -> None:
    for path in files:
        bucket.blob(f"{prefix}/{path.name}").upload_from_filename(str(path))


def plain_download(bucket: Any, files: list[Path], prefix: str, into: Path) -> None:
    into.mkdir(parents=True, exist_ok=True)
    for path in files:
        bucket.blob(f"{prefix}/{path.name}").download_to_filename(str(into / path.name))


def transfer_vs_plain(
    files: list[Path], folder: Path, repeats: int, say: Callable[[str], None]
) -> dict[str, Any]:
    """GcsDestination.put / fetch against plain upload_from_filename / download_to_filename.

    Same files, same embedded server (started here through storage.embedded_gcs_server),
    one client; every object is removed after its repeat so the server's memory does not
    grow across repeats. Seconds and per-repeat ratios (project path / plain path).
    """
    from dlckpt.storage.gcs import GcsDestination, GcsLocation, embedded_gcs_server, make_client

    times: dict[str, list[float]] = {"put": [], "upload": [], "fetch": [], "download": []}
    with embedded_gcs_server():
        client = make_client()
        bucket = gcs_bucket(client)
        destination = GcsDestination(client, GcsLocation(bucket.name, "bench"), ephemeral=True)
        plain_upload(bucket, files[:1], "warmup")  # the first request pays the connection
        for repeat in range(repeats):
            run_prefix = f"verified-{repeat}"
            plain_prefix = f"plain-{repeat}"
            into = folder / f"download-{repeat}"

            def put(run_prefix: str = run_prefix) -> None:
                times["put"].append(timed(lambda: destination.put(files, run_prefix))[0])

            def upload(plain_prefix: str = plain_prefix) -> None:
                seconds, _ = timed(lambda: plain_upload(bucket, files, plain_prefix))
                times["upload"].append(seconds)

            def fetch(run_prefix: str = run_prefix, into: Path = into) -> None:
                seconds, _ = timed(lambda: destination.fetch(run_prefix, into / "verified"))
                times["fetch"].append(seconds)

            def download(plain_prefix: str = plain_prefix, into: Path = into) -> None:
                target = into / "plain"
                seconds, _ = timed(lambda: plain_download(bucket, files, plain_prefix, target))
                times["download"].append(seconds)

            _both_orders(repeat, put, upload)
            _both_orders(repeat, fetch, download)
            destination.remove(run_prefix)
            for blob in client.list_blobs(bucket, prefix=plain_prefix + "/"):
                blob.delete()
            shutil.rmtree(into, ignore_errors=True)
            say(
                f"  repeat {repeat + 1}/{repeats}: put {times['put'][-1]:.2f} s vs upload "
                f"{times['upload'][-1]:.2f} s, fetch {times['fetch'][-1]:.2f} s vs download "
                f"{times['download'][-1]:.2f} s"
            )
    return {
        "bytes": sum(p.stat().st_size for p in files),
        "files": len(files),
        "seconds": {key: summary(values) for key, values in times.items()},
        "put/plain_upload": ratios(times["put"], times["upload"]),
        "fetch/plain_download": ratios(times["fetch"], times["download"]),
    }
