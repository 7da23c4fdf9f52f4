"""Batch digests: what the round trip compares, bit for bit, between original and restore.

A digest is key path -> "dtype shape sha256[:16]" of the exact bytes, so batches compare
without holding them, and a digest stream crosses a process boundary as JSON.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlckpt.pipeline.tensors import element_leaves, leading_dimension

Digest = dict[str, str]  # key path -> "dtype shape sha256"


@dataclass
class Mismatch:
    batch: int
    key: str
    expected: str
    actual: str

    def describe(self) -> str:
        return (
            f"batch {self.batch}, key {self.key}: expected {self.expected}, restored {self.actual}"
        )


def digest_element(element: Any) -> Digest:
    """Key path -> dtype, shape and sha256 of the exact bytes (strings length-prefixed).

    Composite tensors are digested by their components (see pipeline.tensors.element_leaves), so
    ragged and sparse values compare by value, and a change of structure is a mismatch.
    """
    digests = {}
    for key, array in element_leaves(element):
        sha = hashlib.sha256()
        if array.dtype == object:
            for item in array.reshape(-1):
                item_bytes = bytes(item)
                sha.update(len(item_bytes).to_bytes(8, "little") + item_bytes)
        else:
            sha.update(np.ascontiguousarray(array).tobytes())
        digests[key] = f"{array.dtype} {list(array.shape)} {sha.hexdigest()[:16]}"
    return digests


@dataclass
class DigestStream:
    """Digests of consecutive batches, and whether the stream ended right after them."""

    digests: list[Digest]
    elements: int  # elements in those batches (the leading dimension of each)
    ended: bool  # the iterator raised StopIteration after the last digest
    cut: bool = False  # the time budget stopped the reading before `count` batches


def take_digests(iterator: Any, count: int, deadline: float | None = None) -> DigestStream:
    """Digest up to `count` batches; stops early at the end of data or at `deadline`.

    `deadline` is a time.monotonic() value; reaching it sets `cut` (the caller says so).
    """
    stream = DigestStream([], 0, ended=False)
    while len(stream.digests) < count:
        if deadline is not None and time.monotonic() > deadline:
            stream.cut = True
            break
        try:
            batch = next(iterator)
        except StopIteration:
            stream.ended = True
            break
        stream.digests.append(digest_element(batch))
        stream.elements += leading_dimension(batch)
    return stream


def first_mismatch(expected: DigestStream, actual: DigestStream) -> Mismatch | None:
    """The first batch and key that differ, an early end, or an end where the original had none."""
    for batch, (want, got) in enumerate(zip(expected.digests, actual.digests, strict=False)):
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                return Mismatch(batch, key, want.get(key, "<missing>"), got.get(key, "<missing>"))
    if len(actual.digests) < len(expected.digests):
        return Mismatch(len(actual.digests), "<end of data>", "more batches", "end of data")
    if expected.ended and len(actual.digests) > len(expected.digests):
        return Mismatch(len(expected.digests), "<end of data>", "end of data", "another batch")
    return None


def stream_from_json(data: dict[str, Any]) -> DigestStream:
    return DigestStream(data["digests"], data["elements"], data["ended"])
