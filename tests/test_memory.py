"""The host-RAM row's parts: the C allocator's count, and the row for each kind of buffer."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest


def test_allocated_bytes_counts_a_held_array_and_its_release():
    from dlckpt.estimate.memory import allocated_bytes

    before = allocated_bytes()
    if before is None:
        pytest.skip("no glibc mallinfo2 here: the row falls back to tensor bytes")
    held = np.ones(32 * 1024 * 1024, np.uint8)  # NumPy's data comes from malloc
    during = allocated_bytes()
    del held
    after = allocated_bytes()
    assert during is not None and after is not None
    # within 10%: other threads of this worker may allocate or free meanwhile
    assert during - before >= 0.9 * 32 * 1024 * 1024
    assert during - after >= 0.9 * 32 * 1024 * 1024


def _calibration(**fields):  # type: ignore[no-untyped-def]
    from dlckpt.estimate.model import Calibration

    base = Calibration(
        anchors=[[8, 10_000], [64, 40_000]], chunks=[[0, 64, 500.0]], constant=False,
        slot_bytes=100.0, raw_element_bytes=400, sample_bytes=400, stream_elements=None,
        seconds=1.0, anchor_spread=0.0, memory_element_bytes=600, tensors_per_element=3,
    )  # fmt: skip
    return dataclasses.replace(base, **fields)


def test_ram_row_counts_the_allocator_bytes_and_the_saves_working_memory():
    from dlckpt.estimate.memory import SAVE_WORKING_BYTES_PER_SLOT, save_working_bytes

    per_element = 600 + save_working_bytes(3)
    assert _calibration().ram_bytes_for(1000) == 1000 * per_element
    # Without the allocator's count (no glibc), the tensor bytes stand in for it.
    assert _calibration(memory_element_bytes=0).ram_per_element == 400 + save_working_bytes(3)
    # An in-memory cache() before the shuffle keeps a second copy of every element.
    assert _calibration(extra_per_element=300.0).ram_bytes_for(1000) == 2000 * per_element
    # A stream of 700 elements leaves 300 empty slots in a 1,000-element buffer.
    short = _calibration(stream_elements=700).ram_bytes_for(1000)
    assert short == 700 * per_element + 300 * SAVE_WORKING_BYTES_PER_SLOT
    # No shuffle buffer (the checkpoint is constant): the buffer costs nothing.
    assert _calibration(constant=True).ram_bytes_for(10**9) == 0


def test_string_elements_are_counted_as_the_pipeline_made_them_too():
    """Only a string's bytes in memory depend on the op that grew it: a scalar, a vector."""
    import tensorflow as tf

    from dlckpt.estimate.calibrate import _holds_strings

    assert _holds_strings([{"png": tf.constant(b"\x89PNG"), "i": tf.constant(1)}])
    assert _holds_strings([(tf.constant(["a", "bc"]), tf.zeros([2]))])
    assert not _holds_strings([{"image": tf.zeros([4, 4, 3], tf.uint8), "i": tf.constant(1)}])
    assert not _holds_strings([])
