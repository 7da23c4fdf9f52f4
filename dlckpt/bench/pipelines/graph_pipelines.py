"""Pipelines whose shuffles sit off the graph's main line: under interleave, in mixtures,
under zip, inside flat_map and Dataset.load reader functions. Each takes `seed`: None
leaves the off-line shuffle unseeded (a resumed job diverges at its next draw), an
integer seeds it (resumes exactly). The main-line shuffle is always seeded, so a false
pass would come from the off-line one alone."""

from __future__ import annotations

import functools
import os
import random
import tempfile

import numpy as np
import tensorflow as tf


def _finish(dataset: tf.data.Dataset, shuffle_buffer_size: int, batch_size: int) -> tf.data.Dataset:
    return dataset.shuffle(shuffle_buffer_size, seed=7).batch(batch_size)


def file_list_under_interleave(
    *,
    shuffle_buffer_size: int,
    batch_size: int = 4,
    seed: int | None = None,
    parallel: bool = True,
    fused: bool = False,
) -> tf.data.Dataset:
    """A "file list" shuffled, repeated and read through an interleave (TFDS's reader);
    `fused`: with tf.data.experimental.shuffle_and_repeat, one op holding its repeat."""
    files = tf.data.Dataset.range(6)
    if fused:
        files = files.apply(tf.data.experimental.shuffle_and_repeat(6, seed=seed))
    else:
        files = files.shuffle(6, seed=seed).repeat()
    reads = files.interleave(
        lambda f: tf.data.Dataset.range(f * 50, f * 50 + 50),
        cycle_length=2, block_length=5,
        num_parallel_calls=tf.data.AUTOTUNE if parallel else None, deterministic=True,
    )  # fmt: skip
    return _finish(reads, shuffle_buffer_size, batch_size)


def mixture_of_shuffled_sources(
    *,
    shuffle_buffer_size: int,
    batch_size: int = 4,
    seed: int | None = None,
    choose: bool = False,
) -> tf.data.Dataset:
    """Two sources, each reshuffled every pass, mixed (sample_ or choose_from_datasets)."""
    sources = [
        tf.data.Dataset.range(k * 1000, k * 1000 + 40).shuffle(40, seed=seed).repeat()
        for k in range(2)
    ]
    if choose:
        picks = tf.data.Dataset.range(2).repeat()
        mixed = tf.data.Dataset.choose_from_datasets(sources, picks)
    else:
        mixed = tf.data.Dataset.sample_from_datasets(sources, weights=[0.5, 0.5], seed=3)
    return _finish(mixed, shuffle_buffer_size, batch_size)


def zipped_with_a_shuffled_side(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """zip(ordered ids, reshuffled labels), repeated: the second input is off the main line."""
    ids = tf.data.Dataset.range(30)
    labels = tf.data.Dataset.range(30).shuffle(30, seed=seed)
    pairs = tf.data.Dataset.zip((ids, labels)).repeat().map(lambda a, b: a * 100 + b)
    return _finish(pairs, shuffle_buffer_size, batch_size)


def shuffle_inside_flat_map(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """Each element expands into a small dataset shuffled inside the flat_map function."""
    groups = tf.data.Dataset.range(10**6)
    items = groups.flat_map(lambda g: tf.data.Dataset.range(g * 8, g * 8 + 8).shuffle(8, seed=seed))
    return _finish(items, shuffle_buffer_size, batch_size)


def loaded_with_a_shuffling_reader(
    *, shuffle_buffer_size: int, path: str, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """Dataset.load whose reader_func shuffles its shards, as TensorFlow's docs show."""
    if not tf.io.gfile.exists(path):
        tf.data.Dataset.range(400).save(path, shard_func=lambda x: x % 4)

    def reader(shards: tf.data.Dataset) -> tf.data.Dataset:
        return shards.shuffle(4, seed=seed).interleave(lambda shard: shard, cycle_length=2)

    loaded = tf.data.Dataset.load(path, reader_func=reader).repeat()
    return _finish(loaded, shuffle_buffer_size, batch_size)


def zipped_shuffles(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """Two seeded shuffle buffers of the configured size under zip: no shuffle on the line
    from the output, and a checkpoint that grows with the buffer twice over."""
    ids = tf.data.Dataset.range(10**6).shuffle(shuffle_buffer_size, seed=1)
    values = tf.data.Dataset.range(10**6).map(lambda i: i * 3).shuffle(shuffle_buffer_size, seed=2)
    return tf.data.Dataset.zip((ids, values)).batch(batch_size)


def mixture_drawn_without_a_seed(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """sample_from_datasets of two finite seeded sources, the mixture's own `seed` left to
    `seed`, repeated: its choices come from a random dataset drawn anew at every pass."""
    sources = [
        tf.data.Dataset.range(k * 1000, k * 1000 + 40).shuffle(40, seed=k + 1) for k in range(2)
    ]
    mixed = tf.data.Dataset.sample_from_datasets(
        sources, weights=[0.5, 0.5], seed=seed, stop_on_empty_dataset=True
    )
    return _finish(mixed.repeat(), shuffle_buffer_size, batch_size)


def random_numbers_zipped_in(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """Dataset.random (augmentation noise) zipped beside the data, repeated."""
    noise = tf.data.Dataset.random(seed=seed).take(30)
    pairs = tf.data.Dataset.zip((tf.data.Dataset.range(30), noise)).repeat()
    return _finish(pairs.map(lambda i, r: i * 1000 + r % 1000), shuffle_buffer_size, batch_size)


def captured_by_flat_map(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """A shuffled dataset captured by a flat_map function: read anew at every call, as a
    repeat would (no Repeat op in the graph)."""
    shuffled = tf.data.Dataset.range(30).shuffle(30, seed=seed)
    return _finish(
        tf.data.Dataset.range(10**6).flat_map(lambda _: shuffled), shuffle_buffer_size, batch_size
    )


def concatenated_with_itself(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """A shuffled dataset concatenated with itself: the second copy's iterator (and its
    seeds) is made only when the first ends."""
    shuffled = tf.data.Dataset.range(60).shuffle(60, seed=seed)
    return _finish(shuffled.concatenate(shuffled), shuffle_buffer_size, batch_size)


def global_shuffle_repeated(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """A global shuffle (random access, symbolic checkpoint) repeated: each pass draws a
    new permutation from its seed."""
    from tensorflow.python.data.experimental.ops.global_shuffle_op import _global_shuffle

    shuffled = _global_shuffle(tf.data.Dataset.range(30), seed=seed).repeat()
    options = tf.data.Options()
    options.experimental_symbolic_checkpoint = True
    return shuffled.batch(batch_size).with_options(options)


# A seeded generator held at module level, as a user's module may hold one: each build
# draws the next order from it, and a job builds once per process.
_FILE_ORDER = np.random.default_rng(0)


def file_list_ordered_at_build(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None,
    per_file: bool = False, module_generator: bool = False,
) -> tf.data.Dataset:  # fmt: skip
    """64 "files" (runs of 100 ids) in an order Python draws when the pipeline is built,
    read two at a time: no random op in the graph, but without a seed each process holds
    another file list, and a resumed job diverges when its next file opens. `per_file`:
    one dataset per file, concatenated in that order (the same constants in every
    process, in another order). `module_generator`: the order drawn from a seeded
    generator this module holds (the same first draw in every process)."""
    files = list(range(64))
    if module_generator:
        files = [int(file) for file in _FILE_ORDER.permutation(files)]
    else:
        (random.Random(seed) if seed is not None else random).shuffle(files)  # type: ignore[attr-defined]
    if per_file:
        each = [tf.data.Dataset.range(file * 100, (file + 1) * 100) for file in files]
        rows = functools.reduce(lambda a, b: a.concatenate(b), each)
    else:
        rows = tf.data.Dataset.from_tensor_slices(tf.constant(files, tf.int64)).interleave(
            lambda file: tf.data.Dataset.range(file * 100, (file + 1) * 100), cycle_length=2
        )
    return _finish(rows.repeat(), shuffle_buffer_size, batch_size)


def fused_shuffle_and_repeat(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """tf.data.experimental.shuffle_and_repeat over 400 ids: one op holding its repeat, no
    Repeat node above the shuffle; without a seed each epoch draws a new order."""
    fused = tf.data.experimental.shuffle_and_repeat(shuffle_buffer_size, seed=seed)
    return tf.data.Dataset.range(400).apply(fused).batch(batch_size)


def long_epoch_unseeded(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """10 million ids shuffled without a seed and repeated: an epoch of 2.5 million batches,
    past any test's time budget."""
    return tf.data.Dataset.range(10**7).shuffle(shuffle_buffer_size).repeat().batch(batch_size)


def seed_set_after_building(
    *, shuffle_buffer_size: int, batch_size: int = 4, tag: str = ""
) -> tf.data.Dataset:
    """tf.random.set_seed called after the pipeline is built: a job's single build is
    unseeded, while later builds in the same process are seeded. (`tag` only tells one
    test's builds from another's.)"""
    shuffled = tf.data.Dataset.range(300).shuffle(30).repeat()
    tf.random.set_seed(1234)
    return shuffled.batch(batch_size)


def seed_drawn_at_run_time(
    *, shuffle_buffer_size: int, batch_size: int = 4, tag: str = ""
) -> tf.data.Dataset:
    """A shuffle seeded with a number drawn when the pipeline is built: another in every
    process, so a resumed job reshuffles its next pass differently."""
    import random

    seed = random.SystemRandom().randrange(1, 2**31 - 1)
    return tf.data.Dataset.range(10**5).shuffle(30, seed=seed).repeat().batch(batch_size)


def snapshot_being_written(
    *, shuffle_buffer_size: int, path: str, batch_size: int = 4
) -> tf.data.Dataset:
    """A seeded shuffle written to a Dataset.snapshot at `path` on its first pass: a save
    while the snapshot is still being written breaks the running iterator (TF 2.21)."""
    shuffled = tf.data.Dataset.range(1000).shuffle(1000, seed=2).snapshot(path)
    return shuffled.repeat().batch(batch_size)


_BUILDS: dict[str, int] = {}


def seeded_from_the_second_build(
    *, shuffle_buffer_size: int, batch_size: int = 4, tag: str = ""
) -> tf.data.Dataset:
    """Unseeded at its first build in a process, seeded at every later one (a seed that
    depends on build order, which no random state explains): a job builds it once."""
    _BUILDS[tag] = _BUILDS.get(tag, 0) + 1
    seed = None if _BUILDS[tag] == 1 else 1234
    return tf.data.Dataset.range(10**5).shuffle(30, seed=seed).repeat().batch(batch_size)


def extra_draw_at_large_buffers(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int = 3, tag: str = ""
) -> tf.data.Dataset:
    """Seeded throughout, with one more seeded shuffle only at buffers of 64 and more: the
    estimator's first builds (small buffers) have fewer random draws than the tested one."""
    ids = tf.data.Dataset.range(300)
    if shuffle_buffer_size >= 64:
        ids = ids.shuffle(16, seed=seed)
    return ids.repeat().shuffle(shuffle_buffer_size, seed=seed + 1).batch(batch_size)


def random_numbers_inside_interleave(
    *, shuffle_buffer_size: int, batch_size: int = 4, seed: int | None = None
) -> tf.data.Dataset:
    """Per-element noise from Dataset.random built inside an interleave function."""
    keys = tf.data.Dataset.range(20).repeat()
    noisy = keys.interleave(
        lambda k: tf.data.Dataset.random(seed=seed).take(2).map(lambda r: k * 1000 + r % 1000),
        cycle_length=2,
    )
    return _finish(noisy, shuffle_buffer_size, batch_size)


def names_the_temp_folder(*, shuffle_buffer_size: int, batch_size: int = 4) -> tf.data.Dataset:
    """A builder that puts a path under the temp folder into the graph (a manifest's, a
    cache's, a statistics file's) and into every element: the same in every process of a
    job on one host, so it resumes exactly."""
    where = tf.data.Dataset.from_tensors(tf.constant(tempfile.gettempdir())).repeat()
    numbers = tf.data.Dataset.range(10**6).map(lambda i: i * 3)
    return _finish(tf.data.Dataset.zip(numbers, where), shuffle_buffer_size, batch_size)


def manifest_written_at_build(
    *, shuffle_buffer_size: int, path: str, batch_size: int = 4, sort: bool = False,
    named_as: str = "path", padding: int = 0,
) -> tf.data.Dataset:  # fmt: skip
    """64 "episodes" (runs of 1,000 ids) listed in a manifest file the builder writes in
    an order Python draws without a seed (as set() order follows the hash seed), read by
    the graph: the graph holds only where the manifest is, and a resumed job reads other
    episodes when its next one opens. `sort`: written in a fixed order. `named_as`: the
    graph holds the file's "path", its "uri" (file://), or its "folder" (a function joins
    the name on), or "new-folder": a new temp folder under `path` at every build.
    `padding`: bytes of comment lines after the list (a manifest of many megabytes)."""
    episodes = list(range(64))
    if sort:
        episodes.sort()
    else:
        random.shuffle(episodes)
    folder = tempfile.mkdtemp(dir=path) if named_as == "new-folder" else path
    file = os.path.join(folder, "manifest.txt")
    with open(file, "w") as manifest:
        manifest.write("".join(f"{episode}\n" for episode in episodes))
        manifest.write(("#" * 99 + "\n") * (padding // 100))
    if named_as == "folder":
        lines = tf.data.Dataset.from_tensors(tf.constant(folder)).flat_map(
            lambda where: tf.data.TextLineDataset(tf.strings.join([where, "manifest.txt"], "/"))
        )
    else:
        lines = tf.data.TextLineDataset(f"file://{file}" if named_as == "uri" else file)
    rows = lines.filter(lambda line: tf.strings.substr(line, 0, 1) != "#").map(
        lambda line: tf.strings.to_number(line, tf.int64)
    )
    rows = rows.interleave(
        lambda episode: tf.data.Dataset.range(episode * 1000, (episode + 1) * 1000), cycle_length=2
    )
    return _finish(rows.repeat(), shuffle_buffer_size, batch_size)
