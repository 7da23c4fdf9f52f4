"""Case c31 (tensorflow/tensorflow#62959): the input pipeline ends with
tf.data.experimental.prefetch_to_device(...) so batches are staged on the accelerator;
checkpointing that iterator fails on GPU ("no supported kernel for GPU devices" for
SerializeIterator).  This machine has no GPU, so the target device is a parameter (default
"/cpu:0"); even there the save fails, with "GeneratorDataset does not support
checkpointing" (prefetch_to_device is built on copy_to_device, which wraps a generator).
The fix is to leave prefetch_to_device out of the pipeline whose iterator is saved
(a plain prefetch; the training step copies the batch to the device)."""

import tensorflow as tf


def make(shuffle_buffer_size, batch_size=4, device="/cpu:0"):
    def record(i):
        key = tf.stack([tf.constant(31, tf.int64), i])
        return {"i": i, "x": tf.random.stateless_normal([4], seed=key)}

    ds = (
        tf.data.Dataset.range(100000)
        .map(record)
        .shuffle(shuffle_buffer_size, seed=31)
        .batch(batch_size)
    )
    return ds.apply(tf.data.experimental.prefetch_to_device(device, buffer_size=2))
