"""Checkpoint-size estimates: the README's rule of thumb, the measured size, and its cross-check.

The rule of thumb (buffer x bytes of one buffered element x 1.5) ignores that TensorFlow
compresses the serialized iterator state and that other buffers hold decoded data, so on
real pipelines it is off by 1.7x to 50x. The measured estimate (see estimate.calibrate) saves
the user's own pipeline and fits

    bytes(buffer) = fixed + per_element x held(buffer) + slot_bytes x empty slots

with the per-element figure taken from the shuffle buffer alone. Results are cached by a
hash of the resolved config and the pipeline's source (see estimate.cache). Every real
save a script makes is compared with the estimate by `cross_check`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dlckpt.config import estimate_settings

# The version lives with the cache it keys; re-exported here, where readers look for it.
from dlckpt.estimate.cache import ESTIMATOR_VERSION  # noqa: F401  (public name)
from dlckpt.estimate.model import Calibration
from dlckpt.pipeline.tensors import element_bytes, leading_dimension
from dlckpt.units import format_size


def sample_bytes_of_batch(batch: Any) -> tuple[int, int]:
    """(bytes of one batch, samples in it): strings count their length, tensors their buffer."""
    return element_bytes(batch), leading_dimension(batch)


def measured_sample_bytes(dataset: Any, batches: int = 2) -> int:
    """Mean bytes of one sample of the pipeline's output, over the first `batches` batches."""
    total = count = 0
    iterator = iter(dataset.take(batches))
    for batch in iterator:
        batch_bytes, samples = sample_bytes_of_batch(batch)
        total += batch_bytes
        count += samples
    del iterator
    return round(total / max(count, 1))


def buffered_element_bytes(dataset: Any, elements: int = 4) -> tuple[int, str]:
    """(mean bytes of an element as the shuffle buffer holds it, what was measured).

    Reads the shuffle node's input when there is one, else the pipeline's output samples.
    """
    from dlckpt.pipeline.graph import buffer_source, find_shuffle_node

    node = find_shuffle_node(dataset)
    if node is None:
        return measured_sample_bytes(dataset), "an output sample (measured; no shuffle buffer)"
    total = count = 0
    iterator = iter(buffer_source(dataset, node).take(elements))
    for element in iterator:
        total += element_bytes(element)
        count += 1
    del iterator
    return round(total / max(count, 1)), "an element as the shuffle buffer holds it (measured)"


def formula_bytes(buffer_size: int, sample_bytes: int, overhead: float) -> int:
    """The README's rule of thumb: buffer x sample bytes x overhead (1.5)."""
    return round(buffer_size * sample_bytes * overhead)


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
    # Per process in the bucket at its peak (estimate.max_to_keep + 1; 1 when unset).
    checkpoints_in_bucket: int = 1
    formula_overhead: float = 1.5
    notes: list[str] = field(default_factory=list)
    # Filled by cli.common.estimate_and_preflight: the report's `locations` and `fit_budget`.
    locations: list[dict[str, Any]] = field(default_factory=list)
    fit_budget: dict[str, Any] | None = None
    # The cache entry the calibration came from or went to (None: not cached).
    cache_key: str | None = None
    # Filled by cross_check after each real save: the report's `cross_checks`.
    cross_checks: list[dict[str, Any]] = field(default_factory=list)
    # Why TensorFlow refused to save the pipeline while calibrating (None: it saved): no
    # checkpoint can be written, so no buffer "fits"; the figures are the formula's.
    unsaveable: str | None = None

    @property
    def uncertainty(self) -> float | None:
        return (
            None
            if self.calibration is None
            else self.calibration.uncertainty_for(self.original_buffer)
        )

    def bytes_for(self, buffer_size: int) -> int:
        if self.calibration is None:
            return formula_bytes(buffer_size, self.bytes_per_sample, self.formula_overhead)
        return self.calibration.bytes_for(buffer_size)

    def uncertainty_for(self, buffer_size: int) -> float | None:
        """Relative 95% uncertainty of bytes_for(buffer_size); None for the formula (no claim)."""
        return None if self.calibration is None else self.calibration.uncertainty_for(buffer_size)

    def ram_bytes_for(self, buffer_size: int) -> int:
        """Host bytes for the shuffle buffer while its iterator is saved: the elements in
        memory plus the save's working memory (Calibration.ram_bytes_for); the formula's
        bytes per sample when nothing was measured."""
        if self.calibration is None:
            return buffer_size * self.bytes_per_sample
        return self.calibration.ram_bytes_for(buffer_size)

    def largest_buffer_within(self, budget_bytes: int) -> int:
        if self.calibration is not None:
            return self.calibration.largest_buffer_within(budget_bytes)
        per_element = self.bytes_for(1000) / 1000
        return max(int(budget_bytes // per_element), 0) if per_element > 0 else 0

    def headline(self, which: str) -> str:
        """`89.8 GiB (measured ±2%; README's rule of thumb 174.6 GiB)`: "original" or "tested"."""
        measured = self.original_bytes if which == "original" else self.tested_bytes
        formula = self.formula_original_bytes if which == "original" else self.formula_tested_bytes
        buffer = self.original_buffer if which == "original" else self.tested_buffer
        if self.calibration is None:
            return (
                f"{format_size(formula)} (README's rule of thumb: {buffer:,} × "
                f"{self.bytes_per_sample:,} B {self.bytes_per_sample_source} × "
                f"{self.formula_overhead})"
            )
        percent = self.calibration.uncertainty_for(buffer) * 100
        if self.calibration.constant:
            return (
                f"{format_size(measured)} (measured ±{percent:.0f}%: constant, "
                f"{format_size(measured)} whatever the buffer)"
            )
        return (
            f"{format_size(measured)} (measured ±{percent:.0f}%; "
            f"README's rule of thumb {format_size(formula)})"
        )

    def describe(self) -> list[str]:
        """The lines under the headline: what was measured, and the rule of thumb's inputs."""
        lines = []
        cal = self.calibration
        took = (
            ""
            if cal is None
            else ("cached measurement" if self.cached else f"calibration took {cal.seconds:.1f} s")
        )
        if cal is not None and cal.constant:
            lines.append(
                f"  measured: constant, {format_size(cal.bytes_for(1))} whatever the buffer "
                f"(the shuffle buffer's contents are not in the checkpoint); {took}"
            )
        elif cal is not None:
            per_element, _ = cal.per_element(self.original_buffer)
            in_flight = cal.fixed / cal.sample_bytes if cal.sample_bytes else 0.0
            # Every term of the headline, so it can be rebuilt from this line.
            cached = (
                f"{format_size(cal.extra_per_element)} {cal.extra_label} + "
                if cal.extra_per_element and cal.chunks
                else ""
            )
            if not cal.chunks:  # buffers off the line from the output: whole-pipeline growth
                per_element = cal.extra_per_element
            lines.append(
                f"  measured: {format_size(per_element)} per buffered element + {cached}"
                f"{format_size(cal.fixed)} fixed (prefetch/map buffers: about "
                f"{in_flight:,.0f} output samples of {format_size(cal.sample_bytes)} each, "
                f"decoded); {took}"
            )
        lines.append(
            f"  README's rule of thumb: {self.original_buffer:,} × "
            f"{format_size(self.bytes_per_sample)} ({self.bytes_per_sample_source}) × "
            f"{self.formula_overhead} = {format_size(self.formula_original_bytes)}"
        )
        return lines

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
            "checkpoints_in_bucket": self.checkpoints_in_bucket,
            # Present with the formula too (null), so a reader need not test for the keys.
            "bytes_per_buffered_element": None,
            "fixed_bytes": None,
            "uncertainty": None,
            "uncertainty_covers": None,
            "constant": None,
            "calibration_points": None,
            "cross_checks": list(self.cross_checks),
        }
        if self.calibration is not None:
            cal = self.calibration
            per_element, _ = cal.per_element(self.original_buffer)
            data.update(
                {
                    "bytes_per_buffered_element": round(per_element),
                    "fixed_bytes": round(cal.fixed),
                    "uncertainty": round(cal.uncertainty_for(self.original_buffer), 4),
                    "uncertainty_covers": "95% (Student's t over the sampled chunks, plus "
                    "the anchors' spread, three batches in transit, the depth autotuned "
                    "buffers may gain and a 1.5% floor)",
                    "batch_checkpoint_bytes": cal.batch_bytes,
                    "autotune_depth_bytes": round(cal.autotune_bytes),
                    "constant": cal.constant,
                    "calibration_points": [list(anchor) for anchor in cal.anchors],
                    "calibration_chunks": [list(chunk) for chunk in cal.chunks],
                    "slot_bytes": round(cal.slot_bytes, 2),
                    "in_flight_samples": round(cal.fixed / cal.sample_bytes, 1)
                    if cal.sample_bytes
                    else None,
                    "raw_bytes_per_buffered_element": cal.raw_element_bytes,
                    "memory_bytes_per_buffered_element": cal.memory_element_bytes or None,
                    "ram_bytes_per_buffered_element_at_save": cal.ram_per_element,
                    "output_sample_bytes": cal.sample_bytes,
                    "stream_elements": cal.stream_elements,
                    "calibration_seconds": round(cal.seconds, 2),
                    "cached": self.cached,
                }
            )
        if self.notes:
            data["notes"] = list(self.notes)
        return data


def _calibration_for(
    cfg: Any, scratch_root: Path | None, say: Callable[[str], None]
) -> tuple[Calibration | None, bool, str | None, str | None]:
    """(calibration or None when TensorFlow cannot save the pipeline, cached?, cache key,
    why TensorFlow cannot save it or None)."""
    from dlckpt.ckpt_io import UnsaveablePipeline
    from dlckpt.estimate.cache import config_hash, load_cached, store_cached
    from dlckpt.estimate.calibrate import calibrate

    settings = estimate_settings(cfg.estimate)
    key = config_hash(cfg)
    use_cache = bool(cfg.estimate.get("cache", True))
    calibration = load_cached(key) if use_cache else None
    if calibration is not None:
        # The cache is shared by every environment of this user: a pipeline measured in
        # another (with a package this one lacks) must still build here before its size is
        # stated, or a run prints FITS for a pipeline it cannot build (one UsageError line).
        from dlckpt.pipeline.build import instantiate_dataset

        instantiate_dataset(cfg.dataloader)
        return calibration, True, key, None
    say(
        f"Measuring the checkpoint size: whole-pipeline saves at buffers {settings.buffer_sizes}, "
        f"isolated shuffle-buffer saves sampled up to {max(settings.offsets):,} elements in "
        f"(stall limit {settings.timeout_seconds:g} s)…"
    )
    try:
        calibration = calibrate(cfg, scratch_root=scratch_root, say=say)
    except UnsaveablePipeline as error:
        # No checkpoint to measure: the formula stands, the round trip reports why.
        say(f"  cannot measure: {error}")
        return None, False, None, str(error)
    if use_cache:
        store_cached(key, calibration)
    return calibration, False, key if use_cache else None, None


def estimate(
    cfg: Any,
    *,
    tested_buffer: int | None = None,
    scratch_root: Path | None = None,
    measure: bool = True,
    say: Callable[[str], None] = print,
) -> EstimateResult:
    """The configured and the tested buffer's checkpoint size: measured, cached or formula."""
    from dlckpt.config import shuffle_buffer_size, with_buffer_size
    from dlckpt.pipeline.build import instantiate_dataset

    original = shuffle_buffer_size(cfg)
    tested = tested_buffer or original
    settings = estimate_settings(cfg.estimate)
    hosts = settings.num_hosts
    calibration, cached, key, unsaveable = (
        _calibration_for(cfg, scratch_root, say) if measure else (None, False, None, None)
    )
    sample_bytes = cfg.estimate.get("bytes_per_sample")
    source = "estimate.bytes_per_sample"
    if sample_bytes is None and calibration is not None and calibration.raw_element_bytes:
        sample_bytes = calibration.raw_element_bytes
        source = (
            "an output sample (measured; no shuffle buffer)"
            if calibration.constant and not calibration.chunks
            else "an element as the shuffle buffer holds it (measured)"
        )
    elif sample_bytes is None:
        one = with_buffer_size(cfg, min(tested, 64))
        sample_bytes, source = buffered_element_bytes(instantiate_dataset(one.dataloader))
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
        checkpoints_in_bucket=settings.checkpoints_in_bucket,
        formula_overhead=overhead,
        cached=cached,
        cache_key=key,
        unsaveable=unsaveable,
    )
    if calibration is None:
        return result
    result.calibration = calibration
    result.method = "measured"
    result.original_bytes = calibration.bytes_for(original)
    result.tested_bytes = calibration.bytes_for(tested)
    result.notes.extend(calibration.notes)
    return result


# --- the cross-check against every real save -------------------------------------------------


@dataclass
class CrossCheck:
    """One real save compared with the estimate for its buffer (sizes in bytes)."""

    buffer_size: int
    estimated_bytes: int
    actual_bytes: int
    uncertainty: float | None  # the stated relative ± (None: the formula states none)
    within: bool | None  # None: nothing to hold the formula to
    cache_dropped: bool = False

    @property
    def error(self) -> float:
        """(estimate - real) / real."""
        return self.estimated_bytes / max(self.actual_bytes, 1) - 1

    def message(self) -> str:
        head = (
            f"estimate cross-check at buffer {self.buffer_size:,}: real checkpoint "
            f"{format_size(self.actual_bytes)}, estimated {format_size(self.estimated_bytes)} "
            f"({self.error:+.1%}"
        )
        if self.uncertainty is None:
            return f"  {head}; the README's rule of thumb states no ±)"
        stated = f"the stated ±{self.uncertainty:.1%}"
        if self.within:
            return f"✓ {head}, within {stated})"
        dropped = (
            "; the cached measurement was dropped, the next run measures again"
            if self.cache_dropped
            else ""
        )
        # ✗: the sizes and the preflight's FITS rest on this estimate (finish fails the run).
        return f"✗ {head}, outside {stated}){dropped}"

    def failure(self) -> str:
        """The run's last line when the real save falls outside the stated ± (without ✗)."""
        return (
            f"THE SIZE ESTIMATE MISSED THE REAL CHECKPOINT: {format_size(self.actual_bytes)} "
            f"saved at buffer {self.buffer_size:,}, {format_size(self.estimated_bytes)} "
            f"estimated ({self.error:+.1%}, outside the stated ±{self.uncertainty or 0:.1%}). "
            "The round trip itself passed, but the sizes and the preflight's FITS above rest "
            "on this estimate: run again to measure it anew"
        )

    def report(self) -> dict[str, Any]:
        return {
            "buffer_size": self.buffer_size,
            "estimated_bytes": self.estimated_bytes,
            "actual_bytes": self.actual_bytes,
            "error": round(self.error, 4),
            "uncertainty": None if self.uncertainty is None else round(self.uncertainty, 4),
            "within": self.within,
            "cache_dropped": self.cache_dropped,
        }


def cross_check(result: EstimateResult, buffer_size: int, actual_bytes: int) -> CrossCheck:
    """Compare a real save's bytes with the estimate for `buffer_size`; record it on `result`.

    Outside the stated ± the cache entry the estimate came from is dropped, so the next run
    measures again. The check is appended to `result.cross_checks` (the report's key).
    """
    from dlckpt.estimate.cache import drop_cached

    estimated = result.bytes_for(buffer_size)
    uncertainty = result.uncertainty_for(buffer_size)
    within = (
        None if uncertainty is None else abs(estimated / max(actual_bytes, 1) - 1) <= uncertainty
    )
    check = CrossCheck(buffer_size, estimated, actual_bytes, uncertainty, within)
    if within is False and result.cache_key is not None:
        check.cache_dropped = drop_cached(result.cache_key)
    result.cross_checks.append(check.report())
    return check
