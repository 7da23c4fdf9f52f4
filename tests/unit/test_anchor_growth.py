"""Growth between whole-pipeline saves is confirmed before it is read as a shuffle buffer.

CI saw a pipeline with no shuffle buffer (an index shuffle, autotuned) whose one save at
the largest calibration buffer caught 13 batches more than the others: read as growth, it
was extrapolated to a 172 KB checkpoint at buffer 1,000 for a real 4.5 KB one.
"""

from __future__ import annotations

from types import SimpleNamespace

from dlckpt.estimate.calibrate import CONFIRM_LARGEST, _growth_between_anchors, _Run
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
