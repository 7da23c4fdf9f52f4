"""Case c13 (tensorflow/tensorflow#29763, sql-machine-learning/elasticdl#1861): a text
pipeline that splits each sentence into words and batches the variable-length results
as RaggedTensors (string tokens and their hashed ids)."""

import tensorflow as tf

WORDS = ["pick", "up", "the", "red", "cube", "place", "it", "in", "bowl", "slowly", "now"]


def make(shuffle_buffer_size, batch_size=4):
    words = tf.constant(WORDS)

    def sentence(i):
        n = 2 + i % 6
        idx = (i * 7 + tf.range(n)) % len(WORDS)
        text = tf.strings.reduce_join(tf.gather(words, idx), separator=" ")
        tokens = tf.strings.split(text)
        return {"text": text, "tokens": tokens, "ids": tf.strings.to_hash_bucket_fast(tokens, 5000)}

    ds = tf.data.Dataset.range(100000).map(sentence)
    ds = ds.shuffle(shuffle_buffer_size, seed=13)
    return ds.ragged_batch(batch_size)
