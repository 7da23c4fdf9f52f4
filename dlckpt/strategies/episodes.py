"""The episode files every shuffle strategy reads, written once per data spec.

The synthetic episodes of `pipeline.robot` are written the way a training job reads them:
TFRecord shards of `tf.train.Example`s with JPEG-encoded frames, the same records one file
each (the random-access layout the index strategies read), and for Grain one ArrayRecord
file. A folder is keyed by its `DataSpec`, so a later run with the same spec reuses it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from dlckpt.pipeline.robot import INSTRUCTIONS, _frame
from dlckpt.runtime.tf_import import import_tensorflow

MANIFEST = "manifest.json"
RECORDS_DIR = "records"  # random access: one serialized tf.train.Example per file
SHARD_PATTERN = "episodes.tfrecord-{:05d}-of-{:05d}"
ARRAY_RECORD_FILE = "episodes.array_record"


@dataclass(frozen=True)
class DataSpec:
    """What is written: the config's episode shape (see `pipeline.robot.build_robot_dataset`)."""

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

        from dlckpt.pipeline.robot import build_robot_dataset

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


def read_manifest(data_dir: str | Path) -> DataSpec:
    """The spec a data folder was written with."""
    path = Path(data_dir) / MANIFEST
    return DataSpec(**json.loads(path.read_text())["spec"])


def write_array_record(data_dir: Path) -> Path:
    """The same records in one ArrayRecord file (random access by index), written once."""
    from array_record.python.array_record_module import ArrayRecordWriter

    path = data_dir / ARRAY_RECORD_FILE
    done = data_dir / (ARRAY_RECORD_FILE + ".done")
    if done.is_file():
        return path
    spec = read_manifest(data_dir)
    writer = ArrayRecordWriter(str(path), "group_size:1")
    for index in range(spec.num_records):
        writer.write((data_dir / RECORDS_DIR / f"{index:08d}").read_bytes())
    writer.close()
    done.write_text("")
    return path
