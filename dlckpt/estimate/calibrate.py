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

import functools
import itertools
import math
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlckpt.config import estimate_settings
from dlckpt.errors import PreflightRefusal, UsageError
from dlckpt.estimate.model import (
    T95,
    Calibration,
    built_size,
    short_stream,
    slope,
    smaller_than_its_buffer,
)
from dlckpt.estimate.saves import (
    HeldSave,
    IsolatedSaves,
    OwnCacheFiles,
    collect_garbage,
    filled,
    refuse_disk_full,
    save_after_reads,
    save_bytes,
    steady_save_bytes,
)
from dlckpt.estimate.watchdog import Stage, run_with_stall_limit
from dlckpt.pipeline.graph import (
    autotunes_buffers,
    buffer_source,
    cache_file_prefixes,
    find_shuffle_node,
    memory_cache_before,
    other_buffer_sizes,
    shuffle_nodes,
    stream_segments,
)
from dlckpt.pipeline.tensors import element_bytes, element_leaves, leading_dimension
from dlckpt.tempdir import is_disk_full
from dlckpt.units import format_size

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


# --- stages --------------------------------------------------------------------------------


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


def _segment_layout(run: Any, first_bytes: int, stream: int | None) -> list[tuple[int, int]]:
    """The chunk layout, laid out again from the start of each later input of a concatenate
    that a buffer of the configured size reaches: the sample of the first ~4,000 elements
    speaks for the first input only (5,000 small frames concatenated with large ones was
    estimated at a sixth of a real save with ±3% at 20,000, in a new user's check)."""
    starts = run.segment_starts
    configured = int(run.cfg.dataloader.get("shuffle_buffer_size") or 0)
    chunks: list[tuple[int, int]] = []
    for index, start in enumerate(starts):
        if start >= max(configured, 1):
            break  # no buffer asked for reaches this input
        stop = starts[index + 1] if index + 1 < len(starts) else stream
        length = None if stop is None else stop - start
        size = run.segment_bytes[index] if index < len(run.segment_bytes) else first_bytes
        chunks += [(start + a, n) for a, n in _chunk_layout(run.offsets, size, length)]
    return chunks


class _Run:
    """One calibration: the config, its scratch folder, and the stages in order.

    Larger than the house's ~200 lines, and kept whole for now: its stages share one scratch
    folder, the pipeline's options, the first look's facts (batch bytes, element sizes) and
    the cache-file guard, and each stage's order matters (one live iterator at a time). The
    pieces with no such state already live apart: saves.py, watchdog.py, model.py.
    """

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
        # Elements in one pass of the shuffle's input when a fused repeat refills the buffer
        # across passes (graph.buffer_source), else None.
        self.pass_elements: int | None = None
        # Which off-line shuffle (graph.shuffle_nodes order) sample() and made_element_memory()
        # read, when no shuffle sits on the line from the output; None: the main-line one.
        self.offline_index: int | None = None
        self.cache_growth = (0.0, 0.0)  # (bytes per element, error): an in-memory cache()
        # Where the shuffle's input moves on to the next input of a concatenate, and the mean
        # bytes of each input's first elements (graph.stream_segments; [0] and [] if none).
        self.segment_starts: list[int] = [0]
        self.shuffle_count = 0  # shuffles anywhere in the graph (graph.shuffle_nodes)
        self.segment_bytes: list[int] = []
        self.element_sizes: list[list[int]] = []
        self.cache_prefixes: list[str] = []
        self.autotuned = True

    def dataset(self, buffer: int) -> Any:
        from dlckpt.config import with_buffer_size
        from dlckpt.pipeline.build import instantiate_dataset

        return instantiate_dataset(with_buffer_size(self.cfg, buffer).dataloader)

    def buffer_node(self, dataset: Any) -> Any | None:
        """The shuffle being measured: the main-line one, or the off-line one chosen."""
        if self.offline_index is None:
            return find_shuffle_node(dataset)
        return shuffle_nodes(dataset)[self.offline_index]

    def sized_offline_shuffles(self) -> dict[int, float]:
        """{index (graph.shuffle_nodes order): buffer elements per configured element} for
        the shuffles whose buffer follows shuffle_buffer_size (1.0 for B, 0.25 for B // 4,
        2.0 for 2 * B), from their sizes at the smallest and largest calibration buffers.
        A fixed-size one (a file list's shuffle(6)) is part of the fixed bytes."""
        small = shuffle_nodes(self.dataset(self.sizes[0]))
        large = shuffle_nodes(self.dataset(self.sizes[-1]))
        if len(small) != len(large) or self.sizes[0] == self.sizes[-1]:
            return {}
        span = self.sizes[-1] - self.sizes[0]
        scales = {}
        for index, (a, b) in enumerate(zip(small, large, strict=True)):
            grown = int(b._buffer_size.numpy()) - int(a._buffer_size.numpy())
            if grown > 0:
                scales[index] = grown / span
        return scales

    def other_buffers_follow_the_size(self) -> bool:
        """True when a buffer other than the shuffles (a `prefetch(B // 4)`) changes size
        between the smallest and largest calibration buffers: whatever the anchors show
        growing at one rate is then that buffer, not noise."""
        small = other_buffer_sizes(self.dataset(self.sizes[0]))
        large = other_buffer_sizes(self.dataset(self.sizes[-1]))
        return small != large

    def first_of_offline(self, stage: Stage, index: int) -> tuple[list[Any], int | None]:
        """(the first elements the off-line shuffle `index` reads, its input's length or None)."""
        dataset = self.dataset(self.sizes[0])
        node = shuffle_nodes(dataset)[index]
        return self._read_first(buffer_source(dataset, node), stage)

    def _read_first(self, source: Any, stage: Stage) -> tuple[list[Any], int | None]:
        """(the first FIRST_LOOK_ELEMENTS elements of `source`, its cardinality or None)."""
        cardinality = int(source.cardinality().numpy())
        elements = []
        with OwnCacheFiles(self.cache_prefixes):
            iterator = iter(source.take(FIRST_LOOK_ELEMENTS))
            for element in iterator:
                elements.append(element)
                stage.beat()
            del iterator  # finished before any other iterator over the pipeline is made
        return elements, cardinality if cardinality >= 0 else None

    def first_look(self, stage: Stage) -> tuple[Any, list[Any], int | None]:
        """(the shuffle node, the first elements it reads, its input's cardinality or None).

        Also keeps the pipeline's tf.data options, which the isolated saves run with.
        """
        stage.beat("reading the first elements")
        dataset = self.dataset(self.sizes[0])
        self.options = dataset.options()
        self.autotuned = autotunes_buffers(self.options)
        self.cache_prefixes = cache_file_prefixes(dataset)
        self.shuffle_count = len(shuffle_nodes(dataset))
        node = find_shuffle_node(dataset)
        if node is None:
            return None, [], None
        self.memory_cache = memory_cache_before(node)
        source = buffer_source(dataset, node)
        one_pass = int(node._input_dataset.cardinality().numpy())
        if source is not node._input_dataset and one_pass >= 0:
            self.pass_elements = one_pass
        elements, cardinality = self._read_first(source, stage)
        # Split only where this build reads a concatenate (another build costs a trace).
        if self.pass_elements is None and len(stream_segments(source)) > 1:
            segments = self._configured_segments()
            self.segment_starts = [start for start, _ in segments]
            self.segment_bytes = [_mean_bytes(elements)] + [
                _mean_bytes(self._read_first(later, stage)[0]) for _, later in segments[1:]
            ]
        return node, elements, cardinality

    def _configured_segments(self) -> list[tuple[int, Any]]:
        """graph.stream_segments of the shuffle's input as the pipeline builds it at the
        configured buffer (never iterated there): an input's length may follow the buffer
        size (`concatenate(small, large.take(B // 2))`), so the positions at a calibration
        buffer would not be the configured buffer's."""
        configured = int(self.cfg.dataloader.get("shuffle_buffer_size") or 0)
        dataset = self.dataset(max(configured, 1))
        node = find_shuffle_node(dataset)
        if node is None:
            return [(0, None)]
        return stream_segments(buffer_source(dataset, node))

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
                f"calibration scratch folder {self.scratch}: needs ~{format_size(disk)} "
                f"({sampled:,} sampled elements and a {largest:,}-element save of "
                f"{format_size(element_bytes_)} each), {format_size(free)} free; point "
                "TMPDIR at a roomier folder or lower estimate.calibration_buffer_sizes"
            )
        available = int(psutil.virtual_memory().available)
        if ram > available:
            raise PreflightRefusal(
                f"host RAM for the calibration: needs ~{format_size(ram)} ({largest:,}-element "
                f"buffer of {format_size(element_bytes_)} elements), "
                f"{format_size(available)} available; lower estimate.calibration_buffer_sizes"
            )

    def anchors(self, stage: Stage) -> tuple[list[list[int]], int, int | None]:
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
        self.empty_slot_bytes = slope(not_started)
        self.batch_bytes = self._held_batch_bytes()
        return anchors, sample_bytes, ended_after

    def confirm_growth(self, stage: Stage, anchors: list[list[int]]) -> list[list[int]]:
        """`anchors`, with the largest buffer filled CONFIRM_LARGEST more times when the
        anchors alone show growth: one save that caught an autotuned buffer deep (13 batches
        more, seen in CI) must not read as a shuffle buffer off the line. The growth is then
        taken between the medians (_growth_between_anchors)."""
        if _growth_between_anchors(anchors, self.batch_bytes) is None:
            return anchors
        largest = max(buffer for buffer, _ in anchors)
        confirmed = [list(anchor) for anchor in anchors]
        for _ in range(CONFIRM_LARGEST):
            stage.beat(f"filling the whole pipeline at buffer {largest:,} again")
            with OwnCacheFiles(self.cache_prefixes):
                size, _, _ = self._anchor(largest, stage, [])
            confirmed.append([largest, size])
        return confirmed

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
            return save_after_reads(shuffled, 1, self.scratch / "batch", self.scratch).bytes

        return max(held(2) - held(1), 0)

    def _anchor(
        self, buffer: int, stage: Stage, not_started: list[tuple[int, int]]
    ) -> tuple[int, int | None, int]:
        """(steady bytes, batches read if the stream ended, bytes of one output sample)."""
        iterator = iter(self.dataset(buffer))
        if buffer in (self.sizes[0], self.sizes[-1]):
            saved = save_bytes(iterator, self.scratch / "not-started", self.scratch)
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

    def _cache_growth(self, buffer: int, stage: Stage) -> tuple[float, float]:
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
        t95 = T95.get(len(growth) - 1, 2.0)
        error = t95 * statistics.stdev(growth) / math.sqrt(len(growth))
        return max(statistics.fmean(growth), 0.0), error

    def sample(self, stage: Stage, chunks: list[tuple[int, int]]) -> Path:
        """Write the chunks' elements (the shuffle node's input) with Dataset.save, in order."""
        from dlckpt.runtime.tf_import import import_tensorflow

        tf = import_tensorflow()
        dataset = self.dataset(self.sizes[0])
        node = self.buffer_node(dataset)
        assert node is not None

        def picked_from(source: Any, mine: list[tuple[int, int]]) -> Any:
            starts = tf.constant([s for s, _ in mine], tf.int64)
            ends = tf.constant([s + n for s, n in mine], tf.int64)

            def wanted(index: Any, element: Any) -> Any:
                return tf.reduce_any((index >= starts) & (index < ends))

            total = mine[-1][0] + mine[-1][1]
            return source.take(total).enumerate().filter(wanted).map(lambda i, e: e)

        path = self.scratch / "sample"
        total = chunks[-1][0] + chunks[-1][1]
        source = buffer_source(dataset, node)
        # A concatenate's later inputs are read from their own start, not through the
        # elements before them (see _segment_layout).
        split = self.offline_index is None and len(self.segment_starts) > 1
        segments = self._configured_segments() if split else [(0, source)]
        parts = []
        for index, (start, segment) in enumerate(segments):
            stop = segments[index + 1][0] if index + 1 < len(segments) else None
            mine = [(a - start, n) for a, n in chunks if a >= start and (stop is None or a < stop)]
            if mine:
                parts.append(picked_from(segment, mine))
        picked = functools.reduce(lambda a, b: a.concatenate(b), parts)
        stage.beat(f"sampling {sum(n for _, n in chunks):,} elements from the first {total:,}")
        stage.watched = path
        # Dataset.save waits forever once its input raises (measured on TF 2.21: a map
        # failing at element 150 stalled the estimate for its whole 300 s limit, named as
        # a stall): errors are skipped here, and a sample that comes out short is read
        # again plainly for the error, answered in TensorFlow's words (exit 2).
        skipping = getattr(picked, "ignore_errors", None) or (
            lambda: picked.apply(tf.data.experimental.ignore_errors())
        )
        try:
            with OwnCacheFiles(self.cache_prefixes):
                skipping().save(str(path), shard_func=lambda *_: tf.constant(0, tf.int64))
        except Exception as error:
            if is_disk_full(error):
                raise refuse_disk_full(self.scratch, error) from None
            raise
        finally:
            stage.watched = None
        saved = int(tf.data.Dataset.load(str(path)).cardinality())  # -2: unknown
        if 0 <= saved < sum(n for _, n in chunks):
            self._raise_a_read_error(stage, picked)  # or a stream shorter than the sample
        return path

    def _raise_a_read_error(self, stage: Stage, picked: Any) -> None:
        """Read `picked` plainly; raise the pipeline's own error as bad input if it raises
        one (pipeline.build.read_failure), else return."""
        from dlckpt.pipeline.build import read_failure
        from dlckpt.runtime.tf_import import import_tensorflow

        try:
            with OwnCacheFiles(self.cache_prefixes):
                for _ in picked:
                    stage.beat()
        except import_tensorflow().errors.OpError as error:
            answer = read_failure(error)
            if answer is None:
                raise
            raise answer from None

    def made_element_memory(self, stage: Stage, count: int) -> int:
        """Allocator bytes per element as the pipeline's own ops made them (0: not measured).

        The isolated saves replay elements loaded from Dataset.save, whose strings are
        allocated at their exact size; a string an op built (encode_png, reduce_join) can
        keep spare capacity, and the buffer holds it as made: a helper measured 2,870 B per
        PNG element in a real fill against 1,606 B loaded. So the shuffle's own input fills
        a buffer of `count` elements here, against one of two, as in `isolated`.
        """
        dataset = self.dataset(self.sizes[0])
        node = self.buffer_node(dataset)
        if node is None or count < 3:
            return 0

        def held(elements: int) -> int | None:
            stage.beat(f"filling a {count:,}-element buffer from your pipeline's own ops")
            shuffled = buffer_source(dataset, node).take(elements).shuffle(count, seed=1)
            with OwnCacheFiles(self.cache_prefixes):
                # the second read finds the input exhausted: the buffer holds elements - 2
                iterator, allocated = filled(shuffled.with_options(self.options), 2)
                del iterator
                collect_garbage()
            return allocated

        # A first iterator instantiates the pipeline's functions and thread pools, which
        # stay: one of two elements goes first, so the compared pair both find them made.
        held(2)
        full, empty = held(count), held(2)
        if full is None or empty is None:
            return 0
        return max(round((full - empty) / (count - 2)), 0)

    def isolated(
        self, stage: Stage, path: Path, chunks: list[tuple[int, int]], options: Any
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
            return save_after_reads(shuffled, 2, self.scratch / "chunk", self.scratch)

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
    roundtrip.child.UnsaveablePipeline when TensorFlow cannot save the iterator.
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
                f"(~{format_size(round(calibration.autotune_bytes))}); the ± includes them"
            )
        return calibration
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _calibrate(run: _Run, stage: Stage, started: float) -> Calibration:
    """The stages: a first look → whole-pipeline saves (anchors) → isolated shuffle-buffer
    saves of sampled chunks → the model, with the in-memory cache's growth added."""
    node, first, stream = run.first_look(stage)
    first_bytes = _mean_bytes(first)
    if node is not None and not first:
        raise UsageError(
            "estimate: the shuffle buffer's input yielded no element; check that the pipeline "
            "produces data (or set estimate.bytes_per_sample for the formula)"
        )
    if node is not None and len(first) < FIRST_LOOK_ELEMENTS:
        stream = len(first) if stream is None else stream
    chunks = _segment_layout(run, first_bytes, stream) if node is not None else []
    run.check_own_needs(first_bytes or 1, chunks)
    run.say(f"  calibration: whole-pipeline saves at buffers {run.sizes}")
    anchors, sample_bytes, ended_after = run.anchors(stage)
    notes = list(run.notes)
    if node is None:
        anchors = run.confirm_growth(stage, anchors)
        offline = _offline_shuffles(run, stage, anchors, sample_bytes, notes)
        if offline is not None:
            offline.seconds = time.perf_counter() - started
            return offline
        return _without_shuffle(anchors, sample_bytes, run.batch_bytes, started, notes)
    if run.shuffle_count > 1 and len(run.sized_offline_shuffles()) > 1:
        # Several buffers follow the configured size (encoded frames shuffled with B, then
        # decoded ones with B // 2): each is sampled and counted at its own share of B.
        # Measured on the main line alone, the second was left to the anchors, whose
        # growth at buffers 8-64 hid in their noise: -39% at 5,000 with ±5% (a new user's
        # check, session 15).
        several = _offline_shuffles(run, stage, anchors, sample_bytes, notes)
        if several is not None:
            several.seconds = time.perf_counter() - started
            return several
    isolated, slot_bytes, stream = _isolated_stage(run, stage, first, chunks, stream)
    notes += _stream_notes(run, stream, ended_after)
    calibration = Calibration(
        anchors=anchors,
        chunks=isolated.chunks,
        constant=False,
        slot_bytes=slot_bytes,
        raw_element_bytes=isolated.raw_element_bytes,
        sample_bytes=sample_bytes,
        stream_elements=stream,
        pass_elements=run.pass_elements,
        seconds=0.0,
        anchor_spread=0.0,
        notes=notes,
        memory_element_bytes=isolated.memory_element_bytes,
        tensors_per_element=len(element_leaves(first[0])) if first else 0,
        element_sizes=run.element_sizes[: len(isolated.chunks)],
        batch_bytes=run.batch_bytes,
        segment_starts=run.segment_starts,
    )
    # Graph facts decide which branch is measured: a whole-pipeline save also holds the
    # other buffers, whose fill follows thread timing, so differences between the anchors
    # alone are jitter as often as they are signal.
    _read_built_sizes(calibration, run)
    calibration.constant = smaller_than_its_buffer(calibration)
    if run.cache_growth[0] and not calibration.constant:
        _add_cache_growth(run, calibration)
    if calibration.constant:
        calibration.notes.append(
            "the checkpoint does not grow with the shuffle buffer (its contents are not saved, "
            "e.g. a symbolic checkpoint)"
        )
    if not calibration.constant:
        _check_against_anchors(calibration, run)
        _add_buffers_past_the_calibration(calibration, run)
    parts = calibration._anchor_fixed_parts()
    calibration.anchor_spread = (max(parts) - min(parts)) if len(parts) >= 2 else 0.0
    calibration.seconds = time.perf_counter() - started
    return calibration


def _isolated_stage(
    run: _Run, stage: Stage, first: list[Any], chunks: list[tuple[int, int]], stream: int | None
) -> tuple[IsolatedSaves, float, int | None]:
    """(the isolated saves, bytes of one empty slot, the stream's length if it ended)."""
    first_bytes = _mean_bytes(first)
    isolated = IsolatedSaves([], first_bytes, 0)
    if not chunks:
        return isolated, 0.0, stream
    run.say(
        f"  calibration: isolated shuffle-buffer saves of {len(chunks)} chunks of "
        f"~{chunks[0][1]:,} elements from the first {chunks[-1][0] + chunks[-1][1]:,}"
    )
    path = run.sample(stage, chunks)
    isolated = run.isolated(stage, path, chunks, run.options)
    if _holds_strings(first):
        # the larger of the two counts: elements as loaded, and as the pipeline made them
        made = run.made_element_memory(stage, _made_count(first_bytes, stream))
        isolated = isolated._replace(memory_element_bytes=max(isolated.memory_element_bytes, made))
    # A held element costs its own bytes plus its slot; the slot's keys carry the user's
    # pipeline's iterator prefix (Iterator::Root::...::Shuffle), so its cost comes from
    # the user's pipeline: saves before it starts, where every slot is empty.
    if stream is None:
        stream = short_stream(chunks, isolated.chunks)
    return isolated, run.empty_slot_bytes, stream


def _stream_notes(run: _Run, stream: int | None, ended_after: int | None) -> list[str]:
    notes = []
    configured = int(run.cfg.dataloader.get("shuffle_buffer_size") or 0)
    if stream is not None and stream < configured:  # else no buffer asked for reaches it
        notes.append(
            f"the shuffle buffer's input yields {stream:,} elements in all: a larger buffer "
            "holds no more data, only more empty slots"
        )
    if ended_after is not None:
        notes.append(f"the pipeline ended after {ended_after} batches while calibrating")
    if run.pass_elements is not None and run.pass_elements < configured:
        notes.append(
            f"the shuffle buffer's input yields {run.pass_elements:,} elements a pass and a "
            "repeat() follows the shuffle: TensorFlow's fused shuffle-and-repeat refills the "
            "buffer across passes, but how full it gets varies, so the ± spans one pass to a "
            "full buffer"
        )
    return notes


def _add_cache_growth(run: _Run, calibration: Calibration) -> None:
    """An in-memory cache() before the shuffle keeps every element read: its measured
    growth per element is added to the model (and to each batch in transit)."""
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


# A whole-pipeline save moves by whole batches in transit with thread timing (a model's
# transit_bytes is three): growth between the smallest and largest anchor within twice that
# is no growth. Growth found from anchors alone carries this relative error, for elements
# beyond the largest anchor that were never seen (the sampled path measures them).
GROWTH_NOISE_BATCHES = 6
ANCHOR_GROWTH_ERROR = 0.25
# Growth the anchors show is confirmed by this many more saves at the largest buffer.
CONFIRM_LARGEST = 2


def _growth_between_anchors(
    anchors: list[list[int]], batch_bytes: int
) -> tuple[float, float] | None:
    """(bytes per buffer element, its error) the whole-pipeline saves grow by, or None."""
    smallest, largest = min(anchors)[0], max(anchors)[0]
    if largest <= smallest:
        return None
    low = statistics.median(size for buffer, size in anchors if buffer == smallest)
    high = statistics.median(size for buffer, size in anchors if buffer == largest)
    if high - low <= GROWTH_NOISE_BATCHES * batch_bytes:
        return None
    per_element = (high - low) / (largest - smallest)
    return per_element, ANCHOR_GROWTH_ERROR * per_element


def _offline_shuffles(
    run: _Run, stage: Stage, anchors: list[list[int]], sample_bytes: int, notes: list[str]
) -> Calibration | None:
    """Shuffle buffers that follow shuffle_buffer_size off the line from the output (under
    zip, sample_from_datasets), or several on it, each sampled as a main-line buffer is:
    one chunk layout for all, their per-element bytes summed at each one's share of B (a
    buffer size B puts B elements in a shuffle(B), B // 2 in a shuffle(B // 2)). None when
    there is none, or one reads a short stream: then the whole-pipeline growth."""
    if _growth_between_anchors(anchors, run.batch_bytes) is None:
        return None  # no growth: constant (_without_shuffle says so)
    scales = run.sized_offline_shuffles()
    indices = list(scales)
    firsts = []
    configured = int(run.cfg.dataloader.get("shuffle_buffer_size") or 0)
    for index in indices:
        first, stream = run.first_of_offline(stage, index)
        if len(first) < FIRST_LOOK_ELEMENTS or (stream is not None and stream < configured):
            return None  # a short input: each buffer would cap at its own length
        firsts.append(first)
    if not firsts:
        return None
    chunks = _chunk_layout(run.offsets, max(_mean_bytes(f) for f in firsts), None)
    run.say(
        f"  calibration: {len(indices)} shuffle buffers that follow the buffer size, each "
        f"sampled in {len(chunks)} chunks from the first {chunks[-1][0] + chunks[-1][1]:,}"
    )
    measured = _sample_each(run, stage, indices, chunks)
    kept = min(len(m.chunks) for m in measured)
    if kept < 2:
        return None
    # An element of the configured size B puts `scale` elements in each buffer.
    weights = [scales[index] for index in indices]
    summed = [
        [start, count, sum(w * m.chunks[k][2] for w, m in zip(weights, measured, strict=True))]
        for k, (start, count, _) in enumerate(measured[0].chunks[:kept])
    ]
    shares = ", ".join(f"{scales[index]:.2g}" for index in indices)
    notes.append(
        f"{len(indices)} shuffle buffers follow shuffle_buffer_size (at {shares} of it; "
        "under zip or sample_from_datasets, or one after another): each was sampled, and an "
        "element of the buffer size counts once in each at its share"
    )
    calibration = Calibration(
        anchors=anchors,
        chunks=summed,
        constant=False,
        slot_bytes=run.empty_slot_bytes,
        raw_element_bytes=round(
            sum(w * m.raw_element_bytes for w, m in zip(weights, measured, strict=True))
        ),
        sample_bytes=sample_bytes,
        stream_elements=None,
        seconds=0.0,
        anchor_spread=0.0,
        notes=notes,
        memory_element_bytes=round(
            sum(w * m.memory_element_bytes for w, m in zip(weights, measured, strict=True))
        ),
        tensors_per_element=sum(len(element_leaves(f[0])) for f in firsts),
        batch_bytes=run.batch_bytes,
    )
    _check_against_anchors(calibration, run)
    if calibration.unseen_per_element == 0:
        _cover_the_anchors_slope(calibration, anchors, run.sizes[-1])
    parts = calibration._anchor_fixed_parts()
    calibration.anchor_spread = (max(parts) - min(parts)) if len(parts) >= 2 else 0.0
    return calibration


def _cover_the_anchors_slope(calibration: Calibration, anchors: list[list[int]], at: int) -> None:
    """Whole-pipeline saves that grow faster than the buffers sampled one by one, by less
    than the anchors' noise: added all the same when several buffers were summed. Each
    element held costs its slot in each buffer, and the slot's cost is read from the
    pipeline's saves as one (encoded frames shuffled with B, decoded ones with B // 2: 1,314
    bytes an element modelled, 1,503 between the anchors, 1,510 in a real save at 5,000)."""
    growth = _growth_between_anchors(anchors, 0)
    if growth is None:
        return
    missing = growth[0] - calibration.per_element(at)[0]
    if missing <= 0:
        return
    _add_unseen_growth(calibration, missing, "(each buffer's slots)")


def _add_unseen_growth(calibration: Calibration, growth: float, why: str) -> None:
    """Add `growth` bytes per buffer element the anchors show and the sampled buffers do
    not, with the wide ± of growth seen only between anchors; `why` ends the note."""
    unseen = "for buffers the sampling did not see (see the notes)"
    cached = calibration.extra_per_element > 0
    calibration.extra_label = f"{calibration.extra_label} and {unseen}" if cached else unseen
    calibration.extra_per_element += growth
    calibration.unseen_per_element = growth
    calibration.extra_error = math.hypot(calibration.extra_error, ANCHOR_GROWTH_ERROR * growth)
    calibration.notes.append(
        f"whole-pipeline saves grow by ~{format_size(growth)} per buffer element more than "
        f"the shuffle buffers measured one by one {why}: added, with a wide ±"
    )


def _sample_each(
    run: _Run, stage: Stage, indices: list[int], chunks: list[tuple[int, int]]
) -> list[IsolatedSaves]:
    """The isolated saves of each off-line shuffle's input, one chunk layout for all."""
    measured = []
    try:
        for index in indices:
            run.offline_index = index
            path = run.sample(stage, chunks)
            measured.append(run.isolated(stage, path, chunks, run.options))
            shutil.rmtree(path, ignore_errors=True)
    finally:
        run.offline_index = None
    run.element_sizes = []  # per node: one node's element sizes would mislead the sum
    return measured


def _check_against_anchors(calibration: Calibration, run: _Run) -> None:
    """Hold the model to the whole-pipeline saves: what is left of each anchor after the
    buffers the model sized (its fixed part) must not grow with the buffer. When it grows,
    the configured size also reaches buffers the model did not see (a fixed shuffle nearer
    the output hiding a sized one, a concatenate whose first input is short, one dataset
    zipped with itself, a side of 2 x the buffer): that growth is added, with the wide ±
    of growth seen only between anchors. When it shrinks (a side of a quarter of the
    buffer, a source the mixture has not reached yet), the model over-counts: the ± is
    widened to cover the anchors, the estimate kept (the safe side)."""
    scaled = run.other_buffers_follow_the_size()
    growth = _fixed_part_growth(calibration, run.autotuned, scaled)
    if growth is None:
        return
    if growth > 0:
        why = "account for (the configured size also reaches a buffer they do not show)"
        _add_unseen_growth(calibration, growth, why)
    else:
        calibration.extra_error = math.hypot(calibration.extra_error, growth)
        calibration.notes.append(
            f"whole-pipeline saves grow by ~{format_size(-growth)} per buffer element less than "
            "the shuffle buffers measured one by one (a buffer smaller than "
            "shuffle_buffer_size, or one not yet filled when a save is taken): the ± covers "
            "the difference"
        )


# Where the graph is built once more, as a multiple of the largest calibration buffer, to
# see a buffer that follows the configured size only past the calibration buffers.
PAST_CALIBRATION_MULTIPLE = 100


def _add_buffers_past_the_calibration(calibration: Calibration, run: _Run) -> None:
    """A buffer other than the shuffles whose size follows the configured size only past
    the calibration buffers (`prefetch(max(1, B // 40))` holds 1 batch at 8, 32 and 64):
    the anchors cannot show it. Its growth is read from the graph built at a buffer
    PAST_CALIBRATION_MULTIPLE times the largest (nothing is read from it) and added per
    buffer element at an output batch's bytes, with all of it as its ± (it may hold
    elements before the batch, which are smaller)."""
    largest = run.sizes[-1]
    if run.other_buffers_follow_the_size():
        return  # it grows between the anchors too: _check_against_anchors measured it
    horizon = largest * PAST_CALIBRATION_MULTIPLE
    at_largest = other_buffer_sizes(run.dataset(largest))
    at_horizon = other_buffer_sizes(run.dataset(horizon))
    if len(at_largest) != len(at_horizon):
        return
    grown = sum(b - a for a, b in zip(at_largest, at_horizon, strict=True) if 0 <= a < b)
    if grown <= 0 or calibration.batch_bytes <= 0:
        return
    per_element = grown / (horizon - largest) * calibration.batch_bytes
    unseen = "for buffers the sampling did not see (see the notes)"
    if unseen not in calibration.extra_label:
        known = calibration.extra_per_element > 0
        calibration.extra_label = f"{calibration.extra_label} and {unseen}" if known else unseen
    calibration.extra_per_element += per_element
    calibration.unseen_per_element += per_element
    calibration.extra_error = math.hypot(calibration.extra_error, per_element)
    calibration.notes.append(
        f"a buffer other than the shuffles grows with the configured size only past the "
        f"calibration buffers ({grown:,} more elements at {horizon:,} than at {largest:,}): "
        f"counted at ~{format_size(round(per_element))} per buffer element (an output "
        "batch's bytes), with all of it as its ±"
    )


# A configured size past any real buffer: the graph built at it (nothing is read from it,
# and a shuffle buffer is allocated only as it fills) shows a cap the pipeline applies.
CAP_PROBE_BUFFER = 10**9


def _read_built_sizes(calibration: Calibration, run: _Run) -> None:
    """A pipeline that builds its shuffle buffer at another size than the configured one:
    a floor (`shuffle(max(B, 2000))`: every calibration save held 2,000 elements; -16% at
    50,000 with ±3.4% before this) or a cap (`shuffle(min(B, 3000))`: +563% at 20,000).
    Read from the graph built at each calibration buffer and at CAP_PROBE_BUFFER, for one
    shuffle whose sizes fit min(max(B, floor), cap); the anchors then stand at the sizes
    built. With several shuffles, the one whose size changes with B is read when the others
    keep theirs (a fixed file-list shuffle beside a capped one: `shuffle(min(B, 50))` after
    a `shuffle(60)` was +35% at buffer 100, outside its ±30%, in a new user's check); two
    that change, or sizes of another form (a share of B), are left to the anchors."""
    try:
        read = {b: _shuffle_sizes(run.dataset(b)) for b in sorted(set(run.sizes))}
        read[CAP_PROBE_BUFFER] = _shuffle_sizes(run.dataset(CAP_PROBE_BUFFER))
    except Exception:  # a builder that cannot take such a size: nothing is read
        return
    built = _the_sized_shuffle(read)
    if built is None:
        return
    form = _built_form(built)
    if form is None or form == (None, None):
        return
    calibration.shuffle_floor, calibration.shuffle_cap = floor, cap = form
    calibration.anchors = [[calibration.built(b), size] for b, size in calibration.anchors]
    bounds = [f"at least {floor:,}" if floor else "", f"at most {cap:,}" if cap else ""]
    calibration.notes.append(
        f"the pipeline builds its shuffle buffer with {' and '.join(b for b in bounds if b)} "
        "elements (read from its graph): the estimate is for the buffer it builds"
    )
    if len({b for b, _ in calibration.anchors}) == 1:
        _cover_growth_no_anchor_shows(calibration)


def _the_sized_shuffle(read: dict[int, list[int]]) -> dict[int, int] | None:
    """From the shuffle sizes built at each buffer (same count at every buffer), the sizes of
    the one shuffle that follows the buffer: the only one, or the only one of several whose
    size changes (the others keep theirs). None when there is none or more than one."""
    counts = {len(sizes) for sizes in read.values()}
    if len(counts) != 1 or 0 in counts:
        return None
    columns = [{b: sizes[i] for b, sizes in read.items()} for i in range(counts.pop())]
    if len(columns) == 1:
        return columns[0]
    changing = [column for column in columns if len(set(column.values())) > 1]
    return changing[0] if len(changing) == 1 else None


def _built_form(built: dict[int, int]) -> tuple[int | None, int | None] | None:
    """(floor, cap) such that every configured size B in `built` (B -> the size read) is
    min(max(B, floor), cap) (model.built_size), else None. A share of B (`shuffle(B // 2)`)
    is not taken: it puts the anchors closer together than the model's check of their
    growth can see past its noise (tried: -8.4% with ±6.8% at 20,000), so it stays with the
    anchors, which over-count it (+83%), the safe side. A cap is a size far below the probe;
    one near it is such a share."""
    probe = built[CAP_PROBE_BUFFER]
    floor = max((size for b, size in built.items() if size > b), default=None)
    cap = probe if probe < CAP_PROBE_BUFFER else None
    if cap is not None and cap > CAP_PROBE_BUFFER // 100:
        return None
    if any(built_size(b, floor, cap) != size for b, size in built.items()):
        return None
    return floor, cap


def _cover_growth_no_anchor_shows(calibration: Calibration) -> None:
    """Every whole-pipeline save held the same built buffer (a floor above the calibration
    buffers): what they hold beyond the sampled buffer may be fixed or may grow with the
    buffer, and no pair of anchors tells which (a plain shuffle of 776-byte frames: 1,001
    bytes per element in whole-pipeline saves against 836 sampled one by one). Half of that
    excess, less a settled save's batches in transit, is counted per element and all of it
    is the ±: measured without it, -16% at B=50,000 with ±3.4%."""
    built = calibration.anchors[0][0]
    excess = max(calibration.fixed - calibration.transit_bytes, 0.0) / built
    if excess <= 0:
        return
    unseen = "for buffers the sampling did not see (see the notes)"
    if unseen not in calibration.extra_label:
        known = calibration.extra_per_element > 0
        calibration.extra_label = f"{calibration.extra_label} and {unseen}" if known else unseen
    calibration.extra_per_element += excess / 2
    calibration.unseen_per_element += excess / 2
    calibration.extra_error = math.hypot(calibration.extra_error, excess)
    calibration.notes.append(
        f"every calibration save held the same {built:,}-element buffer, so whether their "
        f"~{format_size(round(excess * built))} beyond the sampled buffer grows with it is "
        f"unknown: half counted per element (~{format_size(round(excess / 2))}), all of it "
        "in the ±"
    )


def _shuffle_sizes(dataset: Any) -> list[int]:
    """The buffer size of every shuffle in the graph (graph.shuffle_nodes order)."""
    return [int(node._buffer_size.numpy()) for node in shuffle_nodes(dataset)]


def _fixed_part_growth(calibration: Calibration, autotuned: bool, scaled: bool) -> float | None:
    """Bytes per buffer element by which the anchors' fixed parts grow from the smallest
    to the largest calibration buffer, or None: within the anchors' noise (batches in
    transit and the depth an autotuner may add, twice over), or not steady (a buffer the
    model missed grows the fixed part at one rate between every pair of anchors; one save
    caught with a deeper prefetch moves one anchor alone)."""
    parts: dict[int, float] = {}
    for buffer in sorted({b for b, _ in calibration.anchors}):
        sizes = [size for b, size in calibration.anchors if b == buffer]
        parts[buffer] = statistics.median(sizes) - calibration._buffer_part(buffer)
    buffers = sorted(parts)
    if len(buffers) < 2:
        return None
    # Six batches, as between anchors alone; an autotuned prefetch caught deeper in one
    # save moves one anchor, which the steadiness test below tells from a missed buffer
    # (a zip under a parallel map and AUTOTUNE prefetch read +26% without it).
    noise = GROWTH_NOISE_BATCHES * calibration.batch_bytes * (2 if autotuned else 1)
    if scaled:  # a prefetch sized from the buffer grows them: any steady growth is it
        noise = 0
    smallest, largest = buffers[0], buffers[-1]
    if abs(parts[largest] - parts[smallest]) <= noise:
        return None
    steps = [(parts[b] - parts[a]) / (b - a) for a, b in itertools.pairwise(buffers)]
    low, high = sorted(abs(step) for step in steps)[0], max(abs(step) for step in steps)
    if len(steps) >= 2 and (min(steps) * max(steps) <= 0 or low < 0.5 * high):
        return None  # not one rate: one anchor moved, not a buffer
    return (parts[largest] - parts[smallest]) / (largest - smallest)


def _without_shuffle(
    anchors: list[list[int]],
    sample_bytes: int,
    batch_bytes: int,
    started: float,
    notes: list[str],
) -> Calibration:
    """No shuffle node on the line from the output: constant only when the whole-pipeline
    saves at different buffers show no growth; else their growth per buffer element, from
    those saves alone (a shuffle under zip / sample_from_datasets / interleave)."""
    sizes = [size for _, size in anchors]
    growth = _growth_between_anchors(anchors, batch_bytes)
    if growth is None:
        notes.append(
            "no shuffle buffer in the pipeline (an index shuffle, or none): the checkpoint holds "
            "positions, not elements, so its size does not depend on shuffle_buffer_size"
        )
    else:
        smallest, largest = min(anchors)[0], max(anchors)[0]
        notes.append(
            "the shuffle buffers sit off the line from the output (under zip, "
            "sample_from_datasets or interleave), so they were not sampled one by one: the "
            f"whole-pipeline saves grow by ~{format_size(growth[0])} per buffer element "
            f"between buffers {smallest:,} and {largest:,}, extrapolated with a wide ± (a "
            "buffer capped by its own input, e.g. min(size, N), is over-counted)"
        )
    return Calibration(
        anchors=anchors,
        chunks=[],
        constant=growth is None,
        extra_per_element=growth[0] if growth else 0.0,
        extra_error=growth[1] if growth else 0.0,
        slot_bytes=0.0,
        raw_element_bytes=sample_bytes,
        sample_bytes=sample_bytes,
        stream_elements=None,
        seconds=time.perf_counter() - started,
        anchor_spread=float(max(sizes) - min(sizes)),
        notes=notes,
        batch_bytes=batch_bytes,
    )
