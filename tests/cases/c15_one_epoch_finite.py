"""Case c15 (tensorflow/tensorflow#48178, as the reporter wrote it): a tiny finite
dataset - 5 items shuffled and batched into a single batch per epoch, no repeat(); the
training loop makes a new iterator every epoch and checkpoints between epochs."""

import numpy as np
import tensorflow as tf


def make(shuffle_buffer_size, items=5, batch_size=5):
    ds = tf.data.Dataset.from_tensor_slices(np.arange(items, dtype=np.int64))
    ds = ds.shuffle(shuffle_buffer_size, reshuffle_each_iteration=True)
    return ds.batch(batch_size)
