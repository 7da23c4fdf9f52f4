"""Dataloaders a user might point `dataloader._target_` at, for the tests.

This folder is put on PYTHONPATH by the tests, as a user's own module would be.
"""

from __future__ import annotations

import tensorflow as tf


def _images(num: int = 1_000_000, size: int = 16) -> tf.data.Dataset:
    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        seed = tf.stack([tf.constant(3, tf.int64), index])
        image = tf.random.stateless_uniform([size, size, 3], seed=seed, maxval=255, dtype=tf.int32)
        return {"image": tf.cast(image, tf.uint8), "label": index}

    return tf.data.Dataset.range(num).map(make)


def plain_dataset(
    *, shuffle_buffer_size: int, batch_size: int = 4, image_size: int = 16
) -> tf.data.Dataset:
    """A user's own well-behaved loader (stateless ops, seeded shuffle)."""
    return _images(size=image_size).shuffle(shuffle_buffer_size, seed=7).batch(batch_size)


def robot_frames_dataset(
    *, shuffle_buffer_size: int, buffer_encoded_frames: bool = False, batch_size: int = 4
) -> tf.data.Dataset:
    """A user's loader with an encoded/decoded switch: small robot frames (32x32 + 16x16)."""
    from dlckpt.pipeline.robot import build_robot_dataset

    return build_robot_dataset(
        shuffle_buffer_size=shuffle_buffer_size, batch_size=batch_size, image_size=32,
        wrist_image_size=16, buffer_encoded_frames=buffer_encoded_frames, num_episodes=20,
        steps_per_episode=10,
    )  # fmt: skip


def stateful_augmentation_dataset(
    *, shuffle_buffer_size: int, batch_size: int = 4
) -> tf.data.Dataset:
    """Saves, but does not resume: an unseeded random augmentation whose state the
    checkpoint skips because the external-state policy says IGNORE."""

    def augment(element: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        noise = tf.random.uniform(tf.shape(element["image"]), maxval=8, dtype=tf.int32)
        element["image"] = element["image"] + tf.cast(noise, tf.uint8)
        return element

    dataset = _images().shuffle(shuffle_buffer_size, seed=7).map(augment).batch(batch_size)
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return dataset.with_options(options)


def unseeded_random_dataset(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """Cannot be saved: tf.random.uniform without a seed is a stateful op."""
    dataset = tf.data.Dataset.range(1_000_000).map(
        lambda i: tf.random.uniform([4]) + tf.cast(i, tf.float32)
    )
    return dataset.shuffle(shuffle_buffer_size, seed=1).batch(batch_size)


def generator_dataset(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """Cannot be saved: Dataset.from_generator runs Python that TensorFlow cannot serialize."""
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(range(1_000_000)), output_signature=tf.TensorSpec([], tf.int64)
    )
    return dataset.shuffle(shuffle_buffer_size, seed=1).batch(batch_size)


def not_a_dataset(*, shuffle_buffer_size: int) -> list[int]:
    return [shuffle_buffer_size]


def sharded_dataset(
    *,
    shuffle_buffer_size: int,
    process_index: int = 0,
    process_count: int = 1,
    unseeded_on: int = -1,
    raises_on: int = -1,
    batch_size: int = 4,
) -> tf.data.Dataset:
    """A multi-host loader: each process reads its own shard (`dlckpt multi-host` passes the
    index and count). With `unseeded_on=i`, process i alone adds stateful random noise (a
    draw a restore cannot repeat); with `raises_on=i`, process i's builder raises."""
    if process_index == raises_on:
        raise ValueError(f"no shard list for process {process_index}")
    dataset = _images(size=8).shard(process_count, process_index)
    if process_index == unseeded_on:
        dataset = dataset.map(lambda e: {**e, "noise": tf.random.uniform([])})
    return dataset.shuffle(shuffle_buffer_size, seed=7).batch(batch_size)


def distributed_dataset(*, shuffle_buffer_size: int, batch_size: int = 4, **_: object) -> object:
    """What a tf.distribute training script hands its loop: a distributed dataset
    (strategy.distribute_datasets_from_function), here on one CPU device."""
    strategy = tf.distribute.OneDeviceStrategy("/cpu:0")
    return strategy.distribute_datasets_from_function(
        lambda _context: _images(size=8).shuffle(shuffle_buffer_size, seed=7).batch(batch_size)
    )
