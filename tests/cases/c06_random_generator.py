"""Case c06 (tensorflow/tensorflow#44491): augmentation noise drawn from a
tf.random.Generator captured by the map function; saving fails with
'RngReadAndSkip is stateful'."""

import tensorflow as tf


def make(shuffle_buffer_size, batch_size=4):
    gen = tf.random.Generator.from_seed(2024)

    def noisy(i):
        x = tf.cast(i, tf.float32) + tf.zeros([5])
        return {"x": x + gen.normal([5]) * 0.1, "i": i}

    ds = tf.data.Dataset.range(100000).map(noisy)
    return ds.shuffle(shuffle_buffer_size, seed=4).batch(batch_size)
