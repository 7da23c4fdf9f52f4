"""compare_shuffle_strategies.py: real runs on small frames, the figures it reports, its errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_in_process, run_script

from dlckpt.strategies.compare import (
    LAST_REPORT_NAME,
    STRATEGIES,
    STRATEGY_NAMES,
    shuffle_quality,
    smallest_resuming_strategy,
    strategies_pointer_line,
)
from dlckpt.units import format_size

# One pytest-xdist worker runs this module (--dist=loadgroup), and small_run is session-scoped
# (a module fixture is torn down whenever another module's test comes between): one real run.
pytestmark = pytest.mark.xdist_group("strategies")

SCRIPT = "./compare_shuffle_strategies.py"  # run_script: a "/" means relative to scripts/


@pytest.fixture(scope="session")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[object, dict, Path]:
    """One real run of every strategy on the `small` preset (32x32 + 16x16 frames, window 2,
    200 recorded steps, a 64-element buffer): each checkpoint restored in a new process."""
    work = tmp_path_factory.mktemp("strategies")
    report_path = work / "report.json"
    # A process of its own: the strategies' size comparisons rest on TensorFlow's autotuned
    # buffers, which a test worker's busy thread pools deepen (seen once under two CPU hogs).
    completed = run_script(
        SCRIPT, "--config-name", "small", "--work-dir", str(work), "--report", str(report_path),
        "--timed-batches", "4",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    return completed, json.loads(report_path.read_text()), work


def test_every_strategy_resumes_exactly_in_a_new_process(small_run) -> None:
    completed, report, _ = small_run
    names = [s["name"] for s in report["strategies"]]
    # Every strategy this environment can run is measured; the others are named with why
    # (Grain is optional; tf.data's global shuffle needs TensorFlow 2.17).
    missing = {s.name: reason for s in STRATEGIES if (reason := s.missing())}
    assert names == [n for n in STRATEGY_NAMES if n not in missing]
    assert report["not_measured"] == missing
    for name, reason in missing.items():
        assert f"not measured in this environment: {name} ({reason})" in completed.stdout
    # Beside a TensorFlow that holds protobuf < 5 (2.15), installing Grain would replace it:
    # no install advice then.
    from importlib.metadata import version

    if int(version("protobuf").split(".")[0]) < 5:
        assert "pip install" not in missing["grain_array_record"]
        assert "protobuf 5.28" in missing["grain_array_record"]
    for strategy in report["strategies"]:
        assert strategy["resumes_exactly"] is True, strategy
        assert set(strategy) >= {
            "name", "checkpoint_bytes", "save_seconds", "restore_seconds",
            "elements_per_second", "resumes_exactly", "quality",
        }  # fmt: skip
        assert strategy["elements_per_second"] > 0
        size = format_size(strategy["checkpoint_bytes"])
        assert f"✓ {strategy['name']}: checkpoint {size}, resumes exactly" in completed.stdout


def test_index_strategies_checkpoint_orders_of_magnitude_smaller(small_run) -> None:
    _, report, _ = small_run
    sizes = {s["name"]: s["checkpoint_bytes"] for s in report["strategies"]}
    decoded = sizes["decoded_buffer"]
    # 64 decoded samples of 2 x (32x32x3 + 16x16x3) bytes are really in the checkpoint.
    assert decoded >= report["buffer_size"] * report["decoded_sample_bytes"]
    assert sizes["encoded_buffer"] < decoded
    assert sizes["index_shuffle_before_map"] < sizes["encoded_buffer"]
    for symbolic in ("index_permutation_symbolic", "global_shuffle_symbolic"):
        if symbolic not in sizes:  # TensorFlow < 2.17: not measured, and said so (above)
            continue
        assert sizes[symbolic] < 16_000
        assert decoded >= 100 * sizes[symbolic]


def test_quality_comes_from_the_output_order(small_run) -> None:
    _, report, _ = small_run
    quality = {s["name"]: s["quality"] for s in report["strategies"]}
    # The three buffer strategies shuffle the same stream with the same seed and buffer.
    assert (
        quality["decoded_buffer"]
        == quality["encoded_buffer"]
        == quality["index_shuffle_before_map"]
    )
    # A permutation of the whole epoch moves elements further than a 64-element buffer.
    assert (
        quality["index_permutation_symbolic"]["mean_displacement"]
        > quality["decoded_buffer"]["mean_displacement"]
    )
    for figures in quality.values():
        assert figures["elements"] == 6 * 4  # (2 warm-up + 4 timed batches) x batch 4


def test_table_summary_and_cache_name_the_smallest(small_run) -> None:
    completed, report, work = small_run
    for name in report["strategies"]:
        assert any(line.startswith(f"| {name['name']} ") for line in completed.stdout.splitlines())
    best = smallest_resuming_strategy(work / LAST_REPORT_NAME)
    assert best is not None
    name, size = best
    assert size == min(s["checkpoint_bytes"] for s in report["strategies"])
    assert (
        f"SMALLEST CHECKPOINT THAT RESUMES EXACTLY (synthetic episodes): {name}, {format_size(size)}"
        in completed.stdout
    )
    assert smallest_resuming_strategy(report) == best
    assert report["dataloader_target"] == "dlckpt.pipeline.robot.build_robot_dataset"
    assert {s["measured_on"] for s in report["strategies"]} == {"synthetic episodes"}
    # The reference loader's strategies ran on synthetic episodes: the small-buffer run's
    # pointer says so, whichever loader it tested.
    for pipeline in (
        "dlckpt.pipeline.robot.build_robot_dataset",
        "user_pipelines.plain_dataset",
        None,
    ):
        pointer = strategies_pointer_line(work / LAST_REPORT_NAME, pipeline=pipeline)
        assert pointer.startswith(
            "Smaller checkpoints, measured on synthetic episodes and not on your pipeline "
            f"(last `make strategies`): {name}, {format_size(size)} at buffer 64; "
        )


def test_shuffle_quality_figures() -> None:
    unshuffled = shuffle_quality(list(range(40)), steps_per_episode=10)
    assert unshuffled == {
        "elements": 40,
        "mean_displacement": 0.0,
        "same_episode_consecutive": 0.9231,
    }
    reversed_order = shuffle_quality([3, 2, 1, 0], steps_per_episode=1)
    assert reversed_order["mean_displacement"] == 2.0
    assert reversed_order["same_episode_consecutive"] == 0.0


def test_smallest_resuming_strategy_without_a_report(tmp_path: Path) -> None:
    assert smallest_resuming_strategy(tmp_path / "missing.json") is None
    failed = {"strategies": [{"name": "x", "checkpoint_bytes": 10, "resumes_exactly": False}]}
    assert smallest_resuming_strategy(failed) is None
    assert strategies_pointer_line(tmp_path / "missing.json").startswith(
        "Smaller checkpoints: `make strategies`"
    )


def test_strategies_run_on_the_users_own_loader(tmp_path: Path) -> None:
    """`make strategies` on a user's own loader (with an encoded/decoded switch), plus one
    random-access strategy, which can only run on synthetic episodes; then the pointer line
    the small-buffer run prints for that loader and for another one."""
    (tmp_path / "mine.yaml").write_text(
        "dataloader:\n  _target_: user_pipelines.robot_frames_dataset\n  shuffle_buffer_size: 40\n"
    )
    report_path = tmp_path / "report.json"
    completed = run_in_process(
        SCRIPT, "--config-dir", str(tmp_path), "--config-name", "mine", "--work-dir", str(tmp_path),
        "--report", str(report_path), "--timed-batches", "2",
        "--strategies", "index_permutation_symbolic",
    )  # fmt: skip
    assert completed.returncode == 0, completed.stdout + completed.stderr
    report = json.loads(report_path.read_text())
    on = {s["name"]: s["measured_on"] for s in report["strategies"]}
    assert on == {
        "your_loader": "your pipeline",
        "your_loader_smaller_buffer": "your pipeline",
        "your_loader_encoded": "your pipeline",  # the loader's own switch, flipped
        "your_loader_symbolic": "your pipeline",
        "index_permutation_symbolic": "synthetic episodes",
    }
    assert report["dataloader_target"] == "user_pipelines.robot_frames_dataset"
    sizes = {s["name"]: s["checkpoint_bytes"] for s in report["strategies"]}
    assert all(s["resumes_exactly"] for s in report["strategies"]), report["strategies"]
    assert sizes["your_loader_smaller_buffer"] < sizes["your_loader"]
    assert sizes["your_loader_encoded"] < sizes["your_loader"]
    rows = {
        line.split("|")[1].strip(): line
        for line in completed.stdout.splitlines()
        if line.startswith("| ")
    }
    assert "| your pipeline " in rows["your_loader"]
    assert "| synthetic episodes " in rows["index_permutation_symbolic"]
    # What the loader would need for the index strategies, and that they ran on other data.
    assert (
        "The index strategies need your loader to read any record by its index" in completed.stdout
    )
    assert "Shown on SYNTHETIC episodes instead (not your data)" in completed.stdout
    yours = min(
        (s for s in report["strategies"] if s["measured_on"] == "your pipeline"),
        key=lambda s: s["checkpoint_bytes"],
    )
    assert (
        f"SMALLEST CHECKPOINT THAT RESUMES EXACTLY ON YOUR PIPELINE: {yours['name']}, "
        in completed.stdout
    )
    # The small-buffer run's pointer names only what was measured on its own loader.
    same = strategies_pointer_line(report, pipeline="user_pipelines.robot_frames_dataset")
    assert same == (
        "SMALLEST CHECKPOINT THAT RESUMES EXACTLY ON YOUR PIPELINE (last `make strategies`): "
        f"{yours['name']}, {format_size(yours['checkpoint_bytes'])}; its code is in "
        "DISK_SPACE_SOLUTIONS.md"
    )
    other = strategies_pointer_line(report, pipeline="dlckpt.pipeline.robot.build_robot_dataset")
    assert other.startswith(
        "Smaller checkpoints, measured on synthetic episodes and not on your pipeline"
    )
    assert "index_permutation_symbolic" in other and "your_loader" not in other


def test_a_loader_without_the_switch_is_told_what_it_would_need() -> None:
    from dlckpt.strategies.user import user_variants

    variants, notes = user_variants(
        {"_target_": "user_pipelines.plain_dataset", "batch_size": 4}, 100
    )
    assert [v.name for v in variants] == [
        "your_loader",
        "your_loader_smaller_buffer",
        "your_loader_symbolic",
    ]
    assert variants[1].node["shuffle_buffer_size"] == 10
    assert notes and notes[0].startswith(
        "encoded frames in the buffer: your loader has no `buffer_encoded_frames` switch"
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--strategies", "nope"], "--strategies 'nope': unknown nope; choose from decoded_buffer"),
        (["--buffer-size", "0"], "--buffer-size='0': expected a positive integer"),
        (["--buffer-size", "4000"], "not more than the 4,000-element buffer"),
        (["--buffer-size", "200000"], "pass --buffer-size 1000"),
        (["--config-name", "nosuch"], "--config-name 'nosuch': no such config"),
    ],
)
def test_bad_input_exits_2_with_one_line(args: list[str], message: str, tmp_path: Path) -> None:
    completed = run_script(SCRIPT, "--work-dir", str(tmp_path), *args, timeout=120)
    assert completed.returncode == 2, completed.stderr
    assert message in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1
    assert "Traceback" not in completed.stderr
    assert not any(tmp_path.iterdir()), "nothing is written before the input is checked"
