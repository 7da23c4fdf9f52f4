"""Pure parts of multi-host: process numbering, shard arguments, fingerprints, overlaps."""

from __future__ import annotations

import numpy as np

from dlckpt.multihost.layout import (
    WHOLE,
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
    assert set(prints) == {WHOLE, "image", "label", "text"}
    assert all(len(rows) == 4 for rows in prints.values())
    assert len(set(prints[WHOLE])) == 4 and len(set(prints["label"])) == 3
    same = [("image", batch[0][1][[0, 0]]), ("label", np.array([7, 7]))]
    same += [("text", np.array([b"a", b"a"], dtype=object))]
    first, again = element_fingerprints(same)[WHOLE]
    assert first == again == prints[WHOLE][0]  # the same element, the same print


def test_an_unbatched_element_of_scalars_is_one_element():
    prints = element_fingerprints([("id", np.array(5)), ("x", np.array(1.5))])
    assert len(prints[WHOLE]) == 1 and len(prints["id"]) == 1
    assert element_fingerprints([]) == {}


def _prints(ids: list[int], tag: int) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for i in ids:
        leaves = [("id", np.array([i])), ("tag", np.array([tag]))]
        for key, rows in element_fingerprints(leaves).items():
            found.setdefault(key, []).extend(rows)
    return found


def test_overlaps_name_each_pair_that_shares_elements_even_behind_a_per_process_tag():
    # The same ids on processes 0 and 1, each with its own constant tag: whole elements
    # differ, the identifying leaf does not. Process 2 reads other ids.
    first, second = _prints(list(range(10)), 0), _prints(list(range(5, 15)), 1)
    found = overlaps({0: first, 1: second, 2: _prints(list(range(20, 30)), 2)})
    assert [(o.first, o.second, o.shared, o.of, o.key) for o in found] == [(0, 1, 5, 10, "id")]
    assert found[0].line() == "processes 0 and 1 read 5 of the same 10 elements (by 'id')"
    # Different ids, one shared constant tag: the tag does not identify elements.
    assert overlaps({0: _prints(list(range(10)), 0), 1: _prints(list(range(10, 20)), 0)}) == []
    # A leaf repeated within a process (a label) does not identify elements: no overlap.
    labels = {0: {WHOLE: ["a", "b"], "label": ["x", "x"]}, 1: {WHOLE: ["c"], "label": ["x"]}}
    assert overlaps(labels) == []


def test_a_restore_with_another_count_is_refused_and_the_same_count_is_not():
    job = Job("small", None, [], hosts=2, per_host=2, restore_processes=3, keep=False,
              timeout_seconds=1)  # fmt: skip
    line = refuse_a_new_process_count(job)
    assert line is not None
    assert line.startswith("CANNOT RESUME WITH A DIFFERENT PROCESS COUNT: the job writes 4 ")
    assert "would restore them with 3" in line and "Keep 4 processes" in line
    job.restore_processes = 4
    assert refuse_a_new_process_count(job) is None


def test_processes_whose_windows_differ_in_length_are_called_uneven():
    from dlckpt.multihost.run import Outcome, _uneven_windows

    job = Job("x", None, [], hosts=1, per_host=3, restore_processes=None, keep=False,
              timeout_seconds=1)  # fmt: skip
    outcome = Outcome()
    for index, batches in [(0, 35), (1, 35), (2, 17)]:
        outcome.results[index] = {"verification": {"batches_compared": batches}}
    line = _uneven_windows(job, outcome)
    assert line is not None and line.startswith(
        "⚠ UNEVEN SHARDS: process 2's data ended after 17 batches compared, its peers' after "
        "up to 35"
    )
    outcome.results[2]["verification"]["batches_compared"] = 35
    assert _uneven_windows(job, outcome) is None
