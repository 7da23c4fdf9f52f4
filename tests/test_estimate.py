"""The measured checkpoint-size estimate against real checkpoints, its cache and its bad input.

Accuracy is checked the way issue 9 states it: calibrate, extrapolate to 20x and 100x the
largest calibration buffer, then fill that buffer for real, save the iterator once the
prefetch buffers are full (as during training) and compare the bytes on disk. The test
family (dlckpt/bench/pipelines/estimate_shapes.py) holds shapes unlike the presets.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import SMALL_CHEAP, run_in_process, run_script, script_env

SCRIPT = "test_dataloader_checkpoint_small_buffer.py"
SENSOR = "dlckpt.bench.pipelines.estimate_pipelines.sensor_log_dataset"
# Cheaper sampling for the family (a few chunks tiling the first ~6,400+ elements); the
# presets keep the defaults.
FAMILY_OVERRIDES = [
    "estimate.cache=false",
    "estimate.calibration_offsets=[0,256,1024,3072,6400]",
]
MULTIPLES = (20, 100)
# Shapes whose host-RAM row is checked against a real save's memory.
RAM_SHAPES = ("tiny_elements", "ragged_sparse")


def _real_checkpoint_bytes(cfg, buffer: int, tmp_path: Path) -> int:
    from bench_estimate import real_checkpoint_bytes

    return real_checkpoint_bytes(cfg, buffer, tmp_path)


def _sensor_config(tmp_path: Path, **dataloader: object) -> Path:
    lines = [f"  _target_: {SENSOR}", "  shuffle_buffer_size: 100000"]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in dataloader.items()]
    (tmp_path / "sensor.yaml").write_text("dataloader:\n" + "\n".join(lines) + "\n")
    return tmp_path


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


@pytest.fixture
def seeded_cache(small_estimate_cache, small_estimate_copy):
    """This test's own cache (XDG_CACHE_HOME, see _own_cache) holding the session's measured
    estimate of `small` under SMALL_CHEAP; returns that estimate."""
    return small_estimate_cache[1]


@pytest.fixture(scope="session")
def family(tmp_path_factory: pytest.TempPathFactory):
    """shape -> (config, EstimateResult), measured once per shape and worker (session scope:
    pytest would tear a module fixture down whenever another module's test comes between)."""
    from bench_estimate import shape_config

    from dlckpt.estimate.estimator import estimate

    folder = tmp_path_factory.mktemp("family")
    measured: dict[str, object] = {}

    def get(name: str):
        if name not in measured:
            cfg = shape_config(name, folder / "conf", FAMILY_OVERRIDES)
            measured[name] = (cfg, estimate(cfg, scratch_root=folder, say=lambda _: None))
            assert list(folder.glob("dlckpt-estimate-*")) == []  # its scratch is removed
        return measured[name]

    return get


def _same_worker(shape: str) -> pytest.MarkDecorator:
    """Every test of one shape on one pytest-xdist worker (--dist=loadgroup): the module's
    fixtures measure each shape once per worker."""
    return pytest.mark.xdist_group(f"estimate-family-{shape}")


def _family_names(open_misses: bool) -> list[object]:
    """The family's shapes; with `open_misses`, the shapes whose ±3% is a known open miss
    are marked xfail (not strict): the stated ± still has to cover them, strictly."""
    from dlckpt.bench.pipelines.estimate_shapes import FAMILY

    known = {
        # An AUTOTUNE prefetch's depth follows thread timing, so the real save itself
        # varies from run to run: six real saves at 20x under two CPU hogs spanned
        # 980,031-1,000,207 B (2.1%), which leaves a 3% target no room.
        "autotune_prefetch": "AUTOTUNE prefetch depth varies with timing (open)",
        # No shuffle buffer: the whole checkpoint (~4.5 KB) is the other buffers. Six real
        # saves at 20x under two CPU hogs: 4,514 B five times and 3,456 B once (31% apart).
        "index_shuffle": "its few-KB checkpoint follows the autotuned prefetch depth (open)",
    }
    return [
        pytest.param(
            name,
            marks=[_same_worker(name)]
            + ([pytest.mark.xfail(reason=known[name], strict=False)] if open_misses else []),
        )
        if name in known
        else pytest.param(name, marks=_same_worker(name))
        for name in FAMILY
    ]


@pytest.fixture(scope="session")
def real_bytes(tmp_path_factory: pytest.TempPathFactory):
    """(config, buffer) -> bytes of a real save, measured once per worker for both tests."""
    folder = tmp_path_factory.mktemp("real")
    measured: dict[tuple[str, int], int] = {}

    def get(shape: str, cfg, buffer: int) -> int:
        if (shape, buffer) not in measured:
            measured[shape, buffer] = _real_checkpoint_bytes(cfg, buffer, folder)
        return measured[shape, buffer]

    return get


def _error(shape: str, multiple: int, family, real_bytes):  # type: ignore[no-untyped-def]
    cfg, result = family(shape)
    target = multiple * max(cfg.estimate.calibration_buffer_sizes)
    real = real_bytes(shape, cfg, target)
    assert result.method == "measured"
    # A real save itself moves by whole batches with thread timing (a batch in transit
    # between the prefetch and the buffers before it): where that is over 3% of the
    # checkpoint (a few KB in all, no shuffle buffer), the estimate is held to it.
    transit = result.calibration.transit_bytes / real
    return result, target, result.bytes_for(target) / real - 1, transit


@pytest.mark.accuracy
@pytest.mark.parametrize("multiple", MULTIPLES)
@pytest.mark.parametrize("shape", _family_names(open_misses=True))
def test_estimate_within_3_percent_of_a_real_save_on_unseen_shapes(
    shape, multiple, family, real_bytes
):
    result, target, error, transit = _error(shape, multiple, family, real_bytes)
    assert abs(error) <= max(0.03, transit), (shape, target, error, transit, result.report())
    # Where the shuffle buffer holds most of the bytes (100x) the ± is not a blanket either:
    # under 10% beyond what it allows for thread timing (transit, autotuned depth, and the
    # anchors' prefetch fill jitter, anchor_spread: on TF 2.15 encoded_frames' ± crossed
    # 10% (10.1%, 10.2%) in 2 of 4 clean-clone CI runs and 12.8% in 1 of 3 local runs,
    # its estimate within 3% each time).
    # Both parts are shares of the estimate, as the model states them (a timing share of
    # the real save would count the estimate's own error as ± beyond timing).
    if multiple == 100 and not result.calibration.constant:
        estimate = result.bytes_for(target)
        timing = result.calibration.timing_bytes + result.calibration.anchor_spread / 2
        beyond_timing = result.uncertainty_for(target) - timing / estimate
        assert beyond_timing < 0.10, result.report()


@pytest.mark.accuracy
@pytest.mark.parametrize("multiple", MULTIPLES)
@pytest.mark.parametrize("shape", _family_names(open_misses=False))
def test_stated_uncertainty_covers_a_real_save_on_every_shape(shape, multiple, family, real_bytes):
    result, target, error, _ = _error(shape, multiple, family, real_bytes)
    assert abs(error) <= result.uncertainty_for(target), (shape, target, error, result.report())


@pytest.mark.accuracy
@pytest.mark.parametrize(
    "shape", [pytest.param(name, marks=_same_worker(name)) for name in RAM_SHAPES]
)
def test_ram_row_is_within_25_percent_of_a_real_saves_peak_memory(
    shape, family, tmp_path, monkeypatch
):
    """The host-RAM row per buffered element against what a real save's process used.

    Small elements with several tensors are where tensor bytes alone miss: 14 B of data
    per element here, ~1.6 KB of RSS at a save's peak. The measurement is the kernel's
    high-water mark from just before the fill to the end of the save, at two buffers in
    fresh processes (bench.ram.save_peak_per_element).
    """
    from bench_estimate import shape_config

    from dlckpt.bench.ram import BUFFERS, save_peak_per_element

    _cfg, result = family(shape)
    shape_config(shape, tmp_path / "conf")
    request = {"config": shape, "config_dir": str(tmp_path / "conf")}
    measured = save_peak_per_element(request, tmp_path)
    if measured is None:
        pytest.skip("the kernel's RSS high-water mark cannot be reset here (clear_refs)")
    row = result.ram_bytes_for(max(BUFFERS)) / max(BUFFERS)
    assert 0.8 <= row / measured <= 1.25, (shape, row, measured, result.report())
    assert list(tmp_path.glob("ram-*")) == []  # the saves are removed


@_same_worker("tiny_elements")
def test_a_finite_stream_far_longer_than_the_buffer_gets_no_short_stream_note(family):
    """Dataset.range(10**9) is finite: its length is no news for a 1,000-element buffer."""
    _cfg, result = family("tiny_elements")
    assert result.calibration.stream_elements == 10**9
    assert not any("elements in all" in note for note in result.notes), result.notes


@_same_worker("index_shuffle")
def test_a_pipeline_without_a_shuffle_buffer_is_reported_constant(family):
    _cfg, result = family("index_shuffle")
    assert result.calibration.constant
    assert result.bytes_for(10) == result.bytes_for(10**9)
    headline = result.headline("original")
    assert "constant" in headline and "whatever the buffer" in headline
    assert " GiB" not in headline  # a few KB, shown as such
    assert not any("elements" in line for line in result.describe()[:1])


@pytest.mark.accuracy
@_same_worker("encoded_frames")
def test_two_estimates_of_one_pipeline_agree_within_1_percent(family, tmp_path):
    """The decoded-prefetch shape is the one whose other buffers jitter with thread timing.

    At the largest target (100x) the shuffle buffer is most of the checkpoint: two
    estimates agree within 1% there, as they do at a production buffer. At 20x half of
    this shape's checkpoint is its decoded prefetch (~1.1 MB of ~2.2 MB), whose settled
    fill moved by ~29 KB (1.3%) between the two estimates of one busy full-suite run: there
    they agree within the 3% each must be of a real save.
    """
    from dlckpt.estimate.estimator import estimate

    cfg, first = family("encoded_frames")
    again = estimate(cfg, scratch_root=tmp_path, say=lambda _: None)
    for multiple, within in ((max(MULTIPLES), 0.01), (min(MULTIPLES), 0.03)):
        buffer = multiple * 64
        assert abs(again.bytes_for(buffer) / first.bytes_for(buffer) - 1) <= within, multiple


@pytest.mark.accuracy
@pytest.mark.parametrize(
    "config_name, overrides",
    [
        # The small preset: decoded frames whose noise level changes per episode.
        ("small", []),
        # JPEG-encoded frames in the buffer (OpenVLA-style), at a size CI can fill.
        ("openvla", ["dataloader.image_size=40", "+dataloader.num_episodes=40",
                     "+dataloader.steps_per_episode=12"]),
        # A pipeline the estimator was never tuned on (interleave, strings, int16 signals).
        ("sensor", []),
    ],
)  # fmt: skip
def test_estimate_within_3_percent_of_the_real_checkpoint_at_20x(
    config_name, overrides, tmp_path, request
):
    """The presets at their own calibration settings. The small preset's estimate is the
    run's measurement of it (conftest.small_default_estimate, measured fresh once per run
    and shared with the script runs that use `small`); the others are measured here."""
    from dlckpt.config import load_config
    from dlckpt.estimate.estimator import estimate

    config_dir = _sensor_config(tmp_path) if config_name == "sensor" else None
    cfg = load_config(config_name, [*overrides, "estimate.cache=false"], config_dir)
    target = 20 * max(cfg.estimate.calibration_buffer_sizes)
    if config_name == "small":
        result = request.getfixturevalue("small_default_estimate")
        assert not result.cached  # measured by this run, not read from a cache
    else:
        result = estimate(cfg, tested_buffer=target, say=lambda _: None)
    real = _real_checkpoint_bytes(cfg, target, tmp_path)

    assert result.method == "measured"
    error = result.bytes_for(target) / real - 1
    assert abs(error) <= 0.03, (result.bytes_for(target), real, result.report())
    # The ± is not a blanket: under 20% beyond what it allows for thread timing (batches in
    # transit, the depth autotuned buffers may gain: wide at a 1,280-element buffer). Both
    # are shares of the estimate, as the model states them.
    stated = result.calibration.uncertainty_for(target)
    assert abs(error) <= stated
    assert stated - result.calibration.timing_bytes / result.bytes_for(target) < 0.2


def test_report_keys_and_model_are_consistent(small_estimate_cache):
    _cache, result = small_estimate_cache
    report = result.report()
    for key in (
        "method", "original_bytes", "tested_bytes", "bytes_per_buffered_element", "fixed_bytes",
        "uncertainty", "calibration_points", "formula_original_bytes",
    ):  # fmt: skip
        assert key in report, key
    assert report["method"] == "measured"
    # bytes = fixed + per_element x buffer, for the configured buffer.
    expected = report["fixed_bytes"] + report["bytes_per_buffered_element"] * result.original_buffer
    assert abs(report["original_bytes"] - expected) <= result.original_buffer
    # Every calibration point is a real save: more buffer, more bytes (the calibration
    # buffers in order, then the smallest again).
    sizes = len({buffer for buffer, _ in report["calibration_points"]})
    first = [bytes_ for _, bytes_ in report["calibration_points"][:sizes]]
    assert first == sorted(first) and first[0] > 0


def test_second_run_is_cached_and_any_config_change_invalidates(seeded_cache):
    from dlckpt.config import load_config
    from dlckpt.estimate.cache import cache_dir, config_hash, load_cached
    from dlckpt.estimate.estimator import estimate

    first = seeded_cache  # measured once per session, into the cache this test now holds
    again = estimate(load_config("small", SMALL_CHEAP), say=lambda _: None)
    assert not first.cached and again.cached
    assert again.original_bytes == first.original_bytes
    assert again.calibration.anchors == first.calibration.anchors
    # Any change to the pipeline's settings is another key, with no entry: measured anew
    # (estimate() measures on a miss: the session fixture's own run did).
    changed = load_config("small", [*SMALL_CHEAP, "+dataloader.jpeg_quality=80"])
    assert config_hash(changed) != config_hash(load_config("small", SMALL_CHEAP))
    assert load_cached(config_hash(changed)) is None
    assert len(list(cache_dir().glob("*.json"))) == 1
    # The configured buffer is never filled by the calibration: a new size reuses it.
    bigger = estimate(
        load_config("small", [*SMALL_CHEAP, "dataloader.shuffle_buffer_size=6400"]),
        say=lambda _: None,
    )
    assert bigger.cached and bigger.original_bytes > 50 * first.original_bytes


def test_a_pipeline_shorter_than_the_buffer_is_estimated_with_what_it_has(tmp_path):
    from dlckpt.config import load_config
    from dlckpt.estimate.estimator import estimate

    config_dir = _sensor_config(tmp_path, repeat=False, records_per_source=10)
    cfg = load_config("sensor", ["estimate.cache=false"], config_dir)
    result = estimate(cfg, tested_buffer=1000, say=lambda _: None)
    assert any("elements in all" in note for note in result.notes), result.notes
    # 40 elements in all: larger buffers hold the same data, but every empty slot of the
    # shuffle buffer is still written (~160 bytes each), so the estimate grows with it.
    for buffer in (1000, 20_000):
        real = _real_checkpoint_bytes(cfg, buffer, tmp_path)
        assert abs(result.bytes_for(buffer) / real - 1) <= 0.10, (
            buffer,
            real,
            result.bytes_for(buffer),
        )


def test_a_short_source_repeated_after_its_shuffle_is_not_capped_at_one_pass(tmp_path):
    """`shuffle(B).repeat()` over 3,000 elements: TensorFlow fuses the two and keeps filling
    the buffer across passes, so a 10,000 buffer's real save holds far more than one pass
    (a held-out report: under-estimated by 23% with ±2%). The stated ± covers the real save,
    and the estimate is not the one-pass figure."""
    from bench_estimate import shape_config

    from dlckpt.estimate.estimator import estimate

    overrides = ["estimate.cache=false", "dataloader.shuffle_buffer_size=10000"]
    cfg = shape_config("repeated_short_source", tmp_path / "conf", overrides)
    result = estimate(cfg, tested_buffer=10_000, say=lambda _: None)
    assert result.calibration is not None and result.calibration.pass_elements == 3000
    assert any("fused shuffle-and-repeat" in note for note in result.notes), result.notes
    real = _real_checkpoint_bytes(cfg, 10_000, tmp_path)
    one_pass = _real_checkpoint_bytes(cfg, 3000, tmp_path)
    assert real > 1.5 * one_pass  # the kind: the buffer filled past one pass
    error = result.bytes_for(10_000) / real - 1
    assert abs(error) <= result.calibration.uncertainty_for(10_000), (error, real)
    assert result.bytes_for(10_000) >= real * 0.97  # never the dangerous side of the truth


def _hidden_buffer_shapes() -> list[str]:
    from dlckpt.bench.pipelines.estimate_shapes import HIDDEN_BUFFERS

    return list(HIDDEN_BUFFERS)


@pytest.mark.accuracy
@pytest.mark.parametrize("shape", _hidden_buffer_shapes())
def test_buffers_the_main_line_does_not_show_are_counted(shape, tmp_path):
    """Rebuilt from an adversarial probe that found each under-estimated by 16-98% with a
    ±2-21% that did not cover it: a fixed shuffle nearest the output hiding a sized one, a
    concatenate whose first input is short, one dataset zipped with itself, a side of
    2 x the buffer, sized shuffles under a main-line one, a prefetch of B // 4 elements
    (-20% with ±2%), a prefetch of max(1, B // 40) batches, 1 at every calibration buffer
    (-8.8% with ±8.1%). The stated ± covers a real save."""
    from bench_estimate import shape_config

    from dlckpt.estimate.estimator import estimate

    overrides = ["estimate.cache=false", "dataloader.shuffle_buffer_size=2000"]
    cfg = shape_config(shape, tmp_path / "conf", overrides)
    result = estimate(cfg, say=lambda _: None)
    real = _real_checkpoint_bytes(cfg, 2000, tmp_path)
    error = result.original_bytes / real - 1
    assert abs(error) <= result.calibration.uncertainty_for(2000), (shape, error, result.notes)
    if shape == "fixed_shuffle_hides_a_sized_one":  # found by the anchors, ~1 KB a vector,
        calibration = result.calibration  # and held in the host RAM row too
        assert 900 <= calibration.unseen_per_element <= 1500, calibration.unseen_per_element
        own = calibration.memory_element_bytes or calibration.raw_element_bytes
        assert calibration.ram_per_element >= calibration.unseen_per_element + own


def _built_size_shapes() -> list[str]:
    from dlckpt.bench.pipelines.estimate_shapes import BUILT_SIZES

    return list(BUILT_SIZES)


@pytest.mark.accuracy
@pytest.mark.parametrize("shape", _built_size_shapes())
def test_a_shuffle_built_with_a_floor_or_a_cap_is_estimated_at_the_size_built(shape, tmp_path):
    """shuffle(min(B, 600)) at B=2,000 and shuffle(max(B, 2000)) at 50,000: the sizes the pipeline
    builds are read from its graph (a probe measured +563% with ±4% for a cap, -16% with
    ±3.4% for a floor above the calibration buffers). The stated ± covers a real save, and
    the estimate says which size it is for."""
    from bench_estimate import shape_config

    from dlckpt.estimate.estimator import estimate

    buffer = 2_000 if "capped" in shape else 50_000  # 25x the floor: its growth unseen
    overrides = ["estimate.cache=false", f"dataloader.shuffle_buffer_size={buffer}"]
    cfg = shape_config(shape, tmp_path / "conf", overrides)
    result = estimate(cfg, say=lambda _: None)
    real = _real_checkpoint_bytes(cfg, buffer, tmp_path)
    error = result.original_bytes / real - 1
    assert abs(error) <= result.calibration.uncertainty_for(buffer), (shape, error, result.notes)
    bound = "at most 600" if "capped" in shape else "at least 2,000"
    assert any(f"builds its shuffle buffer with {bound} elements" in n for n in result.notes)


@pytest.mark.accuracy
def test_a_concatenates_later_input_is_sampled_from_its_own_start(tmp_path):
    """8,000 small vectors, then large ones: at a 20,000 buffer most of it holds large
    ones, past the sampled first ~6,000 elements. Each input is sampled from its own
    start and the stream past the sample is taken as the last input's; the stated ± covers
    a real save (before: a sixth of it with ±3%, on a new user's pipeline of this kind)."""
    from bench_estimate import shape_config

    from dlckpt.estimate.estimator import estimate

    overrides = ["estimate.cache=false", "dataloader.shuffle_buffer_size=20000"]
    cfg = shape_config("small_vectors_then_large_ones", tmp_path / "conf", overrides)
    result = estimate(cfg, say=lambda _: None)
    real = _real_checkpoint_bytes(cfg, 20_000, tmp_path)
    error = result.original_bytes / real - 1
    assert abs(error) <= result.calibration.uncertainty_for(20_000), (error, result.notes)
    assert result.calibration.uncertainty_for(20_000) < 0.15  # the step is not the spread
    assert result.calibration.segment_starts == [0, 8000]


def test_elements_growing_past_the_sample_widen_the_stated_range(tmp_path):
    """Element i holds 1 + i // 200 floats: at a 20,000 buffer the real save is ~36% above
    what the sample's elements (the first ~6,400) make of it. The sampled chunks' trend is
    significant, so the ± says so and covers the real save."""
    from bench_estimate import shape_config

    from dlckpt.estimate.estimator import estimate

    overrides = ["estimate.cache=false", "dataloader.shuffle_buffer_size=20000"]
    cfg = shape_config("elements_growing_along_the_stream", tmp_path / "conf", overrides)
    result = estimate(cfg, say=lambda _: None)
    real = _real_checkpoint_bytes(cfg, 20_000, tmp_path)
    error = result.original_bytes / real - 1
    assert error < -0.15  # the kind: the sample alone under-counts
    assert abs(error) <= result.calibration.uncertainty_for(20_000), (error, result.notes)


@pytest.mark.parametrize(
    ("fusion", "count", "expected"), [(None, 3, 30), (False, 3, 10), (True, -1, -1), (None, 0, 10)]
)
def test_the_buffer_draws_across_passes_only_where_tensorflow_fuses_the_repeat(
    fusion, count, expected
):
    """buffer_source: range(10).shuffle(5).repeat(count) draws 10 x count elements when
    fused (the default), 10 when the fusion is off or no repeat follows (count 0: none)."""
    import tensorflow as tf

    from dlckpt.pipeline.graph import buffer_source, find_shuffle_node

    dataset = tf.data.Dataset.range(10).shuffle(5, seed=1)
    dataset = (dataset.repeat(count) if count else dataset.map(lambda x: x)).batch(2)
    if fusion is not None:
        options = tf.data.Options()
        options.experimental_optimization.shuffle_and_repeat_fusion = fusion
        dataset = dataset.with_options(options)
    source = buffer_source(dataset, find_shuffle_node(dataset))
    assert int(source.cardinality().numpy()) == expected


def test_estimate_only_prints_the_measured_headline_and_writes_the_report(
    tmp_path, small_estimate_copy
):
    """The script's --estimate-only, on the session's measurement (its cache): the
    calibration itself, and that it leaves no scratch, are checked in-process (`family`)."""
    report = tmp_path / "r.json"
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = script_env(XDG_CACHE_HOME=str(small_estimate_copy), TMPDIR=str(scratch))
    result = run_in_process(
        SCRIPT, "--config-name", "small", *SMALL_CHEAP, "--estimate-only", "--report", str(report),
        env=env,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    headline = next(line for line in out.splitlines() if line.startswith("ORIGINAL CONFIG"))
    assert "(measured ±" in headline and "; README's rule of thumb " in headline
    assert "NEW CONFIG CHECKPOINT SIZE ESTIMATE:" in out
    assert "ESTIMATE ONLY" in out and "Saved the iterator" not in out
    data = json.loads(report.read_text())
    estimate = data["estimate"]
    assert estimate["method"] == "measured" and estimate["cached"] is True
    assert estimate["original_bytes"] > estimate["tested_bytes"] > 0
    assert estimate["formula_original_bytes"] == 64 * estimate["bytes_per_sample"] * 1.5
    # The small-buffer run saves through TensorFlow's gs:// writer to the embedded server:
    # its rows are TensorFlow's staging folder, host RAM, and the server's storage and RAM.
    roles = [row["role"] for row in data["locations"]]
    assert any(role.startswith("TensorFlow temp folder for gs:// writes") for role in roles)
    assert any(role.startswith("host RAM") for role in roles)
    assert "embedded GCS server storage" in roles
    assert any(role.startswith("embedded GCS server RAM") for role in roles)
    assert all(
        set(row) == {"role", "path", "free_bytes", "required_bytes", "ok"}
        for row in data["locations"]
    )
    assert list(scratch.iterdir()) == []  # nothing written to TMPDIR

    again = run_in_process(
        SCRIPT, "--config-name", "small", *SMALL_CHEAP, "--estimate-only", "--fit-budget", "1MiB",
        env=env,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "cached measurement" in again.stdout
    assert headline in again.stdout
    fit = next(line for line in again.stdout.splitlines() if line.startswith("FIT BUDGET"))
    assert "fits in 1.0 MiB (your budget) is " in fit  # not "0.0010 GiB"


def test_fit_budget_answer_is_the_largest_buffer_that_fits(small_estimate_cache):
    _cache, result = small_estimate_cache
    budget = 15_000_000
    largest = result.largest_buffer_within(budget)
    margin = 1 + result.calibration.uncertainty_for(largest)
    assert result.bytes_for(largest) * margin <= budget
    assert (
        result.bytes_for(largest + 1) * (1 + result.calibration.uncertainty_for(largest + 1))
        > budget
    )


@pytest.mark.parametrize(
    "args, expected",
    [
        (
            ["estimate.calibration_buffer_sizes=[0,8]"],
            "estimate.calibration_buffer_sizes=[0, 8]: expected",
        ),
        (
            ["estimate.calibration_buffer_sizes=[]"],
            "estimate.calibration_buffer_sizes=[]: expected",
        ),
        (["estimate.calibration_offsets=[-5]"], "estimate.calibration_offsets=[-5]: expected"),
        (["estimate.num_hosts=0"], "estimate.num_hosts=0: expected an integer >= 1"),
        (["--fit-budget", "15XB"], "--fit-budget '15XB': expected a size such as 15GB"),
        (["--fit-budget", "0GB"], "--fit-budget '0GB': expected a size above zero"),
    ],
)
def test_bad_estimate_input_exits_2_with_one_line(args, expected):
    result = run_script(SCRIPT, "--config-name", "small", "--estimate-only", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_sizes_read_as_df_h_shows_them():
    """One formatter, binary units: a 4 GiB tmpfs reads 4.0 GiB, as `df -h` shows `4.0G`."""
    from dlckpt.units import format_size, parse_size

    assert format_size(4 * 2**30) == "4.0 GiB"
    assert format_size(parse_size("4G")) == "4.0 GiB"
    assert format_size(187_500_000_000) == "174.6 GiB"  # the README's 187.5 GB
    assert format_size(4_915) == "4.8 KiB"  # never "0.0000 GiB"
    assert format_size(1023) == "1023 B"
    assert format_size(3 * 2**40) == "3.0 TiB"
    assert format_size(-2 * 2**20) == "-2.0 MiB"  # a difference keeps its sign


def test_parse_size_units():
    from dlckpt.errors import UsageError
    from dlckpt.units import parse_size

    assert parse_size("15GB") == 15 * 10**9
    assert parse_size("1.5 TB") == 1_500_000_000_000
    assert parse_size("500MiB") == 500 * 2**20
    assert parse_size("2_000") == 2000
    assert parse_size("4.0G") == 4 * 2**30  # as `df -h` prints a 4 GiB tmpfs
    assert parse_size("512M") == 512 * 2**20
    for bad in ("", "GB", "15 parsecs", "-1GB"):
        with pytest.raises(UsageError):
            parse_size(bad)


def test_estimate_accepts_a_subprocess_free_python_call():
    """The estimate is importable on its own: no TensorFlow import for the formula alone."""
    code = (
        "import sys; from dlckpt.estimate.estimator import formula_bytes; "
        "print(formula_bytes(250000, 500000, 1.5)); print('tensorflow' in sys.modules)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.split() == ["187500000000", "False"]


# --- reliability of the calibration itself (issue 11 items 4, 5, 8, 11; issue 8 item 5) ----


def _shape_yaml(tmp_path: Path, name: str, **settings: object) -> Path:
    lines = [
        f"  _target_: dlckpt.bench.pipelines.estimate_shapes.{name}",
        "  shuffle_buffer_size: 1000",
    ]
    lines += [f"  {key}: {json.dumps(value)}" for key, value in settings.items()]
    (tmp_path / f"{name}.yaml").write_text("dataloader:\n" + "\n".join(lines) + "\n")
    return tmp_path


def test_a_pipeline_that_never_yields_stops_at_the_stated_limit_with_one_line(tmp_path):
    config_dir = _shape_yaml(tmp_path, "never_yields")
    result = run_script(
        SCRIPT, "--config-dir", str(config_dir), "--config-name", "never_yields",
        "--estimate-only", "estimate.calibration_timeout_seconds=3",
        env=script_env(XDG_CACHE_HOME=str(tmp_path / "cache")), timeout=120,
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "no progress for 3 s" in lines[0]
    assert "estimate.calibration_timeout_seconds=3" in lines[0]


@pytest.mark.parametrize("value", ["0", "-5", "abc"])
def test_a_bad_calibration_limit_is_one_line_exit_2(value):
    result = run_script(
        SCRIPT, "--config-name", "small", "--estimate-only",
        f"estimate.calibration_timeout_seconds={value}",
    )  # fmt: skip
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "calibration_timeout_seconds" in lines[0], result.stderr


def test_a_calibration_that_cannot_fit_its_scratch_folder_exits_3_naming_it(small_disk, tmp_path):
    """256x256 decoded frames: the calibration's own saves need far more than a 20 MB disk."""
    env = script_env(TMPDIR=str(small_disk), XDG_CACHE_HOME=str(tmp_path / "cache"))
    report = tmp_path / "r.json"
    result = run_script(
        SCRIPT, "--config-name", "small", "--estimate-only", "dataloader.image_size=256",
        "--report", str(report), env=env,
    )  # fmt: skip
    assert result.returncode == 3, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert f"calibration scratch folder {small_disk}" in lines[0]
    assert list(small_disk.iterdir()) == []  # its scratch folder is gone


def test_a_save_that_fills_the_disk_mid_calibration_is_refused_naming_the_folder(small_disk):
    """The needs check passes (tiny elements) but the disk is filled by someone else."""
    from dlckpt.errors import PreflightRefusal
    from dlckpt.estimate.saves import refuse_disk_full, save_bytes
    from dlckpt.runtime.tf_import import import_tensorflow

    tf = import_tensorflow()
    ballast = small_disk / "ballast"
    with ballast.open("wb") as handle:  # leave ~100 KB free
        handle.write(b"\0" * (20 * 2**20 - 100_000))
    try:
        iterator = iter(tf.data.Dataset.range(10**6).map(
            lambda i: tf.random.stateless_uniform([256], seed=tf.stack([i, i]))
        ).shuffle(2000))  # fmt: skip
        next(iterator)
        with pytest.raises(PreflightRefusal) as refused:
            save_bytes(iterator, small_disk / "save", small_disk)
        assert str(refused.value).startswith(f"calibration scratch folder {small_disk}:")
        assert not (small_disk / "save").exists()
        assert isinstance(refuse_disk_full(small_disk, OSError("x")), PreflightRefusal)
    finally:
        ballast.unlink()


def test_a_file_cache_before_the_shuffle_is_measured_with_one_iterator_at_a_time(tmp_path):
    """Dataset.cache(filename): two live iterators collide on its lock file (case c08)."""
    from dlckpt.config import load_config
    from dlckpt.estimate.estimator import estimate

    (tmp_path / "data").mkdir()
    config_dir = _shape_yaml(tmp_path, "file_cached", cache_file=str(tmp_path / "data" / "t"))
    cfg = load_config("file_cached", FAMILY_OVERRIDES, config_dir)
    result = estimate(cfg, tested_buffer=640, say=lambda _: None)
    assert result.method == "measured"
    # The calibration's saves finalized partial cache shards; it removed them, and only them.
    assert list((tmp_path / "data").iterdir()) == []
    real = _real_checkpoint_bytes(cfg, 640, tmp_path)
    assert abs(result.tested_bytes / real - 1) <= 0.03, (result.tested_bytes, real)


def test_a_bad_cache_entry_is_dropped_and_measured_again(seeded_cache, tmp_path):
    from dlckpt.config import load_config
    from dlckpt.estimate.cache import cache_dir, config_hash, entry_problem, load_cached
    from dlckpt.estimate.estimator import estimate

    cfg = load_config("small", SMALL_CHEAP)
    key = config_hash(cfg)
    entry = cache_dir() / f"{key}.json"
    good = json.loads(entry.read_text())
    assert entry_problem(good) is None
    bad_entries = {
        "negative bytes": {**good, "calibration": {**good["calibration"], "anchors": [[8, -1]]}},
        "old version": {**good, "estimator_version": good["estimator_version"] - 1},
        "missing field": {**good, "calibration": {k: v for k, v in good["calibration"].items()
                                                   if k != "chunks"}},
        "not json": None,
    }  # fmt: skip
    for why, bad in bad_entries.items():  # each is refused and removed, never used
        entry.write_text("{not json" if bad is None else json.dumps(bad))
        assert load_cached(key) is None, why
        assert not entry.exists(), why
    # End to end, once: the estimate measures again and writes a good entry in its place
    # (on the sensor pipeline, whose calibration is a few seconds, not the small preset's 30).
    sensor = load_config("sensor", SMALL_CHEAP, _sensor_config(tmp_path))
    entry = cache_dir() / f"{config_hash(sensor)}.json"
    entry.write_text(json.dumps(bad_entries["negative bytes"]))
    again = estimate(sensor, say=lambda _: None)
    assert not again.cached and again.original_bytes > 0
    assert entry_problem(json.loads(entry.read_text())) is None  # replaced
    assert estimate(sensor, say=lambda _: None).cached


def test_cross_check_states_the_miss_and_drops_the_cache_entry(tmp_path, seeded_cache):
    from dlckpt.config import load_config
    from dlckpt.estimate.cache import cache_dir
    from dlckpt.estimate.estimator import cross_check, estimate

    cfg = load_config("small", SMALL_CHEAP)
    result = estimate(cfg, say=lambda _: None)
    assert result.cached  # the session's measurement
    real = _real_checkpoint_bytes(cfg, 640, tmp_path)
    hit = cross_check(result, 640, real)
    assert hit.within, hit.message()
    assert hit.message().startswith("✓ estimate cross-check at buffer 640: real checkpoint")
    assert list(cache_dir().glob("*.json"))  # kept
    miss = cross_check(result, 640, real * 2)
    assert miss.within is False and miss.cache_dropped
    assert miss.message().startswith("✗ ") and "outside the stated ±" in miss.message()
    assert miss.failure().startswith("THE SIZE ESTIMATE MISSED THE REAL CHECKPOINT: ")
    assert list(cache_dir().glob("*.json")) == []  # the next run measures again
    assert [c["within"] for c in result.report()["cross_checks"]] == [True, False]


def test_a_real_save_outside_the_stated_range_fails_the_run(tmp_path, seeded_cache):
    """A measurement that no longer fits the pipeline (here a cached one 20x too large,
    as data changed under an unchanged config would): the round trip passes, but the
    sizes and the preflight rest on the estimate, so the run ends with exit 1 and ✗."""
    from dlckpt.config import load_config
    from dlckpt.estimate.cache import cache_dir, config_hash

    entry = cache_dir() / f"{config_hash(load_config('small', SMALL_CHEAP))}.json"
    data = json.loads(entry.read_text())
    data["calibration"]["anchors"] = [[b, 20 * size] for b, size in data["calibration"]["anchors"]]
    entry.write_text(json.dumps(data))
    destination, report = tmp_path / "dest", tmp_path / "r.json"
    destination.mkdir()
    result = run_in_process(
        SCRIPT, "--config-name", "small", *SMALL_CHEAP, "--report", str(report),
        env=script_env(XDG_CACHE_HOME=os.environ["XDG_CACHE_HOME"], GCS_TEST_BUCKET=str(destination)),
    )  # fmt: skip
    assert result.returncode == 1, result.stdout + result.stderr
    lines = result.stdout.rstrip().splitlines()
    assert lines[-1].startswith("✗ THE SIZE ESTIMATE MISSED THE REAL CHECKPOINT: "), lines[-1]
    assert "The round trip itself passed" in lines[-1]
    written = json.loads(report.read_text())
    tested = written["shuffle_buffer_size"]["tested"]
    assert any(line.startswith(f"✗ estimate cross-check at buffer {tested}: ") for line in lines)
    assert "✓ ALL TESTS PASSED" not in result.stdout
    assert (written["passed"], written["exit_code"]) == (False, 1)
    assert written["verification"]["passed"] is True
    assert written["estimate_cross_check"]["within"] is False
    assert not entry.exists()  # the next run measures again
    assert list(destination.iterdir()) == []


@_same_worker("cached_first")
def test_the_measured_line_names_every_term_of_the_headline(family):
    """A reader can rebuild the headline from the "measured:" line, the cache's share too."""
    _cfg, result = family("cached_first")
    line = next(text for text in result.describe() if text.strip().startswith("measured:"))
    assert "for the in-memory cache()'s copy of it" in line, line
    calibration, buffer = result.calibration, result.original_buffer
    per_element, _ = calibration.per_element(buffer)
    rebuilt = (per_element + calibration.extra_per_element) * buffer + calibration.fixed
    assert abs(rebuilt / result.original_bytes - 1) < 0.01, (line, result.original_bytes)
