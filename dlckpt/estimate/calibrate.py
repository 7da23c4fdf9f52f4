"""Calibration saves: the shuffle buffer's own bytes, measured apart from the other buffers.

A checkpoint holds the shuffle buffer plus whatever the other buffers (prefetch, parallel
map, interleave) hold at the moment of the save. Their fill depends on thread timing, so a
per-element figure taken from whole-pipeline saves at small buffers carries that jitter,
and the extrapolation multiplies it by the buffer ratio (300x and more). So the two parts
are measured apart:

- per element: elements the shuffle node reads (its input) are sampled in chunks from
  across the stream and written with Dataset.save; each chunk is then shuffled alone
  (Dataset.load -> shuffle, read synchronously: no thread can change it) and saved. The
  slope between that save and a one-slot save is the checkpoint's bytes per buffered
  element. Nothing here depends on timing, so the figure is the same on a busy machine.
- the rest: the user's whole pipeline is filled at each calibration buffer, read as far as
  the round trip reads before its save, and saved once its background buffers have
  stopped growing; minus the shuffle buffer's part, that is the `fixed` part. An error
  there is not multiplied by the buffer ratio.

Iterators over the user's pipeline are made one at a time, each finished before the next
(a Dataset.cache(filename) holds a lock file while an iterator lives). Every stage runs
under a stall limit (estimate.calibration_timeout_seconds).
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import math
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from dlckpt.config import estimate_settings
from dlckpt.errors import PreflightRefusal, UsageError
from dlckpt.estimate.memory import SAVE_WORKING_BYTES_PER_SLOT, allocated_bytes, save_working_bytes
from dlckpt.pipeline.tensors import element_bytes, element_leaves, leading_dimension
from dlckpt.tempdir import is_disk_full
from dlckpt.units import format_bytes

# A sampled chunk aims for this many bytes of elements (in memory), within CHUNK_ELEMENTS:
# enough slots that the per-slot figure is steady, few enough to place many chunks.
CHUNK_TARGET_BYTES = 64 * 1024
CHUNK_ELEMENTS = (16, 2048)  # (fewest, most) elements in one sampled chunk
# What the sample may hold in all (bytes of elements in memory): within it, the stream up to
# the last offset is sampled whole; beyond it, chunks are placed at the configured offsets.
SAMPLE_BUDGET_BYTES = 48 * 2**20
# How far into the stream the calibration reads at most (bytes of elements in memory): a
# stream of large decoded elements is costly to read, so its offsets are cut to fit.
READ_BUDGET_BYTES = 768 * 2**20
FIRST_LOOK_ELEMENTS = 16  # elements read first to size the chunks and the calibration's needs
REPEAT_SMALLEST = 2  # extra whole-pipeline saves at the smallest calibration buffer
# How much deeper than in the settled saves TensorFlow's autotuner may have made the other
# buffers when a real save comes, in output batches held (batch_bytes each). With autotune on
# (the default) it deepens even a fixed prefetch(N) (the autotune_buffer_sizes rewrite) when
# the reader finds it empty, which a loaded machine makes likely: in the index_shuffle shape
# (no shuffle buffer; prefetch(2)) real saves were seen 12 batches above the settled size in
# CI's full suite and 19 in `tests/test_estimate.py`'s real save on a busy 2-core machine.
# TensorFlow bounds the depth only by its RAM budget: this covers what was seen, not a limit.
AUTOTUNE_DEPTH_BATCHES = 24
# The fill whose allocator count gives the RAM row's bytes per element, as the pipeline's
# own ops made them: about this many bytes, within these many elements.
MADE_FILL_BYTES = 16 * 1024 * 1024
MADE_FILL_ELEMENTS = (64, 2048)
# An in-memory cache()'s growth: settled saves every CACHE_GROWTH_ELEMENTS elements read,
# CACHE_GROWTH_STRETCHES times (their spread is the figure's error).
CACHE_GROWTH_ELEMENTS = 1024
CACHE_GROWTH_STRETCHES = 4
# The uncertainty floor: what the isolated per-element figure misses at 100x (slot keys one
# digit longer, neighbours compressed together), measured by `make bench` on the test family.
RELATIVE_FLOOR = 0.015
# 95% coverage for a mean over chunks: Student's t at the chunks' degrees of freedom.
_T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


@dataclass
class Calibration:
    """What the calibration saves measured; everything an estimate for any buffer needs.

    Sizes are bytes. `bytes_for(B) = fixed + per_element(B) x held(B) + slot_bytes x empty(B)`,
    where held(B) is min(B, stream_elements) and empty(B) the slots a short stream leaves.
    """

    # Whole-pipeline saves at the calibration buffers: [buffer, checkpoint bytes].
    anchors: list[list[int]]
    # Isolated shuffle-buffer saves, one per sampled chunk: [stream offset, elements, bytes
    # per buffered element of its own (its slot's cost is slot_bytes, apart)].
    chunks: list[list[float]]
    # The checkpoint does not grow with the buffer (no shuffle node, a symbolic checkpoint).
    constant: bool
    # Bytes an empty slot of the shuffle buffer costs (what a buffer beyond a short stream writes).
    slot_bytes: float
    # Mean tensor bytes of one element as the shuffle buffer holds it (its data alone).
    raw_element_bytes: int
    # Mean bytes of one output sample (after decoding, batching split off), in memory.
    sample_bytes: int
    # Elements the shuffle buffer's input yields in all when finite (None: it repeats).
    stream_elements: int | None
    seconds: float
    # Bytes by which the anchors' fixed parts disagree (max - min): prefetch fill jitter.
    anchor_spread: float
    notes: list[str] = field(default_factory=list)
    # Bytes per buffered element that the whole-pipeline saves hold beyond the shuffle buffer
    # (e.g. an in-memory cache() before the shuffle keeps every element read), and its error.
    extra_per_element: float = 0.0
    extra_error: float = 0.0
    # In-memory bytes of every sampled element, per chunk: a buffer that ends inside a chunk
    # holds its first elements, whose share of the chunk's bytes follows their sizes.
    element_sizes: list[list[int]] = field(default_factory=list)
    # Checkpoint bytes of one output batch held in a buffer: the step by which the other
    # buffers' contents move with thread timing (a batch in transit), real saves included.
    batch_bytes: int = 0
    # Output batches by which TensorFlow's autotuner may have deepened the other buffers at a
    # real save (AUTOTUNE_DEPTH_BATCHES; 0 when the pipeline turns autotune off).
    autotune_batches: float = 0.0
    # Bytes the C allocator holds per buffered element: its data with headers and alignment
    # (0: not measured, e.g. no glibc), and the dense tensors in one element. The RAM row.
    memory_element_bytes: int = 0
    tensors_per_element: int = 0

    @property
    def transit_bytes(self) -> float:
        """How far a save's other buffers may be from the settled state: three batches held
        in a buffer. On this 2-core machine with both cores busy, real saves of one
        pipeline were seen two prefetched batches apart, and a prefetch slot costs up to
        ~1.5x a batch held in a shuffle buffer (its own keys): 2 x 1.5 = 3."""
        return 3.0 * self.batch_bytes

    @property
    def autotune_bytes(self) -> float:
        """Bytes by which autotuned buffers may be deeper at a real save than when settled."""
        return self.autotune_batches * self.batch_bytes

    @property
    def timing_bytes(self) -> float:
        """Everything in a save that follows thread timing: batches in transit, autotuned depth."""
        return self.transit_bytes + self.autotune_bytes

    @property
    def largest_buffer(self) -> int:
        return max(buffer for buffer, _ in self.anchors)

    @property
    def ram_per_element(self) -> int:
        """Host bytes one buffered element needs at a save's peak: what the allocator holds
        for it (its tensor bytes when that was not measured) plus the save's working memory
        (_memory.save_working_bytes); twice that when an in-memory cache() feeds the buffer
        (the cache keeps its own copy of every element read, and saves it too)."""
        held = self.memory_element_bytes or self.raw_element_bytes
        one = held + save_working_bytes(max(self.tensors_per_element, 1))
        return 2 * one if self.extra_per_element > 0 else one

    def ram_bytes_for(self, buffer_size: int) -> int:
        """Host bytes for a `buffer_size`-element shuffle buffer while its iterator is saved:
        its elements (ram_per_element) and its empty slots (a stream shorter than the
        buffer leaves some; _memory.SAVE_WORKING_BYTES_PER_SLOT). 0 when the checkpoint does
        not grow with the buffer: it then holds no elements worth counting."""
        if self.constant:
            return 0
        held = self.held_elements(buffer_size)
        return held * self.ram_per_element + (buffer_size - held) * SAVE_WORKING_BYTES_PER_SLOT

    def held_elements(self, buffer_size: int) -> int:
        """Elements the shuffle buffer can actually hold: a finite stream caps it."""
        if self.stream_elements is not None:
            return min(buffer_size, self.stream_elements)
        return buffer_size

    def per_element(self, buffer_size: int) -> tuple[float, float]:
        """(bytes per buffered element, slot included; relative 95% uncertainty of that mean).

        A buffer of B elements holds the first ~B elements of the stream, so the figure is
        the mean over [0, B) of the sampled chunks, each weighted by the stretch of stream
        up to the next chunk (stratified); a chunk that B cuts counts its first elements,
        by their sizes; past the sampled range, all of it. The uncertainty is Student's t
        times that mean's standard error from the chunks' spread, for the stretches not
        sampled; plus, past the sampled range, the error of assuming the rest is alike.
        """
        if self.constant or not self.chunks:
            return 0.0, 0.0
        end = self.chunks[-1][0] + self.chunks[-1][1]
        horizon = min(buffer_size, end)
        weights: list[float] = []
        values: list[float] = []
        sampled = 0.0
        for index, (start, count, _) in enumerate(self.chunks):
            if start >= horizon and index:
                break
            following = self.chunks[index + 1][0] if index + 1 < len(self.chunks) else end
            inside = max(min(start + count, horizon) - start, 1)
            weights.append(max(min(following, horizon) - start, 1.0))
            values.append(self._chunk_value(index, int(inside)))
            sampled += inside
        mean = sum(w * v for w, v in zip(weights, values, strict=True)) / sum(weights)
        if mean <= 0:
            return 0.0, 0.0
        unsampled = max(1.0 - sampled / sum(weights), 0.0)
        spread = [c[2] + self.slot_bytes for c in self.chunks]
        if len(spread) < 2:
            return mean, 0.05  # one chunk: no spread to measure, say so with a wide margin
        stdev = statistics.stdev(spread)
        share = math.sqrt(sum(w * w for w in weights)) / sum(weights)
        t95 = _T95.get(len(spread) - 1, 2.0)
        relative = t95 * stdev * share * math.sqrt(unsampled) / mean
        if buffer_size > end:  # the stream past the sample is assumed like the sample
            relative = math.hypot(relative, t95 * stdev / math.sqrt(len(spread)) / mean)
        last_start, last_count, _ = self.chunks[len(weights) - 1]
        if horizon < last_start + last_count:  # the buffer ends inside a chunk: its first
            cut = (horizon - last_start) / sum(weights)  # elements may differ from its mean
            relative = math.hypot(relative, stdev * cut / mean)
        return mean, relative

    def _chunk_value(self, index: int, inside: int) -> float:
        """Bytes per element (slot included) of the first `inside` elements of chunk `index`."""
        _, count, content = self.chunks[index]
        sizes = self.element_sizes[index] if index < len(self.element_sizes) else []
        if inside >= count or len(sizes) != count or sum(sizes) <= 0:
            return content + self.slot_bytes
        ratio = (sum(sizes[:inside]) / inside) / (sum(sizes) / count)
        return content * ratio + self.slot_bytes

    @property
    def fixed(self) -> float:
        """Bytes outside the shuffle buffer: each anchor minus its buffer's part, the median
        (one anchor caught while an autotuned buffer grew does not move it)."""
        parts = self._anchor_fixed_parts()
        return statistics.median(parts) if parts else 0.0

    def _anchor_fixed_parts(self) -> list[float]:
        return [size - self._buffer_part(buffer) for buffer, size in self.anchors]

    def _buffer_part(self, buffer_size: int) -> float:
        per_element, _ = self.per_element(buffer_size)
        held = self.held_elements(buffer_size)
        extra = self.extra_per_element * held
        return per_element * held + extra + self.slot_bytes * (buffer_size - held)

    def bytes_for(self, buffer_size: int) -> int:
        """The checkpoint of a `buffer_size`-element shuffle buffer, in bytes."""
        if self.constant:
            return round(statistics.median(size for _, size in self.anchors))
        beyond = self._anchor_beyond_stream(buffer_size)
        if beyond is not None:
            # The stream ran out in that anchor too: any larger buffer holds the same
            # elements (the same ones already read), only more empty slots.
            buffer, size = beyond
            return round(size + self.slot_bytes * (buffer_size - buffer))
        return round(max(self.fixed, 0.0) + self._buffer_part(buffer_size))

    def _anchor_beyond_stream(self, buffer_size: int) -> list[int] | None:
        """The largest anchor whose buffer a finite stream could not fill, if B is past it too."""
        stream = self.stream_elements
        if stream is None or buffer_size < stream:
            return None
        beyond = [anchor for anchor in self.anchors if anchor[0] >= stream]
        return max(beyond) if beyond else None

    def uncertainty_for(self, buffer_size: int) -> float:
        """Relative 95% uncertainty: the per-element mean's, the anchors' spread, the batches
        in transit (a save on a busy machine may catch more or fewer), the depth autotuned
        buffers may gain, and a floor."""
        total = max(self.bytes_for(buffer_size), 1)
        per_element, relative = self.per_element(buffer_size)
        held = self.held_elements(buffer_size)
        buffer_error = relative * per_element * held
        # The cache holds the same elements as the buffer: its figure shares their spread.
        extra_error = math.hypot(self.extra_error, relative * self.extra_per_element) * held
        # The fixed part is the anchors' median: its error is within half their range.
        combined = math.hypot(buffer_error, extra_error, self.anchor_spread / 2) / total
        return combined + self.timing_bytes / total + RELATIVE_FLOOR

    def largest_buffer_within(self, budget_bytes: int) -> int:
        """The largest buffer whose estimate plus uncertainty fits in `budget_bytes` (0: none)."""

        def fits(buffer: int) -> bool:
            return self.bytes_for(buffer) * (1 + self.uncertainty_for(buffer)) <= budget_bytes

        if not fits(1):
            return 0
        low, high = 1, 2
        while fits(high):
            if self.constant or (self.stream_elements is not None and high >= 10**12):
                return 10**12  # no buffer size changes the checkpoint
            low, high = high, high * 2
            if high > 10**12:
                return low
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


@dataclass
class _Stage:
    """What the watchdog sees of the worker: the last sign of progress and a folder to watch."""

    name: str = "starting"
    last_progress: float = field(default_factory=time.monotonic)
    watched: Path | None = None
    watched_bytes: int = -1

    def beat(self, name: str | None = None) -> None:
        self.last_progress = time.monotonic()
        if name is not None:
            self.name = name


def _folder_bytes(folder: Path) -> int:
    try:
        return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
    except OSError:
        return -1


def run_with_stall_limit(
    work: Callable[[_Stage], Any], limit_seconds: float, poll_seconds: float = 0.25
) -> Any:
    """Run `work(stage)` in a daemon thread; UsageError when it shows no progress for the limit.

    A pipeline that never yields (a filter that drops everything) blocks inside TensorFlow
    where nothing can interrupt it; the daemon thread is abandoned and the process can exit.
    """
    stage = _Stage()
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = work(stage)
        except BaseException as error:  # re-raised in the caller's thread
            outcome["error"] = error

    thread = threading.Thread(target=target, name="dlckpt-calibration", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(poll_seconds)
        if stage.watched is not None:
            size = _folder_bytes(stage.watched)
            if size != stage.watched_bytes:
                stage.watched_bytes = size
                stage.beat()
        if thread.is_alive() and time.monotonic() - stage.last_progress > limit_seconds:
            raise UsageError(
                f"estimate: the pipeline made no progress for {limit_seconds:g} s while "
                f"{stage.name} (estimate.calibration_timeout_seconds={limit_seconds:g}); "
                "check that it yields elements (a filter that drops everything never does), "
                "or raise the limit"
            )
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# --- stages --------------------------------------------------------------------------------


def _autotunes_buffers(options: Any) -> bool:
    """Whether TensorFlow's autotuner may deepen the pipeline's buffers (tf.data.Options):
    not when autotune is off, nor with a symbolic checkpoint (buffers are not saved)."""
    if options.autotune.enabled is False:
        return False
    return not options.experimental_symbolic_checkpoint


def find_shuffle_node(dataset: Any) -> Any | None:
    """The _ShuffleDataset nearest the output, following `_input_dataset` links (None: none)."""
    node = dataset
    while node is not None and type(node).__name__ != "_ShuffleDataset":
        node = getattr(node, "_input_dataset", None)
    return node


def _refuse_disk_full(folder: Path, error: BaseException) -> PreflightRefusal:
    return PreflightRefusal(
        f"calibration scratch folder {folder}: a calibration save ran out of room "
        f"({' '.join(str(error).split())[:80]}); point TMPDIR at a folder with more room, "
        "or lower estimate.calibration_buffer_sizes"
    )


def _save_bytes(iterator: Any, folder: Path, scratch: Path) -> int:
    """Save the iterator into `folder`, return its bytes, remove it; disk full -> exit 3."""
    from dlckpt.ckpt_io import save_iterator

    try:
        return save_iterator(iterator, folder).bytes
    except Exception as error:  # TensorFlow raises its own types; the text names the cause
        if is_disk_full(error):
            raise _refuse_disk_full(scratch, error) from None
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


def _filled(shuffled: Any, reads: int) -> tuple[Any, int | None]:
    """An iterator over `shuffled` after `reads` reads, and the C allocator's bytes that
    making and filling it took and kept (None without glibc)."""
    before = allocated_bytes()
    iterator = iter(shuffled)
    for _ in range(reads):
        next(iterator)
    after = allocated_bytes()
    return iterator, None if before is None or after is None else after - before


def _held_save(shuffled: Any, reads: int, folder: Path, scratch: Path) -> HeldSave:
    """Save `shuffled` (a shuffle over a short input, no threads) after `reads` reads: what
    its buffer then holds, measured without any timing."""
    iterator, held = _filled(shuffled, reads)
    saved = _save_bytes(iterator, folder, scratch)
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
        sizes.append(_save_bytes(iterator, folder / str(attempt), scratch))
        if len(sizes) >= agree and len(set(sizes[-agree:])) == 1:
            return sizes[-1]
    counts = collections.Counter(sizes)
    return min(size for size, count in counts.items() if count == max(counts.values()))


def _collect() -> None:
    """Destroy dropped iterators over the user's pipeline now, before the next one is made.

    An eager iterator is deleted when its last reference goes; one caught in a reference
    cycle waits for the garbage collector, and meanwhile a Dataset.cache(filename) it
    writes keeps its lock and partial files, so the next iterator collides with them.
    """
    import gc

    gc.collect()


def _cache_filenames(dataset: Any) -> list[str]:
    """The filename of every Dataset.cache() at or upstream of `dataset` ("" = in memory)."""
    names: list[str] = []
    stack, seen = [dataset], set()
    while stack:
        node = stack.pop()
        if id(node) in seen:
            continue
        seen.add(id(node))
        filename = getattr(node, "_filename", None)
        if type(node).__name__ == "CacheDataset" and filename is not None:
            names.append(filename.numpy().decode() if hasattr(filename, "numpy") else str(filename))
        with contextlib.suppress(AttributeError, TypeError):
            stack.extend(node._inputs())
    return names


def cache_file_prefixes(dataset: Any) -> list[str]:
    """The filenames of every Dataset.cache(filename) in the pipeline's graph."""
    return [name for name in _cache_filenames(dataset) if name]


def memory_cache_before(shuffle_node: Any) -> bool:
    """True when an in-memory Dataset.cache() feeds the shuffle buffer (it keeps every element
    read, so the checkpoint grows with the elements read, not only with the buffer)."""
    return "" in _cache_filenames(shuffle_node._input_dataset)


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

        _collect()
        for path in sorted(self._matching() - self.before):
            with contextlib.suppress(OSError):
                os.remove(path)


def _mean_bytes(elements: list[Any]) -> int:
    return round(sum(element_bytes(e) for e in elements) / len(elements)) if elements else 0


def _chunk_layout(
    offsets: list[int], element_bytes_: int, stream: int | None
) -> list[tuple[int, int]]:
    """[(start, length)] of the sampled chunks, in stream order, none overlapping.

    Within SAMPLE_BUDGET_BYTES the stream up to the last offset (plus one chunk) is tiled
    whole, cut at the offsets and into pieces of at most CHUNK_ELEMENTS[1]: the
    geometric default offsets give small buffers fine detail. Otherwise one chunk starts at
    each offset (READ_BUDGET_BYTES cuts the offsets too far in).
    """
    low, high = CHUNK_ELEMENTS
    size = max(element_bytes_, 1)
    length = min(max(math.ceil(CHUNK_TARGET_BYTES / size), low), high)
    reach = max(READ_BUDGET_BYTES // size, length)
    offsets = sorted({o for o in offsets if o < reach} | {0})
    last = offsets[-1] + length if stream is None else min(offsets[-1] + length, stream)
    if last * size <= SAMPLE_BUDGET_BYTES:
        bounds = sorted({o for o in offsets if o < last} | {last})
        pieces = []
        for start, stop in itertools.pairwise(bounds):
            parts = math.ceil((stop - start) / high)
            step = math.ceil((stop - start) / parts)
            pieces += [(a, min(a + step, stop) - a) for a in range(start, stop, step)]
        return [(start, count) for start, count in pieces if count >= 3]
    chunks: list[tuple[int, int]] = []
    end = 0
    for offset in offsets:
        start = max(offset, end)
        count = length if stream is None else min(length, stream - start)
        if count >= 3:
            chunks.append((start, count))
            end = start + count
    return chunks


class _Run:
    """One calibration: the config, its scratch folder, and the stages in order."""

    def __init__(self, cfg: Any, scratch: Path, say: Callable[[str], None]) -> None:

        self.cfg = cfg
        self.scratch = scratch
        self.say = say
        settings = estimate_settings(cfg.estimate)
        self.sizes, self.offsets = settings.buffer_sizes, settings.offsets
        self.batches = max(int(cfg.roundtrip.get("batches_before_save", 1) or 1), 1)
        self.notes: list[str] = []
        self.options: Any = None
        self.empty_slot_bytes = 0.0
        self.batch_bytes = 0
        self.first_batch: Any = None
        self.memory_cache = False
        self.cache_growth = (0.0, 0.0)  # (bytes per element, error): an in-memory cache()
        self.element_sizes: list[list[int]] = []
        self.cache_prefixes: list[str] = []
        self.autotuned = True

    def dataset(self, buffer: int) -> Any:
        from dlckpt.config import with_buffer_size
        from dlckpt.pipeline.robot import instantiate_dataset

        return instantiate_dataset(with_buffer_size(self.cfg, buffer).dataloader)

    def first_look(self, stage: _Stage) -> tuple[Any, list[Any], int | None]:
        """(the shuffle node, the first elements it reads, its input's cardinality or None).

        Also keeps the pipeline's tf.data options, which the isolated saves run with.
        """
        stage.beat("reading the first elements")
        dataset = self.dataset(self.sizes[0])
        self.options = dataset.options()
        self.autotuned = _autotunes_buffers(self.options)
        self.cache_prefixes = cache_file_prefixes(dataset)
        node = find_shuffle_node(dataset)
        if node is None:
            return None, [], None
        self.memory_cache = memory_cache_before(node)
        source = node._input_dataset
        cardinality = int(source.cardinality().numpy())
        elements = []
        with OwnCacheFiles(self.cache_prefixes):
            iterator = iter(source.take(FIRST_LOOK_ELEMENTS))
            for element in iterator:
                elements.append(element)
                stage.beat()
            del iterator  # finished before any other iterator over the pipeline is made
        return node, elements, cardinality if cardinality >= 0 else None

    def check_own_needs(self, element_bytes_: int, chunks: list[tuple[int, int]]) -> None:
        """Refuse (exit 3) when the calibration's own buffers or scratch files cannot fit."""
        import psutil

        largest = self.sizes[-1]
        sampled = sum(size for _, size in chunks)
        biggest_chunk = max((size for _, size in chunks), default=0)
        disk = element_bytes_ * (sampled + largest + biggest_chunk) * 2
        ram = element_bytes_ * (largest + biggest_chunk) * 2
        free = int(psutil.disk_usage(str(self.scratch)).free)
        if disk > free:
            raise PreflightRefusal(
                f"calibration scratch folder {self.scratch}: needs ~{format_bytes(disk)} "
                f"({sampled:,} sampled elements and a {largest:,}-element save of "
                f"{format_bytes(element_bytes_)} each), {format_bytes(free)} free; point "
                "TMPDIR at a roomier folder or lower estimate.calibration_buffer_sizes"
            )
        available = int(psutil.virtual_memory().available)
        if ram > available:
            raise PreflightRefusal(
                f"host RAM for the calibration: needs ~{format_bytes(ram)} ({largest:,}-element "
                f"buffer of {format_bytes(element_bytes_)} elements), "
                f"{format_bytes(available)} available; lower estimate.calibration_buffer_sizes"
            )

    def anchors(self, stage: _Stage) -> tuple[list[list[int]], int, int | None]:
        """([buffer, steady bytes] per calibration buffer, output sample bytes, elements if short).

        Also sets `self.empty_slot_bytes`: the slope of saves of iterators that have not
        started (deterministic: no thread runs yet) between the smallest and largest buffer.
        """
        anchors: list[list[int]] = []
        sample_bytes = 0
        ended_after: int | None = None
        not_started: list[tuple[int, int]] = []
        # The smallest buffer is filled REPEAT_SMALLEST more times (cheap): the fixed part is
        # the median over every anchor, so one save caught with batches in transit (seen on
        # a busy machine) does not move it.
        for buffer in [*self.sizes, *[self.sizes[0]] * REPEAT_SMALLEST]:
            stage.beat(f"filling the whole pipeline at buffer {buffer:,}")
            with OwnCacheFiles(self.cache_prefixes):
                size, ended, batch_bytes = self._anchor(buffer, stage, not_started)
            sample_bytes = sample_bytes or batch_bytes
            ended_after = ended if ended is not None else ended_after
            anchors.append([buffer, size])
        self.empty_slot_bytes = _slope(not_started)
        self.batch_bytes = self._held_batch_bytes()
        return anchors, sample_bytes, ended_after

    def _held_batch_bytes(self) -> int:
        """Checkpoint bytes of one output batch held in a buffer, measured without threads:
        a shuffle buffer holding it twice, minus one holding it once (after one read, each
        has read its whole input)."""
        if self.first_batch is None:
            return 0
        from dlckpt.runtime.tf_import import import_tensorflow

        tf = import_tensorflow()

        def held(copies: int) -> int:
            dataset = tf.data.Dataset.from_tensors(self.first_batch).repeat(copies + 1)
            shuffled = dataset.shuffle(copies + 1, seed=1)
            return _held_save(shuffled, 1, self.scratch / "batch", self.scratch).bytes

        return max(held(2) - held(1), 0)

    def _anchor(
        self, buffer: int, stage: _Stage, not_started: list[tuple[int, int]]
    ) -> tuple[int, int | None, int]:
        """(steady bytes, batches read if the stream ended, bytes of one output sample)."""
        iterator = iter(self.dataset(buffer))
        if buffer in (self.sizes[0], self.sizes[-1]):
            saved = _save_bytes(iterator, self.scratch / "not-started", self.scratch)
            not_started.append((buffer, saved))
        read, ended, sample_bytes = 0, None, 0
        for _ in range(self.batches):
            try:
                batch = next(iterator)
            except StopIteration:
                ended = read
                break
            stage.beat()
            if not sample_bytes:
                self.first_batch = batch
                sample_bytes = round(element_bytes(batch) / leading_dimension(batch))
            read += 1
        if read == 0:
            raise UsageError(
                f"estimate: the pipeline yielded no batch at calibration buffer {buffer:,}; "
                "check that it produces data (or set estimate.bytes_per_sample for the formula)"
            )
        size = steady_save_bytes(iterator, self.scratch / "anchor", self.scratch)
        del iterator  # finished before any other iterator over the pipeline is made
        if self.memory_cache and buffer == self.sizes[-1] and ended is None:
            self.cache_growth = self._cache_growth(buffer, stage)
        return size, ended, sample_bytes

    def _cache_growth(self, buffer: int, stage: _Stage) -> tuple[float, float]:
        """(checkpoint bytes per element an in-memory cache() before the shuffle adds, error).

        With the buffer full, reading on makes the shuffle take one element from the cache
        for each it gives out, so the buffer's bytes stay the same and the cache's grow.
        Settled saves every CACHE_GROWTH_ELEMENTS elements, CACHE_GROWTH_STRETCHES times, in
        the user's own pipeline (so with its own checkpoint keys), on an iterator of its own
        whose autotuned buffers cannot deepen: every batch an autotuned prefetch holds was
        also read into the cache, so a prefetch that deepened between two saves (by up to
        32 batches of 8 elements in the cached_first shape) counted as growth: stretches of
        512 elements there gave 5 to 573 B per element. The autotuner stays on, with a RAM
        budget of 1 byte: turning it off drops the prefetch it injects at the end and
        map_parallelization, which shortens every key above them (276 B per element against
        286 B). With the budget the growth per stretch repeats to the byte. The error is
        the 95% interval from the stretches' spread. (0, 0) when the stream ends first.
        """
        from dlckpt.runtime.tf_import import import_tensorflow

        fixed = import_tensorflow().data.Options()
        fixed.autotune.ram_budget = 1  # bytes: no autotuned buffer may grow
        iterator = iter(self.dataset(buffer).with_options(fixed))
        sizes: list[int] = []
        counts: list[int] = []
        read = 0
        for _ in range(CACHE_GROWTH_STRETCHES + 1):
            # the first save once the buffer is full (one batch read), then every stretch
            while read < max(CACHE_GROWTH_ELEMENTS * len(sizes), 1):
                try:
                    batch = next(iterator)
                except StopIteration:
                    return 0.0, 0.0
                read += leading_dimension(batch)
                stage.beat()
            counts.append(read)
            sizes.append(steady_save_bytes(iterator, self.scratch / "cache-growth", self.scratch))
        del iterator  # finished before any other iterator over the pipeline is made
        growth = [
            (sizes[i + 1] - sizes[i]) / (counts[i + 1] - counts[i]) for i in range(len(sizes) - 1)
        ]
        t95 = _T95.get(len(growth) - 1, 2.0)
        error = t95 * statistics.stdev(growth) / math.sqrt(len(growth))
        return max(statistics.fmean(growth), 0.0), error

    def sample(self, stage: _Stage, chunks: list[tuple[int, int]]) -> Path:
        """Write the chunks' elements (the shuffle node's input) with Dataset.save, in order."""
        from dlckpt.runtime.tf_import import import_tensorflow

        tf = import_tensorflow()
        node = find_shuffle_node(self.dataset(self.sizes[0]))
        assert node is not None
        starts = tf.constant([s for s, _ in chunks], tf.int64)
        ends = tf.constant([s + n for s, n in chunks], tf.int64)

        def wanted(index: Any, element: Any) -> Any:
            return tf.reduce_any((index >= starts) & (index < ends))

        path = self.scratch / "sample"
        total = chunks[-1][0] + chunks[-1][1]
        picked = node._input_dataset.take(total).enumerate().filter(wanted).map(lambda i, e: e)
        stage.beat(f"sampling {sum(n for _, n in chunks):,} elements from the first {total:,}")
        stage.watched = path
        try:
            with OwnCacheFiles(self.cache_prefixes):
                picked.save(str(path), shard_func=lambda *_: tf.constant(0, tf.int64))
        except Exception as error:
            if is_disk_full(error):
                raise _refuse_disk_full(self.scratch, error) from None
            raise
        finally:
            stage.watched = None
        return path

    def made_element_memory(self, stage: _Stage, count: int) -> int:
        """Allocator bytes per element as the pipeline's own ops made them (0: not measured).

        The isolated saves replay elements loaded from Dataset.save, whose strings are
        allocated at their exact size; a string an op built (encode_png, reduce_join) can
        keep spare capacity, and the buffer holds it as made: a helper measured 2,870 B per
        PNG element in a real fill against 1,606 B loaded. So the shuffle's own input fills
        a buffer of `count` elements here, against one of two, as in `isolated`.
        """
        node = find_shuffle_node(self.dataset(self.sizes[0]))
        if node is None or count < 3:
            return 0

        def held(elements: int) -> int | None:
            stage.beat(f"filling a {count:,}-element buffer from your pipeline's own ops")
            shuffled = node._input_dataset.take(elements).shuffle(count, seed=1)
            with OwnCacheFiles(self.cache_prefixes):
                # the second read finds the input exhausted: the buffer holds elements - 2
                iterator, allocated = _filled(shuffled.with_options(self.options), 2)
                del iterator
                _collect()
            return allocated

        # A first iterator instantiates the pipeline's functions and thread pools, which
        # stay: one of two elements goes first, so the compared pair both find them made.
        held(2)
        full, empty = held(count), held(2)
        if full is None or empty is None:
            return 0
        return max(round((full - empty) / (count - 2)), 0)

    def isolated(
        self, stage: _Stage, path: Path, chunks: list[tuple[int, int]], options: Any
    ) -> IsolatedSaves:
        """Per chunk [start, elements, content bytes per element]; what an element costs in memory.

        Each chunk is shuffled alone in a buffer of its length and read twice, so the
        shuffle finds its input exhausted and holds all but two elements; the same is done
        with only the chunk's first two elements. Both saves then have the same slots (an
        unfilled slot is an empty slot) and no reader state, so their difference is the
        held elements' own bytes: exact, and untouched by any thread. The C allocator's
        count across the same two fills gives the held elements' bytes in memory alike.
        """
        from dlckpt.runtime.tf_import import import_tensorflow

        tf = import_tensorflow()

        # Built once: each build traces its functions, which costs more than the saves.
        loaded = tf.data.Dataset.load(str(path), reader_func=lambda s: s.flat_map(lambda x: x))
        total = int(loaded.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))

        # The pipeline's own options (a symbolic checkpoint changes what is saved), without
        # graph rewrites: they change no byte of the buffer and cost time at every iterator.
        quick = tf.data.Options()
        quick.experimental_optimization.apply_default_optimizations = False
        quick.autotune.enabled = False

        def held_save(chunk: Any, buffer: int) -> HeldSave:
            shuffled = chunk.shuffle(buffer, seed=1).with_options(options).with_options(quick)
            # the second read finds the input exhausted
            return _held_save(shuffled, 2, self.scratch / "chunk", self.scratch)

        results: list[list[float]] = []
        raw: list[int] = []
        memory: list[tuple[int, int]] = []  # (allocated bytes held, elements held) per chunk
        position = 0
        for start, size in chunks:
            stage.beat(f"saving the isolated shuffle buffer for elements {start:,}+")
            count = min(size, total - position)
            chunk = loaded.skip(position).take(count)
            if count < 3:
                break
            # Every element's own size (the RAM row; and, within a chunk, each element's
            # share of the chunk's checkpoint bytes, for a buffer that ends inside it).
            sizes = [element_bytes(e) for e in chunk]
            raw.extend(sizes)
            self.element_sizes.append(sizes)
            holding = held_save(chunk, count)
            empty = held_save(chunk.take(2), count)
            results.append([start, count, (holding.bytes - empty.bytes) / (count - 2)])
            if holding.allocated is not None and empty.allocated is not None:
                memory.append((holding.allocated - empty.allocated, count - 2))
            position += count
        held = sum(n for _, n in memory)
        return IsolatedSaves(
            chunks=results,
            raw_element_bytes=round(statistics.fmean(raw)) if raw else 0,
            # the whole sample's mean: one chunk's allocator count moves by a few arenas'
            # bookkeeping, which the larger chunks dilute
            memory_element_bytes=max(round(sum(b for b, _ in memory) / held), 0) if held else 0,
        )


def calibrate(
    cfg: Any, *, scratch_root: Path | None = None, say: Callable[[str], None] = print
) -> Calibration:
    """Measure the pipeline's checkpoint: isolated shuffle-buffer saves plus whole-pipeline anchors.

    Raises UsageError (exit 2) for a pipeline that yields nothing or stalls past
    estimate.calibration_timeout_seconds, PreflightRefusal (exit 3) when the calibration's
    own RAM or scratch folder is too small or a save fills the disk, and
    _roundtrip.UnsaveablePipeline when TensorFlow cannot save the iterator.
    The scratch folder (under `scratch_root`, else the temp folder) is always removed.
    """

    limit = estimate_settings(cfg.estimate).timeout_seconds
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="dlckpt-estimate-", dir=scratch_root))
    try:
        run = _Run(cfg, scratch, say)
        calibration = run_with_stall_limit(lambda stage: _calibrate(run, stage, started), limit)
        if run.autotuned:
            calibration.autotune_batches = AUTOTUNE_DEPTH_BATCHES
            calibration.notes.append(
                "TensorFlow autotunes this pipeline's buffers: a real save may hold up to "
                f"~{AUTOTUNE_DEPTH_BATCHES} more output batches than a settled one "
                f"(~{format_bytes(round(calibration.autotune_bytes))}); the ± includes them"
            )
        return calibration
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _calibrate(run: _Run, stage: _Stage, started: float) -> Calibration:
    say = run.say
    node, first, stream = run.first_look(stage)
    first_bytes = _mean_bytes(first)
    if node is not None and not first:
        raise UsageError(
            "estimate: the shuffle buffer's input yielded no element; check that the pipeline "
            "produces data (or set estimate.bytes_per_sample for the formula)"
        )
    if node is not None and len(first) < FIRST_LOOK_ELEMENTS:
        stream = len(first) if stream is None else stream
    chunks = _chunk_layout(run.offsets, first_bytes, stream) if node is not None else []
    run.check_own_needs(first_bytes or 1, chunks)
    say(f"  calibration: whole-pipeline saves at buffers {run.sizes}")
    anchors, sample_bytes, ended_after = run.anchors(stage)
    notes = list(run.notes)
    if node is None:
        return _without_shuffle(anchors, sample_bytes, run.batch_bytes, started, notes)
    measured: list[list[float]] = []
    slot_bytes = 0.0
    isolated = IsolatedSaves([], first_bytes, 0)
    if chunks:
        say(
            f"  calibration: isolated shuffle-buffer saves of {len(chunks)} chunks of "
            f"~{chunks[0][1]:,} elements from the first {chunks[-1][0] + chunks[-1][1]:,}"
        )
        path = run.sample(stage, chunks)
        isolated = run.isolated(stage, path, chunks, run.options)
        if _holds_strings(first):
            # the larger of the two counts: elements as loaded, and as the pipeline made them
            made = run.made_element_memory(stage, _made_count(first_bytes, stream))
            isolated = isolated._replace(
                memory_element_bytes=max(isolated.memory_element_bytes, made)
            )
        # A held element costs its own bytes plus its slot; the slot's keys carry the user's
        # pipeline's iterator prefix (Iterator::Root::...::Shuffle), so its cost comes from
        # the user's pipeline: saves before it starts, where every slot is empty.
        slot_bytes = run.empty_slot_bytes
        measured = isolated.chunks
        if stream is None:
            stream = _short_stream(chunks, measured)
    configured = int(run.cfg.dataloader.get("shuffle_buffer_size") or 0)
    if stream is not None and stream < configured:  # else no buffer asked for reaches it
        notes.append(
            f"the shuffle buffer's input yields {stream:,} elements in all: a larger buffer "
            "holds no more data, only more empty slots"
        )
    if ended_after is not None:
        notes.append(f"the pipeline ended after {ended_after} batches while calibrating")
    calibration = Calibration(
        anchors=anchors,
        chunks=measured,
        constant=False,
        slot_bytes=slot_bytes,
        raw_element_bytes=isolated.raw_element_bytes,
        sample_bytes=sample_bytes,
        stream_elements=stream,
        seconds=0.0,
        anchor_spread=0.0,
        notes=notes,
        memory_element_bytes=isolated.memory_element_bytes,
        tensors_per_element=len(element_leaves(first[0])) if first else 0,
        element_sizes=run.element_sizes[: len(measured)],
        batch_bytes=run.batch_bytes,
    )
    # Graph facts decide which branch is measured: a whole-pipeline save also holds the
    # other buffers, whose fill follows thread timing, so differences between the anchors
    # alone are jitter as often as they are signal.
    calibration.constant = _smaller_than_its_buffer(calibration)
    if run.cache_growth[0] and not calibration.constant:
        calibration.extra_per_element, calibration.extra_error = run.cache_growth
        # Each batch the other buffers hold (in transit, or autotuned deeper) was read
        # through the cache too: its elements are in both.
        if run.first_batch is not None:
            cached = leading_dimension(run.first_batch) * run.cache_growth[0]
            calibration.batch_bytes += round(cached)
        calibration.notes.append(
            f"an in-memory cache() feeds the shuffle buffer: it keeps every element read "
            f"(~{run.cache_growth[0]:,.0f} B each in the checkpoint, measured in your "
            "pipeline), so the checkpoint grows by that too per buffered element"
        )
    if calibration.constant:
        calibration.notes.append(
            "the checkpoint does not grow with the shuffle buffer (its contents are not saved, "
            "e.g. a symbolic checkpoint)"
        )
    parts = calibration._anchor_fixed_parts()
    calibration.anchor_spread = (max(parts) - min(parts)) if len(parts) >= 2 else 0.0
    calibration.seconds = time.perf_counter() - started
    return calibration


def _slope(saves: list[tuple[int, int]]) -> float:
    """Bytes per buffer slot between the smallest and the largest of (buffer, bytes) saves."""
    (small, small_bytes), (large, large_bytes) = min(saves), max(saves)
    return max((large_bytes - small_bytes) / (large - small), 0.0) if large > small else 0.0


def _short_stream(planned: list[tuple[int, int]], measured: list[list[float]]) -> int | None:
    """Elements in a stream that ended while being sampled (None: every chunk was full)."""
    for (start, size), got in zip(planned, measured + [[0, 0, 0]] * len(planned), strict=False):
        if got[1] < size:
            return int(start + got[1]) if got[1] else int(start)
    return None


def _holds_strings(elements: list[Any]) -> bool:
    """True when an element has a string tensor: the one kind whose bytes in memory depend
    on how the op that made it grew it (numeric tensors are allocated at their size)."""
    return bool(elements) and any(a.dtype.kind in "OSU" for _, a in element_leaves(elements[0]))


def _made_count(element_bytes_: int, stream: int | None) -> int:
    """Elements for made_element_memory: MADE_FILL_BYTES of them, within MADE_FILL_ELEMENTS
    (fewer from a short stream). Each thread's allocator cache keeps up to ~200 KB of
    freed blocks counted as in use, which 64 elements would read as ~3 KB each."""
    low, high = MADE_FILL_ELEMENTS
    count = min(max(MADE_FILL_BYTES // max(element_bytes_, 1), low), high)
    return min(count, stream) if stream is not None else count


def _smaller_than_its_buffer(calibration: Calibration) -> bool:
    """True when the largest whole-pipeline save is under half of its shuffle buffer's own
    bytes: it cannot hold the buffer's elements (e.g. a symbolic checkpoint).

    The other buffers only ever add bytes to a save, so their timing cannot make a saved
    buffer look missing; a small buffer of small elements reads as saved (the safe side).
    """
    if not calibration.chunks:
        return True
    large, large_bytes = max(calibration.anchors)
    return large_bytes < 0.5 * calibration._buffer_part(large)


def _without_shuffle(
    anchors: list[list[int]],
    sample_bytes: int,
    batch_bytes: int,
    started: float,
    notes: list[str],
) -> Calibration:
    """No shuffle node: the checkpoint is what the whole-pipeline saves hold, any buffer."""
    sizes = [size for _, size in anchors]
    notes.append(
        "no shuffle buffer in the pipeline (an index shuffle, or none): the checkpoint holds "
        "positions, not elements, so its size does not depend on shuffle_buffer_size"
    )
    return Calibration(
        anchors=anchors,
        chunks=[],
        constant=True,
        slot_bytes=0.0,
        raw_element_bytes=sample_bytes,
        sample_bytes=sample_bytes,
        stream_elements=None,
        seconds=time.perf_counter() - started,
        anchor_spread=float(max(sizes) - min(sizes)),
        notes=notes,
        batch_bytes=batch_bytes,
    )
