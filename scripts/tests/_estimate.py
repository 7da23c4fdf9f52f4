"""Checkpoint-size estimates: the README's formula, and a measured estimate of the real size.

The formula (buffer x sample bytes x 1.5) ignores that TensorFlow compresses the
serialized iterator state, so on real data it is off by 1.7x to 11x. The measured
estimate builds the user's own pipeline at a few small shuffle buffers, fills each,
saves the iterator to scratch and fits

    bytes(buffer) = fixed + per_element x buffer

where `fixed` is what the pipeline holds outside the shuffle buffer (prefetch,
parallel-map and interleave buffers, which may hold decoded data while the shuffle buffer
holds encoded data), the intercept of the saves at several buffer sizes.
The per-element figure is the mean over saves taken at several points of the stream
(offsets), restricted to the part of the stream the target buffer will hold, because
early elements are rarely typical; the uncertainty is twice the standard error of that
mean. Results are cached by a hash of the resolved config and the pipeline's source.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from _errors import PreflightRefusal, UsageError
from _roundtrip import UnsaveablePipeline
from _tensors import element_bytes, leading_dimension

# Bump when the calibration procedure changes: old cache entries then no longer match.
ESTIMATOR_VERSION = 7


def sample_bytes_of_batch(batch: Any) -> tuple[int, int]:
    """(bytes of one batch, samples in it): strings count their length, tensors their buffer."""
    return element_bytes(batch), leading_dimension(batch)


def measured_sample_bytes(dataset: Any, batches: int = 2) -> int:
    """Mean bytes of one sample of the pipeline's output, over the first `batches` batches."""
    total = count = 0
    for batch in dataset.take(batches):
        batch_bytes, samples = sample_bytes_of_batch(batch)
        total += batch_bytes
        count += samples
    return round(total / max(count, 1))


def formula_bytes(buffer_size: int, sample_bytes: int, overhead: float) -> int:
    """The README's rule of thumb: buffer x sample bytes x overhead (1.5)."""
    return round(buffer_size * sample_bytes * overhead)


# --- the measured estimate ---------------------------------------------------------------


@dataclass
class Calibration:
    """What the calibration saves measured; everything an estimate for any buffer needs."""

    # Every save: [buffer, elements read before the save, checkpoint bytes].
    points: list[list[int]]
    largest_buffer: int
    # Bytes held outside the shuffle buffer (prefetch, parallel map, interleave): the
    # intercept of the first saves' bytes against their buffer sizes.
    fixed: float
    # Per-element checkpoint bytes of the largest buffer's save at each offset: [offset, bytes].
    per_element_by_offset: list[list[float]]
    # Bytes of one buffered element in memory (before the shuffle), for the RAM row.
    raw_element_bytes: int
    # Elements the pipeline yields in total when it is finite (None: it repeats).
    stream_elements: int | None
    seconds: float
    notes: list[str] = field(default_factory=list)
    # Mean bytes of one output sample (the formula's input), from the first batch read.
    sample_bytes: int = 0
    # Bytes every slot of the shuffle buffer costs even when empty (from saves of iterators
    # that have not started): what a buffer larger than a finite stream still writes.
    slot_bytes: float = 0.0

    def per_element(self, buffer_size: int) -> tuple[float, float]:
        """(mean per-element bytes, relative uncertainty) over the saves the buffer's data spans.

        A buffer of B elements holds data from the first ~B elements of the stream, so only
        saves taken at offsets up to B are representative of it (at least the first save).
        """
        values = [v for offset, v in self.per_element_by_offset if offset <= buffer_size]
        values = values or [self.per_element_by_offset[0][1]]
        mean = statistics.fmean(values)
        spread_source = values if len(values) >= 2 else [v for _, v in self.per_element_by_offset]
        if len(spread_source) >= 2 and mean > 0:
            stderr = statistics.stdev(spread_source) / math.sqrt(len(spread_source))
            uncertainty = 2.0 * stderr / mean
        else:
            uncertainty = 0.05
        return mean, max(uncertainty, 0.01)

    def held_elements(self, buffer_size: int) -> int:
        """Elements the shuffle buffer can actually hold: a finite stream caps it."""
        if self.stream_elements is not None:
            return min(buffer_size, self.stream_elements)
        return buffer_size

    def bytes_for(self, buffer_size: int) -> int:
        per_element, _ = self.per_element(buffer_size)
        held = self.held_elements(buffer_size)
        empty_slots = buffer_size - held
        return round(self.fixed + per_element * held + self.slot_bytes * empty_slots)

    def uncertainty_for(self, buffer_size: int) -> float:
        return self.per_element(buffer_size)[1]

    def fixed_bytes(self, buffer_size: int) -> int:
        return round(self.fixed)

    def extra_elements(self, buffer_size: int) -> float:
        """The fixed part in buffered elements' worth (prefetch + map, when they hold the same)."""
        per_element, _ = self.per_element(buffer_size)
        return self.fixed / per_element if per_element > 0 else 0.0

    def largest_buffer_within(self, budget_bytes: int) -> int:
        """The largest buffer whose estimate plus uncertainty fits in `budget_bytes` (0: none)."""

        def fits(buffer: int) -> bool:
            return self.bytes_for(buffer) * (1 + self.uncertainty_for(buffer)) <= budget_bytes

        if not fits(1):
            return 0
        low, high = 1, 2
        while fits(high):
            if self.stream_elements is not None and high >= self.stream_elements:
                return high  # every larger buffer holds the same (finite) stream
            low, high = high, high * 2
            if high > 10**12:
                return low
        while high - low > 1:
            middle = (low + high) // 2
            low, high = (middle, high) if fits(middle) else (low, middle)
        return low


@dataclass
class EstimateResult:
    """The headline numbers for one run: the configured ("original") and the tested buffer."""

    method: str  # "measured" or "formula"
    original_buffer: int
    tested_buffer: int
    original_bytes: int
    tested_bytes: int
    formula_original_bytes: int
    formula_tested_bytes: int
    bytes_per_sample: int
    bytes_per_sample_source: str
    calibration: Calibration | None = None
    cached: bool = False
    num_hosts: int = 1
    formula_overhead: float = 1.5
    notes: list[str] = field(default_factory=list)
    # Filled by _common.estimate_and_preflight: the report's `locations` and `fit_budget`.
    locations: list[dict[str, Any]] = field(default_factory=list)
    fit_budget: dict[str, Any] | None = None

    @property
    def uncertainty(self) -> float | None:
        return (
            None
            if self.calibration is None
            else self.calibration.uncertainty_for(self.original_buffer)
        )

    def bytes_for(self, buffer_size: int) -> int:
        if self.calibration is None:
            overhead = self.formula_original_bytes / max(
                self.original_buffer * self.bytes_per_sample, 1
            )
            return formula_bytes(buffer_size, self.bytes_per_sample, overhead)
        return self.calibration.bytes_for(buffer_size)

    def ram_bytes_for(self, buffer_size: int) -> int:
        """The buffer held in memory, uncompressed (what training holds, not what is saved)."""
        per_element = (
            self.calibration.raw_element_bytes if self.calibration else self.bytes_per_sample
        )
        held = self.calibration.held_elements(buffer_size) if self.calibration else buffer_size
        return held * per_element

    def largest_buffer_within(self, budget_bytes: int) -> int:
        if self.calibration is not None:
            return self.calibration.largest_buffer_within(budget_bytes)
        per_element = self.bytes_for(1000) / 1000
        return max(int(budget_bytes // per_element), 0) if per_element > 0 else 0

    def headline(self, which: str) -> str:
        """`96.4 GB (measured ±2%; formula 187.5 GB)` for "original" or "tested"."""
        from _report import format_gb

        measured = self.original_bytes if which == "original" else self.tested_bytes
        formula = self.formula_original_bytes if which == "original" else self.formula_tested_bytes
        buffer = self.original_buffer if which == "original" else self.tested_buffer
        if self.calibration is None:
            return (
                f"{format_gb(formula)} (formula: {buffer:,} × {self.bytes_per_sample:,} B "
                f"{self.bytes_per_sample_source} × {self.formula_overhead})"
            )
        percent = self.calibration.uncertainty_for(buffer) * 100
        return f"{format_gb(measured)} (measured ±{percent:.0f}%; formula {format_gb(formula)})"

    def report(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "method": self.method,
            "original_bytes": self.original_bytes,
            "tested_bytes": self.tested_bytes,
            "formula_original_bytes": self.formula_original_bytes,
            "formula_tested_bytes": self.formula_tested_bytes,
            "bytes_per_sample": self.bytes_per_sample,
            "bytes_per_sample_source": self.bytes_per_sample_source,
            "num_hosts": self.num_hosts,
            # Present with the formula too (null), so a reader need not test for the keys.
            "bytes_per_buffered_element": None,
            "fixed_bytes": None,
            "uncertainty": None,
            "calibration_points": None,
        }
        if self.calibration is not None:
            cal = self.calibration
            per_element, _ = cal.per_element(self.original_buffer)
            data.update(
                {
                    "bytes_per_buffered_element": round(per_element),
                    "fixed_bytes": cal.fixed_bytes(self.original_buffer),
                    "uncertainty": round(cal.uncertainty_for(self.original_buffer), 4),
                    "calibration_points": [[b, n] for b, _, n in cal.points],
                    "calibration_offsets": [offset for _, offset, _ in cal.points],
                    "extra_elements": round(cal.extra_elements(self.original_buffer), 2),
                    "raw_bytes_per_buffered_element": cal.raw_element_bytes,
                    "stream_elements": cal.stream_elements,
                    "calibration_seconds": round(cal.seconds, 2),
                    "cached": self.cached,
                }
            )
        if self.notes:
            data["notes"] = list(self.notes)
        return data


def validate_settings(estimate_cfg: Any) -> tuple[list[int], list[int], int]:
    """(buffer sizes, offsets, num_hosts) from `estimate.*`; UsageError (exit 2) when malformed."""
    sizes = _int_list(
        estimate_cfg.get("calibration_buffer_sizes"), "estimate.calibration_buffer_sizes", 1
    )
    offsets = _int_list(estimate_cfg.get("calibration_offsets"), "estimate.calibration_offsets", 0)
    hosts = estimate_cfg.get("num_hosts")
    if isinstance(hosts, bool) or not isinstance(hosts, int) or hosts < 1:
        raise UsageError(
            f"estimate.num_hosts={hosts!r}: expected an integer >= 1 "
            "(the hosts that each save a checkpoint)"
        )
    return sorted(set(sizes)), sorted(set(offsets)), hosts


def _int_list(value: Any, name: str, minimum: int) -> list[int]:
    kind = "positive integers" if minimum == 1 else "integers >= 0"
    example = "[8, 16, 32, 64]" if minimum == 1 else "[0, 256, 1024]"
    try:
        items = list(value)
    except TypeError:
        raise UsageError(f"{name}={value!r}: expected a list of {kind}, e.g. {example}") from None
    if not items or any(
        isinstance(i, bool) or not isinstance(i, int) or i < minimum for i in items
    ):
        raise UsageError(
            f"{name}={list(items)!r}: expected a non-empty list of {kind}, e.g. {example}"
        )
    return [int(i) for i in items]


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "dataloader-checkpoint-testing" / "estimates"


def config_hash(cfg: Any) -> str:
    """sha256 of the resolved dataloader and estimate settings, the pipeline's source, TF, us."""
    from _tf import import_tensorflow
    from omegaconf import OmegaConf

    dataloader = dict(OmegaConf.to_container(cfg.dataloader, resolve=True))  # type: ignore[arg-type]
    # The calibration never fills the configured buffer, so its size is not part of the key:
    # trying other buffer sizes (or --fit-budget) reuses the measurement.
    dataloader.pop("shuffle_buffer_size", None)
    resolved = {
        "dataloader": dataloader,
        "estimate": OmegaConf.to_container(cfg.estimate, resolve=True),
        "estimator_version": ESTIMATOR_VERSION,
        "tensorflow": import_tensorflow().__version__,
        "pipeline_source": _target_source_digest(str(cfg.dataloader.get("_target_", ""))),
    }
    return hashlib.sha256(json.dumps(resolved, sort_keys=True, default=str).encode()).hexdigest()


def _target_source_digest(target: str) -> str:
    """The pipeline's code is part of the key: editing the builder invalidates the cache."""
    module = target.rpartition(".")[0]
    try:
        spec = importlib.util.find_spec(module) if module else None
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.origin or not os.path.isfile(spec.origin):
        return ""
    return hashlib.sha256(Path(spec.origin).read_bytes()).hexdigest()


def load_cached(key: str) -> Calibration | None:
    path = cache_dir() / f"{key}.json"
    try:
        return Calibration(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError):
        return None


def store_cached(key: str, calibration: Calibration) -> None:
    try:
        folder = cache_dir()
        folder.mkdir(parents=True, exist_ok=True)
        temporary = folder / f".{key}.{os.getpid()}.tmp"
        temporary.write_text(json.dumps(asdict(calibration)))
        temporary.replace(folder / f"{key}.json")
    except OSError:
        pass  # a cache that cannot be written only costs the next run its speed


def _settle(max_seconds: float = 10.0) -> None:
    """Wait until the pipeline's background threads stop working (prefetch buffers full).

    A training job saves while its prefetch buffers are full (training is the slow side),
    so the calibration saves at that moment too: when this process stops using CPU. On a
    busy machine the buffers fill slowly, so the wait is generous; an idle pipeline
    returns within a few tenths of a second.
    """
    import psutil

    process = psutil.Process()
    deadline = time.monotonic() + max_seconds
    last = sum(process.cpu_times()[:2])
    quiet = 0
    # Three quiet windows in a row: on a loaded machine a starved process can look idle
    # for one window while its threads still wait to run.
    while time.monotonic() < deadline and quiet < 3:
        time.sleep(0.1)
        now = sum(process.cpu_times()[:2])
        quiet = quiet + 1 if now - last < 0.02 else 0
        last = now


def settled_checkpoint_bytes(iterator: Any, folder: Path, attempts: int = 5) -> int:
    """Bytes of the iterator's checkpoint once its background buffers have stopped changing.

    Waits for the process to go quiet, then saves until two saves in a row agree: one
    save taken while a prefetch or parallel-map buffer is still filling would shift the
    fitted fixed part, and the extrapolation multiplies that error by the buffer ratio.
    """
    from _roundtrip import save_iterator

    previous = -1
    size = 0
    for attempt in range(attempts):
        _settle()
        size = save_iterator(iterator, folder / str(attempt)).bytes
        shutil.rmtree(folder, ignore_errors=True)
        if size == previous:
            break
        previous = size
    return size


def _raw_element_bytes(dataset: Any, fallback: int) -> int:
    """Bytes of one element as the shuffle buffer holds it (its input), else `fallback`."""
    node = dataset
    while node is not None and type(node).__name__ != "_ShuffleDataset":
        node = getattr(node, "_input_dataset", None)
    source = getattr(node, "_input_dataset", None)
    if source is None:
        return fallback
    total = count = 0
    for element in source.take(4):
        size, _ = sample_bytes_of_batch(element)
        total += size
        count += 1
    return round(total / count) if count else fallback


def _stream_elements(dataset: Any, batch_samples: int) -> int | None:
    tf_cardinality = int(dataset.cardinality().numpy())
    return tf_cardinality * batch_samples if tf_cardinality >= 0 else None


def calibrate(
    cfg: Any,
    *,
    scratch_root: Path | None = None,
    say: Callable[[str], None] = print,
) -> Calibration:
    """Fill the pipeline at each calibration buffer, save the iterator to scratch, measure.

    Each buffer size is saved once after the first batch; the largest is then read on
    through the stream and saved again at every offset, so its saves sample the data
    from across the stream, not just its first elements. Scratch is removed afterwards.
    """
    from _config import with_buffer_size
    from _pipeline import instantiate_dataset
    from _roundtrip import save_iterator as _save

    def save_iterator(iterator: Any, directory: Path) -> Any:
        try:
            return _save(iterator, directory)
        except Exception as error:  # TensorFlow raises its own types; the text names the cause
            if not _is_disk_full(error):
                raise
            raise PreflightRefusal(
                f"calibration scratch folder {directory.parent}: a calibration save ran out of "
                f"room ({' '.join(str(error).split())[:80]}); point TMPDIR at a folder with a few "
                "hundred MB free, or lower estimate.calibration_buffer_sizes"
            ) from None

    sizes, offsets, _ = validate_settings(cfg.estimate)
    largest = sizes[-1]
    started = time.perf_counter()
    points: list[list[int]] = []
    notes: list[str] = []
    stream_elements: int | None = None
    raw_element_bytes = sample_bytes = 0
    empty_saves: list[tuple[int, int]] = []
    scratch = Path(tempfile.mkdtemp(prefix="dlckpt-estimate-", dir=scratch_root))
    try:
        for index, buffer in enumerate(sizes):
            dataset = instantiate_dataset(with_buffer_size(cfg, buffer).dataloader)
            iterator = iter(dataset)
            if index in (0, len(sizes) - 1):
                # Not started: nothing buffered yet, so this save measures the empty slots.
                saved = save_iterator(iterator, scratch / f"b{buffer}-empty")
                empty_saves.append((buffer, saved.bytes))
                shutil.rmtree(scratch / f"b{buffer}-empty", ignore_errors=True)
            read = 0
            ended = False
            for offset in offsets if buffer == largest else offsets[:1]:
                try:
                    while True:
                        batch = next(iterator)
                        batch_bytes, samples = sample_bytes_of_batch(batch)
                        if index == 0 and read == 0:
                            stream_elements = _stream_elements(dataset, samples)
                            raw_element_bytes = _raw_element_bytes(dataset, batch_bytes // samples)
                            sample_bytes = round(batch_bytes / samples)
                        read += samples
                        if read > offset:
                            break
                except StopIteration:
                    ended = True
                    break
                saved_bytes = settled_checkpoint_bytes(iterator, scratch / f"b{buffer}-o{offset}")
                points.append([buffer, read, saved_bytes])
            if ended:
                stream_elements = read if stream_elements is None else stream_elements
                notes.append(
                    f"the pipeline ended after {read:,} elements while filling a "
                    f"{buffer:,}-element calibration buffer: it has fewer elements than the "
                    "buffer, so the buffer never fills; the estimate uses the elements it has"
                )
            del iterator, dataset
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    if not points:
        raise UsageError(
            "estimate: the pipeline yielded no batch at any calibration buffer "
            f"{sizes}; check that it produces data "
            "(or set estimate.bytes_per_sample for the formula)"
        )
    fixed = _intercept(
        [(b, n) for b, r, n in points if r == min(r2 for b2, r2, _ in points if b2 == b)]
    )
    largest_saved = max(b for b, _, _ in points)
    slot_bytes = _slope(empty_saves)
    # The same model as Calibration.bytes_for, solved for the per-element bytes.
    held = min(largest_saved, stream_elements or largest_saved)
    empty = slot_bytes * (largest_saved - held)
    per_element = [
        [float(read), max(n - fixed - empty, 0.0) / max(held, 1)]
        for b, read, n in points
        if b == largest_saved
    ]
    seconds = time.perf_counter() - started
    return Calibration(
        points=points,
        largest_buffer=largest_saved,
        fixed=fixed,
        per_element_by_offset=per_element,
        raw_element_bytes=raw_element_bytes,
        stream_elements=stream_elements,
        seconds=seconds,
        notes=notes,
        sample_bytes=sample_bytes,
        slot_bytes=slot_bytes,
    )


def _is_disk_full(error: BaseException) -> bool:
    import errno

    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return True
    texts = ("No space left on device", "internal temporary file", "Disk quota exceeded")
    return any(text in str(error) for text in texts)


def _slope(saves: list[tuple[int, int]]) -> float:
    (small, small_bytes), (large, large_bytes) = min(saves), max(saves)
    return max((large_bytes - small_bytes) / (large - small), 0.0) if large > small else 0.0


def _intercept(first_saves: list[tuple[int, int]]) -> float:
    """Bytes held outside the shuffle buffer: the intercept of bytes against buffer size."""
    if len({b for b, _ in first_saves}) < 2:
        return 0.0
    buffers = np.array([b for b, _ in first_saves], dtype=float)
    sizes = np.array([n for _, n in first_saves], dtype=float)
    _, intercept = np.polyfit(buffers, sizes, 1)
    # Never more than the smallest save itself, never negative.
    return float(min(max(intercept, 0.0), min(sizes)))


def estimate(
    cfg: Any,
    *,
    tested_buffer: int | None = None,
    scratch_root: Path | None = None,
    measure: bool = True,
    say: Callable[[str], None] = print,
) -> EstimateResult:
    """The configured and the tested buffer's checkpoint size: measured, cached or formula."""
    from _config import shuffle_buffer_size, with_buffer_size
    from _pipeline import instantiate_dataset

    original = shuffle_buffer_size(cfg)
    tested = tested_buffer or original
    sizes, offsets, hosts = validate_settings(cfg.estimate)
    calibration: Calibration | None = None
    cached = False
    if measure:
        key = config_hash(cfg)
        use_cache = bool(cfg.estimate.get("cache", True))
        calibration = load_cached(key) if use_cache else None
        cached = calibration is not None
        if calibration is None:
            say(
                f"Measuring the checkpoint size: saving the iterator at buffers {sizes}, the "
                f"largest at {len(offsets)} points of the stream (up to {max(offsets):,} in)…"
            )
            try:
                calibration = calibrate(cfg, scratch_root=scratch_root, say=say)
            except UnsaveablePipeline as error:
                # No checkpoint to measure: the formula stands, the round trip reports why.
                say(f"  cannot measure: {error}")
                calibration = None
                use_cache = False
            if use_cache and calibration is not None:
                store_cached(key, calibration)
    sample_bytes = cfg.estimate.get("bytes_per_sample")
    source = "estimate.bytes_per_sample"
    if sample_bytes is None:
        source = "measured sample"
        if calibration is not None and calibration.sample_bytes:
            sample_bytes = calibration.sample_bytes
        else:
            one = with_buffer_size(cfg, min(tested, 64))
            sample_bytes = measured_sample_bytes(instantiate_dataset(one.dataloader))
    overhead = float(cfg.estimate.formula_overhead)
    result = EstimateResult(
        method="formula",
        original_buffer=original,
        tested_buffer=tested,
        original_bytes=formula_bytes(original, sample_bytes, overhead),
        tested_bytes=formula_bytes(tested, sample_bytes, overhead),
        formula_original_bytes=formula_bytes(original, sample_bytes, overhead),
        formula_tested_bytes=formula_bytes(tested, sample_bytes, overhead),
        bytes_per_sample=int(sample_bytes),
        bytes_per_sample_source=source,
        num_hosts=hosts,
        formula_overhead=overhead,
        cached=cached,
    )
    if calibration is None:
        return result
    result.calibration = calibration
    result.method = "measured"
    result.original_bytes = calibration.bytes_for(original)
    result.tested_bytes = calibration.bytes_for(tested)
    result.notes.extend(calibration.notes)
    stream = calibration.stream_elements
    if stream is not None and stream < original and not calibration.notes:
        result.notes.append(
            f"the pipeline yields {stream:,} elements, fewer than the {original:,}-element "
            f"buffer: the buffer never fills, so the estimate uses {stream:,}"
        )
    return result
