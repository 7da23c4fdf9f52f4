"""Small tf.data pipelines unlike the presets, each built to break the checkpoint-size estimate.

Every builder takes `shuffle_buffer_size` and returns batches; elements are small so a
real save at 100x the largest calibration buffer stays cheap. SHAPES maps a short name to
the builder's import path (the `dataloader._target_` of a config).
"""

from __future__ import annotations

import tensorflow as tf

AUTOTUNE = tf.data.AUTOTUNE


def _seeded(*parts: object) -> tf.Tensor:
    return tf.stack([tf.cast(p, tf.int64) for p in parts])


def _frame(index: tf.Tensor, size: int) -> tf.Tensor:
    """A small photo-like uint8 frame: smooth per-episode shapes plus per-step noise."""
    episode = index // 20
    params = tf.random.stateless_uniform([4], seed=_seeded(11, episode))
    coords = tf.linspace(0.0, 1.0, size)
    y, x = tf.meshgrid(coords, coords, indexing="ij")
    shift = tf.cast(index % 20, tf.float32) * 0.02
    scene = tf.sin(6.0 * params[0] * (x + shift) + 6.0 * params[1] * y) * 90.0 + 128.0
    noise = tf.random.stateless_normal([size, size], seed=_seeded(12, index)) * 6.0 * params[2]
    gray = tf.clip_by_value(tf.round(scene + noise), 0.0, 255.0)
    return tf.cast(tf.stack([gray, gray * 0.8, 255.0 - gray], axis=-1), tf.uint8)


def encoded_frames(
    *, shuffle_buffer_size: int, frame_size: int = 24, decoded_size: int = 48
) -> tf.data.Dataset:
    """JPEG frames in the buffer; decoded, resized to float32 and prefetched after the shuffle."""

    def encode(index: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"jpeg": tf.io.encode_jpeg(_frame(index, frame_size), quality=90), "i": index}

    def decode(element: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
        image = tf.io.decode_jpeg(element["jpeg"], channels=3)
        image = tf.image.resize(image, [decoded_size, decoded_size]) / 255.0
        return {"image": image, "i": element["i"]}

    dataset = tf.data.Dataset.range(10**9).map(encode, num_parallel_calls=2)
    dataset = dataset.shuffle(shuffle_buffer_size, seed=1)
    dataset = dataset.map(decode, num_parallel_calls=2)
    return dataset.batch(8, drop_remainder=True).prefetch(4)


def episode_sizes(*, shuffle_buffer_size: int, episode_length: int = 50) -> tf.data.Dataset:
    """Elements whose size changes by episode: a text log from 20 to 900 bytes, random digits."""

    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        episode = index // episode_length
        words = 4 + tf.random.stateless_uniform(
            [], seed=_seeded(21, episode), maxval=180, dtype=tf.int32
        )
        digits = tf.random.stateless_uniform(
            [words], seed=_seeded(22, index), maxval=99999, dtype=tf.int32
        )
        return {"log": tf.strings.reduce_join(tf.strings.as_string(digits), separator=" "),
                "episode": episode}  # fmt: skip

    dataset = tf.data.Dataset.range(10**9).map(make)
    return dataset.shuffle(shuffle_buffer_size, seed=2).batch(4)


def interleaved_shards(*, shuffle_buffer_size: int, shards: int = 4) -> tf.data.Dataset:
    """Shards of different content (flat, noisy, text, ramp) interleaved in parallel."""

    def shard(kind: tf.Tensor) -> tf.data.Dataset:
        def make(index: tf.Tensor) -> tf.Tensor:
            noisy = tf.random.stateless_uniform([96], seed=_seeded(31 + kind, index), maxval=256)
            ramp = tf.cast(tf.range(96), tf.float32) + tf.cast(index, tf.float32)
            flat = tf.fill([96], tf.cast(kind, tf.float32))
            choice = tf.stack([flat, noisy, ramp, noisy * 0.0 + tf.cast(index % 7, tf.float32)])
            return tf.cast(choice[kind % 4], tf.uint8)

        return tf.data.Dataset.range(10**6).map(make)

    dataset = tf.data.Dataset.range(shards).interleave(
        shard, cycle_length=shards, block_length=2, num_parallel_calls=shards, deterministic=True
    )
    return dataset.shuffle(shuffle_buffer_size, seed=3).batch(4).prefetch(2)


def parallel_map_first(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """A non-deterministic parallel map (AUTOTUNE) before the shuffle: float features."""

    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        features = tf.random.stateless_normal([40], seed=_seeded(41, index))
        return {"x": features, "y": tf.cast(index % 10, tf.int32)}

    dataset = tf.data.Dataset.range(10**9).map(
        make, num_parallel_calls=AUTOTUNE, deterministic=False
    )
    return dataset.shuffle(shuffle_buffer_size, seed=4).batch(8).prefetch(1)


def cached_first(*, shuffle_buffer_size: int, records: int = 20000) -> tf.data.Dataset:
    """`cache()` (in memory) before the shuffle, repeated: the cache holds what it has read."""

    def make(index: tf.Tensor) -> tf.Tensor:
        return tf.cast(
            tf.random.stateless_uniform([64], seed=_seeded(51, index), maxval=200), tf.uint8
        )

    dataset = tf.data.Dataset.range(records).map(make).cache().repeat()
    return dataset.shuffle(shuffle_buffer_size, seed=5).batch(8)


def tiny_elements(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """Elements of a few dozen bytes: an id, a label and a short token string."""

    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"id": index, "label": tf.cast(index % 3, tf.int8),
                "token": tf.strings.as_string(index * 7919 % 100003)}  # fmt: skip

    dataset = tf.data.Dataset.range(10**9).map(make)
    return dataset.shuffle(shuffle_buffer_size, seed=6).batch(16)


def ragged_sparse(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """Ragged token ids of varying length and a sparse one-hot feature, ragged-batched."""

    def make(index: tf.Tensor) -> dict[str, object]:
        length = 1 + tf.cast(index % 23, tf.int32)
        tokens = tf.random.stateless_uniform(
            [length], seed=_seeded(71, index), maxval=30000, dtype=tf.int32
        )
        sparse = tf.sparse.from_dense(tf.one_hot(index % 50, 50))
        return {"tokens": tf.RaggedTensor.from_row_lengths(tokens, [length]), "tag": sparse}

    dataset = tf.data.Dataset.range(10**9).map(make)
    return dataset.shuffle(shuffle_buffer_size, seed=7).batch(4)


def shuffled_batches(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """Batches are formed first and the shuffle buffer holds whole batches of 4."""

    def make(index: tf.Tensor) -> tf.Tensor:
        return tf.cast(
            tf.random.stateless_uniform([48], seed=_seeded(81, index), maxval=90), tf.uint8
        )

    dataset = tf.data.Dataset.range(10**9).map(make).batch(4, drop_remainder=True)
    return dataset.shuffle(shuffle_buffer_size, seed=8).prefetch(2)


def two_shuffles(*, shuffle_buffer_size: int, files: int = 32) -> tf.data.Dataset:
    """Files shuffled first (a small buffer), interleaved, then elements shuffled."""

    def records(file_id: tf.Tensor) -> tf.data.Dataset:
        def make(index: tf.Tensor) -> tf.Tensor:
            level = tf.cast(file_id % 5, tf.float32) * 20.0
            values = tf.random.stateless_normal([60], seed=_seeded(91 + file_id, index)) * level
            return tf.cast(tf.clip_by_value(values + 128.0, 0.0, 255.0), tf.uint8)

        return tf.data.Dataset.range(10**6).map(make)

    names = tf.data.Dataset.range(files).shuffle(files, seed=9).repeat()
    dataset = names.interleave(records, cycle_length=4, block_length=4)
    return dataset.shuffle(shuffle_buffer_size, seed=10).batch(4)


def short_stream(*, shuffle_buffer_size: int, records: int = 700) -> tf.data.Dataset:
    """A finite stream of 700 elements (no repeat): larger buffers only add empty slots."""

    def make(index: tf.Tensor) -> tf.Tensor:
        return tf.random.stateless_normal([30], seed=_seeded(101, index))

    dataset = tf.data.Dataset.range(records).map(make)
    return dataset.shuffle(shuffle_buffer_size, seed=11).batch(4)


def repeated_short_source(*, shuffle_buffer_size: int, records: int = 3000) -> tf.data.Dataset:
    """3,000 elements shuffled then repeated: TensorFlow fuses the shuffle and the repeat, so
    a buffer larger than the source keeps filling across passes (not capped at 3,000)."""

    def make(index: tf.Tensor) -> tf.Tensor:
        return tf.random.stateless_normal([64], seed=_seeded(113, index))

    dataset = tf.data.Dataset.range(records).map(make)
    return dataset.shuffle(shuffle_buffer_size, seed=13).repeat().batch(4)


def zipped_sized_shuffles(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """Two shuffle buffers of the configured size under zip, elements of two sizes: none on
    the line from the output, and a checkpoint that grows with both."""

    def make(size: int, stream: int):  # type: ignore[no-untyped-def]
        return lambda i: tf.random.stateless_normal([size], seed=_seeded(stream, i))

    ids = tf.data.Dataset.range(10**9).map(make(32, 131)).shuffle(shuffle_buffer_size, seed=14)
    values = tf.data.Dataset.range(10**9).map(make(16, 132)).shuffle(shuffle_buffer_size, seed=15)
    return tf.data.Dataset.zip((ids, values)).batch(4)


def mixture_of_sized_shuffles(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """Octo-style mixture: three sources, each with its own configured shuffle buffer, mixed
    by weight (sample_from_datasets), no shuffle after the mix."""

    def source(k: int) -> tf.data.Dataset:
        def make(i: tf.Tensor) -> tf.Tensor:
            return tf.random.stateless_normal([32], seed=_seeded(140 + k, i))

        return tf.data.Dataset.range(10**9).map(make).shuffle(shuffle_buffer_size, seed=16 + k)

    sources = [source(k) for k in range(3)]
    mixed = tf.data.Dataset.sample_from_datasets(sources, weights=[0.5, 0.3, 0.2], seed=17)
    return mixed.batch(4)


def autotune_prefetch(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """AUTOTUNE parallel map and prefetch after the shuffle, decoded frames downstream."""

    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"jpeg": tf.io.encode_jpeg(_frame(index, 16), quality=80), "i": index}

    def decode(element: dict[str, tf.Tensor]) -> tf.Tensor:
        return tf.cast(tf.io.decode_jpeg(element["jpeg"], channels=3), tf.float32)

    dataset = tf.data.Dataset.range(10**9).map(make)
    dataset = dataset.shuffle(shuffle_buffer_size, seed=12)
    dataset = dataset.map(decode, num_parallel_calls=AUTOTUNE)
    return dataset.batch(4).prefetch(AUTOTUNE)


def index_shuffle(*, shuffle_buffer_size: int, records: int = 100003) -> tf.data.Dataset:
    """No shuffle buffer: each position maps to a record by a fixed permutation (an index
    shuffle, as random-access loaders do), so shuffle_buffer_size changes nothing."""

    def make(index: tf.Tensor) -> tf.Tensor:
        shuffled = (index * 7919 + 13) % records  # 7919 is prime to `records`: a permutation
        return tf.random.stateless_normal([16], seed=_seeded(111, shuffled))

    return tf.data.Dataset.range(records).repeat().map(make).batch(8).prefetch(2)


def file_cached(
    *, shuffle_buffer_size: int, cache_file: str, records: int = 3000
) -> tf.data.Dataset:
    """Dataset.cache(filename) before the shuffle: a second live iterator hits its lock file."""

    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"i": index, "x": tf.random.stateless_uniform([16], seed=_seeded(121, index))}

    dataset = tf.data.Dataset.range(records).map(make).cache(cache_file)
    return dataset.shuffle(shuffle_buffer_size, seed=13).repeat().batch(4)


def never_yields(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """A filter that drops every element: the pipeline never yields (nor ends)."""
    dataset = tf.data.Dataset.range(10**15).filter(lambda i: i < 0)
    return dataset.shuffle(shuffle_buffer_size).batch(2)


# The test family: shape -> extra dataloader settings (beyond shuffle_buffer_size).
FAMILY: dict[str, dict[str, object]] = {
    name: {}
    for name in (
        "encoded_frames", "episode_sizes", "interleaved_shards", "parallel_map_first",
        "cached_first", "tiny_elements", "ragged_sparse", "shuffled_batches", "two_shuffles",
        "short_stream", "autotune_prefetch", "index_shuffle", "zipped_sized_shuffles",
        "mixture_of_sized_shuffles",
    )
}  # fmt: skip


def _vectors(stream: int, size: int, records: int = 10**9) -> tf.data.Dataset:
    return tf.data.Dataset.range(records).map(
        lambda i: tf.random.stateless_normal([size], seed=_seeded(stream, i))
    )


def fixed_shuffle_hides_a_sized_one(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """A sized buffer of 1 KB vectors, reduced to one int64, then a fixed shuffle(50)
    nearest the output: the buffer on the main line is not the one that grows."""
    dataset = _vectors(150, 256).shuffle(shuffle_buffer_size, seed=20)
    dataset = dataset.map(lambda v: tf.cast(v[0] * 1000, tf.int64))
    return dataset.shuffle(50, seed=21).batch(4)


def concatenate_after_a_short_shuffle(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """A 5-element shuffled dataset, then an endless one: the first ends at once and the
    second's full buffer is the one a save holds."""
    first = _vectors(151, 32, records=5).shuffle(shuffle_buffer_size, seed=22)
    second = _vectors(152, 32).shuffle(shuffle_buffer_size, seed=23)
    return first.concatenate(second).batch(4)


def one_shuffled_dataset_zipped_twice(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """zip((s, s)): one dataset object, two iterators, two buffers."""
    shuffled = _vectors(153, 32).shuffle(shuffle_buffer_size, seed=24)
    return tf.data.Dataset.zip((shuffled, shuffled)).batch(4)


def zipped_buffer_and_its_double(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """Sides of B and 2 x B elements under zip."""
    a = _vectors(154, 32).shuffle(shuffle_buffer_size, seed=25)
    b = _vectors(155, 32).shuffle(2 * shuffle_buffer_size, seed=26)
    return tf.data.Dataset.zip((a, b)).batch(4)


def sized_shuffles_under_a_main_line_one(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """zip of two sized shuffles, shuffled again with the same size: three buffers."""
    a = _vectors(156, 32).shuffle(shuffle_buffer_size, seed=27)
    b = _vectors(157, 32).shuffle(shuffle_buffer_size, seed=28)
    return tf.data.Dataset.zip((a, b)).shuffle(shuffle_buffer_size, seed=29).batch(4)


def encoded_then_decoded_shuffles(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """JPEG bytes shuffled with B, decoded, shuffled again with B // 2: two buffers on the
    main line, both following the configured size (the decoded one alone was measured:
    -39% at 5,000 with ±5% in a new user's check, session 15)."""
    frames = tf.data.Dataset.range(10**9).map(
        lambda i: {"jpeg": tf.io.encode_jpeg(_frame(i, 16)), "id": i}
    )
    encoded = frames.shuffle(shuffle_buffer_size, seed=37)
    decoded = encoded.map(lambda e: {"image": tf.io.decode_jpeg(e["jpeg"]), "id": e["id"]})
    return decoded.shuffle(max(shuffle_buffer_size // 2, 1), seed=38).batch(4)


def small_vectors_then_large_ones(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """8,000 vectors of 8 floats concatenated with vectors of 256, then shuffled: a buffer
    past 8,000 holds mostly large ones, which the sample of the first ~6,000 never reads
    (a sixth of a real save at 20,000 with ±3%, in a new user's check, session 15)."""
    small = _vectors(162, 8, records=8000)
    mixed = small.concatenate(_vectors(163, 256))
    return mixed.shuffle(shuffle_buffer_size, seed=39).padded_batch(4)


def elements_growing_along_the_stream(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """Element i holds 1 + i // 200 floats (episodes growing longer): a large buffer holds
    larger elements than the calibration's sample reaches."""

    def make(i: tf.Tensor) -> tf.Tensor:
        size = 1 + tf.cast(i // 200, tf.int32)
        return tf.random.stateless_normal([size], seed=_seeded(158, i))

    dataset = tf.data.Dataset.range(10**9).map(make)
    return dataset.shuffle(shuffle_buffer_size, seed=30).padded_batch(4)


def prefetch_sized_from_the_buffer(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """A prefetch of shuffle_buffer_size // 4 elements after the shuffle: a second buffer
    that follows the configured size, which no shuffle walk finds."""
    dataset = _vectors(159, 32).shuffle(shuffle_buffer_size, seed=31)
    return dataset.prefetch(max(1, shuffle_buffer_size // 4)).batch(4)


def prefetch_of_batches_past_the_calibration(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """A prefetch of max(1, B // 40) batches after the batch: 1 at every calibration buffer
    (8, 32, 64), 50 at 2,000, so the whole-pipeline saves cannot show it grow."""
    dataset = _vectors(160, 32).shuffle(shuffle_buffer_size, seed=32).batch(8)
    return dataset.prefetch(max(1, shuffle_buffer_size // 40))


def shuffle_capped_below_the_buffer(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """shuffle(min(B, 600)): past 600 the configured size changes nothing (an estimator
    that follows B over-counts: +563% at 20,000 against a 3,000 cap, measured)."""
    dataset = _vectors(161, 32).shuffle(min(shuffle_buffer_size, 600), seed=33)
    return dataset.batch(4)


def capped_shuffle_beside_a_fixed_one(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """A fixed shuffle of a short file list, repeated, then shuffle(min(B, 600)): two
    shuffles, one following B up to its cap (read when only one follows B; before, the cap
    went unread: +35% at buffer 100 against a 50 cap, outside the stated ±30%)."""
    ids = tf.data.Dataset.range(60).shuffle(60, seed=35).repeat()
    vectors = ids.map(lambda i: tf.cast(tf.fill([32], i), tf.float32))
    return vectors.shuffle(min(shuffle_buffer_size, 600), seed=36).batch(4)


def shuffle_floored_above_the_calibration(*, shuffle_buffer_size: int) -> tf.data.Dataset:
    """shuffle(max(B, 2000)): every calibration save (8, 32, 64) holds 2,000 elements, so the
    anchors cannot show the buffer grow (-16% at 50,000 with ±3.4% against a 2,000 floor)."""
    frames = tf.data.Dataset.range(10**9).map(lambda i: {"image": _frame(i, 16), "id": i})
    return frames.shuffle(max(shuffle_buffer_size, 2000), seed=34).batch(8)


# Shapes the bench measures on request (--cases) that are not in the test family: each has
# a test of its own in tests/test_estimate.py.
HIDDEN_BUFFERS = (
    "fixed_shuffle_hides_a_sized_one", "concatenate_after_a_short_shuffle",
    "one_shuffled_dataset_zipped_twice", "zipped_buffer_and_its_double",
    "sized_shuffles_under_a_main_line_one", "prefetch_sized_from_the_buffer",
    "prefetch_of_batches_past_the_calibration", "encoded_then_decoded_shuffles",
)  # fmt: skip
# A shuffle the pipeline builds at another size than the configured one (a floor, a cap).
BUILT_SIZES = (
    "shuffle_capped_below_the_buffer",
    "shuffle_floored_above_the_calibration",
    "capped_shuffle_beside_a_fixed_one",
)
PROBES = (
    "repeated_short_source", "elements_growing_along_the_stream",
    "small_vectors_then_large_ones", *HIDDEN_BUFFERS, *BUILT_SIZES,
)  # fmt: skip


def zero_frames(*, shuffle_buffer_size: int, frame_bytes: int = 256 * 1024) -> tf.data.Dataset:
    """Frames of zeros: large in memory, tiny in the (compressed) checkpoint, so RAM binds."""

    def make(index: tf.Tensor) -> dict[str, tf.Tensor]:
        return {"frame": tf.zeros([frame_bytes], tf.uint8), "i": index}

    return tf.data.Dataset.range(10**9).map(make).shuffle(shuffle_buffer_size).batch(2)
