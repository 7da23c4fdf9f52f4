"""Shuffle strategies side by side: the same episodes, the same buffer, very different checkpoints.

The synthetic episodes of `_pipeline` are first written to files the way a training job
reads them: TFRecord shards of `tf.train.Example`s with JPEG-encoded frames, and (for the
strategies that read by index) the same records one file each, a random-access layout.
Each `build_*` function below turns those files into a training dataset and is
Hydra-instantiable, so `_roundtrip.restore_in_new_process` can rebuild it in a new process.

Every builder yields the same element (then batched):
{"observation": {"image_primary": uint8[window, S, S, 3], "image_wrist": ... (if any),
"proprio": float32[window, proprio_dim]}, "action": float32[action_dim],
"task": {"language_instruction": string}, "episode": int64, "index": int64}
where `index` is the record's position in the unshuffled stream (used for the quality figures).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from _pipeline import INSTRUCTIONS, _frame
from _tf import import_tensorflow

MANIFEST = "manifest.json"
RECORDS_DIR = "records"  # random access: one serialized tf.train.Example per file
SHARD_PATTERN = "episodes.tfrecord-{:05d}-of-{:05d}"
DEFAULT_WORK_DIR = Path(__file__).resolve().parents[2] / ".work" / "strategies"
# The script leaves its last report in its work folder, so the small-buffer script can point to it.
LAST_REPORT_NAME = "last_report.json"
LAST_REPORT_CACHE = DEFAULT_WORK_DIR / LAST_REPORT_NAME


# --- writing the episodes -------------------------------------------------------------------


@dataclass(frozen=True)
class DataSpec:
    """What is written: the config's episode shape (see `_pipeline.build_robot_dataset`)."""

    image_size: int = 64
    wrist_image_size: int = 0
    window_size: int = 1
    num_episodes: int = 100
    steps_per_episode: int = 40
    proprio_dim: int = 8
    action_dim: int = 7
    jpeg_quality: int = 90
    num_shards: int = 4
    seed: int = 0

    @classmethod
    def from_dataloader(cls, dataloader: dict[str, Any]) -> DataSpec:
        """The config's values, else the reference builder's defaults (what it would use)."""
        import inspect

        from _pipeline import build_robot_dataset

        names = set(cls.__dataclass_fields__)
        values = {
            name: parameter.default
            for name, parameter in inspect.signature(build_robot_dataset).parameters.items()
            if name in names and parameter.default is not inspect.Parameter.empty
        }
        values.update({k: v for k, v in dataloader.items() if k in names})
        return cls(**values)

    @property
    def num_records(self) -> int:
        return self.num_episodes * self.steps_per_episode

    @property
    def cameras(self) -> dict[str, int]:
        cameras = {"image_primary": self.image_size}
        if self.wrist_image_size:
            cameras["image_wrist"] = self.wrist_image_size
        return cameras

    def key(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


def write_episode_files(spec: DataSpec, root: Path) -> Path:
    """Write the episodes under `root/<spec key>/` once; later calls reuse the files.

    Returns the data folder. The manifest is written last, so a folder without one
    (an interrupted write) is rewritten.
    """
    tf = import_tensorflow()
    data_dir = root / f"episodes-{spec.key()}"
    if (data_dir / MANIFEST).is_file():
        return data_dir
    records_dir = data_dir / RECORDS_DIR
    records_dir.mkdir(parents=True, exist_ok=True)
    per_shard = -(-spec.num_records // spec.num_shards)
    writers = [
        tf.io.TFRecordWriter(str(data_dir / SHARD_PATTERN.format(s, spec.num_shards)))
        for s in range(spec.num_shards)
    ]
    # Frames are made and JPEG-encoded in a parallel tf.data map (graph mode is ~10x faster
    # than eager); the Example protos are assembled in Python from the results.
    steps = tf.data.Dataset.range(spec.num_records).map(
        lambda i: _encoded_step(tf, spec, i), num_parallel_calls=2, deterministic=True
    )
    for fields in steps.as_numpy_iterator():
        index = int(fields["index"])
        record = _example(tf, spec, fields).SerializeToString()
        writers[index // per_shard].write(record)
        (records_dir / f"{index:08d}").write_bytes(record)
    for writer in writers:
        writer.close()
    manifest = {"spec": asdict(spec), "num_records": spec.num_records}
    (data_dir / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
    return data_dir


def _encoded_step(tf: Any, spec: DataSpec, index: Any) -> dict[str, Any]:
    """One step as stored on disk: JPEG frames (with the history window) and low-dim data."""
    episode = index // spec.steps_per_episode
    step = index % spec.steps_per_episode
    fields: dict[str, Any] = {"index": index, "episode": episode}
    for camera_id, (name, size) in enumerate(spec.cameras.items()):
        frames = [
            _frame(tf, spec.seed, camera_id, episode, tf.maximum(step - lag, 0), size)
            for lag in reversed(range(spec.window_size))
        ]
        fields[name] = tf.stack([tf.io.encode_jpeg(f, quality=spec.jpeg_quality) for f in frames])
    step_seed = tf.stack([tf.constant(spec.seed, tf.int64) * 7919 + 11, index])
    proprio_shape = [spec.window_size * spec.proprio_dim]
    fields["proprio"] = tf.random.stateless_normal(proprio_shape, seed=step_seed)
    fields["action"] = tf.random.stateless_normal([spec.action_dim], seed=step_seed + 1)
    instructions = tf.constant(INSTRUCTIONS)
    fields["language_instruction"] = tf.gather(instructions, episode % len(INSTRUCTIONS))
    return fields


def _example(tf: Any, spec: DataSpec, fields: dict[str, Any]) -> Any:
    train = tf.train

    def ints(v: Any) -> Any:
        return train.Feature(int64_list=train.Int64List(value=[int(v)]))

    def floats(v: Any) -> Any:
        return train.Feature(float_list=train.FloatList(value=list(v)))

    def strings(v: Any) -> Any:
        return train.Feature(bytes_list=train.BytesList(value=list(v)))

    feature = {
        "index": ints(fields["index"]),
        "episode": ints(fields["episode"]),
        "proprio": floats(fields["proprio"]),
        "action": floats(fields["action"]),
        "language_instruction": strings([fields["language_instruction"]]),
    }
    for name in spec.cameras:
        feature[name] = strings(fields[name])
    return train.Example(features=train.Features(feature=feature))


def _read_manifest(data_dir: str | Path) -> DataSpec:
    path = Path(data_dir) / MANIFEST
    return DataSpec(**json.loads(path.read_text())["spec"])


# --- the pieces every strategy shares -------------------------------------------------------


def _parse(tf: Any, spec: DataSpec, record: Any) -> dict[str, Any]:
    """A serialized Example -> the element with frames still JPEG-encoded."""
    features = {
        "index": tf.io.FixedLenFeature([], tf.int64),
        "episode": tf.io.FixedLenFeature([], tf.int64),
        "proprio": tf.io.FixedLenFeature([spec.window_size * spec.proprio_dim], tf.float32),
        "action": tf.io.FixedLenFeature([spec.action_dim], tf.float32),
        "language_instruction": tf.io.FixedLenFeature([], tf.string),
    }
    for name in spec.cameras:
        features[name] = tf.io.FixedLenFeature([spec.window_size], tf.string)
    parsed = tf.io.parse_single_example(record, features)
    observation = {name: parsed[name] for name in spec.cameras}
    observation["proprio"] = tf.reshape(parsed["proprio"], [spec.window_size, spec.proprio_dim])
    return {
        "observation": observation,
        "action": parsed["action"],
        "task": {"language_instruction": parsed["language_instruction"]},
        "episode": parsed["episode"],
        "index": parsed["index"],
    }


def _decode(tf: Any, spec: DataSpec, element: dict[str, Any]) -> dict[str, Any]:
    """JPEG strings -> uint8 frames (the expensive, large step)."""
    for name, size in spec.cameras.items():
        encoded = element["observation"][name]
        frames = [tf.io.decode_jpeg(encoded[i], channels=3) for i in range(spec.window_size)]
        shape = [spec.window_size, size, size, 3]
        element["observation"][name] = tf.ensure_shape(tf.stack(frames), shape)
    return element


def _read_by_index(tf: Any, spec: DataSpec, data_dir: str, index: Any) -> dict[str, Any]:
    """Random access: read record `index` from the one-file-per-record folder, parse, decode."""
    name = tf.strings.as_string(index, width=8, fill="0")
    path = tf.strings.join([f"{data_dir}/{RECORDS_DIR}/", name])
    return _decode(tf, spec, _parse(tf, spec, tf.io.read_file(path)))


def _tfrecord_stream(tf: Any, data_dir: str, spec: DataSpec) -> Any:
    n = spec.num_shards
    files = [f"{data_dir}/{SHARD_PATTERN.format(s, n)}" for s in range(n)]
    # Shards in order, records in order: the unshuffled stream is the episodes one after another.
    return tf.data.TFRecordDataset(files)


def _finish(
    tf: Any, dataset: Any, batch_size: int, prefetch_batches: int, *, symbolic: bool = False
) -> Any:
    dataset = dataset.batch(batch_size, drop_remainder=True).prefetch(prefetch_batches)
    if symbolic:
        options = tf.data.Options()
        # Save cursors (the position in range(N) and the seed), not buffered elements.
        options.experimental_symbolic_checkpoint = True
        dataset = dataset.with_options(options)
    return dataset


# --- the strategies (Hydra targets) ---------------------------------------------------------


def build_decoded_buffer(
    *,
    data_dir: str,
    shuffle_buffer_size: int,
    batch_size: int = 8,
    num_parallel_calls: int = 2,
    prefetch_batches: int = 2,
    seed: int = 0,
) -> Any:
    """(a) Today's default: read, decode, then shuffle. The buffer holds decoded frames."""
    tf = import_tensorflow()
    spec = _read_manifest(data_dir)
    dataset = _tfrecord_stream(tf, data_dir, spec).repeat()
    dataset = dataset.map(
        lambda r: _decode(tf, spec, _parse(tf, spec, r)),
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    return _finish(tf, dataset, batch_size, prefetch_batches)


def build_encoded_buffer(
    *,
    data_dir: str,
    shuffle_buffer_size: int,
    batch_size: int = 8,
    num_parallel_calls: int = 2,
    prefetch_batches: int = 2,
    seed: int = 0,
) -> Any:
    """(b) Shuffle the JPEG strings, decode after the shuffle. The buffer holds encoded frames."""
    tf = import_tensorflow()
    spec = _read_manifest(data_dir)
    dataset = _tfrecord_stream(tf, data_dir, spec).repeat()
    dataset = dataset.map(
        lambda r: _parse(tf, spec, r), num_parallel_calls=num_parallel_calls, deterministic=True
    )
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    # Decode after the shuffle: the buffer (and the checkpoint) holds the JPEG strings.
    dataset = dataset.map(
        lambda e: _decode(tf, spec, e), num_parallel_calls=num_parallel_calls, deterministic=True
    )
    return _finish(tf, dataset, batch_size, prefetch_batches)


def build_index_shuffle_before_map(
    *,
    data_dir: str,
    shuffle_buffer_size: int,
    batch_size: int = 8,
    num_parallel_calls: int = 2,
    prefetch_batches: int = 2,
    seed: int = 0,
) -> Any:
    """(c1) Shuffle record indices (8 bytes each) with the same buffer, then read by index."""
    tf = import_tensorflow()
    spec = _read_manifest(data_dir)
    dataset = tf.data.Dataset.range(spec.num_records).repeat()
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed, reshuffle_each_iteration=True)
    dataset = dataset.map(
        lambda i: _read_by_index(tf, spec, data_dir, i),
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    return _finish(tf, dataset, batch_size, prefetch_batches)


def build_index_permutation_symbolic(
    *,
    data_dir: str,
    shuffle_buffer_size: int = 0,
    batch_size: int = 8,
    num_parallel_calls: int = 2,
    prefetch_batches: int = 2,
    seed: int = 0,
) -> Any:
    """(c2) A full random permutation per epoch from the public stateless op
    `tf.random.experimental.index_shuffle`, read by index, saved symbolically.

    Nothing is buffered (`shuffle_buffer_size` is accepted and unused): the checkpoint is
    the position in an integer range.
    """
    tf = import_tensorflow()
    spec = _read_manifest(data_dir)
    n = spec.num_records

    def shuffled(position: Any) -> Any:
        epoch = position // n  # a new permutation each epoch, fixed by (seed, epoch)
        return tf.random.experimental.index_shuffle(
            position % n, seed=tf.stack([tf.constant(seed, tf.int64), epoch]), max_index=n - 1
        )

    dataset = tf.data.Dataset.range(tf.int64.max).map(shuffled)
    dataset = dataset.map(
        lambda i: _read_by_index(tf, spec, data_dir, i),
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    return _finish(tf, dataset, batch_size, prefetch_batches, symbolic=True)


def build_global_shuffle_symbolic(
    *,
    data_dir: str,
    shuffle_buffer_size: int = 0,
    batch_size: int = 8,
    num_parallel_calls: int = 2,
    prefetch_batches: int = 2,
    seed: int = 0,
) -> Any:
    """(c3) tf.data's global shuffle (TF >= 2.17, still private in 2.21) over record indices,
    read by index, saved symbolically. Nothing is buffered (`shuffle_buffer_size` is unused).
    """
    tf = import_tensorflow()
    from tensorflow.python.data.experimental.ops.global_shuffle_op import _global_shuffle

    spec = _read_manifest(data_dir)
    dataset = tf.data.Dataset.range(spec.num_records)
    dataset = _global_shuffle(dataset, seed=seed, reshuffle_each_iteration=True).repeat()
    dataset = dataset.map(
        lambda i: _read_by_index(tf, spec, data_dir, i),
        num_parallel_calls=num_parallel_calls,
        deterministic=True,
    )
    return _finish(tf, dataset, batch_size, prefetch_batches, symbolic=True)


# --- (d) Grain over ArrayRecord (optional: only when `grain` and `array_record` import) -------

ARRAY_RECORD_FILE = "episodes.array_record"


def grain_available() -> bool:
    """Whether `grain` and `array_record` are installed (checked without importing them)."""
    from importlib.util import find_spec

    return find_spec("grain") is not None and find_spec("array_record") is not None


@contextlib.contextmanager
def _quiet_absl() -> Iterator[None]:
    """Grain logs "Failed to load jax profiler" through absl on import; it needs no jax here."""
    logger = logging.getLogger("absl")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


def write_array_record(data_dir: Path) -> Path:
    """The same records in one ArrayRecord file (random access by index), written once."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = data_dir / ARRAY_RECORD_FILE
    done = data_dir / (ARRAY_RECORD_FILE + ".done")
    if done.is_file():
        return path
    spec = _read_manifest(data_dir)
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for index in range(spec.num_records):
        writer.write((data_dir / RECORDS_DIR / f"{index:08d}").read_bytes())
    writer.close()
    done.write_text("")
    return path


def build_grain_array_record(
    *,
    data_dir: str,
    shuffle_buffer_size: int = 0,
    batch_size: int = 8,
    num_parallel_calls: int = 2,
    prefetch_batches: int = 2,
    seed: int = 0,
) -> Any:
    """(d) Grain: a global index shuffle over ArrayRecord, decoded per element; its iterator
    state is a few bytes of JSON. Returns a grain IterDataset (not a tf.data.Dataset).
    `shuffle_buffer_size`, `num_parallel_calls` and `prefetch_batches` are accepted and unused.
    """
    import grain
    import numpy as np

    tf = import_tensorflow()
    spec = _read_manifest(data_dir)

    def decode(record: bytes) -> dict[str, Any]:
        feature = tf.train.Example.FromString(record).features.feature

        def values(name: str) -> Any:
            return feature[name].bytes_list.value

        observation: dict[str, Any] = {
            name: np.stack([tf.io.decode_jpeg(j, channels=3).numpy() for j in values(name)])
            for name in spec.cameras
        }
        proprio = np.asarray(feature["proprio"].float_list.value, np.float32)
        observation["proprio"] = proprio.reshape(spec.window_size, spec.proprio_dim)
        return {
            "observation": observation,
            "action": np.asarray(feature["action"].float_list.value, np.float32),
            "task": {"language_instruction": np.bytes_(values("language_instruction")[0])},
            "episode": np.int64(feature["episode"].int64_list.value[0]),
            "index": np.int64(feature["index"].int64_list.value[0]),
        }

    source = grain.sources.ArrayRecordDataSource([str(Path(data_dir) / ARRAY_RECORD_FILE)])
    dataset = grain.MapDataset.source(source).shuffle(seed=seed).repeat().map(decode)
    return dataset.batch(batch_size, drop_remainder=True).to_iter_dataset()


def _grain_restore_main(argv: list[str]) -> int:
    """Entry point of the fresh process for Grain: build, set the saved state, digest batches."""
    from _roundtrip import take_digests
    from hydra.utils import instantiate

    request = json.loads(Path(argv[0]).read_text())
    result: dict[str, Any] = {"digests": [], "restore_seconds": 0.0}
    try:
        with _quiet_absl():
            dataset = instantiate(request["dataloader"], _convert_="all")
        started = time.perf_counter()
        iterator = iter(dataset)
        iterator.set_state(json.loads(Path(request["state"]).read_text()))
        result["restore_seconds"] = time.perf_counter() - started
        result["digests"] = take_digests(iterator, request["batches"])
    except Exception as error:
        detail = " ".join(str(error).split())[:300]
        result["error"] = f"restore failed: {type(error).__name__}: {detail}"
    Path(argv[1]).write_text(json.dumps(result))
    return 0


def _grain_restore_in_new_process(
    dataloader_cfg: dict[str, Any], state: Path, batches: int, workdir: Path
) -> Any:
    import os
    import subprocess
    import sys

    from _roundtrip import RestoreResult

    request, result_path = workdir / "grain_request.json", workdir / "grain_result.json"
    request.write_text(
        json.dumps({"dataloader": dataloader_cfg, "state": str(state), "batches": batches})
    )
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parent)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (here, env.get("PYTHONPATH")) if p)
    completed = subprocess.run(
        [sys.executable, __file__, "grain-restore", str(request), str(result_path)],
        env=env, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if not result_path.exists():
        tail = " | ".join(completed.stderr.strip().splitlines()[-3:])
        return RestoreResult([], 0.0, f"restore process exited {completed.returncode}: {tail}")
    data = json.loads(result_path.read_text())
    return RestoreResult(data["digests"], data["restore_seconds"], data.get("error"))


@dataclass(frozen=True)
class Strategy:
    name: str
    builder: Callable[..., Any]
    summary: str
    framework: str = "tf.data"  # "grain": saved with get_state() as JSON, not tf.train.Checkpoint

    @property
    def target(self) -> str:
        return f"{__name__}.{self.builder.__name__}"


STRATEGIES = (
    Strategy("decoded_buffer", build_decoded_buffer, "shuffle decoded frames (today's default)"),
    Strategy("encoded_buffer", build_encoded_buffer, "shuffle JPEG strings, decode after"),
    Strategy("index_shuffle_before_map", build_index_shuffle_before_map,
             "shuffle indices, read by index"),
    Strategy("index_permutation_symbolic", build_index_permutation_symbolic,
             "tf.random.experimental.index_shuffle + symbolic checkpoint"),
    Strategy("global_shuffle_symbolic", build_global_shuffle_symbolic,
             "tf.data global shuffle + symbolic checkpoint"),
    Strategy("grain_array_record", build_grain_array_record,
             "Grain index shuffle over ArrayRecord, JSON state", framework="grain"),
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
    expected: list[Any]
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
    from _pipeline import instantiate_dataset
    from _roundtrip import UnsaveablePipeline, save_iterator, take_digests
    from omegaconf import OmegaConf

    result = StrategyResult(strategy.name)
    grain = strategy.framework == "grain"
    if grain:
        from hydra.utils import instantiate

        write_array_record(Path(dataloader_cfg["data_dir"]))
        with _quiet_absl():
            iterator = iter(instantiate(dataloader_cfg, _convert_="all"))
    else:
        iterator = iter(instantiate_dataset(OmegaConf.create(dataloader_cfg)))

    indices: list[int] = []
    for _ in range(warmup_batches):  # the first batch fills the buffer
        indices.extend(int(i) for i in next(iterator)["index"])
    started = time.perf_counter()
    for _ in range(timed_batches):
        indices.extend(int(i) for i in next(iterator)["index"])
    elapsed = time.perf_counter() - started
    batch_size = int(dataloader_cfg["batch_size"])
    result.elements_per_second = timed_batches * batch_size / elapsed if elapsed > 0 else 0.0
    # Only outputs that cannot come from a second epoch (p + buffer <= records) say how well
    # one epoch is mixed; every strategy is scored on the same count.
    buffer = int(dataloader_cfg.get("shuffle_buffer_size") or 0)
    limit = max(2, spec.num_records - buffer)
    result.quality = shuffle_quality(indices[:limit], spec.steps_per_episode)

    checkpoint_dir = workdir / "checkpoint"
    if grain:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
        checkpoint = checkpoint_dir / "iterator_state.json"
        started = time.perf_counter()
        checkpoint.write_text(json.dumps(iterator.get_state()))
        result.save_seconds = time.perf_counter() - started
        result.checkpoint_bytes = checkpoint.stat().st_size
    else:
        try:
            saved = save_iterator(iterator, checkpoint_dir)
        except UnsaveablePipeline as error:
            result.error = str(error)
            return result, None
        result.checkpoint_bytes, result.save_seconds = saved.bytes, saved.save_seconds
        checkpoint = saved.prefix
    expected = take_digests(iterator, compare_batches)
    return result, PendingRestore(strategy, dataloader_cfg, checkpoint, expected, workdir)


def finish_restore(result: StrategyResult, pending: PendingRestore) -> StrategyResult:
    """Restore in a new process (Grain: from its JSON state) and compare bit for bit."""
    from _roundtrip import first_mismatch, restore_in_new_process

    batches = len(pending.expected)
    if pending.strategy.framework == "grain":
        restored = _grain_restore_in_new_process(
            pending.dataloader_cfg, pending.checkpoint, batches, pending.workdir
        )
    else:
        restored = restore_in_new_process(
            pending.dataloader_cfg, pending.checkpoint, batches, pending.workdir
        )
    result.restore_seconds = restored.restore_seconds
    if restored.error:
        result.error = restored.error
        return result
    mismatch = first_mismatch(pending.expected, restored.digests)
    result.resumes_exactly = mismatch is None
    if mismatch is not None:
        result.error = f"does not resume exactly: {mismatch.describe()}"
    return result


# --- the pointer the small-buffer script prints ---------------------------------------------


def smallest_resuming_strategy(
    report: Path | dict[str, Any] | None = None,
) -> tuple[str, int] | None:
    """(name, checkpoint bytes) of the smallest strategy that resumed exactly in the last
    strategies report (default: the cache the strategies script writes), or None if there
    is no report yet or none resumed.
    """
    if isinstance(report, dict):
        data = report
    else:
        path = Path(report) if report is not None else LAST_REPORT_CACHE
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None
    candidates = [
        (int(s["checkpoint_bytes"]), str(s["name"]))
        for s in data.get("strategies", [])
        if s.get("resumes_exactly") and s.get("checkpoint_bytes")
    ]
    if not candidates:
        return None
    size, name = min(candidates)
    return name, size


def strategies_pointer_line(report: Path | dict[str, Any] | None = None) -> str:
    """The line the small-buffer script ends with: the smallest checkpoint that resumed
    exactly in the last `make strategies` run, or how to measure it."""
    from _report import format_bytes

    best = smallest_resuming_strategy(report)
    if best is None:
        return (
            "Smaller checkpoints: `make strategies` measures shuffle strategies whose checkpoint "
            "is kilobytes (DISK_SPACE_SOLUTIONS.md)"
        )
    name, size = best
    return (
        f"SMALLEST CHECKPOINT THAT RESUMES EXACTLY (last `make strategies`): {name}, "
        f"{format_bytes(size)}; its code is in DISK_SPACE_SOLUTIONS.md"
    )


if __name__ == "__main__":
    import sys

    if sys.argv[1:2] == ["grain-restore"]:
        sys.exit(_grain_restore_main(sys.argv[2:]))
    sys.exit(
        f"usage: {sys.argv[0]} grain-restore REQUEST RESULT (internal: Grain's restore process)"
    )
