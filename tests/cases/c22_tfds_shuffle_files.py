"""Case c22 (tensorflow/datasets#3034; the TFDS determinism guide's shuffle_files=True case):
a TFDS-style reader - sharded TFRecord files listed in shuffled order without a seed
(as `as_dataset(shuffle_files=True)` does when ReadConfig has no shuffle_seed), repeated,
read with a parallel interleave (deterministic), parsed, shuffled with a seed, batched.

Within one pass over the files everything is reproducible; at each new pass the file
order is drawn again from seeds the iterator checkpoint does not hold, so a resumed job
reads the files in another order from the next pass on."""

import os

import numpy as np
import tensorflow as tf

DATA = os.path.join(
    os.environ.get("CASES_DATA", os.path.expanduser("~/.cache/dlckpt-cases")), "c22_tfds_shards"
)
SHARDS, PER_SHARD = 8, 250
SPEC = {"id": tf.io.FixedLenFeature([], tf.int64), "x": tf.io.FixedLenFeature([8], tf.float32)}


def write_shards(folder=DATA):
    if os.path.exists(os.path.join(folder, "_DONE")):
        return
    os.makedirs(folder, exist_ok=True)
    for s in range(SHARDS):
        name = os.path.join(folder, f"mydata-train.tfrecord-{s:05d}-of-{SHARDS:05d}")
        with tf.io.TFRecordWriter(name) as w:
            for k in range(PER_SHARD):
                i = s * PER_SHARD + k
                feats = {
                    "id": tf.train.Feature(int64_list=tf.train.Int64List(value=[i])),
                    "x": tf.train.Feature(
                        float_list=tf.train.FloatList(value=np.sin(np.arange(8) + i).tolist())
                    ),
                }
                w.write(
                    tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()
                )
    open(os.path.join(folder, "_DONE"), "w").close()


def make(shuffle_buffer_size, batch_size=8, shuffle_seed=None):
    write_shards()
    files = tf.data.Dataset.list_files(
        os.path.join(DATA, "mydata-train.tfrecord-*"), shuffle=True, seed=shuffle_seed
    )
    ds = files.repeat().interleave(
        tf.data.TFRecordDataset,
        cycle_length=4,
        block_length=16,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.map(lambda r: tf.io.parse_single_example(r, SPEC), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.shuffle(shuffle_buffer_size, seed=22).batch(batch_size)
