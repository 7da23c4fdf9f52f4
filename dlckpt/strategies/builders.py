"""The shuffle strategies' dataset builders: the same episodes, very different checkpoints.

Each `build_*` below turns the files of `strategies.episodes` into a training dataset and is
a Hydra target, so `roundtrip.child.restore_in_new_process` can rebuild it in a new process.
Every builder takes the same keywords (see `_hydra_builder`) and yields the same element
(then batched):
{"observation": {"image_primary": uint8[window, S, S, 3], "image_wrist": ... (if any),
"proprio": float32[window, proprio_dim]}, "action": float32[action_dim],
"task": {"language_instruction": string}, "episode": int64, "index": int64}
where `index` is the record's position in the unshuffled stream (used for the quality figures).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlckpt.runtime.tf_import import import_tensorflow
from dlckpt.strategies.episodes import (
    ARRAY_RECORD_FILE,
    RECORDS_DIR,
    SHARD_PATTERN,
    DataSpec,
    read_manifest,
)

# --- the pieces every strategy shares -------------------------------------------------------


@dataclass(frozen=True)
class Stages:
    """One strategy node's files and options, and the tf.data stages built from them."""

    tf: Any
    data_dir: str
    spec: DataSpec
    shuffle_buffer_size: int | None  # required by the strategies that shuffle through a buffer
    batch_size: int
    num_parallel_calls: int
    prefetch_batches: int
    seed: int

    def records(self) -> Any:
        """The serialized records, shards in order and records in order: the unshuffled
        stream is the episodes one after another."""
        n = self.spec.num_shards
        files = [f"{self.data_dir}/{SHARD_PATTERN.format(s, n)}" for s in range(n)]
        return self.tf.data.TFRecordDataset(files)

    def parse(self, record: Any) -> dict[str, Any]:
        """A serialized Example -> the element with frames still JPEG-encoded."""
        tf, spec = self.tf, self.spec
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

    def decode(self, element: dict[str, Any]) -> dict[str, Any]:
        """JPEG strings -> uint8 frames (the expensive, large step)."""
        tf, window = self.tf, self.spec.window_size
        for name, size in self.spec.cameras.items():
            encoded = element["observation"][name]
            frames = [tf.io.decode_jpeg(encoded[i], channels=3) for i in range(window)]
            shape = [window, size, size, 3]
            element["observation"][name] = tf.ensure_shape(tf.stack(frames), shape)
        return element

    def read_by_index(self, index: Any) -> dict[str, Any]:
        """Random access: read record `index` from the one-file-per-record folder, parse, decode."""
        tf = self.tf
        name = tf.strings.as_string(index, width=8, fill="0")
        path = tf.strings.join([f"{self.data_dir}/{RECORDS_DIR}/", name])
        return self.decode(self.parse(tf.io.read_file(path)))

    def map(self, dataset: Any, function: Callable[[Any], Any]) -> Any:
        """A parallel map that keeps the order: a checkpoint resumes exactly only a pipeline
        whose order is a function of its seed."""
        return dataset.map(function, num_parallel_calls=self.num_parallel_calls, deterministic=True)

    def shuffle(self, dataset: Any) -> Any:
        """The shuffle buffer: what it holds is what the checkpoint holds."""
        if self.shuffle_buffer_size is None:
            raise TypeError("this strategy shuffles through a buffer: pass shuffle_buffer_size")
        return dataset.shuffle(
            self.shuffle_buffer_size, seed=self.seed, reshuffle_each_iteration=True
        )

    def finish(self, dataset: Any, *, symbolic: bool = False) -> Any:
        dataset = dataset.batch(self.batch_size, drop_remainder=True)
        dataset = dataset.prefetch(self.prefetch_batches)
        if symbolic:
            options = self.tf.data.Options()
            # Save cursors (the position in range(N) and the seed), not buffered elements.
            options.experimental_symbolic_checkpoint = True
            dataset = dataset.with_options(options)
        return dataset


def _hydra_builder(make: Callable[[Stages], Any]) -> Callable[..., Any]:
    """`make` as a Hydra target: called with the keywords of a strategy's node (the same for
    every strategy, see `compare_shuffle_strategies._dataloader_cfg`), under `make`'s name."""

    def build(
        *,
        data_dir: str,
        shuffle_buffer_size: int | None = None,
        batch_size: int = 8,
        num_parallel_calls: int = 2,
        prefetch_batches: int = 2,
        seed: int = 0,
    ) -> Any:
        tf = import_tensorflow()
        spec = read_manifest(data_dir)
        return make(
            Stages(
                tf, data_dir, spec, shuffle_buffer_size, batch_size, num_parallel_calls,
                prefetch_batches, seed,
            )
        )  # fmt: skip

    # Named as `make`, so the `_target_` "module.build_x" finds it; the signature stays build's.
    build.__module__, build.__name__ = make.__module__, make.__name__
    build.__qualname__, build.__doc__ = make.__qualname__, make.__doc__
    return build


# --- the strategies (Hydra targets) ---------------------------------------------------------


@_hydra_builder
def build_decoded_buffer(s: Stages) -> Any:
    """(a) Today's default: read, decode, then shuffle. The buffer holds decoded frames."""
    dataset = s.map(s.records().repeat(), lambda r: s.decode(s.parse(r)))
    return s.finish(s.shuffle(dataset))


@_hydra_builder
def build_encoded_buffer(s: Stages) -> Any:
    """(b) Shuffle the JPEG strings, decode after the shuffle. The buffer holds encoded frames."""
    dataset = s.shuffle(s.map(s.records().repeat(), s.parse))
    # Decode after the shuffle: the buffer (and the checkpoint) holds the JPEG strings.
    return s.finish(s.map(dataset, s.decode))


@_hydra_builder
def build_index_shuffle_before_map(s: Stages) -> Any:
    """(c1) Shuffle record indices (8 bytes each) with the same buffer, then read by index."""
    indices = s.shuffle(s.tf.data.Dataset.range(s.spec.num_records).repeat())
    return s.finish(s.map(indices, s.read_by_index))


@_hydra_builder
def build_index_permutation_symbolic(s: Stages) -> Any:
    """(c2) A full random permutation per epoch from the public stateless op
    `tf.random.experimental.index_shuffle`, read by index, saved symbolically.

    Nothing is buffered (`shuffle_buffer_size` is accepted and unused): the checkpoint is
    the position in an integer range.
    """
    tf, n = s.tf, s.spec.num_records

    def shuffled(position: Any) -> Any:
        epoch = position // n  # a new permutation each epoch, fixed by (seed, epoch)
        return tf.random.experimental.index_shuffle(
            position % n, seed=tf.stack([tf.constant(s.seed, tf.int64), epoch]), max_index=n - 1
        )

    indices = tf.data.Dataset.range(tf.int64.max).map(shuffled)
    return s.finish(s.map(indices, s.read_by_index), symbolic=True)


@_hydra_builder
def build_global_shuffle_symbolic(s: Stages) -> Any:
    """(c3) tf.data's global shuffle (TF >= 2.17, still private in 2.21) over record indices,
    read by index, saved symbolically. Nothing is buffered (`shuffle_buffer_size` is unused).
    """
    from tensorflow.python.data.experimental.ops.global_shuffle_op import _global_shuffle

    indices = s.tf.data.Dataset.range(s.spec.num_records)
    indices = _global_shuffle(indices, seed=s.seed, reshuffle_each_iteration=True).repeat()
    return s.finish(s.map(indices, s.read_by_index), symbolic=True)


def global_shuffle_missing() -> str | None:
    """Why this TensorFlow has no tf.data global shuffle (added in 2.17), or None."""
    from importlib.util import find_spec

    tf = import_tensorflow()  # quietly: find_spec would import it with its C++ log lines
    if find_spec("tensorflow.python.data.experimental.ops.global_shuffle_op") is not None:
        return None
    return f"tf.data's global shuffle needs TensorFlow 2.17 or newer (this is {tf.__version__})"


# --- (d) Grain over ArrayRecord (optional: only when `grain` and `array_record` import) -------


def grain_missing() -> str | None:
    """Why Grain cannot run here, or None (checked without importing it)."""
    from importlib.util import find_spec

    absent = [name for name in ("grain", "array_record") if find_spec(name) is None]
    if not absent:
        return None
    from importlib.metadata import PackageNotFoundError, version

    try:
        protobuf = version("protobuf")
    except PackageNotFoundError:
        protobuf = ""
    if protobuf and int(protobuf.split(".")[0]) < 5:
        # Grain requires protobuf >= 5.28; installing it would replace the protobuf this
        # TensorFlow requires (< 5 up to TensorFlow 2.17), so no install advice here.
        return (
            f"Grain needs protobuf 5.28 or newer, and this environment's TensorFlow holds "
            f"protobuf {protobuf}: installing Grain here would replace it"
        )
    packages = " ".join(name.replace("_", "-") for name in absent)
    return f"{' and '.join(absent)} not installed (pip install {packages})"


@_hydra_builder
def build_grain_array_record(s: Stages) -> Any:
    """(d) Grain: a global index shuffle over ArrayRecord, decoded per element; its iterator
    state is a few bytes of JSON. Returns a grain IterDataset (not a tf.data.Dataset).
    `shuffle_buffer_size`, `num_parallel_calls` and `prefetch_batches` are accepted and unused.
    """
    import grain
    import numpy as np

    tf, spec = s.tf, s.spec

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

    source = grain.sources.ArrayRecordDataSource([str(Path(s.data_dir) / ARRAY_RECORD_FILE)])
    dataset = grain.MapDataset.source(source).shuffle(seed=s.seed).repeat().map(decode)
    return dataset.batch(s.batch_size, drop_remainder=True).to_iter_dataset()
