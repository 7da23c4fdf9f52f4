"""Pipelines that do NOT resume exactly, each for a different reason upstream of the shuffle.

Each builder takes the same `shuffle_buffer_size` and `batch_size` as a user's loader. The
divergence starts upstream of the shuffle buffer, so it shows only once the restored
iterator draws fresh elements: a comparison window that covers the buffers' turnover
catches it; five batches served from the restored buffer do not.
"""

from __future__ import annotations

import tensorflow as tf

RECORDS = 200_000


def _features(index: tf.Tensor, work: int = 0) -> dict[str, tf.Tensor]:
    """A small element whose cost varies from element to element (as decoding does)."""
    seed = tf.stack([tf.constant(5, tf.int64), index])
    x = tf.random.stateless_uniform([8], seed=seed)
    # Uneven work: some elements take longer, so parallel calls finish out of order.
    rounds = tf.cast(index % 7, tf.int32) * work
    x = tf.while_loop(lambda k, v: k < rounds, lambda k, v: (k + 1, tf.sin(v) + v), (0, x))[1]
    return {"index": index, "x": x}


def nondeterministic_map(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """A parallel map with deterministic=False before the shuffle."""
    dataset = tf.data.Dataset.range(RECORDS).map(
        lambda i: _features(i, work=40), num_parallel_calls=4, deterministic=False
    )
    return dataset.shuffle(shuffle_buffer_size, seed=1).batch(batch_size)


def _one_call_at_a_time(indices: tf.data.Dataset) -> tf.data.Dataset:
    return indices.map(lambda i: _features(i, work=1), num_parallel_calls=1, deterministic=False)


def nondeterministic_one_call_at_a_time(
    *, shuffle_buffer_size: int, batch_size: int = 4
) -> tf.data.Dataset:
    """A map with deterministic=False but one parallel call: it keeps its order in practice,
    so the compared window matches, yet nothing guarantees it will."""
    dataset = _one_call_at_a_time(tf.data.Dataset.range(RECORDS))
    return dataset.shuffle(shuffle_buffer_size, seed=1).batch(batch_size)


def nondeterministic_inside_flat_map(
    *, shuffle_buffer_size: int, batch_size: int = 4
) -> tf.data.Dataset:
    """nondeterministic_one_call_at_a_time with its map inside a flat_map's function, over
    8 ranges of RECORDS // 8: a function body, not the main line, holds the setting."""
    part = RECORDS // 8
    dataset = tf.data.Dataset.range(8).flat_map(
        lambda k: _one_call_at_a_time(tf.data.Dataset.range(k * part, (k + 1) * part))
    )
    return dataset.shuffle(shuffle_buffer_size, seed=1).batch(batch_size)


def nondeterministic_interleave(
    *, shuffle_buffer_size: int, batch_size: int = 4
) -> tf.data.Dataset:
    """A parallel interleave over shards with deterministic=False before the shuffle."""
    shards = tf.data.Dataset.range(64)
    dataset = shards.interleave(
        lambda shard: tf.data.Dataset.range(shard * 10_000, shard * 10_000 + 3_000).map(
            lambda i: _features(i, work=20)
        ),
        cycle_length=4,
        block_length=1,
        num_parallel_calls=4,
        deterministic=False,
    )
    return dataset.shuffle(shuffle_buffer_size, seed=2).batch(batch_size)


def nondeterministic_options(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """A parallel map left at its default, made nondeterministic by the dataset's options."""
    dataset = tf.data.Dataset.range(RECORDS).map(
        lambda i: _features(i, work=40), num_parallel_calls=4
    )
    dataset = dataset.shuffle(shuffle_buffer_size, seed=3).batch(batch_size)
    options = tf.data.Options()
    options.deterministic = False
    return dataset.with_options(options)


def _unseeded_random(policy: str, shuffle_buffer_size: int, batch_size: int) -> tf.data.Dataset:
    dataset = tf.data.Dataset.range(RECORDS).map(
        lambda i: {"index": i, "noise": tf.random.uniform([4])}
    )
    dataset = dataset.shuffle(shuffle_buffer_size, seed=4).batch(batch_size)
    options = tf.data.Options()
    options.experimental_external_state_policy = getattr(
        tf.data.experimental.ExternalStatePolicy, policy
    )
    return dataset.with_options(options)


def unseeded_random_ignore(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """An unseeded random op before the shuffle, saved with ExternalStatePolicy.IGNORE."""
    return _unseeded_random("IGNORE", shuffle_buffer_size, batch_size)


def unseeded_random_warn(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """The same, saved with ExternalStatePolicy.WARN."""
    return _unseeded_random("WARN", shuffle_buffer_size, batch_size)


def reshuffled_epochs_unseeded(
    *, shuffle_buffer_size: int, batch_size: int = 4, items: int = 40
) -> tf.data.Dataset:
    """from_tensor_slices, reshuffled each iteration, no seed, with an unseeded random
    label noise, repeated: the divergence appears after the epoch boundary."""
    dataset = tf.data.Dataset.from_tensor_slices(tf.range(items, dtype=tf.int64))
    dataset = dataset.map(lambda i: {"index": i, "noise": tf.random.uniform([])})
    dataset = dataset.shuffle(min(shuffle_buffer_size, items), reshuffle_each_iteration=True)
    dataset = dataset.repeat().batch(batch_size)
    options = tf.data.Options()
    options.experimental_external_state_policy = tf.data.experimental.ExternalStatePolicy.IGNORE
    return dataset.with_options(options)


def unseeded_shuffle(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """A shuffle without any seed (no global seed either); everything else stateless."""
    dataset = tf.data.Dataset.range(RECORDS).map(lambda i: _features(i))
    return dataset.shuffle(shuffle_buffer_size).batch(batch_size)


def fixed_order_epochs_no_seed(
    *, shuffle_buffer_size: int, batch_size: int = 4, items: int = 40
) -> tf.data.Dataset:
    """shuffle(reshuffle_each_iteration=False) with no seed, repeated; stateless. One order
    for every epoch, but drawn anew in each process: a resumed job's next epoch differs."""
    dataset = tf.data.Dataset.from_tensor_slices(tf.range(items, dtype=tf.int64))
    dataset = dataset.shuffle(min(shuffle_buffer_size, items), reshuffle_each_iteration=False)
    return dataset.repeat().batch(batch_size)


def reshuffled_epochs_no_seed(
    *, shuffle_buffer_size: int, batch_size: int = 4, items: int = 40
) -> tf.data.Dataset:
    """from_tensor_slices reshuffled each iteration with no seed, repeated; stateless."""
    dataset = tf.data.Dataset.from_tensor_slices(tf.range(items, dtype=tf.int64))
    dataset = dataset.shuffle(min(shuffle_buffer_size, items), reshuffle_each_iteration=True)
    return dataset.repeat().batch(batch_size)
