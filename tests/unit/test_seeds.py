"""pipeline.seeds: the seeds of two builds held to each other (pure; no TensorFlow)."""

from __future__ import annotations

from omegaconf import OmegaConf

from dlckpt.pipeline.seeds import config_key, differing, differing_constants, unseeded


def test_the_same_seeds_differ_nowhere_and_the_first_difference_is_named():
    here = [("Shuffle", 87654321, 5), ("Random", 0, 0)]
    assert differing(here, list(here)) is None
    assert differing(here, [("Shuffle", 87654321, 6), ("Random", 1, 2)]) == (
        "Shuffle: seeds (87654321, 5) here, (87654321, 6) in the restore process"
    )
    assert differing(here, here[:1]) == "2 random draws here, 1 there"


def test_only_draws_with_both_seeds_zero_pick_their_own():
    assert unseeded([("Shuffle", 0, 0), ("Shuffle", 0, 7), ("Random", 1234, 0)]) == ["Shuffle"]


def test_a_config_is_one_key_whatever_its_buffer_and_form():
    """The estimator builds at other buffers first; the first of those builds counts."""
    plain = {"_target_": "m.make", "shuffle_buffer_size": 100, "seed": 7}
    node = OmegaConf.create({**plain, "shuffle_buffer_size": 8})
    assert config_key(plain) == config_key(node)
    assert config_key(plain) != config_key({**plain, "seed": 8})
    assert plain["shuffle_buffer_size"] == 100  # the caller's mapping is left as it was


def test_constants_are_compared_in_order_and_the_odd_one_is_named():
    here = [("TensorSliceDataset's constant int32[3] [2, 0, 1]", "aa"), ("Batch's 4", "bb")]
    assert differing_constants(here, list(here)) is None
    assert differing_constants(here, list(reversed(here))) == (
        "the same constants in another order: TensorSliceDataset's constant int32[3] [2, 0, 1] "
        "here, Batch's 4 in its place in the restore process"
    )  # per-file datasets concatenated in another order (constants_in keeps graph order)
    there = [("TensorSliceDataset's constant int32[3] [1, 2, 0]", "cc"), ("Batch's 4", "bb")]
    assert differing_constants(here, there) == (
        "TensorSliceDataset's constant int32[3] [2, 0, 1] here, "
        "TensorSliceDataset's constant int32[3] [1, 2, 0] in the restore process"
    )
    assert differing_constants(here, here[1:]) == (
        "TensorSliceDataset's constant int32[3] [2, 0, 1] here, not in the restore process"
    )
    twice = [("Batch's 4", "bb"), ("Batch's 4", "bb")]
    assert differing_constants(here[1:], twice) == "Batch's 4 in the restore process, not here"
