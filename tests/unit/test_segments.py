"""The size model over a concatenate's inputs: each sampled from its own start (pure, no
TensorFlow): past the sample the stream is like the last input, and the step between
inputs is neither spread nor trend."""

from __future__ import annotations

import pytest

from dlckpt.estimate.model import Calibration


def _calibration(segment_starts: list[int]) -> Calibration:
    # 10-byte elements from 0, 100-byte ones from 1,000 (slots free): sampled to 1,200.
    chunks = [[0, 100, 10.0], [100, 100, 10.0], [1000, 100, 100.0], [1100, 100, 100.0]]
    return Calibration(
        anchors=[[8, 1000], [64, 1000]], chunks=chunks, constant=False, slot_bytes=0.0,
        raw_element_bytes=50, sample_bytes=50, stream_elements=None, seconds=0.0,
        anchor_spread=0.0, segment_starts=segment_starts,
    )  # fmt: skip


def test_past_the_sample_the_stream_is_like_the_last_input():
    mean, relative = _calibration([0, 1000]).per_element(10_000)
    # the sampled 1,200 at their mean (25), the other 8,800 at the last input's 100
    assert mean == pytest.approx((25 * 1200 + 100 * 8800) / 10_000)
    assert relative < 0.01  # each input's chunks agree: no spread, no trend
    within, _ = _calibration([0, 1000]).per_element(1200)
    assert within == pytest.approx(25)  # inside the sample: what was sampled


def test_one_stream_keeps_the_whole_samples_mean_and_reads_the_step_as_spread():
    mean, relative = _calibration([0]).per_element(10_000)
    assert mean == pytest.approx(25)
    assert relative > 0.5
