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


WHOLE = "<element>"  # the key of the whole element's fingerprint
# A leaf identifies elements when at least this share of its rows differ within a process
# (an image, an id); a label, an instruction or a per-process tag does not.
IDENTIFYING_SHARE = 0.9
IDENTIFYING_ROWS = 8  # fewer rows cannot show that a leaf repeats


def element_fingerprints(leaves: list[tuple[str, Any]]) -> dict[str, list[str]]:
    """Fingerprints of a batch's elements, from `pipeline.tensors.element_leaves` of it
    (key, numpy array): per leaf, the sha256 of each row, and under WHOLE, of all leaves'
    rows together. Leaves whose leading dimension is not the batch's (a ragged tensor's
    flat values) are left out; a batch of scalars (an unbatched pipeline) is one element."""
    batched = [(key, array) for key, array in leaves if array.ndim >= 1]
    rows = min((int(array.shape[0]) for _, array in batched), default=0)
    if rows == 0:  # no leading dimension: the element itself
        batched, rows = [(key, array[None]) for key, array in leaves], 1 if leaves else 0
    prints: dict[str, list[str]] = {WHOLE: []}
    for row in range(rows):
        whole = hashlib.sha256()
        for key, array in batched:
            if array.shape[0] != rows:
                continue
            data = key.encode() + b"\0" + _row_bytes(array[row])
            whole.update(data)
            prints.setdefault(key, []).append(hashlib.sha256(data).hexdigest()[:20])
        prints[WHOLE].append(whole.hexdigest()[:20])
    return prints if rows else {}


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
    key: str  # the leaf that shows it (WHOLE: the whole element)

    def line(self) -> str:
        by = "" if self.key == WHOLE else f" (by {self.key!r})"
        return (
            f"processes {self.first} and {self.second} read {self.shared:,} of the same "
            f"{self.of:,} elements{by}"
        )


def identifying_keys(prints: Mapping[str, list[str]]) -> set[str]:
    """The leaves whose rows tell one element from another in this process (WHOLE always)."""
    return {
        key
        for key, rows in prints.items()
        if rows
        and (
            key == WHOLE
            or (len(rows) >= IDENTIFYING_ROWS and len(set(rows)) >= IDENTIFYING_SHARE * len(rows))
        )
    }


def overlaps(fingerprints: Mapping[int, Mapping[str, list[str]]]) -> list[Overlap]:
    """Pairs of processes whose windows share elements: every host reading the same data
    (a pipeline that does not shard) shows here. An element is matched whole, or by any
    leaf that identifies elements in both processes, so a per-process tag or augmentation
    on another leaf does not hide the same data. Pairs with nothing shared are left out."""
    found = []
    indices = sorted(fingerprints)
    for position, first in enumerate(indices):
        for second in indices[position + 1 :]:
            a, b = fingerprints[first], fingerprints[second]
            best = None
            for key in sorted(identifying_keys(a) & identifying_keys(b)):
                rows_a, rows_b = set(a[key]), set(b[key])
                shared = len(rows_a & rows_b)
                if shared and (best is None or shared > best.shared):
                    best = Overlap(first, second, shared, min(len(rows_a), len(rows_b)), key)
            if best is not None:
                found.append(best)
    return found
