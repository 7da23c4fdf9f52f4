"""Growth between whole-pipeline saves is confirmed before it is read as a shuffle buffer.

CI saw a pipeline with no shuffle buffer (an index shuffle, autotuned) whose one save at
the largest calibration buffer caught 13 batches more than the others: read as growth, it
was extrapolated to a 172 KB checkpoint at buffer 1,000 for a real 4.5 KB one.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from dlckpt.estimate.calibrate import (
    CAP_PROBE_BUFFER as PROBE,
)
from dlckpt.estimate.calibrate import (
    CONFIRM_LARGEST,
    _built_form,
    _growth_between_anchors,
    _Run,
)
from dlckpt.estimate.watchdog import Stage

SEEN_IN_CI = [[8, 4514], [32, 4514], [64, 13965], [8, 4514], [8, 4514]]
BATCH = 706


def _run_whose_saves_are(sizes: list[int]) -> SimpleNamespace:
    refills = iter(sizes)
    return SimpleNamespace(
        batch_bytes=BATCH,
        cache_prefixes=[],
        _anchor=lambda buffer, stage, not_started: (next(refills), None, 0),
    )


def test_one_deep_save_is_outvoted_by_the_refills():
    run = _run_whose_saves_are([4514, 4514])
    assert _growth_between_anchors(SEEN_IN_CI, BATCH) is not None  # what CI's run concluded
    anchors = _Run.confirm_growth(run, Stage(), SEEN_IN_CI)  # type: ignore[arg-type]
    assert anchors[: len(SEEN_IN_CI)] == SEEN_IN_CI
    assert anchors[len(SEEN_IN_CI) :] == [[64, 4514]] * CONFIRM_LARGEST
    assert _growth_between_anchors(anchors, BATCH) is None


def test_real_growth_is_confirmed_and_kept():
    growing = [[8, 4514], [32, 9000], [64, 13965], [8, 4514], [8, 4514]]
    anchors = _Run.confirm_growth(_run_whose_saves_are([14100, 13800]), Stage(), growing)  # type: ignore[arg-type]
    growth = _growth_between_anchors(anchors, BATCH)
    assert growth is not None and abs(growth[0] - (13965 - 4514) / 56) < 1


def test_no_growth_costs_no_refill():
    flat = [[8, 4514], [32, 4514], [64, 4600], [8, 4514], [8, 4514]]
    run = _run_whose_saves_are([])  # a refill would raise StopIteration
    assert _Run.confirm_growth(run, Stage(), flat) == flat  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("reads", "form"),
    [
        ({8: 8, 32: 32, 64: 64, PROBE: PROBE}, (None, None)),  # follows B
        ({8: 8, 32: 32, 64: 64, PROBE: 3000}, (None, 3000)),  # min(B, 3000)
        ({8: 2000, 32: 2000, 64: 2000, PROBE: PROBE}, (2000, None)),  # max(B, 2000)
        ({8: 20, 32: 32, 64: 64, PROBE: PROBE}, (20, None)),  # max(B, 20)
        ({8: 2000, 32: 2000, 64: 2000, PROBE: 5000}, (2000, 5000)),  # both
        ({8: 4, 32: 16, 64: 32, PROBE: PROBE // 2}, None),  # B // 2: left to the anchors
        ({8: 9, 32: 33, 64: 65, PROBE: PROBE + 1}, None),  # B + 1: not a clamp
    ],
)  # fmt: skip
def test_the_shuffle_size_a_pipeline_builds_is_read_as_a_floor_and_a_cap(reads, form):
    """calibrate._built_form: the shuffle sizes read from the graph at the calibration
    buffers and at the probe, as min(max(B, floor), cap), or None for any other form."""
    assert _built_form(reads) == form


def test_the_sized_shuffle_is_the_one_that_follows_the_buffer():
    from dlckpt.estimate.calibrate import _the_sized_shuffle

    # A fixed file-list shuffle (60) beside one capped at 50: the capped one is read.
    read = {8: [60, 8], 32: [60, 32], 64: [60, 50], 10**9: [60, 50]}
    assert _the_sized_shuffle(read) == {8: 8, 32: 32, 64: 50, 10**9: 50}
    assert _the_sized_shuffle({8: [8], 32: [32]}) == {8: 8, 32: 32}  # the only one
    # Two that follow the buffer, none, or counts that differ between builds: no reading.
    assert _the_sized_shuffle({8: [8, 8], 32: [32, 32]}) is None
    assert _the_sized_shuffle({8: [60, 5], 32: [60, 5]}) is None
    assert _the_sized_shuffle({8: [8], 32: [60, 32]}) is None
    assert _the_sized_shuffle({8: [], 32: []}) is None
