"""The round trip itself: save, restore in a new process, compare bit for bit."""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import TESTS_DIR
from omegaconf import OmegaConf

from dlckpt.config import Settings, load_config, with_buffer_size
from dlckpt.roundtrip.digest import DigestStream, digest_element, first_mismatch
from dlckpt.roundtrip.scenario import run_round_trip
from dlckpt.storage.local import LocalDestination


@pytest.fixture(autouse=True)
def _user_pipelines_importable(monkeypatch: pytest.MonkeyPatch):
    # The restore runs in a new process: the user's module must be on its PYTHONPATH.
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR / "pipelines"))


def _user_cfg(target: str):
    return OmegaConf.merge(
        OmegaConf.structured(Settings),
        {
            "dataloader": {"_target_": f"user_pipelines.{target}", "shuffle_buffer_size": 10},
            "roundtrip": {"batches_before_save": 2, "batches_to_compare": 3},
        },
    )


def test_small_preset_round_trip_through_a_local_folder(tmp_path: Path):
    theirs = tmp_path / "their_file.txt"
    theirs.write_text("not ours")
    cfg = with_buffer_size(load_config("small"), 16)
    lines: list[str] = []
    outcome = run_round_trip(
        cfg,
        scratch_root=tmp_path,
        destination=LocalDestination(tmp_path),
        run_prefix="dlckpt-test-run",
        keep=False,
        say=lines.append,
    )
    assert outcome.failure is None
    # The window covers the 16 buffered elements (4 batches of 4) plus prefetch and map
    # buffers, then 10 batches more: never only the 5 the old default compared.
    assert outcome.batches_compared == outcome.window_batches >= 16 // 4 + 10
    assert outcome.elements_compared == 4 * outcome.batches_compared
    assert outcome.window_covers_buffers
    assert 0 < outcome.fresh_elements_compared < outcome.elements_compared
    assert outcome.checkpoint_bytes > 16 * 32 * 32 * 3  # at least the buffered frames
    assert any("match the original bit for bit" in line for line in lines)
    # After a pass only the run's own prefix and scratch are gone; the user's file stays.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["their_file.txt"]
    assert theirs.read_text() == "not ours"


def test_stateful_augmentation_that_saves_but_does_not_resume_names_the_key():
    outcome = run_round_trip(
        _user_cfg("stateful_augmentation_dataset"),
        scratch_root=None,
        destination=None,
        run_prefix="dlckpt-test-run",
        keep=False,
        say=lambda _: None,
    )
    assert outcome.first_mismatch is not None
    assert outcome.first_mismatch["key"] == "image"
    assert "DOES NOT RESUME EXACTLY" in outcome.failure
    assert f"batch {outcome.first_mismatch['batch']}, key image" in outcome.failure


@pytest.mark.parametrize(
    ("target", "op", "advice"),
    [
        ("unseeded_random_dataset", "RandomUniform", "tf.random.stateless_"),
        ("generator_dataset", "PyFunc", "Dataset.from_generator"),
    ],
)
def test_unsaveable_pipeline_is_a_failed_test_naming_the_op(target, op, advice):
    outcome = run_round_trip(
        _user_cfg(target),
        scratch_root=None,
        destination=None,
        run_prefix="x",
        keep=False,
        say=lambda _: None,
    )
    assert outcome.failure.startswith("CHECKPOINT CANNOT BE SAVED")
    assert f"op {op} is stateful" in outcome.failure
    assert advice in outcome.failure


def test_digests_see_every_byte_dtype_and_shape():
    base = {"a": {"b": np.zeros((2, 3), np.uint8)}, "s": np.array([b"x", b"yz"], dtype=object)}
    same = {"a": {"b": np.zeros((2, 3), np.uint8)}, "s": np.array([b"x", b"yz"], dtype=object)}
    assert digest_element(base) == digest_element(same)
    flipped = {"a": {"b": np.zeros((2, 3), np.uint8)}, "s": np.array([b"xy", b"z"], dtype=object)}
    assert digest_element(base)["s"] != digest_element(flipped)["s"]
    reshaped = {"a": {"b": np.zeros((3, 2), np.uint8)}, "s": base["s"]}
    assert digest_element(base)["a/b"] != digest_element(reshaped)["a/b"]
    one_bit = {"a": {"b": np.zeros((2, 3), np.uint8)}, "s": base["s"]}
    one_bit["a"]["b"][1, 2] = 1

    def stream(*elements, ended=False):
        return DigestStream([digest_element(e) for e in elements], len(elements), ended)

    mismatch = first_mismatch(stream(base, base), stream(base, one_bit))
    assert (mismatch.batch, mismatch.key) == (1, "a/b")
    assert first_mismatch(stream(base), stream(same)) is None
    # An original that ended must end after the restore too, and the other way round.
    assert first_mismatch(stream(base, ended=True), stream(base, same)).key == "<end of data>"
    assert first_mismatch(stream(base, same), stream(base, ended=True)).key == "<end of data>"
    assert first_mismatch(stream(base, ended=True), stream(same, ended=True)) is None


def test_reference_pipeline_is_deterministic_and_photo_like():
    from dlckpt.pipeline.robot import build_robot_dataset

    def first_batch():
        dataset = build_robot_dataset(
            shuffle_buffer_size=8, image_size=32, wrist_image_size=16, window_size=2
        )
        return next(iter(dataset))

    a, b = first_batch(), first_batch()
    assert digest_element(a) == digest_element(b)
    frames = a["observation"]["image_primary"].numpy()
    assert frames.shape == (8, 2, 32, 32, 3)
    assert a["observation"]["image_wrist"].shape == (8, 2, 16, 16, 3)
    assert a["task"]["language_instruction"].dtype.name == "string"
    # Neither constant (compresses to almost nothing) nor uniform noise (does not compress).
    ratio = len(zlib.compress(frames.tobytes(), 6)) / frames.nbytes
    assert 0.3 < ratio < 0.95, ratio
    assert frames.std() > 10
