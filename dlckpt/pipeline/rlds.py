"""An RLDS dataset, written with TFDS and read the way Octo/OpenVLA-style loaders read it.

`write_example_rlds(folder)` writes a small RLDS dataset with `tensorflow_datasets`' own
builder machinery (no download): episodes of JPEG camera frames, proprio state, actions and
a language instruction, in several TFRecord shards. `build_rlds_dataset(data_dir=…)` reads
any RLDS dataset of that layout as RLDS loaders do: `tfds.builder_from_directory(…)
.as_dataset(split=…, shuffle_files=…, read_config=ReadConfig(shuffle_seed=…))`, each
episode's steps made one trajectory of tensors and flattened into frames, a frame shuffle
buffer holding the still-encoded frames, decode after it, batch, prefetch.

`tensorflow_datasets` is the user's package, not a requirement of this tool: it is imported
only here, when such a config runs (conf/rlds.yaml). From the command line:
`python -m dlckpt.pipeline.rlds DIR` writes the example dataset and prints its data_dir.
"""

from __future__ import annotations

import importlib.util
import sys
import tempfile
from pathlib import Path
from typing import Any

from dlckpt.runtime.tf_import import import_tensorflow

NAME = "dlckpt_example_rlds"  # the TFDS builder's name: <folder>/dlckpt_example_rlds/1.0.0
VERSION = "1.0.0"
STATE_DIM, ACTION_DIM = 8, 7
INSTRUCTIONS = ("pick up the red block", "open the drawer", "push the cup to the left")


def _features(tfds: Any, image_size: int) -> Any:
    import numpy as np

    step = {
        "observation": {
            "image": tfds.features.Image(shape=(image_size, image_size, 3), encoding_format="jpeg"),
            "state": tfds.features.Tensor(shape=(STATE_DIM,), dtype=np.float32),
        },
        "action": tfds.features.Tensor(shape=(ACTION_DIM,), dtype=np.float32),
        "language_instruction": tfds.features.Text(),
        "reward": tfds.features.Scalar(dtype=np.float32),
        "is_first": tfds.features.Scalar(dtype=np.bool_),
        "is_last": tfds.features.Scalar(dtype=np.bool_),
        "is_terminal": tfds.features.Scalar(dtype=np.bool_),
    }
    return tfds.features.FeaturesDict(
        {
            "steps": tfds.features.Dataset(step),
            "episode_metadata": {"file_path": tfds.features.Text()},
        }
    )


def _episode(index: int, steps: int, image_size: int) -> dict[str, Any]:
    """One episode's steps: frames a smooth gradient moved by the step (so JPEG stays small)."""
    import numpy as np

    rng = np.random.default_rng(index)
    base = rng.integers(0, 255, size=(1, 1, 3))
    ramp = np.linspace(0, 60, image_size, dtype=np.float64)[None, :, None]
    records = []
    for step in range(steps):
        frame = np.clip(base + ramp + 4 * step, 0, 255).astype(np.uint8)
        frame = np.broadcast_to(frame, (image_size, image_size, 3)).copy()
        records.append(
            {
                "observation": {
                    "image": frame,
                    "state": rng.standard_normal(STATE_DIM).astype(np.float32),
                },
                "action": rng.standard_normal(ACTION_DIM).astype(np.float32),
                "language_instruction": INSTRUCTIONS[index % len(INSTRUCTIONS)],
                "reward": np.float32(step == steps - 1),
                "is_first": step == 0,
                "is_last": step == steps - 1,
                "is_terminal": step == steps - 1,
            }
        )
    return {"steps": records, "episode_metadata": {"file_path": f"episode_{index}.npy"}}


def write_example_rlds(
    folder: str | Path,
    *,
    episodes: int = 24,
    steps_per_episode: int = 12,
    image_size: int = 32,
    shards: int = 4,
) -> Path:
    """Write the example RLDS dataset under `folder`; returns its data_dir (the version folder).

    Layout: <folder>/dlckpt_example_rlds/1.0.0/ with `shards` TFRecord files of the "train"
    split, `episodes` episodes of `steps_per_episode` steps, frames uint8[image_size,
    image_size, 3] stored as JPEG. Raises ModuleNotFoundError without tensorflow_datasets.
    """
    import_tensorflow()
    import tensorflow_datasets as tfds

    features = _features(tfds, image_size)

    class Builder(tfds.core.GeneratorBasedBuilder):  # type: ignore[misc, name-defined]
        VERSION = tfds.core.Version(VERSION)
        name = NAME

        def _info(self) -> Any:
            return self.dataset_info_from_configs(features=features)

        def _split_generators(self, dl_manager: Any) -> Any:
            return {"train": self._generate_examples()}

        def _generate_examples(self) -> Any:
            for index in range(episodes):
                yield f"episode_{index}", _episode(index, steps_per_episode, image_size)

    builder = Builder(data_dir=str(folder))
    # TFDS makes a temporary folder it never removes (dataset_info's mkdtemp): give it one
    # of ours, removed after.
    saved = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="dlckpt-rlds-") as scratch:
        tempfile.tempdir = scratch
        try:
            builder.download_and_prepare(
                download_config=tfds.download.DownloadConfig(
                    num_shards=shards, try_download_gcs=False
                )
            )
        finally:
            tempfile.tempdir = saved
    return Path(builder.data_dir)


def build_rlds_dataset(
    *,
    data_dir: str,
    shuffle_buffer_size: int,
    batch_size: int = 8,
    split: str = "train",
    shuffle_files: bool = True,
    shuffle_seed: int | None = None,
    seed: int = 0,
    num_parallel_calls: int = 2,
    prefetch_batches: int = 2,
) -> Any:
    """An RLDS loader: read episodes, flatten to frames, shuffle encoded frames, decode, batch.

    `data_dir` is the dataset's version folder (…/name/1.0.0). `shuffle_files` shuffles the
    order of the TFRecord files each pass, with `shuffle_seed` as TFDS's ReadConfig seed:
    None (TFDS's default) draws a new order from the OS on every pass, which no iterator
    checkpoint can replay. Output (one batch): {"observation": {"image": uint8[B, S, S, 3],
    "state": float32[B, 8]}, "action": float32[B, 7], "language_instruction": string[B]}.
    The stream repeats forever, so any buffer size fills.
    """
    tf = import_tensorflow()
    import tensorflow_datasets as tfds

    builder = tfds.builder_from_directory(data_dir)
    episodes = builder.as_dataset(
        split=split,
        shuffle_files=shuffle_files,
        read_config=tfds.ReadConfig(shuffle_seed=shuffle_seed),
        # Frames stay JPEG bytes until after the shuffle buffer, as OpenVLA keeps them.
        decoders={"steps": {"observation": {"image": tfds.decode.SkipDecoding()}}},
    )

    def frame(step: Any) -> Any:
        return {
            "observation": {
                "image": step["observation"]["image"],
                "state": step["observation"]["state"],
            },
            "action": step["action"],
            "language_instruction": step["language_instruction"],
        }

    def decode(step: Any) -> Any:
        image = tf.io.decode_jpeg(step["observation"]["image"], channels=3)
        return {**step, "observation": {**step["observation"], "image": image}}

    frames = (
        episodes.flat_map(lambda episode: episode["steps"])
        .map(frame)
        .repeat()
        .shuffle(shuffle_buffer_size, seed=seed)
        .map(decode, num_parallel_calls=num_parallel_calls)
    )
    return frames.batch(batch_size, drop_remainder=True).prefetch(prefetch_batches)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1 or args[0].startswith("-"):
        print("usage: python -m dlckpt.pipeline.rlds DIR  (writes the example RLDS dataset)")
        return 0 if args and args[0] in {"-h", "--help"} else 2
    if importlib.util.find_spec("tensorflow_datasets") is None:
        print(
            f"✗ python -m dlckpt.pipeline.rlds: tensorflow_datasets is not installed for "
            f"{sys.executable} (expected the environment your RLDS loader runs in)",
            file=sys.stderr,
        )
        return 2
    # Through the module's own name: TFDS looks up a builder's package from its module, and
    # `python -m` runs this file as __main__.
    from dlckpt.pipeline import rlds

    print(rlds.write_example_rlds(args[0]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
