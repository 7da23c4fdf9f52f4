"""Where each process's checkpoint goes, how it learns its shard, and what the shards share.

Multi-host jobs save one iterator per process under a shared prefix (Grain's
`process_{i}-of-{n}`, MaxText's `iter/process_{i}-of-{n}`); here each process's checkpoint
is `<run prefix>/process_{i}-of-{n}/iterator`. A process learns its shard as the builder's
`process_index` / `process_count` keyword arguments when it takes them, and always from
DLCKPT_PROCESS_INDEX / DLCKPT_PROCESS_COUNT (for `${oc.env:DLCKPT_PROCESS_INDEX}` in a config).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

INDEX_VARIABLE = "DLCKPT_PROCESS_INDEX"
COUNT_VARIABLE = "DLCKPT_PROCESS_COUNT"
SHARD_ARGUMENTS = ("process_index", "process_count")


@dataclass(frozen=True)
class Process:
    """Process `index` of `count`, on host `host` (processes of a host share its temp folder)."""

    index: int
    count: int
    host: int

    @property
    def name(self) -> str:
        return f"process_{self.index}-of-{self.count}"

    def label(self) -> str:
        return f"process {self.index} (host {self.host})"

    def env(self) -> dict[str, str]:
        return {INDEX_VARIABLE: str(self.index), COUNT_VARIABLE: str(self.count)}


def processes(hosts: int, per_host: int) -> list[Process]:
    """Every (host, process) of a job, numbered as launchers number ranks: host-major."""
    count = hosts * per_host
    return [Process(h * per_host + p, count, h) for h in range(hosts) for p in range(per_host)]


def takes_shard_arguments(target: Any) -> bool:
    """True when the builder `target` (a callable) accepts process_index and process_count."""
    try:
        parameters = inspect.signature(target).parameters
    except (TypeError, ValueError):
        return False
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return True
    return all(name in parameters for name in SHARD_ARGUMENTS)


def with_shard(dataloader_cfg: Mapping[str, Any], process: Process, target: Any) -> dict[str, Any]:
    """The dataloader node for `process`: its shard as keyword arguments when the builder
    takes them (values the config already sets for them are replaced)."""
    node = dict(dataloader_cfg)
    if takes_shard_arguments(target):
        node.update(process_index=process.index, process_count=process.count)
    return node


def element_fingerprints(leaves: list[tuple[str, Any]]) -> list[str]:
    """One fingerprint per element of a batch, from `pipeline.tensors.element_leaves` of it
    (key, numpy array): the sha256 of every leaf's row; leaves whose leading dimension is
    not the batch's (a ragged tensor's flat values) are left out. One string per row."""
    batched = [(key, array) for key, array in leaves if array.ndim >= 1]
    if not batched:
        return []
    rows = min(int(array.shape[0]) for _, array in batched)
    fingerprints = []
    for row in range(rows):
        sha = hashlib.sha256()
        for key, array in batched:
            if array.shape[0] == rows:
                sha.update(key.encode() + b"\0" + _row_bytes(array[row]))
        fingerprints.append(sha.hexdigest()[:20])
    return fingerprints


def _row_bytes(item: Any) -> bytes:
    import numpy as np

    array = np.asarray(item)
    if array.dtype == object:  # strings: length-prefixed, as the batch digests are
        data = b"".join(len(bytes(x)).to_bytes(8, "little") + bytes(x) for x in array.reshape(-1))
    else:
        data = np.ascontiguousarray(array).tobytes()
    return f"{array.dtype} {list(array.shape)}".encode() + data


@dataclass
class Overlap:
    first: int
    second: int
    shared: int  # elements both read in their compared windows
    of: int  # elements the smaller window holds

    def line(self) -> str:
        return (
            f"processes {self.first} and {self.second} read {self.shared:,} of the same "
            f"{self.of:,} elements"
        )


def overlaps(fingerprints: Mapping[int, list[str]]) -> list[Overlap]:
    """Pairs of processes whose windows share elements: every host reading the same data
    (a pipeline that does not shard) shows here. Pairs with nothing shared are left out."""
    found = []
    indices = sorted(fingerprints)
    for position, first in enumerate(indices):
        for second in indices[position + 1 :]:
            a, b = set(fingerprints[first]), set(fingerprints[second])
            shared = len(a & b)
            if shared:
                found.append(Overlap(first, second, shared, min(len(a), len(b))))
    return found
