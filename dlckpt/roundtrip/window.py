"""How many batches the comparison after a restore must cover to see fresh elements.

Right after a restore, a shuffled pipeline serves batches from the restored buffers, which
are bit-identical by construction. Divergence that starts upstream of the shuffle
(nondeterministic parallel ops, skipped random state, new epoch seeds) shows only once
elements drawn from upstream after the restore reach the output. The window therefore
covers the buffers' volume at save time (shuffle buffer plus the prefetch, parallel-map
and interleave buffers, from pipeline.risks.analyze), then `fresh_batches` more (and at least
`fresh_elements` elements' worth, so small batches still reach many fresh elements; one
batch of 1 per fresh element caught 19 of 20 runs of a nondeterministic map with 10
fresh elements in `scripts/bench_catch_rate.py`), and extends past
the next epoch boundary when an unseeded shuffle reshuffles there.

How many of the compared elements were drawn fresh from upstream is an expectation: the
shuffle draws uniformly, so after n draws from a full buffer of B, about
B * (1 - (1 - 1/B) ** n) of the outputs came from the saved buffer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


@dataclass
class Window:
    """The comparison plan: batches to compare after the restore, and why that many."""

    batches: int
    buffered_batches: float  # output batches' worth of elements buffered at save time
    fresh_batches: int  # batches compared beyond the buffers' volume
    epoch_boundary_batch: int | None = None  # compared batch index of the next new epoch

    def reason(self) -> str:
        text = (
            f"the {self.buffered_batches:.0f} batches' worth of elements buffered at save time "
            f"(shuffle, prefetch, parallel map), then {self.fresh_batches} more"
        )
        if self.epoch_boundary_batch is not None:
            text += f", past the epoch boundary at compared batch {self.epoch_boundary_batch}"
        return text


def plan_window(analysis: Any, settings: Any) -> Window:
    """The window for a pipeline (a pipeline.risks.PipelineAnalysis) under `roundtrip.*` settings.

    Never fewer than `roundtrip.batches_to_compare` batches. Raises UsageError (exit 2)
    naming the setting when a `roundtrip.*` number is out of range.
    """
    check_settings(settings)
    buffered = math.ceil(analysis.buffered_batches)
    # Small batches carry few elements: the fresh part is also at least `fresh_elements`.
    per_batch = max(int(getattr(analysis, "elements_per_batch", 1)), 1)
    fresh = max(int(settings.fresh_batches), math.ceil(int(settings.fresh_elements) / per_batch))
    batches = max(int(settings.batches_to_compare), buffered + fresh)
    boundary = None
    epoch = analysis.epoch_batches
    if epoch:
        saved_at = int(settings.batches_before_save)
        boundary = (saved_at // epoch + 1) * epoch - saved_at
        batches = max(batches, boundary + fresh)
    return Window(batches, analysis.buffered_batches, fresh, boundary)


def check_settings(settings: Any) -> None:
    """UsageError (exit 2, one line) for a `roundtrip.*` number the round trip cannot use."""
    from dlckpt.errors import UsageError

    bounds = {
        "batches_before_save": (0, "an integer >= 0"),
        "batches_to_compare": (1, "an integer >= 1"),
        "fresh_batches": (0, "an integer >= 0"),
        "fresh_elements": (0, "an integer >= 0"),
        "window_seconds": (1e-9, "a number of seconds > 0"),
        "restore_timeout_seconds": (1e-9, "a number of seconds > 0"),
    }
    for name, (minimum, expected) in bounds.items():
        value = settings.get(name)
        integer = "integer" in expected
        wrong_type = isinstance(value, bool) or not isinstance(value, (int, float))
        if wrong_type or (integer and not isinstance(value, int)) or value < minimum:
            raise UsageError(f"roundtrip.{name}={value!r}: expected {expected}")


def expected_fresh_elements(compared_elements: int, buffered_elements: float) -> int:
    """Of `compared_elements` outputs, how many were drawn from upstream after the restore.

    An expectation, for a buffer holding `buffered_elements` that draws uniformly.
    """
    if buffered_elements <= 1:
        return max(compared_elements - int(buffered_elements), 0)
    survivors = buffered_elements * (1 - 1 / buffered_elements) ** compared_elements
    from_buffer = buffered_elements - survivors
    return max(round(compared_elements - from_buffer), 0)
