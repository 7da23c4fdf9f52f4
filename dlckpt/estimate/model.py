"""The checkpoint size model: fixed bytes + bytes per buffered element, with its uncertainty.

Pure arithmetic over what the calibration measured (no TensorFlow import), so it is unit
tested on its own and shared by the estimate, the cache and the cross-check.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field

from dlckpt.estimate.memory import SAVE_WORKING_BYTES_PER_SLOT, save_working_bytes

# The uncertainty floor: what the isolated per-element figure misses at 100x (slot keys one
# digit longer, neighbours compressed together) and what thread timing moves a save on a busy
# machine. 3%: the suite holds the estimate to 3% of a real save on unseen shapes
# (test_estimate_within_3_percent_of_a_real_save_on_unseen_shapes), and the stated ± claims
# no better; at 1.5% a CI run under two busy cores missed a ±2.3% by -2.4% (shuffled_batches
# at 20x, session 10).
RELATIVE_FLOOR = 0.03


# 95% coverage for a mean over chunks: Student's t at the chunks' degrees of freedom.
T95 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26}


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
    # What extra_per_element is, for the measured line (an in-memory cache()'s copy, and/or
    # growth the anchors show beyond the sampled buffers).
    extra_label: str = "for the in-memory cache()'s copy of it"
    # The part of extra_per_element that the whole-pipeline saves grew by beyond the sampled
    # buffers (calibrate._check_against_anchors): buffers the sampling did not see.
    unseen_per_element: float = 0.0
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
    # Elements in one pass of the shuffle's input when a repeat() right after the shuffle is
    # fused with it (None otherwise): TensorFlow refills the buffer across passes, but not
    # always to the full buffer. Measured (3,000-element passes of 256-byte vectors, settled
    # saves): a 10,000 buffer held ~9,300 elements, a 20,000 buffer ~13,000.
    pass_elements: int | None = None
    # The smallest and the largest shuffle buffer the pipeline builds whatever the configured
    # size (`shuffle(max(B, 2000))`: floor 2000; `shuffle(min(B, 3000))`: cap 3000), read from
    # its graph (calibrate._read_built_sizes); None: it follows the configured size. The
    # anchors' buffers are the built ones. (Cache entries of an older estimator version are
    # never read: cache.ESTIMATOR_VERSION.)
    shuffle_floor: int | None = None
    shuffle_cap: int | None = None
    # Stream positions where the shuffle's input moves on to the next input of a concatenate
    # (calibrate._segment_layout samples each from its start): the stream past the sample is
    # like the last input sampled, and the spread and trend are read within each input.
    segment_starts: list[int] = field(default_factory=lambda: [0])

    def built(self, buffer_size: int) -> int:
        """The shuffle buffer the pipeline builds for a configured `buffer_size`."""
        return built_size(buffer_size, self.shuffle_floor, self.shuffle_cap)

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
        (estimate.memory.save_working_bytes); twice that when an in-memory cache() feeds the buffer
        (the cache keeps its own copy of every element read, and saves it too)."""
        held = self.memory_element_bytes or self.raw_element_bytes
        one = held + save_working_bytes(max(self.tensors_per_element, 1))
        cached = self.extra_per_element - self.unseen_per_element > 0
        # A buffer the sampling did not see holds its elements in RAM too: at least their
        # checkpoint bytes each, with one tensor's save working memory.
        unseen = self.unseen_per_element + save_working_bytes(1) if self.unseen_per_element else 0
        return (2 * one if cached else one) + round(unseen)

    def ram_bytes_for(self, buffer_size: int) -> int:
        """Host bytes for a `buffer_size`-element shuffle buffer while its iterator is saved:
        its elements (ram_per_element) and its empty slots (a stream shorter than the
        buffer leaves some; estimate.memory.SAVE_WORKING_BYTES_PER_SLOT). 0 when the checkpoint does
        not grow with the buffer: it then holds no elements worth counting."""
        if self.constant:
            return 0
        buffer_size = self.built(buffer_size)
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
        if buffer_size > end and len(self.segment_starts) > 1:
            mean = self._with_the_last_input(mean, end, buffer_size, weights, values)
        if mean <= 0:
            return 0.0, 0.0
        unsampled = max(1.0 - sampled / sum(weights), 0.0)
        spread = self._spread()
        if len(spread) < 2:
            return mean, 0.05  # one chunk: no spread to measure, say so with a wide margin
        stdev = statistics.stdev(spread)
        share = math.sqrt(sum(w * w for w in weights)) / sum(weights)
        t95 = T95.get(len(spread) - 1, 2.0)
        relative = t95 * stdev * share * math.sqrt(unsampled) / mean
        if buffer_size > end:  # the stream past the sample is assumed like the sample
            relative = math.hypot(relative, t95 * stdev / math.sqrt(len(spread)) / mean)
            relative += self._trend_share(buffer_size, end, mean)
        last_start, last_count, _ = self.chunks[len(weights) - 1]
        if horizon < last_start + last_count:  # the buffer ends inside a chunk: its first
            cut = (horizon - last_start) / sum(weights)  # elements may differ from its mean
            relative = math.hypot(relative, stdev * cut / mean)
        return mean, relative

    def _segment_of(self, start: float) -> int:
        return max(i for i, first in enumerate(self.segment_starts) if first <= start)

    def _with_the_last_input(
        self, mean: float, end: float, buffer_size: int, weights: list[float], values: list[float]
    ) -> float:
        """The mean over a buffer past the sample (`end`) whose stream went on from one input
        of a concatenate to the next: the sampled stretch at its mean, the rest like the
        last input sampled (not like the whole sample: 5,000 small frames, then large ones)."""
        last = self._segment_of(self.chunks[len(weights) - 1][0])
        tail = [
            (w, v) for chunk, w, v in zip(self.chunks, weights, values, strict=False)
            if self._segment_of(chunk[0]) == last
        ]  # fmt: skip
        tail_mean = sum(w * v for w, v in tail) / sum(w for w, _ in tail)
        return (mean * end + tail_mean * (buffer_size - end)) / buffer_size

    def _spread(self) -> list[float]:
        """The chunks' values (slot included), about their own input's mean when the stream
        is a concatenate's inputs: the step between inputs is not the spread of either."""
        values = [c[2] + self.slot_bytes for c in self.chunks]
        if len(self.segment_starts) < 2:
            return values
        segments = [self._segment_of(c[0]) for c in self.chunks]
        means = {
            k: statistics.fmean(v for v, seg in zip(values, segments, strict=True) if seg == k)
            for k in set(segments)
        }
        overall = statistics.fmean(values)
        return [overall + v - means[k] for v, k in zip(values, segments, strict=True)]

    def _trend_share(self, buffer_size: int, end: float, mean: float) -> float:
        """Relative bytes by which elements past the sample may differ when the sampled
        chunks show a trend along the stream (episodes growing longer): the fitted slope of
        bytes per element against position, where it is significant at 95%, carried from
        the sample's middle to the buffer's. An adversarial probe (elements of 1 + i // 200
        floats) had the mean at 20,000 elements 36% above the sample's, with a ±13%."""
        last = self._segment_of(self.chunks[-1][0])  # a trend within the last input read
        points = [
            (start + count / 2, content) for start, count, content in self.chunks
            if self._segment_of(start) == last
        ]  # fmt: skip
        if len(points) < 3:
            return 0.0
        xs, ys = [x for x, _ in points], [y for _, y in points]
        x_mean, y_mean = statistics.fmean(xs), statistics.fmean(ys)
        sxx = sum((x - x_mean) ** 2 for x in xs)
        if sxx <= 0:
            return 0.0
        slope = sum((x - x_mean) * (y - y_mean) for x, y in points) / sxx
        residual = sum((y - y_mean - slope * (x - x_mean)) ** 2 for x, y in points)
        error = math.sqrt(residual / (len(points) - 2) / sxx)
        if abs(slope) <= T95.get(len(points) - 2, 2.0) * error:
            return 0.0
        return abs(slope) * max(buffer_size / 2 - end / 2, 0.0) / mean

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
        buffer_size = self.built(buffer_size)
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
        buffer_size = self.built(buffer_size)
        total = max(self.bytes_for(buffer_size), 1)
        per_element, relative = self.per_element(buffer_size)
        held = self.held_elements(buffer_size)
        buffer_error = relative * per_element * held
        # The cache holds the same elements as the buffer: its figure shares their spread.
        extra_error = math.hypot(self.extra_error, relative * self.extra_per_element) * held
        # The fixed part is the anchors' median: its error is within half their range.
        combined = math.hypot(buffer_error, extra_error, self.anchor_spread / 2) / total
        return combined + self.timing_bytes / total + self._refill_share(buffer_size, total)

    def _refill_share(self, buffer_size: int, total: int) -> float:
        """RELATIVE_FLOOR, or, for a buffer a fused shuffle-and-repeat refills across passes,
        the share between a buffer holding one pass and a full one (how full it gets varies)."""
        passed = self.pass_elements
        if passed is None or buffer_size <= passed:
            return RELATIVE_FLOOR
        per_element, _ = self.per_element(buffer_size)
        unfilled = (per_element - self.slot_bytes) * (self.held_elements(buffer_size) - passed)
        return max(unfilled / total, RELATIVE_FLOOR)

    def largest_buffer_within(self, budget_bytes: int) -> int:
        """The largest buffer whose estimate plus uncertainty fits in `budget_bytes` (0: none)."""

        def fits(buffer: int) -> bool:
            return self.bytes_for(buffer) * (1 + self.uncertainty_for(buffer)) <= budget_bytes

        if not fits(1):
            return 0
        low, high = 1, 2
        while fits(high):
            capped = self.built(high) < high  # past the cap, the same buffer is built
            if self.constant or capped or (self.stream_elements is not None and high >= 10**12):
                return 10**12  # no buffer size changes the checkpoint
            low, high = high, high * 2
            if high > 10**12:
                return low
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


def slope(saves: list[tuple[int, int]]) -> float:
    """Bytes per buffer slot between the smallest and the largest of (buffer, bytes) saves."""
    (small, small_bytes), (large, large_bytes) = min(saves), max(saves)
    return max((large_bytes - small_bytes) / (large - small), 0.0) if large > small else 0.0


def short_stream(planned: list[tuple[int, int]], measured: list[list[float]]) -> int | None:
    """Elements in a stream that ended while being sampled (None: every chunk was full)."""
    for (start, size), got in zip(planned, measured + [[0, 0, 0]] * len(planned), strict=False):
        if got[1] < size:
            return int(start + got[1]) if got[1] else int(start)
    return None


def built_size(buffer: int, floor: int | None, cap: int | None) -> int:
    """min(max(buffer, floor), cap); None: no such bound."""
    built = max(buffer, floor) if floor is not None else buffer
    return min(built, cap) if cap is not None else built


def smaller_than_its_buffer(calibration: Calibration) -> bool:
    """True when the largest whole-pipeline save is under half of its shuffle buffer's own
    bytes: it cannot hold the buffer's elements (e.g. a symbolic checkpoint).

    The other buffers only ever add bytes to a save, so their timing cannot make a saved
    buffer look missing; a small buffer of small elements reads as saved (the safe side).
    """
    if not calibration.chunks:
        return True
    large, large_bytes = max(calibration.anchors)
    return large_bytes < 0.5 * calibration._buffer_part(large)
