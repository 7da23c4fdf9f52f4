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
from typing import Any

from _errors import PreflightRefusal, UsageError
from _report import format_bytes
from _tensors import element_bytes, leading_dimension

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
    # Mean bytes of one element as the shuffle buffer holds it, in memory (the RAM row).
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

    @property
    def largest_buffer(self) -> int:
        return max(buffer for buffer, _ in self.anchors)

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
            return round(statistics.fmean(size for _, size in self.anchors))
        return round(max(self.fixed, 0.0) + self._buffer_part(buffer_size))

    def uncertainty_for(self, buffer_size: int) -> float:
        """Relative 95% uncertainty: the per-element mean's, the anchors' spread, and a floor."""
        total = max(self.bytes_for(buffer_size), 1)
        per_element, relative = self.per_element(buffer_size)
        held = self.held_elements(buffer_size)
        buffer_error = relative * per_element * held
        extra_error = self.extra_error * held
        # The fixed part is the anchors' median: its error is within half their range.
        combined = math.hypot(buffer_error, extra_error, self.anchor_spread / 2) / total
        return combined + RELATIVE_FLOOR

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


def find_shuffle_node(dataset: Any) -> Any | None:
    """The _ShuffleDataset nearest the output, following `_input_dataset` links (None: none)."""
    node = dataset
    while node is not None and type(node).__name__ != "_ShuffleDataset":
        node = getattr(node, "_input_dataset", None)
    return node


def is_disk_full(error: BaseException) -> bool:
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    texts = ("No space left on device", "internal temporary file", "Disk quota exceeded")
    return any(text in str(error) for text in texts)


def _refuse_disk_full(folder: Path, error: BaseException) -> PreflightRefusal:
    return PreflightRefusal(
        f"calibration scratch folder {folder}: a calibration save ran out of room "
        f"({' '.join(str(error).split())[:80]}); point TMPDIR at a folder with more room, "
        "or lower estimate.calibration_buffer_sizes"
    )


def _save_bytes(iterator: Any, folder: Path, scratch: Path) -> int:
    """Save the iterator into `folder`, return its bytes, remove it; disk full -> exit 3."""
    from _roundtrip import save_iterator

    try:
        return save_iterator(iterator, folder).bytes
    except Exception as error:  # TensorFlow raises its own types; the text names the cause
        if is_disk_full(error):
            raise _refuse_disk_full(scratch, error) from None
        raise
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def steady_save_bytes(
    iterator: Any, folder: Path, scratch: Path, attempts: int = 8, pause: float = 0.05
) -> int:
    """The bytes two saves in a row agree on (else the median of `attempts` saves).

    With nothing read in between, fixed-size background buffers fill and stop, the state a
    training job saves in (training is the slow side); autotuned buffers may keep changing,
    so no extreme is taken. This decides only the fixed part: the per-element figure never
    comes from here, and the anchors' disagreement is part of the stated ±.
    """
    sizes: list[int] = []
    for attempt in range(attempts):
        if attempt:
            time.sleep(pause)
        sizes.append(_save_bytes(iterator, folder / str(attempt), scratch))
        if len(sizes) >= 2 and sizes[-1] == sizes[-2]:
            return sizes[-1]
    return round(statistics.median(sizes))


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
        from _estimate import validate_settings

        self.cfg = cfg
        self.scratch = scratch
        self.say = say
        settings = validate_settings(cfg.estimate)
        self.sizes, self.offsets = settings.buffer_sizes, settings.offsets
        self.batches = max(int(cfg.roundtrip.get("batches_before_save", 1) or 1), 1)
        self.notes: list[str] = []
        self.options: Any = None
        self.empty_slot_bytes = 0.0
        self.element_sizes: list[list[int]] = []

    def dataset(self, buffer: int) -> Any:
        from _config import with_buffer_size
        from _pipeline import instantiate_dataset

        return instantiate_dataset(with_buffer_size(self.cfg, buffer).dataloader)

    def first_look(self, stage: _Stage) -> tuple[Any, list[Any], int | None]:
        """(the shuffle node, the first elements it reads, its input's cardinality or None).

        Also keeps the pipeline's tf.data options, which the isolated saves run with.
        """
        stage.beat("reading the first elements")
        dataset = self.dataset(self.sizes[0])
        self.options = dataset.options()
        node = find_shuffle_node(dataset)
        if node is None:
            return None, [], None
        source = node._input_dataset
        cardinality = int(source.cardinality().numpy())
        elements = []
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
        for buffer in self.sizes:
            stage.beat(f"filling the whole pipeline at buffer {buffer:,}")
            iterator = iter(self.dataset(buffer))
            if buffer in (self.sizes[0], self.sizes[-1]):
                saved = _save_bytes(iterator, self.scratch / "not-started", self.scratch)
                not_started.append((buffer, saved))
            read = 0
            for _ in range(self.batches):
                try:
                    batch = next(iterator)
                except StopIteration:
                    ended_after = read
                    break
                stage.beat()
                if not sample_bytes:
                    sample_bytes = round(element_bytes(batch) / leading_dimension(batch))
                read += 1
            if read == 0:
                raise UsageError(
                    f"estimate: the pipeline yielded no batch at calibration buffer {buffer:,}; "
                    "check that it produces data (or set estimate.bytes_per_sample for the formula)"
                )
            anchors.append(
                [buffer, steady_save_bytes(iterator, self.scratch / "anchor", self.scratch)]
            )
            stage.beat()
            del iterator
        self.empty_slot_bytes = _slope(not_started)
        return anchors, sample_bytes, ended_after

    def sample(self, stage: _Stage, chunks: list[tuple[int, int]]) -> Path:
        """Write the chunks' elements (the shuffle node's input) with Dataset.save, in order."""
        from _tf import import_tensorflow

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
            picked.save(str(path), shard_func=lambda *_: tf.constant(0, tf.int64))
        except Exception as error:
            if is_disk_full(error):
                raise _refuse_disk_full(self.scratch, error) from None
            raise
        finally:
            stage.watched = None
        return path

    def isolated(
        self, stage: _Stage, path: Path, chunks: list[tuple[int, int]], options: Any
    ) -> tuple[list[list[float]], int]:
        """Per chunk [start, elements, content bytes per element]; mean in-memory element bytes.

        Each chunk is shuffled alone in a buffer of its length and read twice, so the
        shuffle finds its input exhausted and holds all but two elements; the same is done
        with only the chunk's first two elements. Both saves then have the same slots (an
        unfilled slot is an empty slot) and no reader state, so their difference is the
        held elements' own bytes: exact, and untouched by any thread.
        """
        from _tf import import_tensorflow

        tf = import_tensorflow()

        # Built once: each build traces its functions, which costs more than the saves.
        loaded = tf.data.Dataset.load(str(path), reader_func=lambda s: s.flat_map(lambda x: x))
        total = int(loaded.reduce(tf.constant(0, tf.int64), lambda n, _: n + 1))

        # The pipeline's own options (a symbolic checkpoint changes what is saved), without
        # graph rewrites: they change no byte of the buffer and cost time at every iterator.
        quick = tf.data.Options()
        quick.experimental_optimization.apply_default_optimizations = False
        quick.autotune.enabled = False

        def held_save(chunk: Any, buffer: int) -> int:
            shuffled = chunk.shuffle(buffer, seed=1).with_options(options).with_options(quick)
            iterator = iter(shuffled)
            next(iterator), next(iterator)  # the second read finds the input exhausted
            saved = _save_bytes(iterator, self.scratch / "chunk", self.scratch)
            del iterator
            return saved

        results: list[list[float]] = []
        raw: list[int] = []
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
            results.append([start, count, (holding - empty) / (count - 2)])
            position += count
        return results, round(statistics.fmean(raw)) if raw else 0


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
    from _estimate import validate_settings

    limit = validate_settings(cfg.estimate).timeout_seconds
    started = time.perf_counter()
    scratch = Path(tempfile.mkdtemp(prefix="dlckpt-estimate-", dir=scratch_root))
    try:
        run = _Run(cfg, scratch, say)
        return run_with_stall_limit(lambda stage: _calibrate(run, stage, started), limit)
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
        return _without_shuffle(anchors, sample_bytes, started, notes)
    measured: list[list[float]] = []
    slot_bytes, raw_bytes = 0.0, first_bytes
    if chunks:
        say(
            f"  calibration: isolated shuffle-buffer saves of {len(chunks)} chunks of "
            f"~{chunks[0][1]:,} elements from the first {chunks[-1][0] + chunks[-1][1]:,}"
        )
        path = run.sample(stage, chunks)
        contents, raw_bytes = run.isolated(stage, path, chunks, run.options)
        # A held element costs its own bytes plus its slot; the slot's keys carry the user's
        # pipeline's iterator prefix (Iterator::Root::...::Shuffle), so its cost comes from
        # the user's pipeline: saves before it starts, where every slot is empty.
        slot_bytes = run.empty_slot_bytes
        measured = contents
        if stream is None:
            stream = _short_stream(chunks, measured)
    if stream is not None:
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
        raw_element_bytes=raw_bytes,
        sample_bytes=sample_bytes,
        stream_elements=stream,
        seconds=0.0,
        anchor_spread=0.0,
        notes=notes,
        element_sizes=run.element_sizes[: len(measured)],
    )
    calibration.constant = _grows_less_than_its_buffer(calibration)
    _fit_extra_growth(calibration)
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


def _grows_less_than_its_buffer(calibration: Calibration) -> bool:
    """True when the whole-pipeline saves grow by under a quarter of the isolated buffer's bytes."""
    if len(calibration.anchors) < 2 or not calibration.chunks:
        return not calibration.chunks
    (small, small_bytes), (large, large_bytes) = calibration.anchors[0], calibration.anchors[-1]
    expected = calibration._buffer_part(large) - calibration._buffer_part(small)
    return expected > 0 and (large_bytes - small_bytes) < 0.25 * expected


def _fit_extra_growth(calibration: Calibration) -> None:
    """Set extra_per_element when the whole-pipeline saves grow 25%+ faster than the buffer.

    Something besides the shuffle buffer then holds elements in proportion to it (an
    in-memory cache() before the shuffle holds every element read). Its error is the
    disagreement of the slopes between consecutive anchors (a quarter of it with two).
    """
    anchors = calibration.anchors
    if calibration.constant or len(anchors) < 2:
        return
    (small, small_bytes), (large, large_bytes) = anchors[0], anchors[-1]
    model = (calibration._buffer_part(large) - calibration._buffer_part(small)) / (large - small)
    whole = (large_bytes - small_bytes) / (large - small)
    if model <= 0 or whole <= 1.25 * model:
        return
    slopes = [(b2 - b1) / (n2 - n1) for (n1, b1), (n2, b2) in itertools.pairwise(anchors)]
    calibration.extra_per_element = whole - model
    calibration.extra_error = (
        max(slopes) - min(slopes) if len(slopes) >= 2 else 0.25 * calibration.extra_per_element
    )
    calibration.notes.append(
        f"the whole pipeline's checkpoint grows {whole:,.0f} B per buffered element, the "
        f"shuffle buffer alone {model:,.0f} B: something before it keeps elements too (e.g. "
        "an in-memory cache()); the estimate adds the difference"
    )


def _without_shuffle(
    anchors: list[list[int]], sample_bytes: int, started: float, notes: list[str]
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
    )
