"""Checkpoint-size estimates: the README's formula and the size of one sample."""

from __future__ import annotations

from typing import Any

import numpy as np

from _roundtrip import _flatten


def sample_bytes_of_batch(batch: Any) -> tuple[int, int]:
    """(bytes of one batch, samples in it): strings count their length, tensors their buffer."""
    leaves = _flatten(batch)
    total = 0
    samples = 1
    for tensor in leaves.values():
        array = np.asarray(tensor.numpy() if hasattr(tensor, "numpy") else tensor)
        if array.dtype == object:
            total += sum(len(bytes(item)) for item in array.reshape(-1))
        else:
            total += array.nbytes
    first = next(iter(leaves.values()), None)
    if first is not None and len(getattr(first, "shape", ())) > 0:
        samples = int(first.shape[0])
    return total, max(samples, 1)


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
