"""Real saves of a filled iterator at small buffers: the bytes the calibration fits.

Each save goes to a scratch folder and is removed; a save that runs out of room there is a
preflight refusal naming the folder (exit 3), not a failure of the pipeline.
"""

from __future__ import annotations

import collections
import contextlib
import shutil
import time
from pathlib import Path
from typing import Any, NamedTuple

from dlckpt.ckpt_io import save_iterator
from dlckpt.errors import PreflightRefusal
from dlckpt.estimate.memory import allocated_bytes
from dlckpt.tempdir import is_disk_full


def refuse_disk_full(folder: Path, error: BaseException) -> PreflightRefusal:
    return PreflightRefusal(
        f"calibration scratch folder {folder}: a calibration save ran out of room "
        f"({' '.join(str(error).split())[:80]}); point TMPDIR at a folder with more room, "
        "or lower estimate.calibration_buffer_sizes"
    )


def save_bytes(iterator: Any, folder: Path, scratch: Path) -> int:
    """Save the iterator into `folder`, return its bytes, remove it; disk full -> exit 3."""

    try:
        return save_iterator(iterator, folder).bytes
    except Exception as error:  # TensorFlow raises its own types; the text names the cause
        if is_disk_full(error):
            raise refuse_disk_full(scratch, error) from None
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


class IsolatedSaves(NamedTuple):
    """What the isolated shuffle-buffer saves measured (Calibration's fields of those names)."""

    chunks: list[list[float]]
    raw_element_bytes: int
    memory_element_bytes: int


class HeldSave(NamedTuple):
    """A save of a shuffle that holds what it read: its bytes, and the C allocator's bytes
    the iterator held just before it (None without glibc)."""

    bytes: int
    allocated: int | None


def filled(shuffled: Any, reads: int) -> tuple[Any, int | None]:
    """An iterator over `shuffled` after `reads` reads, and the C allocator's bytes that
    making and filling it took and kept (None without glibc)."""
    before = allocated_bytes()
    iterator = iter(shuffled)
    for _ in range(reads):
        next(iterator)
    after = allocated_bytes()
    return iterator, None if before is None or after is None else after - before


def save_after_reads(shuffled: Any, reads: int, folder: Path, scratch: Path) -> HeldSave:
    """Save `shuffled` (a shuffle over a short input, no threads) after `reads` reads: what
    its buffer then holds, measured without any timing."""
    iterator, held = filled(shuffled, reads)
    saved = save_bytes(iterator, folder, scratch)
    del iterator
    return HeldSave(saved, held)


def steady_save_bytes(
    iterator: Any,
    folder: Path,
    scratch: Path,
    agree: int = 3,
    attempts: int = 12,
    pause: float = 0.1,
) -> int:
    """The bytes `agree` saves in a row give, `pause` seconds apart (else their most common).

    With nothing read in between, fixed-size background buffers fill and stop: the state a
    training job saves in (training is the slow side). A save can also catch an element in
    transit between two buffers, and on a busy machine the thread that moves it may not run
    for a while: a transit state then repeats over a few tens of milliseconds, but seldom
    over `agree` saves spread over (agree - 1) x pause seconds. The estimate's anchors and
    the tests' real checkpoints both come from here, so they measure the same state.
    """
    sizes: list[int] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause)
        sizes.append(save_bytes(iterator, folder / str(attempt), scratch))
        if len(sizes) >= agree and len(set(sizes[-agree:])) == 1:
            return sizes[-1]
    counts = collections.Counter(sizes)
    return min(size for size, count in counts.items() if count == max(counts.values()))


def collect_garbage() -> None:
    """Destroy dropped iterators over the user's pipeline now, before the next one is made.

    An eager iterator is deleted when its last reference goes; one caught in a reference
    cycle waits for the garbage collector, and meanwhile a Dataset.cache(filename) it
    writes keeps its lock and partial files, so the next iterator collides with them.
    """
    import gc

    gc.collect()


class OwnCacheFiles:
    """Removes the cache files a stage wrote and nothing else (a context manager).

    Saving an iterator whose Dataset.cache(filename) has not finished its first pass
    finalizes a partial cache shard, and TensorFlow keeps it for a restore; the next
    iterator then refuses to start ("Existing cache files found"). Files that match a
    cache filename and did not exist before the stage are the calibration's own.
    """

    def __init__(self, prefixes: list[str]) -> None:
        self.prefixes = prefixes
        self.before: set[str] = set()

    def _matching(self) -> set[str]:
        import glob

        return {path for prefix in self.prefixes for path in glob.glob(glob.escape(prefix) + "*")}

    def __enter__(self) -> OwnCacheFiles:
        self.before = self._matching()
        return self

    def __exit__(self, *_: object) -> None:
        import os

        collect_garbage()
        for path in sorted(self._matching() - self.before):
            with contextlib.suppress(OSError):
                os.remove(path)
