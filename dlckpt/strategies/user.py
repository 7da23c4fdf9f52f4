"""Shuffle strategies on the user's own loader, and the ones it cannot run without random access.

Three strategies need no new data layout, so they run on the loader `dataloader._target_`
names: a smaller buffer, the other side of its encoded/decoded switch (when its signature
has `buffer_encoded_frames`) and symbolic checkpointing (tf.data's
`experimental_symbolic_checkpoint`, when the graph allows it). Each is saved, restored in
a new process and compared, like the synthetic strategies. The index strategies read
records by index, which a streaming loader cannot: they run on synthetic episodes whose
decoded sample is as large as the user's, and every row says which data it was measured on.
"""

from __future__ import annotations

import inspect
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REFERENCE_TARGET = "dlckpt.pipeline.robot.build_robot_dataset"
ON_YOUR_PIPELINE = "your pipeline"
ON_SYNTHETIC = "synthetic episodes"
# What the index strategies need from a loader, said where they cannot run on it.
RANDOM_ACCESS_NEEDS = (
    "read any record by its index: a per-record index into your files (one file per record, "
    "or ArrayRecord / a TFRecord offset index)"
)
SYNTHETIC_FOR_USER = (
    "decoded_buffer",
    "index_shuffle_before_map",
    "index_permutation_symbolic",
    "global_shuffle_symbolic",
    "grain_array_record",
)


def is_reference_loader(dataloader: dict[str, Any]) -> bool:
    """True for the project's synthetic robot loader (its strategies run on its own episodes)."""
    return str(dataloader.get("_target_", "")) == REFERENCE_TARGET


@dataclass
class Variant:
    """One strategy on the user's loader: its name, what it changes, the Hydra node it builds."""

    name: str
    summary: str
    node: dict[str, Any]


def with_symbolic_checkpoint(*, dataloader: Any) -> Any:
    """Hydra target: the user's dataset (instantiated by Hydra first) with symbolic checkpointing,
    which saves cursors instead of buffered elements where the graph's datasets support it."""
    from dlckpt.runtime.tf_import import import_tensorflow

    tf = import_tensorflow()
    options = tf.data.Options()
    options.experimental_symbolic_checkpoint = True
    return dataloader.with_options(options)


def _parameters(target: str) -> dict[str, inspect.Parameter]:
    from hydra.utils import get_method

    try:
        return dict(inspect.signature(get_method(target)).parameters)
    except Exception:  # an unimportable target fails later with the loader's own one-line error
        return {}


def user_variants(dataloader: dict[str, Any], buffer: int) -> tuple[list[Variant], list[str]]:
    """(the strategies the user's loader can run, notes on those it cannot and why)."""
    base = {**dataloader, "shuffle_buffer_size": buffer}
    smaller = max(buffer // 10, 1)
    variants = [
        Variant("your_loader", f"your loader, buffer {buffer:,}", base),
        Variant(
            "your_loader_smaller_buffer",
            f"your loader, buffer {smaller:,} (a tenth: shuffles less)",
            {**base, "shuffle_buffer_size": smaller},
        ),
    ]
    notes = []
    parameters = _parameters(str(dataloader["_target_"]))
    switch = parameters.get("buffer_encoded_frames")
    if switch is not None:
        default = switch.default if switch.default is not inspect.Parameter.empty else False
        encoded = not bool(base.get("buffer_encoded_frames", default))
        name = "your_loader_encoded" if encoded else "your_loader_decoded"
        what = "JPEG strings in the buffer" if encoded else "decoded frames in the buffer"
        variants.append(
            Variant(name, f"your loader, {what}", {**base, "buffer_encoded_frames": encoded})
        )
    else:
        notes.append(
            "encoded frames in the buffer: your loader has no `buffer_encoded_frames` switch; "
            "shuffle the encoded strings and decode after the shuffle (DISK_SPACE_SOLUTIONS.md, "
            "encoded frames) to measure it"
        )
    variants.append(
        Variant(
            "your_loader_symbolic",
            "your loader, experimental_symbolic_checkpoint=True",
            {"_target_": f"{__name__}.with_symbolic_checkpoint", "dataloader": base},
        )
    )
    return variants, notes


def synthetic_spec_like(sample_bytes: int, buffer: int, seed: int = 0) -> Any:
    """Synthetic episodes whose decoded sample (one square camera) is as large as the user's,
    with at least twice the buffer's records (and 200) so every strategy's buffer fills."""
    from dlckpt.strategies.episodes import DataSpec

    size = max(8, round(math.sqrt(max(sample_bytes, 192) / 3)))
    steps = 10
    episodes = max(20, math.ceil(2 * buffer / steps) + 1)
    return DataSpec(image_size=size, num_episodes=episodes, steps_per_episode=steps, seed=seed)


def measured_sample_bytes(dataloader: dict[str, Any]) -> int:
    """Bytes of one sample of the user's output (decoded), from its first batch, buffer 8."""
    from omegaconf import OmegaConf

    from dlckpt.estimate.estimator import measured_sample_bytes as measure
    from dlckpt.pipeline.build import instantiate_dataset

    node = OmegaConf.create({**dataloader, "shuffle_buffer_size": 8})
    return measure(instantiate_dataset(node), batches=1)


@dataclass
class VariantRun:
    """What `measure_variant` hands back: the result, and the restore still to run."""

    result: Any
    pending: Any | None
    notes: list[str] = field(default_factory=list)


def measure_variant(
    variant: Variant, *, workdir: Path, warmup_batches: int, timed_batches: int,
    compare_batches: int,
) -> VariantRun:  # fmt: skip
    """Warm up, time, save, take the expected digests; the new-process restore is left to
    `strategies.compare.finish_restore`. Throughput is samples (leading dimensions) per second."""
    from omegaconf import OmegaConf

    from dlckpt.ckpt_io import UnsaveablePipeline, save_iterator
    from dlckpt.pipeline.build import instantiate_dataset
    from dlckpt.pipeline.tensors import leading_dimension
    from dlckpt.roundtrip.digest import take_digests
    from dlckpt.strategies.compare import PendingRestore, Strategy, StrategyResult

    result = StrategyResult(variant.name)
    iterator = iter(instantiate_dataset(OmegaConf.create(variant.node)))
    for _ in range(warmup_batches):
        next(iterator)
    started = time.perf_counter()
    elements = sum(leading_dimension(next(iterator)) for _ in range(timed_batches))
    elapsed = time.perf_counter() - started
    result.elements_per_second = elements / elapsed if elapsed > 0 else 0.0
    try:
        saved = save_iterator(iterator, workdir / "checkpoint")
    except UnsaveablePipeline as error:
        result.error = str(error)
        return VariantRun(result, None)
    result.checkpoint_bytes, result.save_seconds = saved.bytes, saved.save_seconds
    expected = take_digests(iterator, compare_batches)
    strategy = Strategy(variant.name, with_symbolic_checkpoint, variant.summary)
    return VariantRun(
        result, PendingRestore(strategy, variant.node, saved.prefix, expected, workdir)
    )
