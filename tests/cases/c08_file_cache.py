"""Case c08 (tensorflow/tensorflow#28798, #18266): a pipeline that caches its
preprocessed records to a file with Dataset.cache(filename) and is checkpointed
before the first pass over the data has finished."""

import os

import tensorflow as tf

CACHE_DIR = os.path.join(
    os.environ.get("CASES_DATA", os.path.expanduser("~/.cache/dlckpt-cases")), "c08_cache"
)


def make(shuffle_buffer_size, batch_size=4, records=2000, cache_name="train"):
    os.makedirs(CACHE_DIR, exist_ok=True)

    def preprocess(i):
        key = tf.stack([tf.constant(8, tf.int64), i])
        return {"i": i, "x": tf.random.stateless_uniform([16], seed=key)}

    ds = tf.data.Dataset.range(records).map(preprocess)
    ds = ds.cache(os.path.join(CACHE_DIR, cache_name))
    ds = ds.shuffle(shuffle_buffer_size, seed=8).repeat()
    return ds.batch(batch_size)
