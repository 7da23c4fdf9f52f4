"""Case c14 (tensorflow/tensorflow#30457, #13766): TFRecord examples with a
variable-length int feature parsed with tf.io.VarLenFeature, so each batch carries a
tf.SparseTensor next to the dense label."""

import os

import numpy as np
import tensorflow as tf

DATA = os.path.join(
    os.environ.get("CASES_DATA", os.path.expanduser("~/.cache/dlckpt-cases")), "c14_varlen.tfrecord"
)


def _ensure_records(n=3000):
    if os.path.exists(DATA):
        return
    os.makedirs(os.path.dirname(DATA), exist_ok=True)
    rng = np.random.default_rng(14)
    with tf.io.TFRecordWriter(DATA + ".tmp") as w:
        for k in range(n):
            vals = rng.integers(0, 1000, size=int(rng.integers(1, 9))).tolist()
            ex = tf.train.Example(
                features=tf.train.Features(
                    feature={
                        "clicked_items": tf.train.Feature(
                            int64_list=tf.train.Int64List(value=vals)
                        ),
                        "label": tf.train.Feature(int64_list=tf.train.Int64List(value=[k % 2])),
                    }
                )
            )
            w.write(ex.SerializeToString())
    os.replace(DATA + ".tmp", DATA)


def make(shuffle_buffer_size, batch_size=4):
    _ensure_records()
    spec = {
        "clicked_items": tf.io.VarLenFeature(tf.int64),
        "label": tf.io.FixedLenFeature([], tf.int64),
    }
    ds = tf.data.TFRecordDataset(DATA).repeat()
    ds = ds.shuffle(shuffle_buffer_size, seed=30).batch(batch_size)
    return ds.map(lambda records: tf.io.parse_example(records, spec))
