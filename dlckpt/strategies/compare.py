"""Shuffle strategies side by side: the same episodes, the same buffer, very different checkpoints.

Which strategies there are (`STRATEGIES`), how each is measured (throughput, shuffle quality,
checkpoint size and time, exact resume in a new process), and the line the small-buffer
script ends with. The episode files are written by `strategies.episodes`; each strategy's
dataset is built by its Hydra target in `strategies.builders`.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from dlckpt.paths import WORK_DIR, command, doc
from dlckpt.runtime.tf_import import quiet_absl
from dlckpt.strategies.builders import (
    build_decoded_buffer,
    build_encoded_buffer,
    build_global_shuffle_symbolic,
    build_grain_array_record,
    build_index_permutation_symbolic,
    build_index_shuffle_before_map,
    global_shuffle_missing,
    grain_missing,
)
from dlckpt.strategies.episodes import DataSpec, write_array_record

DEFAULT_WORK_DIR = WORK_DIR / "strategies"
# The script leaves its last report in its work folder, so the small-buffer script can point to it.
LAST_REPORT_NAME = "last_report.json"
LAST_REPORT_CACHE = DEFAULT_WORK_DIR / LAST_REPORT_NAME


# --- the strategies ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Strategy:
    """A strategy as the comparison names it; `builder` is its Hydra target."""

    name: str
    builder: Callable[..., Any]
    summary: str
    framework: str = "tf.data"  # "grain": saved with get_state() as JSON, not tf.train.Checkpoint
    # Why this environment cannot run it (a package or a TensorFlow version missing), or None.
    missing: Callable[[], str | None] = lambda: None

    @property
    def target(self) -> str:
        return f"{self.builder.__module__}.{self.builder.__name__}"


STRATEGIES = (
    Strategy("decoded_buffer", build_decoded_buffer, "shuffle decoded frames (today's default)"),
    Strategy("encoded_buffer", build_encoded_buffer, "shuffle JPEG strings, decode after"),
    Strategy("index_shuffle_before_map", build_index_shuffle_before_map,
             "shuffle indices, read by index"),
    Strategy("index_permutation_symbolic", build_index_permutation_symbolic,
             "tf.random.experimental.index_shuffle + symbolic checkpoint"),
    Strategy("global_shuffle_symbolic", build_global_shuffle_symbolic,
             "tf.data global shuffle + symbolic checkpoint", missing=global_shuffle_missing),
    Strategy("grain_array_record", build_grain_array_record,
             "Grain index shuffle over ArrayRecord, JSON state", framework="grain",
             missing=grain_missing),
)  # fmt: skip
STRATEGY_NAMES = tuple(s.name for s in STRATEGIES)


# --- measuring ------------------------------------------------------------------------------


def shuffle_quality(indices: list[int], steps_per_episode: int) -> dict[str, float]:
    """Figures from the actual output order (`indices[p]` = source position of output p).

    mean_displacement: mean |p - source position| (0 = unshuffled; larger = better mixed).
    same_episode_consecutive: fraction of neighbouring outputs from the same episode
    (unshuffled: (steps-1)/steps; a uniform shuffle: about 1/num_episodes).
    """
    if len(indices) < 2:
        return {"elements": len(indices), "mean_displacement": 0.0, "same_episode_consecutive": 0.0}
    displacement = sum(abs(p - i) for p, i in enumerate(indices)) / len(indices)
    episodes = [i // steps_per_episode for i in indices]
    same = sum(a == b for a, b in itertools.pairwise(episodes)) / (len(episodes) - 1)
    return {
        "elements": len(indices),
        "mean_displacement": round(displacement, 1),
        "same_episode_consecutive": round(same, 4),
    }


@dataclass
class StrategyResult:
    name: str
    checkpoint_bytes: int = 0
    save_seconds: float = 0.0
    restore_seconds: float = 0.0
    elements_per_second: float = 0.0
    resumes_exactly: bool = False
    quality: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    # "your pipeline" (the config's own loader) or "synthetic episodes" (strategies.user).
    measured_on: str = "synthetic episodes"

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["save_seconds"] = round(self.save_seconds, 3)
        out["restore_seconds"] = round(self.restore_seconds, 3)
        out["elements_per_second"] = round(self.elements_per_second, 1)
        if self.error is None:
            del out["error"]
        return out


@dataclass
class PendingRestore:
    """A measured strategy whose checkpoint still has to be restored in a new process."""

    strategy: Strategy
    dataloader_cfg: dict[str, Any]
    checkpoint: Path  # the tf.train.Checkpoint prefix, or Grain's JSON state file
    expected: Any  # roundtrip.child.DigestStream
    workdir: Path


def measure_strategy(
    strategy: Strategy,
    dataloader_cfg: dict[str, Any],
    *,
    spec: DataSpec,
    workdir: Path,
    warmup_batches: int,
    timed_batches: int,
    compare_batches: int,
) -> tuple[StrategyResult, PendingRestore | None]:
    """Warm up, time, save the iterator, then take `compare_batches` more (the expected
    digests). The restore is left to `finish_restore`, so restores can run side by side
    without disturbing the next strategy's timing.
    """
    from dlckpt.roundtrip.digest import take_digests

    result = StrategyResult(strategy.name)
    grain = strategy.framework == "grain"
    iterator = _open_iterator(dataloader_cfg, grain)
    indices = _time_batches(iterator, result, dataloader_cfg, warmup_batches, timed_batches)
    # Only outputs that cannot come from a second epoch (p + buffer <= records) say how well
    # one epoch is mixed; every strategy is scored on the same count.
    buffer = int(dataloader_cfg.get("shuffle_buffer_size") or 0)
    limit = max(2, spec.num_records - buffer)
    result.quality = shuffle_quality(indices[:limit], spec.steps_per_episode)
    checkpoint = _save_state(iterator, result, workdir / "checkpoint", grain)
    if checkpoint is None:
        return result, None
    expected = take_digests(iterator, compare_batches)
    return result, PendingRestore(strategy, dataloader_cfg, checkpoint, expected, workdir)


def _open_iterator(dataloader_cfg: dict[str, Any], grain: bool) -> Any:
    """An iterator over the strategy's loader (Grain: its data written first)."""
    from omegaconf import OmegaConf

    from dlckpt.pipeline.build import instantiate_dataset

    if not grain:
        return iter(instantiate_dataset(OmegaConf.create(dataloader_cfg)))
    from hydra.utils import instantiate

    write_array_record(Path(dataloader_cfg["data_dir"]))
    with quiet_absl():
        return iter(instantiate(dataloader_cfg, _convert_="all"))


def _time_batches(
    iterator: Any, result: StrategyResult, dataloader_cfg: dict[str, Any], warmup: int, timed: int
) -> list[int]:
    """Read `warmup` then `timed` batches; the timed ones give elements per second. Returns
    every element index read, in order."""
    indices: list[int] = []
    for _ in range(warmup):  # the first batch fills the buffer
        indices.extend(int(i) for i in next(iterator)["index"])
    started = time.perf_counter()
    for _ in range(timed):
        indices.extend(int(i) for i in next(iterator)["index"])
    elapsed = time.perf_counter() - started
    batch_size = int(dataloader_cfg["batch_size"])
    result.elements_per_second = timed * batch_size / elapsed if elapsed > 0 else 0.0
    return indices


def _save_state(iterator: Any, result: StrategyResult, checkpoint_dir: Path, grain: bool) -> Any:
    """Save the iterator (Grain: its JSON state) into `checkpoint_dir`: the path to restore
    from, or None with `result.error` set when TensorFlow cannot save it."""
    from dlckpt.ckpt_io import UnsaveablePipeline, save_iterator

    if grain:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = checkpoint_dir / "iterator_state.json"
        started = time.perf_counter()
        checkpoint.write_text(json.dumps(iterator.get_state()))
        result.save_seconds = time.perf_counter() - started
        result.checkpoint_bytes = checkpoint.stat().st_size
        return checkpoint
    try:
        saved = save_iterator(iterator, checkpoint_dir)
    except UnsaveablePipeline as error:
        result.error = str(error)
        return None
    result.checkpoint_bytes, result.save_seconds = saved.bytes, saved.save_seconds
    return saved.prefix


def finish_restore(result: StrategyResult, pending: PendingRestore) -> StrategyResult:
    """Restore in a new process (Grain: from its JSON state) and compare bit for bit."""
    from dlckpt.roundtrip.child import GRAIN_STATE, TF_CHECKPOINT, restore_in_new_process
    from dlckpt.roundtrip.digest import first_mismatch

    grain = pending.strategy.framework == "grain"
    restored = restore_in_new_process(
        pending.dataloader_cfg,
        pending.checkpoint,
        pending.expected,
        pending.workdir,
        state_format=GRAIN_STATE if grain else TF_CHECKPOINT,
    )
    result.restore_seconds = restored.restore_seconds
    if restored.error:
        result.error = restored.error
        return result
    mismatch = first_mismatch(pending.expected, restored.stream)
    result.resumes_exactly = mismatch is None
    if mismatch is not None:
        result.error = f"does not resume exactly: {mismatch.describe()}"
    return result


# --- the pointer the small-buffer script prints ---------------------------------------------


def _last_report(report: Path | dict[str, Any] | None) -> dict[str, Any] | None:
    if isinstance(report, dict):
        return report
    path = Path(report) if report is not None else LAST_REPORT_CACHE
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def smallest_resuming_strategy(
    report: Path | dict[str, Any] | None = None, measured_on: str | None = None
) -> tuple[str, int] | None:
    """(name, checkpoint bytes) of the smallest strategy that resumed exactly in the last
    strategies report (default: the cache the strategies script writes), only among those
    `measured_on` that data when given; None if there is no report or none resumed.
    """
    data = _last_report(report)
    if data is None:
        return None
    candidates = [
        (int(s["checkpoint_bytes"]), str(s["name"]))
        for s in data.get("strategies", [])
        if s.get("resumes_exactly")
        and s.get("checkpoint_bytes")
        and (measured_on is None or s.get("measured_on", "synthetic episodes") == measured_on)
    ]
    if not candidates:
        return None
    size, name = min(candidates)
    return name, size


def strategies_pointer_line(
    report: Path | dict[str, Any] | None = None, pipeline: str | None = None
) -> str:
    """The line the small-buffer script ends with. It names a strategy as the smallest only
    when the last `make strategies` measured it on the same loader (`pipeline`, the
    `dataloader._target_`); otherwise it says the figures come from synthetic episodes."""
    from dlckpt.units import format_size

    data = _last_report(report)
    same_loader = (
        data is not None and pipeline is not None and data.get("dataloader_target") == pipeline
    )
    if same_loader:
        best = smallest_resuming_strategy(data, measured_on="your pipeline")
        if best is not None:
            return (
                "SMALLEST CHECKPOINT THAT RESUMES EXACTLY ON YOUR PIPELINE (last "
                f"`{command('strategies')}`): {best[0]}, {format_size(best[1])}; its code is "
                f"in {doc('DISK_SPACE_SOLUTIONS.md')}"
            )
    synthetic = smallest_resuming_strategy(data, measured_on="synthetic episodes") if data else None
    if synthetic is not None:
        buffer = data.get("buffer_size") if data else None
        at = f" at buffer {buffer:,}" if isinstance(buffer, int) else ""
        return (
            "Smaller checkpoints, measured on synthetic episodes and not on your pipeline "
            f"(last `{command('strategies')}`): {synthetic[0]}, "
            f"{format_size(synthetic[1])}{at}; `{command('strategies', '--config-name=YOURS')}` "
            f"runs those your loader allows on it ({doc('DISK_SPACE_SOLUTIONS.md')})"
        )
    return (
        f"Smaller checkpoints: `{command('strategies')}` measures shuffle strategies whose "
        f"checkpoint is kilobytes ({doc('DISK_SPACE_SOLUTIONS.md')})"
    )
