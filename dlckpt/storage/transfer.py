"""What every destination shares: run prefixes, checksums, parallel copies that can be cancelled.

Each copy is verified by size and crc32c (google-crc32c); a run's objects live under its
own prefix, marked complete by MARKER_NAME, so cleanup removes only what the run wrote.
"""

from __future__ import annotations

import secrets
import sys
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from dlckpt.runtime.cleanup import (
    FAILURE_PATH_TIMEOUT_SECONDS,
    note_left_behind,
)

MARKER_NAME = "_COMPLETE.json"


TRANSFER_WORKERS = 4


class TransferError(Exception):
    """An object that does not match its source (size or crc32c) or a missing marker."""


def one_line(error: BaseException, limit: int = 200) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def new_run_prefix(script: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"dlckpt-{script}-{stamp}-{secrets.token_hex(3)}"


def crc32c_of_file(path: Path) -> str:
    """Base64 crc32c, the form GCS reports in object metadata."""
    import base64

    import google_crc32c

    checksum = google_crc32c.Checksum()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(8 * 1024 * 1024), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode("ascii")


class Cancelled(Exception):
    """A transfer stopped because another one failed or the run was interrupted."""


def in_parallel(
    work: Callable[[Any, threading.Event], Any],
    items: list[Any],
    *,
    grace_seconds: float = FAILURE_PATH_TIMEOUT_SECONDS,
) -> list[Any]:
    """work(item, cancel) on TRANSFER_WORKERS threads, results in order; the FIRST error raised.

    On the first error or an interrupt, `cancel` is set: transfers not yet started never
    start, running ones stop at their next chunk (their progress callbacks raise
    Cancelled). Running ones are waited for at most `grace_seconds` (one blocked on a
    frozen endpoint may never return); any still running is named in `stragglers` of
    runtime.cleanup's notes and abandoned (the threads are daemons, so exit is not held).
    """
    cancel = threading.Event()
    pending = list(enumerate(items))
    results: list[Any] = [None] * len(items)
    errors: list[BaseException] = []
    running: dict[int, Any] = {}
    lock = threading.Lock()

    def worker() -> None:
        while not cancel.is_set():
            with lock:
                if not pending:
                    return
                index, item = pending.pop(0)
                running[index] = item
            try:
                results[index] = work(item, cancel)
            except BaseException as error:
                with lock:
                    errors.append(error)
                cancel.set()
            finally:
                with lock:
                    running.pop(index, None)

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(TRANSFER_WORKERS)]
    for thread in threads:
        thread.start()
    try:
        # Short waits, so a signal is handled between them and the first error is seen.
        while any(thread.is_alive() for thread in threads) and not cancel.wait(0.1):
            pass
    except BaseException:
        cancel.set()
        raise
    finally:
        if cancel.is_set():
            _join_within(threads, grace_seconds)
            _note_stragglers(running, lock)
    if errors:
        raise errors[0]
    return results


def _join_within(threads: list[threading.Thread], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))


def _note_stragglers(running: dict[int, Any], lock: threading.Lock) -> None:
    with lock:
        stuck = [str(item) for item in running.values()]
    if stuck:
        note_left_behind(
            f"{len(stuck)} transfer(s) still blocked on the endpoint when the run gave up "
            f"on them ({', '.join(stuck)})"
        )


def file_manifest(files: list[Path]) -> dict[str, dict[str, Any]]:
    """Every file's size and crc32c: what the marker records and each copy is checked against."""
    return {p.name: {"size": p.stat().st_size, "crc32c": crc32c_of_file(p)} for p in files}


def progress_bar(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not sys.stderr.isatty(),
        leave=False,
    )


def cancellable(update: Callable[[int], Any], cancel: threading.Event) -> Callable[[int], Any]:
    """A progress callback that stops its transfer at the next chunk once `cancel` is set."""

    def callback(count: int) -> Any:
        if cancel.is_set():
            raise Cancelled("another transfer failed or the run was interrupted")
        return update(count)

    return callback


def is_cancelled(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, Cancelled):
            return True
        error = error.__cause__ or error.__context__
    return False
