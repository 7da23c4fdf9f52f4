"""Shuffles off the graph's main line: under interleave, in mixtures, under zip, inside
flat_map and Dataset.load reader functions (dlckpt/bench/pipelines/graph_pipelines.py,
which the catch-rate bench also runs).

An unseeded one draws a new order at a pass no compared window reaches, so it is named as
a risk before the run and the run cannot end in a pass; a seeded one is no risk at all.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
from pathlib import Path

import pytest
from conftest import round_trip_in_process
from omegaconf import OmegaConf

from dlckpt.bench.pipelines import graph_pipelines
from dlckpt.config import Settings
from dlckpt.pipeline.risks import analyze

# TensorFlow 2.15 (the oldest supported) has no global shuffle.
NEEDS_GLOBAL_SHUFFLE = pytest.mark.skipif(
    importlib.util.find_spec("tensorflow.python.data.experimental.ops.global_shuffle_op") is None,
    reason="this TensorFlow has no global shuffle",
)

# (builder, extra keyword arguments, where the risk is said to sit, whether no window can
# reach its next draw: under zip the epoch is known, so the window runs past it instead)
KINDS = [
    ("file_list_under_interleave", {}, "feeding ParallelInterleave(lambda) under a repeat", True),
    ("file_list_under_interleave", {"parallel": False}, "feeding Interleave(lambda) under a repeat", True),
    ("file_list_under_interleave", {"fused": True}, "feeding ParallelInterleave(lambda) under a repeat", True),
    ("mixture_of_shuffled_sources", {}, "feeding sample_from_datasets", True),
    ("mixture_of_shuffled_sources", {"choose": True}, "feeding sample_from_datasets / choose_from_datasets", True),
    ("zipped_with_a_shuffled_side", {}, "without a seed feeding zip, then repeat", False),
    ("shuffle_inside_flat_map", {}, "inside FlatMap(lambda), built anew at every call", True),
    ("loaded_with_a_shuffling_reader", {"path": None}, "inside Load(", True),
    # Random draws that are not a Shuffle op, and datasets read anew without a Repeat op.
    ("mixture_drawn_without_a_seed", {}, "sample_from_datasets without a seed under a repeat", True),
    ("random_numbers_zipped_in", {}, "Dataset.random or sample_from_datasets without a seed", True),
    ("captured_by_flat_map", {}, "captured by FlatMap(lambda), read anew at every call", True),
    ("concatenated_with_itself", {}, "in a later input of concatenate, started only when", True),
    pytest.param(
        "global_shuffle_repeated", {}, "GlobalShuffle without a seed feeding Batch under a repeat",
        True, marks=NEEDS_GLOBAL_SHUFFLE,
    ),
]  # fmt: skip


def _build(name: str, extra: dict, seed: int | None, tmp_path: Path):
    kwargs = {**extra, "seed": seed, "shuffle_buffer_size": 16}
    if "path" in kwargs:
        kwargs["path"] = str(tmp_path / "saved")
    return getattr(graph_pipelines, name)(**kwargs)


@pytest.mark.parametrize(("name", "extra", "where", "unverifiable"), KINDS)
def test_an_unseeded_shuffle_anywhere_in_the_graph_is_a_risk(
    name, extra, where, unverifiable, tmp_path
):
    risks = [
        r for r in analyze(_build(name, extra, None, tmp_path)).risks if r.kind != "stateful_op"
    ]
    assert risks, "no risk named"
    assert all(r.kind == "unseeded_shuffle" and r.unverifiable == unverifiable for r in risks)
    assert any(where in r.where for r in risks), [r.where for r in risks]
    assert all("seed" in r.fix for r in risks)


@pytest.mark.parametrize(("name", "extra", "where", "unverifiable"), KINDS)
def test_the_same_shuffle_with_a_seed_draws_no_new_order(
    name, extra, where, unverifiable, tmp_path
):
    """Seeded, no shuffle redraws; one built inside a flat_map / interleave function is still
    refused by TensorFlow's save (its seed generator), which the risk says with the fix that
    works. A Dataset.load reader function runs once per iterator, whose state TensorFlow
    saves: seeded, it saves and resumes exactly (a real round trip, measured on TF 2.21), so
    no risk is named."""
    risks = analyze(_build(name, extra, 5, tmp_path)).risks
    assert not [r for r in risks if r.kind == "unseeded_shuffle"]
    inside = "inside" in where and "Load(" not in where
    assert [r.where.split(" uses ")[1] for r in risks] == (["DummySeedGenerator"] if inside else [])
    assert all("shuffle outside the function" in r.fix for r in risks)


def _round_trip(target: str, seed: int | None, tmp_path: Path, lines: list[str]):
    dataloader = {
        "_target_": f"{graph_pipelines.__name__}.{target}",
        "shuffle_buffer_size": 16,
        "seed": seed,
    }
    return round_trip_in_process(dataloader, tmp_path, lines)


# What each unseeded kind ends in: the window cannot reach the next pass over the files
# ("cannot verify"); a mixture of 40-element sources reaches it and shows the mismatch, as
# does a zip whose epoch the window is planned past; a
# shuffle inside flat_map makes a seed generator TensorFlow refuses to save. Never a pass,
# and each names the unseeded shuffle's fix.
ENDINGS = [
    ("file_list_under_interleave", "CANNOT VERIFY AN EXACT RESUME: the "),
    ("mixture_of_shuffled_sources", "CHECKPOINT DOES NOT RESUME EXACTLY (saved copy): batch "),
    ("zipped_with_a_shuffled_side", "CHECKPOINT DOES NOT RESUME EXACTLY (saved copy): batch "),
    ("shuffle_inside_flat_map", "CHECKPOINT CANNOT BE SAVED: "),
]


@pytest.mark.parametrize(("target", "ending"), ENDINGS)
def test_an_unseeded_shuffle_off_the_main_line_never_passes(target, ending, tmp_path):
    lines: list[str] = []
    outcome = _round_trip(target, None, tmp_path, lines)
    assert outcome.failure is not None and outcome.failure.startswith(ending), outcome.failure
    assert "without a seed" in outcome.failure or "DummySeedGenerator" in outcome.failure
    assert "shuffle(..., seed=N)" in outcome.failure
    assert not any(line.startswith("✓ No risk") for line in lines)

    seeded: list[str] = []
    failure = _round_trip(target, 5, tmp_path, seeded).failure
    if ending.startswith("CHECKPOINT CANNOT BE SAVED"):  # seeded or not, inside a function
        assert failure is not None and "shuffle outside the function instead" in failure
    else:
        assert failure is None, seeded
        assert any(line.startswith("✓ No risk to an exact resume found") for line in seeded)
    assert list(tmp_path.iterdir()) == []  # scratch removed


# Found by a new user's check (each a false ✓ ALL TESTS PASSED before): a mixture without
# its own seed, Dataset.random, a dataset captured by flat_map, a dataset concatenated with
# itself, a global shuffle. Real round trips: unseeded, each diverges (here within the
# window, so the mismatch names the draw); seeded, each passes.
REDRAWS_WITHOUT_A_SHUFFLE_UNDER_A_REPEAT = [
    "mixture_drawn_without_a_seed",
    "random_numbers_zipped_in",
    "captured_by_flat_map",
    "concatenated_with_itself",
    pytest.param("global_shuffle_repeated", marks=NEEDS_GLOBAL_SHUFFLE),
]


@pytest.mark.parametrize("target", REDRAWS_WITHOUT_A_SHUFFLE_UNDER_A_REPEAT)
def test_other_unseeded_draws_and_rereads_never_pass(target, tmp_path):
    lines: list[str] = []
    failure = _round_trip(target, None, tmp_path, lines).failure
    assert failure is not None and failure.startswith(
        ("CHECKPOINT DOES NOT RESUME EXACTLY", "CANNOT VERIFY AN EXACT RESUME")
    ), failure
    assert "without a seed" in failure and "seed=N" in failure
    assert not any(line.startswith("✓ No risk") for line in lines)
    seeded: list[str] = []
    assert _round_trip(target, 5, tmp_path, seeded).failure is None, seeded
    assert list(tmp_path.iterdir()) == []  # scratch removed


@pytest.mark.parametrize(
    ("per_file", "named"),
    [(False, "TensorSliceDataset's constant int64[64] ["),
     (True, "the same constants in another order: RangeDataset's constant int64[] [")],
    ids=["one-list", "per-file-datasets"],
)  # fmt: skip
def test_a_file_list_ordered_at_build_time_without_a_seed_cannot_pass(tmp_path, per_file, named):
    """A file list Python shuffles while the pipeline is built is a constant of the graph,
    or the order of per-file constants: unseeded, the restore process holds another order
    and a resumed job diverges at its next file, far past the window (new users'
    pipelines passed: a list shuffled in Python or by an eager tf.random.shuffle, and
    per-file TFRecord datasets concatenated in a shuffled order). Seeded, it passes."""
    dataloader = {
        "_target_": f"{graph_pipelines.__name__}.file_list_ordered_at_build",
        "shuffle_buffer_size": 16, "per_file": per_file,
    }  # fmt: skip
    lines: list[str] = []
    failure = round_trip_in_process({**dataloader, "seed": None}, tmp_path, lines).failure
    # Past the window: cannot verify; per-file datasets of 100 elements diverge inside it.
    endings = ("CANNOT VERIFY AN EXACT RESUME", "CHECKPOINT DOES NOT RESUME EXACTLY")
    assert failure is not None and failure.startswith(endings), failure
    assert "holds other constants in two processes" in failure
    assert named in failure
    seeded: list[str] = []
    assert round_trip_in_process({**dataloader, "seed": 5}, tmp_path, seeded).failure is None
    assert list(tmp_path.iterdir()) == []  # scratch removed


def test_an_epoch_of_unknown_length_cannot_be_windowed_past():
    """rebatch (like unbatch, window, flat_map) changes how many outputs an input makes:
    the epoch's length in output batches is unknown, so no window is planned to its
    boundary and the unseeded shuffle under the repeat is unverifiable (counted before as
    a tenth of the real epoch: the window stopped short and a diverging run passed)."""
    import tensorflow as tf

    rebatched = tf.data.Dataset.range(2000).shuffle(100).repeat().batch(40).rebatch(4)
    analysis = analyze(rebatched)
    assert analysis.epoch_batches is None
    assert [r.unverifiable for r in analysis.risks if r.kind == "unseeded_shuffle"] == [True]
    batched = tf.data.Dataset.range(2000).shuffle(100).repeat().batch(4)
    assert analyze(batched).epoch_batches == 500


@pytest.mark.parametrize(("seed", "risks"), [(None, 1), (3, 0)])
def test_the_fused_shuffle_and_repeat_holds_its_own_repeat(seed, risks):
    """tf.data.experimental.shuffle_and_repeat is one op (ShuffleAndRepeatDataset) with no
    Repeat node above its shuffle: unseeded, it reshuffles at every epoch all the same (a
    new user's pipeline passed while it diverged at batch 497, its first epoch boundary),
    so it is a risk whose epoch the window is planned past; seeded, none."""
    import tensorflow as tf

    fused = tf.data.experimental.shuffle_and_repeat(100, seed=seed)
    analysis = analyze(tf.data.Dataset.range(2000).apply(fused).batch(4).prefetch(1))
    found = [r for r in analysis.risks if r.kind == "unseeded_shuffle"]
    assert [r.unverifiable for r in found] == [False] * risks
    assert analysis.epoch_batches == (500 if risks else None)
    once = tf.data.experimental.shuffle_and_repeat(100, count=1)
    assert not analyze(tf.data.Dataset.range(2000).apply(once)).risks


def test_a_window_cut_before_the_epoch_boundary_cannot_pass(tmp_path):
    """An unseeded shuffle under a repeat whose epoch (2.5 million batches) the window is
    planned past, cut by its time budget: the match is not a pass."""
    from omegaconf import OmegaConf

    from dlckpt.config import Settings
    from dlckpt.roundtrip.scenario import run_round_trip

    lines: list[str] = []
    cfg = OmegaConf.merge(
        OmegaConf.structured(Settings),
        {
            "dataloader": {
                "_target_": f"{graph_pipelines.__name__}.long_epoch_unseeded",
                "shuffle_buffer_size": 16,
            }
        },
        {"roundtrip": {"window_seconds": 2.0}},
    )
    outcome = run_round_trip(
        cfg, scratch_root=tmp_path, destination=None, run_prefix="dlckpt-verdict",
        keep=False, say=lines.append,
    )  # fmt: skip
    assert outcome.failure is not None, lines
    assert outcome.failure.startswith(
        f"CANNOT VERIFY AN EXACT RESUME: the {outcome.batches_compared:,} batches compared "
        "match, but they stop before the epoch boundary at compared batch 2,499,997 "
        "(roundtrip.window_seconds=2.0 cut the window), where shuffle("
    ), outcome.failure
    assert 0 < outcome.batches_compared < 2_499_997


def _estimate_and_real(tmp_path: Path, target: str, **dataloader):
    from bench_estimate import real_checkpoint_bytes

    from dlckpt.estimate.estimator import estimate

    cfg = OmegaConf.merge(
        OmegaConf.structured(Settings),
        {"dataloader": {"_target_": target, "shuffle_buffer_size": 1000, **dataloader}},
        {"estimate": {"cache": False}},
    )
    result = estimate(cfg, scratch_root=tmp_path, say=lambda _: None)
    buffer = 20 * max(cfg.estimate.calibration_buffer_sizes)
    return result, buffer, real_checkpoint_bytes(cfg, buffer, tmp_path)


def test_shuffles_under_zip_are_not_called_constant_and_the_estimate_covers_a_real_save(
    tmp_path,
):
    result, buffer, real = _estimate_and_real(
        tmp_path, f"{graph_pipelines.__name__}.zipped_shuffles"
    )
    assert not result.calibration.constant
    assert result.bytes_for(buffer) > 10 * result.bytes_for(8)  # it grows with the buffer
    error = result.bytes_for(buffer) / real - 1
    assert abs(error) <= result.uncertainty_for(buffer), (error, result.report())
    assert any("shuffle buffers follow shuffle_buffer_size" in note for note in result.notes)


def test_a_mixture_of_shuffled_sources_is_never_under_its_real_save(tmp_path, monkeypatch):
    """c30: sample_from_datasets of two shuffled sources, one capped by its own input
    (min(size, 500)): measured from whole-pipeline saves, it grows, and a real save at
    20x is never above the estimate's upper bound (the cap makes it an over-count)."""
    cases = Path(__file__).parent / "cases"
    monkeypatch.syspath_prepend(str(cases))
    monkeypatch.setenv("CASES_DATA", str(tmp_path / "data"))
    result, buffer, real = _estimate_and_real(tmp_path, "c30_stop_on_empty.make")
    assert not result.calibration.constant
    assert result.bytes_for(buffer) > 5 * result.bytes_for(8)
    assert real <= result.bytes_for(buffer) * (1 + result.uncertainty_for(buffer)), (
        real,
        result.report(),
    )


@pytest.mark.slow
@pytest.mark.xdist_group("two-gigabyte-graph")  # ~9 GB of RSS while TensorFlow serializes it
def test_a_graph_past_protobufs_2_gb_is_not_read_as_a_graph_without_risks():
    """A pipeline holding over 2 GB of in-memory data: TensorFlow serializes its graph as an
    empty GraphDef (it logs the protobuf limit and returns nothing), which would read as a
    pipeline with no risk at all. It is an unread graph, and a match cannot be a pass."""
    import tensorflow as tf

    from dlckpt.pipeline.risks import GraphUnreadable, unread_graph_analysis

    rows = tf.data.Dataset.from_tensors(tf.zeros([2**31 + 2**20], tf.uint8))
    with pytest.raises(GraphUnreadable, match="2 GB limit"):
        analyze(rows.shuffle(4).repeat())
    del rows
    # What the round trip plans with instead: the window it can, and a risk no window clears.
    [risk] = unread_graph_analysis("why", 100).risks
    assert risk.unverifiable and risk.kind == "unread_graph"
    assert risk.line().startswith("the pipeline's graph: could not be read (why), so a shuffle")


def test_a_load_reader_that_shuffles_with_a_seed_passes_and_without_one_cannot(tmp_path):
    """Dataset.load(reader_func=...) whose reader shuffles its shards: TensorFlow saves the
    reader's iterator, so a seed makes it resume exactly (the risk walk once said such a
    save is refused, seeded or not); without a seed the next pass draws a new order."""
    target = f"{graph_pipelines.__name__}.loaded_with_a_shuffling_reader"
    (tmp_path / "run").mkdir()
    for seed in (5, None):
        lines: list[str] = []
        dataloader = {"_target_": target, "shuffle_buffer_size": 16, "seed": seed,
                      "path": str(tmp_path / "saved")}  # fmt: skip
        failure = round_trip_in_process(dataloader, tmp_path / "run", lines).failure
        if seed is not None:
            assert failure is None, lines
            assert not any(line.startswith("⚠ Risk") for line in lines), lines
        else:
            assert failure is not None
            assert failure.startswith("CANNOT VERIFY AN EXACT RESUME: the "), failure
            assert "Shuffle without a seed inside Load(load_reader)" in failure


@pytest.fixture
def global_seed_restored():
    """TensorFlow's global seed put back after a pipeline that sets it (later tests in this
    worker would otherwise see every unseeded shuffle seeded)."""
    from tensorflow.python.eager import context

    saved = context.global_seed()
    yield
    import tensorflow as tf

    tf.random.set_seed(saved)


def test_a_global_seed_set_after_building_is_an_unseeded_shuffle(tmp_path, global_seed_restored):
    """The estimator builds the pipeline before the round trip does. The round trip's build
    starts from the random state of this process's first build (a job's single build), so
    tf.random.set_seed called after building leaves it unseeded, as in a job: it diverges at
    the next epoch, named. (Before, the round trip's build was seeded and the run passed.)"""
    from omegaconf import OmegaConf

    from dlckpt.pipeline.build import instantiate_dataset

    target = f"{graph_pipelines.__name__}.seed_set_after_building"
    dataloader = {"_target_": target, "shuffle_buffer_size": 16, "tag": str(tmp_path)}
    instantiate_dataset(OmegaConf.create({**dataloader, "shuffle_buffer_size": 8}))
    lines: list[str] = []
    failure = round_trip_in_process(dataloader, tmp_path, lines).failure
    assert failure is not None and failure.startswith("CHECKPOINT DOES NOT RESUME EXACTLY"), failure
    assert "likely cause: shuffle(reshuffle_each_iteration=True) without a seed" in failure


def test_a_seed_that_depends_on_build_order_cannot_pass(tmp_path):
    """Unseeded at the first build, seeded at later ones, by no random state the run can
    restore: the first build (a job's) is the one that counts."""
    from omegaconf import OmegaConf

    from dlckpt.pipeline.build import instantiate_dataset

    target = f"{graph_pipelines.__name__}.seeded_from_the_second_build"
    dataloader = {"_target_": target, "shuffle_buffer_size": 16, "tag": str(tmp_path)}
    instantiate_dataset(OmegaConf.create({**dataloader, "shuffle_buffer_size": 8}))
    lines: list[str] = []
    failure = round_trip_in_process(dataloader, tmp_path, lines).failure
    # 100,000 ids: the window does not reach the next epoch, where the draws differ.
    assert failure is not None and failure.startswith("CANNOT VERIFY AN EXACT RESUME: the "), (
        failure
    )
    assert "Shuffle without a seed when the pipeline is first built" in failure


@contextlib.contextmanager
def _pythonpath(folder: Path):
    """`folder` on PYTHONPATH for the restore process, then as it was."""
    saved = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(folder), saved]))
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("PYTHONPATH")
        else:
            os.environ["PYTHONPATH"] = saved


def test_a_global_seed_set_when_the_builder_is_imported_passes(tmp_path, global_seed_restored):
    """tf.random.set_seed at the builder module's import, unseeded shuffles: a job (one
    build per process) resumes exactly. The run builds it several times in one process;
    each build starts from the first build's random state, so the round trip's seeds are
    the restore process's (before, they moved on and the run failed at the next epoch)."""
    folder = tmp_path / "module"
    folder.mkdir()
    (folder / "seeded_at_import.py").write_text(
        "import tensorflow as tf\n\ntf.random.set_seed(42)\n\n\n"
        "def make(shuffle_buffer_size, tag=''):\n"
        "    ds = tf.data.Dataset.range(40).shuffle(40)\n"
        "    return ds.repeat().batch(4)\n"
    )
    from omegaconf import OmegaConf

    from dlckpt.pipeline.build import instantiate_dataset

    dataloader = {"_target_": "seeded_at_import.make", "shuffle_buffer_size": 16,
                  "tag": str(tmp_path)}  # fmt: skip
    import sys

    sys.path.insert(0, str(folder))
    try:
        for buffer in (8, 32):  # the estimator's builds, before the round trip's
            instantiate_dataset(OmegaConf.create({**dataloader, "shuffle_buffer_size": buffer}))
        lines: list[str] = []
        run = tmp_path / "run"
        run.mkdir()
        with _pythonpath(folder):
            outcome = round_trip_in_process(dataloader, run, lines)
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop("seeded_at_import", None)
    assert outcome.failure is None, lines
    assert outcome.batches_compared > 10  # past the epoch of 10 batches


def test_a_seed_drawn_at_run_time_cannot_pass(tmp_path):
    """seed=<a number drawn at build time>: seeded in each process, but not the same seeds
    in the restore process: the match within the window is not a pass."""
    target = f"{graph_pipelines.__name__}.seed_drawn_at_run_time"
    dataloader = {"_target_": target, "shuffle_buffer_size": 16, "tag": str(tmp_path)}
    lines: list[str] = []
    failure = round_trip_in_process(dataloader, tmp_path, lines).failure
    assert failure is not None, lines
    assert failure.startswith("CANNOT VERIFY AN EXACT RESUME: the "), failure
    assert "random seeds differ between two processes that build it (Shuffle: seeds (" in failure


def test_a_save_that_breaks_the_running_pipeline_is_a_failed_check(tmp_path):
    """Dataset.snapshot while it writes: the save succeeds, then the next batch raises
    InternalError in the same process. A job would fail after its first save: exit 1 with
    the cause, not exit 4 ("stopped before a verdict"), as a new user's check found."""
    target = f"{graph_pipelines.__name__}.snapshot_being_written"
    (tmp_path / "run").mkdir()
    dataloader = {"_target_": target, "shuffle_buffer_size": 16, "path": str(tmp_path / "snap")}
    lines: list[str] = []
    failure = round_trip_in_process(dataloader, tmp_path / "run", lines).failure
    assert failure is not None and failure.startswith(
        "THE RUNNING PIPELINE FAILED AFTER THE SAVE: reading on from the iterator just saved "
        "raised "
    ), (failure, lines)
    assert "Dataset.snapshot" in failure
    assert any(line.startswith("✓ Saved the iterator") for line in lines)
    assert list((tmp_path / "run").iterdir()) == []  # scratch removed


def test_builds_with_other_draws_at_other_buffers_are_not_called_moved_seeds(tmp_path):
    """A builder that adds a seeded shuffle at large buffers: the estimator's first build
    (buffer 8) has one random draw, the tested build (100) two. Seeds are held between the
    tested build and the restore process's build of the same config, so this resumes and
    passes (before: "1 random draws here, 2 there", cannot verify)."""
    from omegaconf import OmegaConf

    from dlckpt.pipeline.build import instantiate_dataset

    target = f"{graph_pipelines.__name__}.extra_draw_at_large_buffers"
    dataloader = {"_target_": target, "shuffle_buffer_size": 100, "tag": str(tmp_path)}
    instantiate_dataset(OmegaConf.create({**dataloader, "shuffle_buffer_size": 8}))
    lines: list[str] = []
    outcome = round_trip_in_process(dataloader, tmp_path, lines)
    assert outcome.failure is None, lines


def test_dataset_random_inside_a_function_saves_and_only_unseeded_is_a_risk(tmp_path):
    """TensorFlow saves a Dataset.random built inside an interleave function, seeded or not
    (TF 2.15 and 2.21): no "refuses to save" risk (a new user's check found one, with
    advice to do what the pipeline already did); seeded, it resumes; unseeded, each call
    draws anew."""
    target = "random_numbers_inside_interleave"
    seeded = analyze(_build(target, {}, 101, tmp_path)).risks
    assert seeded == []
    [risk] = analyze(_build(target, {}, None, tmp_path)).risks
    assert risk.kind == "unseeded_shuffle" and risk.unverifiable
    assert "inside Interleave(lambda), built anew at every call" in risk.where
    lines: list[str] = []
    assert _round_trip(target, 101, tmp_path, lines).failure is None, lines


def test_seeds_and_constants_follow_the_dataflow_not_the_graph_listing():
    """Two processes that build one pipeline may list its nodes and functions in other
    orders (function names carry per-process counters, which sort `_lambda_99` after
    `_lambda_100`; TFDS lists its decoders' nodes in another order): the seeds and the
    constants are read in the order a walk from the output meets them, so a listing in
    another order reads the same. Read in listing order, the seeds of two seeded
    shuffles in two functions swapped places: a false alarm on a pipeline that resumes."""
    import tensorflow as tf

    from dlckpt.pipeline.risks import _read_graph, _seeds_in, constants_in

    def inner(seed: int):
        return lambda x: tf.data.Dataset.range(x, x + 4).shuffle(4, seed=seed)

    left = tf.data.Dataset.range(3).flat_map(inner(7))
    right = tf.data.Dataset.from_tensor_slices(tf.constant([10, 20], tf.int64)).flat_map(inner(8))
    graph_def = _read_graph(tf.data.Dataset.zip(left, right).shuffle(2, seed=9))
    relisted = type(graph_def)()
    relisted.CopyFrom(graph_def)
    relisted.ClearField("node")
    relisted.node.extend(reversed(graph_def.node))
    relisted.library.ClearField("function")
    for function in reversed(graph_def.library.function):
        copy = relisted.library.function.add()
        copy.CopyFrom(function)
        copy.ClearField("node_def")
        copy.node_def.extend(reversed(function.node_def))
    seeds = _seeds_in(graph_def)
    assert sorted(seed2 for _, _, seed2 in seeds) == [7, 8, 9]  # seed: the default graph seed
    assert _seeds_in(relisted) == seeds
    assert constants_in(relisted) == constants_in(graph_def)


def test_a_path_under_the_temp_folder_is_the_same_in_the_restore_process(tmp_path):
    """The restore process runs in the job's own environment, temp folder included: with
    its TMPDIR pointed at the run's folder, a builder that names a path under the temp
    folder built another graph there, and pipelines that resume were called "holds other
    constants" or "does not restore" (a new user's check). Autograph's generated files
    still go to the run's folder, removed with it."""
    dataloader = {
        "_target_": f"{graph_pipelines.__name__}.names_the_temp_folder", "shuffle_buffer_size": 16,
    }  # fmt: skip
    lines: list[str] = []
    outcome = round_trip_in_process(dataloader, tmp_path, lines)
    assert outcome.failure is None, outcome.failure
    assert list(tmp_path.iterdir()) == []  # scratch removed


def test_a_generator_the_builders_module_holds_starts_each_build_where_the_first_did(tmp_path):
    """A seeded generator held at module level that each build draws a file order from:
    a job builds once per process, so it resumes exactly. This tool builds more than once
    in its process (the estimator's builds come first); the round trip's build drew the
    next order, and a new user's pipeline was told "holds other constants" (exit 1)."""
    from dlckpt.pipeline.build import instantiate_dataset

    dataloader = {
        "_target_": f"{graph_pipelines.__name__}.file_list_ordered_at_build",
        "shuffle_buffer_size": 16, "module_generator": True, "batch_size": 3,
    }  # fmt: skip
    instantiate_dataset(
        OmegaConf.create({**dataloader, "shuffle_buffer_size": 8})
    )  # as the estimator
    lines: list[str] = []
    assert round_trip_in_process(dataloader, tmp_path, lines).failure is None, lines
    assert list(tmp_path.iterdir()) == []  # scratch removed


MANIFESTS = [
    ({"sort": False}, False),
    ({"sort": True}, True),
    ({"sort": False, "padding": 5 * 2**20}, False),  # 5 MiB: passed when only small files were read
    ({"sort": False, "named_as": "uri"}, False),  # file://: passed
    ({"sort": True, "named_as": "new-folder"}, True),  # the same bytes elsewhere: a false alarm
]


@pytest.mark.parametrize(
    ("extra", "passes"),
    MANIFESTS,
    ids=["unseeded", "sorted", "5-mib", "uri", "new-folder"],
)
def test_a_manifest_the_builder_writes_in_another_order_cannot_pass(tmp_path, extra, passes):
    """The graph holds only where the manifest is; the builder writes its lines in an order
    drawn without a seed, so the restore process's build rewrites it in another: new
    users' pipelines (episodes deduplicated with set()) passed, and a resumed job read
    other episodes at batch 72 or 701. A constant that names files is compared by what
    they hold. Sorted, it passes, wherever each build writes it."""
    scratch, data = tmp_path / "scratch", tmp_path / "data"
    scratch.mkdir()
    data.mkdir()
    dataloader = {
        "_target_": f"{graph_pipelines.__name__}.manifest_written_at_build",
        "shuffle_buffer_size": 16, "path": str(data), **extra,
    }  # fmt: skip
    lines: list[str] = []
    failure = round_trip_in_process(dataloader, scratch, lines).failure
    if passes:
        assert failure is None, failure
    else:
        assert failure is not None and failure.startswith("CANNOT VERIFY AN EXACT RESUME"), failure
        assert "holds other constants in two processes" in failure
        assert "holds other bytes in the restore process" in failure, failure
        assert "'s files string[" in failure, failure
    assert list(scratch.iterdir()) == []  # scratch removed


HOLDERS = {
    "numpy-class-attribute": "class Holder:\n    rng = np.random.default_rng(0)\n"
    "def order(n):\n    return [int(i) for i in Holder.rng.permutation(n)]\n",
    "random-class-attribute": "class Holder:\n    rng = random.Random(0)\n"
    "def order(n):\n    files = list(range(n))\n    Holder.rng.shuffle(files)\n    return files\n",
    "tf-generator": "GENERATOR = tf.random.Generator.from_seed(42)\n"
    "def order(n):\n    return [int(i) for i in tf.argsort(GENERATOR.uniform([n])).numpy()]\n",
}


@pytest.mark.parametrize("kind", list(HOLDERS))
def test_generators_the_users_modules_hold_start_each_build_where_the_first_did(
    tmp_path, monkeypatch, kind
):
    """A seeded generator held in another module of the user's (a class attribute), or a
    tf.random.Generator, that each build draws the file order from: a job builds once per
    process and resumes; this tool builds several times, and new users' pipelines were
    told "holds other constants" or "does not resume". Every build starts where the
    first did."""
    from dlckpt.pipeline.build import instantiate_dataset
    from dlckpt.pipeline.risks import seeds_and_constants

    name = f"holder_{kind.replace('-', '_')}"
    header = "import random\nimport numpy as np\nimport tensorflow as tf\n"
    (tmp_path / f"{name}.py").write_text(header + HOLDERS[kind])
    (tmp_path / f"build_{name}.py").write_text(
        f"import tensorflow as tf\nfrom {name} import order\n"
        "def build(*, shuffle_buffer_size):\n"
        "    files = tf.constant(order(64), tf.int64)\n"
        "    return tf.data.Dataset.from_tensor_slices(files).shuffle(shuffle_buffer_size, seed=1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    builds = [
        seeds_and_constants(instantiate_dataset(OmegaConf.create(
            {"_target_": f"build_{name}.build", "shuffle_buffer_size": buffer}
        )))[1]
        for buffer in (8, 32, 100)
    ]  # fmt: skip
    file_lists = [[c for c in build if c[0].startswith("TensorSliceDataset")] for build in builds]
    assert len(file_lists[0]) == 1  # the buffer is a constant too, of its own
    assert file_lists[0] == file_lists[1] == file_lists[2]
