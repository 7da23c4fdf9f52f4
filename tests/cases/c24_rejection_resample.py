"""Case c24 (tensorflow/tensorflow#39195, #16606): class rebalancing with
Dataset.rejection_resample - records with a 90/10 label split, shuffled, resampled to a
50/50 target with an explicit seed, batched.

rejection_resample draws its accept/reject decisions with a stateful random op inside its
own filter, so TensorFlow refuses to save the iterator although the user passed a seed and
wrote no random op; the fix is a resampler built from stateless draws (or per-class
datasets mixed with sample_from_datasets)."""

import tensorflow as tf


def make(shuffle_buffer_size, batch_size=8, seed=24):
    def record(i):
        key = tf.stack([tf.constant(24, tf.int64), i])
        label = tf.cast(tf.random.stateless_uniform([], seed=key) < 0.1, tf.int64)
        return {"i": i, "x": tf.random.stateless_normal([4], seed=key), "label": label}

    ds = tf.data.Dataset.range(100000).map(record).shuffle(shuffle_buffer_size, seed=1)
    ds = ds.rejection_resample(
        lambda e: e["label"], target_dist=[0.5, 0.5], initial_dist=[0.9, 0.1], seed=seed
    )
    return ds.map(lambda label, e: e).batch(batch_size)
