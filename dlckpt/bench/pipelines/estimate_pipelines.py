"""Pipelines the checkpoint-size estimate was never tuned on, for its accuracy tests.

Unlike the reference robot loader they interleave several sources, carry variable-length
strings and float features, and change compressibility from record to record.
"""

from __future__ import annotations

import tensorflow as tf


def sensor_log_dataset(
    *,
    shuffle_buffer_size: int,
    batch_size: int = 6,
    num_sources: int = 4,
    records_per_source: int = 300,
    signal_length: int = 600,
    repeat: bool = True,
    seed: int = 5,
) -> tf.data.Dataset:
    """Interleaved sensor logs: a float signal whose noise varies per record, a text note.

    Each record's noise amplitude (and so how well its checkpoint compresses) is drawn
    from its index, so early records are not typical of the stream.
    """

    def source(source_id: tf.Tensor) -> tf.data.Dataset:
        return tf.data.Dataset.range(records_per_source).map(lambda i: (source_id, i))

    def make(source_id: tf.Tensor, index: tf.Tensor) -> dict[str, tf.Tensor]:
        key = tf.stack([tf.constant(seed, tf.int64) * 1009 + source_id, index // 25])
        level = tf.random.stateless_uniform([], seed=key, minval=0.0, maxval=1.0)
        t = tf.linspace(0.0, 20.0, signal_length)
        clean = tf.sin(t * (1.0 + tf.cast(source_id, tf.float32))) * 100.0
        noise = tf.random.stateless_normal([signal_length], seed=key + index) * 40.0 * level
        signal = tf.cast(tf.round(clean + noise), tf.int16)
        words = tf.strings.as_string(
            tf.random.stateless_uniform([index % 40 + 5], seed=key, maxval=9999, dtype=tf.int32)
        )
        return {
            "signal": signal,
            "note": tf.strings.reduce_join(words, separator=" "),
            "source": source_id,
        }

    sources = tf.data.Dataset.range(num_sources)
    dataset = sources.interleave(source, cycle_length=num_sources, block_length=3)
    if repeat:
        dataset = dataset.repeat()
    dataset = dataset.map(make, num_parallel_calls=2, deterministic=True)
    dataset = dataset.shuffle(shuffle_buffer_size, seed=seed)
    return dataset.batch(batch_size, drop_remainder=True).prefetch(1)


def many_tensors(*, shuffle_buffer_size: int, tensors: int = 24) -> tf.data.Dataset:
    """Elements of 24 small float tensors (384 B of data): per-tensor costs dominate memory."""

    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        value = tf.cast(index, tf.float32)
        return {f"feature_{k:02d}": tf.fill([4], value + k) for k in range(tensors)}

    dataset = tf.data.Dataset.range(10**9).map(make)
    return dataset.shuffle(shuffle_buffer_size, seed=7).batch(4).prefetch(2)


def one_tensor(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """The same 384 B of data per element as many_tensors, in one tensor."""
    dataset = tf.data.Dataset.range(10**9).map(lambda i: tf.fill([96], tf.cast(i, tf.float32)))
    return dataset.shuffle(shuffle_buffer_size, seed=7).batch(4).prefetch(2)
