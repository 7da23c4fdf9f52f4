"""Case c27 (tensorflow/tensorflow#35335): Dataset.scan used to number the examples seen,
with the count kept in a tf.Variable updated inside scan_func (next to a running sum in
the scan state).  The variable is state outside the dataset: TensorFlow refuses to save
the iterator; the fix is to carry the count in scan's own state."""

import tensorflow as tf


def make(shuffle_buffer_size, batch_size=4):
    seen = tf.Variable(0, dtype=tf.int64, trainable=False)

    def count(total, x):
        seen.assign_add(1)
        return total + x, {"x": x, "running_sum": total + x, "seen": seen.read_value()}

    ds = tf.data.Dataset.range(100000).shuffle(shuffle_buffer_size, seed=27)
    return ds.scan(tf.constant(0, tf.int64), count).batch(batch_size)
