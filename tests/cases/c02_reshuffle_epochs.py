"""Case c02 (tensorflow/tensorflow#48178): reshuffle_each_iteration=True with a global
seed; the saved state must carry the shuffle's random state into the next epoch.
The dataset is tiny (12 items, batch 2 = 6 batches an epoch) so the compared batches
after the save (3 + 5) cross the epoch boundary."""

import numpy as np
import tensorflow as tf


def make(shuffle_buffer_size, items=12, batch_size=2):
    tf.random.set_seed(1234)
    ds = tf.data.Dataset.from_tensor_slices(np.arange(items, dtype=np.int32))
    ds = ds.shuffle(min(shuffle_buffer_size, items), reshuffle_each_iteration=True)
    return ds.repeat().batch(batch_size)
