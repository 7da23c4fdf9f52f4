"""Case c07 (tensorflow/text#1289): a text pipeline whose tokenizer keeps its vocabulary
in TensorFlow state (here a tf.Variable of token ids, read inside the map), so the
iterator cannot be serialized: 'ReadVariableOp is stateful' - an op that is neither
a py_function nor a random op."""

import tensorflow as tf

SENTENCES = ["move the arm left", "open the gripper", "close the gripper now", "stop"]


def make(shuffle_buffer_size, batch_size=4, max_len=6):
    vocab_ids = tf.Variable(tf.range(256, dtype=tf.int32) * 3 + 1, trainable=False)

    def tokenize(i):
        text = tf.gather(tf.constant(SENTENCES), i % len(SENTENCES))
        codes = tf.io.decode_raw(text, tf.uint8)[:max_len]
        ids = tf.gather(vocab_ids, tf.cast(codes, tf.int32))
        ids = tf.pad(ids, [[0, max_len - tf.shape(ids)[0]]])
        return {"text": text, "ids": tf.ensure_shape(ids, [max_len])}

    ds = tf.data.Dataset.range(100000).map(tokenize)
    return ds.shuffle(shuffle_buffer_size, seed=2).batch(batch_size)
