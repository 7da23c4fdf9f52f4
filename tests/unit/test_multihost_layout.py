"""Pure parts of multi-host: process numbering, shard arguments, fingerprints, overlaps."""

from __future__ import annotations

import numpy as np

from dlckpt.multihost.layout import (
    Process,
    element_fingerprints,
    overlaps,
    processes,
    takes_shard_arguments,
    with_shard,
)
from dlckpt.multihost.run import Job, refuse_a_new_process_count


def test_processes_are_numbered_host_major_as_launchers_number_ranks():
    found = processes(hosts=2, per_host=3)
    assert [(p.index, p.host) for p in found] == [(0, 0), (1, 0), (2, 0), (3, 1), (4, 1), (5, 1)]
    assert {p.count for p in found} == {6}
    assert found[4].name == "process_4-of-6" and found[4].label() == "process 4 (host 1)"
    assert found[4].env() == {"DLCKPT_PROCESS_INDEX": "4", "DLCKPT_PROCESS_COUNT": "6"}


def _sharded(*, shuffle_buffer_size, process_index=0, process_count=1): ...
def _unsharded(*, shuffle_buffer_size): ...
def _open(**kwargs): ...
def _half(*, shuffle_buffer_size, process_index=0): ...


def test_the_shard_is_given_only_to_a_builder_that_takes_it():
    process = Process(3, 4, 1)
    node = {"_target_": "m.f", "shuffle_buffer_size": 8, "process_index": 0}
    assert with_shard(node, process, _sharded) == {**node, "process_index": 3, "process_count": 4}
    assert with_shard(node, process, _open)["process_count"] == 4  # **kwargs takes it
    assert with_shard(node, process, _unsharded) == node
    assert not takes_shard_arguments(_half)  # both or neither: half a shard is a wrong one
    assert not takes_shard_arguments(None)


def test_fingerprints_are_per_element_and_leave_out_leaves_of_another_length():
    batch = [
        ("image", np.arange(24, dtype=np.uint8).reshape(4, 2, 3)),
        ("label", np.array([7, 8, 7, 9])),
        ("flat_values", np.arange(10)),  # a ragged tensor's values: not per element
        ("text", np.array([b"a", b"b", b"a", b"c"], dtype=object)),
    ]
    prints = element_fingerprints(batch)
    assert len(prints) == 4 and len(set(prints)) == 4
    same = [("image", batch[0][1][[0, 0]]), ("label", np.array([7, 7]))]
    same += [("text", np.array([b"a", b"a"], dtype=object))]
    first, again = element_fingerprints(same)
    assert first == again == prints[0]  # the same element, the same print
    assert element_fingerprints([("scalar", np.array(5))]) == []


def test_overlaps_name_each_pair_that_shares_elements():
    found = overlaps({0: ["a", "b", "c"], 1: ["c", "d"], 2: ["e"]})
    assert [(o.first, o.second, o.shared, o.of) for o in found] == [(0, 1, 1, 2)]
    assert found[0].line() == "processes 0 and 1 read 1 of the same 2 elements"
    assert overlaps({0: ["a"], 1: ["b"]}) == []


def test_a_restore_with_another_count_is_refused_and_the_same_count_is_not():
    job = Job("small", None, [], hosts=2, per_host=2, restore_processes=3, keep=False,
              timeout_seconds=1)  # fmt: skip
    line = refuse_a_new_process_count(job)
    assert line is not None
    assert line.startswith("CANNOT RESUME WITH A DIFFERENT PROCESS COUNT: the job writes 4 ")
    assert "would restore them with 3" in line and "Keep 4 processes" in line
    job.restore_processes = 4
    assert refuse_a_new_process_count(job) is None
