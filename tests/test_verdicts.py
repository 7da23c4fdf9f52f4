"""Pipelines that do not resume must fail, whatever the batch size and buffer.

Each pipeline in dlckpt/bench/pipelines/resume_pipelines.py diverges upstream of its shuffle
buffer, so the first batches after a restore (served from the restored buffer) match: only
a window that reaches elements drawn fresh from upstream catches it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import TESTS_DIR, round_trip_in_process
from omegaconf import OmegaConf

from dlckpt.config import Settings


@pytest.fixture(autouse=True)
def _test_pipelines_importable(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("PYTHONPATH", str(TESTS_DIR / "pipelines"))


def _round_trip(target: str, buffer: int, batch: int, tmp_path: Path, lines: list[str]):
    dataloader = {
        "_target_": f"dlckpt.bench.pipelines.resume_pipelines.{target}",
        "shuffle_buffer_size": buffer,
        "batch_size": batch,
    }
    return round_trip_in_process(dataloader, tmp_path, lines)


# (pipeline, buffer, batch size, what the ✗ line names as the likely cause)
NOT_RESUMING = [
    ("nondeterministic_map", 10, 1, "ParallelMap(lambda): runs with deterministic=False"),
    (
        "nondeterministic_interleave",
        100,
        8,
        "ParallelInterleave(lambda): runs with deterministic=False",
    ),
    ("nondeterministic_options", 1000, 32, "options.deterministic=False"),
    ("unseeded_random_ignore", 1000, 4, "Map(lambda) uses RandomUniform"),
    ("unseeded_random_warn", 50, 16, "external-state policy WARN"),
    ("reshuffled_epochs_no_seed", 10, 2, "without a seed, then repeat"),
    ("fixed_order_epochs_no_seed", 10, 2, "reshuffle_each_iteration=False) without a seed"),
]


@pytest.mark.slow
@pytest.mark.parametrize(("target", "buffer", "batch", "cause"), NOT_RESUMING)
def test_a_pipeline_diverging_upstream_of_the_shuffle_fails(
    target: str, buffer: int, batch: int, cause: str, tmp_path: Path
):
    lines: list[str] = []
    outcome = _round_trip(target, buffer, batch, tmp_path, lines)
    assert outcome.failure is not None, lines
    assert outcome.failure.startswith("CHECKPOINT DOES NOT RESUME EXACTLY (saved copy): batch ")
    assert cause in outcome.failure.split("; likely cause: ")[1]
    # The risk was named before the run, and the mismatch lies inside the planned window.
    assert any(line.startswith("⚠ Risk to an exact resume:") and cause in line for line in lines)
    assert outcome.first_mismatch["batch"] < outcome.window_batches
    assert list(tmp_path.iterdir()) == []  # scratch removed


@pytest.mark.parametrize(
    ("target", "where"),
    [("nondeterministic_one_call_at_a_time", "ParallelMap(lambda): runs"),
     ("nondeterministic_inside_flat_map", "ParallelMap(lambda) inside FlatMap(lambda): runs")],
    ids=["main-line", "inside-flat-map"],
)  # fmt: skip
def test_a_match_despite_deterministic_false_cannot_pass(tmp_path: Path, target, where):
    """Thread timing shows only when it happens to: a nondeterministic interleave matched 52
    batches and diverged at batch 350 in a new user's check, and the run passed with a
    warning. A match is now "cannot verify", naming the op and its fix (exit 1). Inside a
    function (a flat_map's, an interleave's) the setting was not read at all: a new user's
    pipeline passed and diverged at batch 175."""
    lines: list[str] = []
    outcome = _round_trip(target, 10, 4, tmp_path, lines)
    assert outcome.failure is not None and outcome.failure.startswith(
        "CANNOT VERIFY AN EXACT RESUME: the "
    ), outcome.failure
    assert f"{where} with deterministic=False" in outcome.failure
    assert "pass deterministic=True" in outcome.failure
    assert list(tmp_path.iterdir()) == []  # scratch removed


def test_deterministic_false_in_a_load_reader_is_a_risk(tmp_path: Path):
    """Dataset.load's reader_func runs in a function: an interleave there with
    deterministic=False (a common way to speed up reading a snapshot) diverged at batch
    958 in a new user's check while the tool found no risk."""
    import tensorflow as tf

    from dlckpt.pipeline.risks import analyze

    path = str(tmp_path / "saved")
    tf.data.Dataset.range(40).save(path, shard_func=lambda x: x % 4)

    def reader(deterministic: bool):
        return lambda shards: shards.interleave(
            lambda shard: shard, cycle_length=4, num_parallel_calls=4, deterministic=deterministic
        )

    for deterministic, risks in [(False, 1), (True, 0)]:
        loaded = tf.data.Dataset.load(path, reader_func=reader(deterministic))
        found = [r for r in analyze(loaded.batch(4)).risks if r.kind == "deterministic"]
        assert len(found) == risks, found
        assert all("inside Load(" in r.where for r in found), found


@pytest.mark.slow
def test_a_resuming_pipeline_passes_and_lists_the_risks_it_checked(tmp_path: Path):
    lines: list[str] = []
    outcome = _round_trip("unseeded_shuffle", 64, 4, tmp_path, lines)
    assert outcome.failure is None, outcome.failure
    assert outcome.risks == [] and outcome.window_covers_buffers
    assert outcome.batches_compared >= 64 // 4 + 10
    assert any(
        line.startswith("✓ No risk to an exact resume found (deterministic") for line in lines
    )


def test_the_window_covers_every_buffer_and_the_epoch_boundary():
    from tensorflow import data

    from dlckpt.bench.pipelines.resume_pipelines import reshuffled_epochs_no_seed
    from dlckpt.pipeline.risks import analyze
    from dlckpt.roundtrip.window import expected_fresh_elements, plan_window

    settings = OmegaConf.structured(Settings).roundtrip
    # shuffle 100, map with 3 parallel calls before it, batch 4, prefetch 5 batches
    dataset = (
        data.Dataset.range(10**6)
        .map(lambda i: i * 2, num_parallel_calls=3)
        .shuffle(100, seed=1)
        .batch(4)
        .prefetch(5)
    )
    analysis = analyze(dataset)
    assert analysis.shuffle_buffer == 100
    assert analysis.buffered_batches == pytest.approx(100 / 4 + 3 / 4 + 5)
    window = plan_window(analysis, settings)
    assert analysis.elements_per_batch == 4
    assert window.batches == 31 + max(settings.fresh_batches, settings.fresh_elements // 4)
    # 40 items in batches of 4 is 10 batches an epoch; saved after 3, the boundary is the
    # 7th compared batch, and the window goes 10 batches past it.
    epoch = plan_window(analyze(reshuffled_epochs_no_seed(shuffle_buffer_size=10)), settings)
    assert epoch.epoch_boundary_batch == 7 and epoch.batches >= 7 + settings.fresh_batches
    # Batches of 1: the fresh part is counted in elements, not only in batches.
    single = analyze(data.Dataset.range(10**6).shuffle(10, seed=1))
    assert plan_window(single, settings).batches == 10 + settings.fresh_elements
    # Fresh elements: none while the buffer's volume is drawn at first, most of a long window.
    assert expected_fresh_elements(10, 100) == 0
    assert 900 < expected_fresh_elements(1100, 100) < 1001


@pytest.mark.parametrize(
    ("setting", "value", "expected"),
    [
        ("batches_to_compare", 0, "expected an integer >= 1"),
        ("batches_before_save", -1, "expected an integer >= 0"),
        ("window_seconds", -1.5, "expected a number of seconds > 0"),
    ],
)
def test_window_settings_out_of_range_are_one_line_usage_errors(setting, value, expected):
    from dlckpt.errors import UsageError
    from dlckpt.pipeline.risks import PipelineAnalysis
    from dlckpt.roundtrip.window import plan_window

    settings = OmegaConf.merge(OmegaConf.structured(Settings), {"roundtrip": {setting: value}})
    with pytest.raises(UsageError, match=rf"^roundtrip\.{setting}={value}: {expected}$"):
        plan_window(PipelineAnalysis(), settings.roundtrip)
