"""Case c30 (tensorflow/tensorflow#24105): a main dataset mixed with a smaller auxiliary
dataset, where training must end when the main dataset is used up - sample_from_datasets
with stop_on_empty_dataset=True (the option added for that request).  Both inputs are
shuffled with seeds; the main one is finite, the auxiliary one repeats.  The checkpoint is
taken mid-way; a resumed iterator must go on and end where the original ends."""

import tensorflow as tf


def make(shuffle_buffer_size, batch_size=8, main_records=3000):
    def tag(source):
        return lambda i: {"source": tf.constant(source, tf.int64), "i": i}

    main = tf.data.Dataset.range(main_records).map(tag(0)).shuffle(shuffle_buffer_size, seed=30)
    aux = (
        tf.data.Dataset.range(500)
        .map(tag(1))
        .shuffle(min(shuffle_buffer_size, 500), seed=31)
        .repeat()
    )
    mixed = tf.data.Dataset.sample_from_datasets(
        [main, aux], weights=[0.8, 0.2], seed=30, stop_on_empty_dataset=True
    )
    return mixed.batch(batch_size)
