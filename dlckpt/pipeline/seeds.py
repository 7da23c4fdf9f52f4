"""The seeds of a pipeline's random draws (shuffles, random datasets) and its other graph
constants, as one build holds them.

A job builds its pipeline once per process; a resumed job builds it again in a new process.
Its draws repeat only if both builds hold the same seeds. They do not when a seed is drawn
at run time (`seed=np.random.randint(...)` without a fixed numpy seed, a time-based seed),
nor when `tf.random.set_seed` runs after the pipeline is built (its first build is
unseeded): both were false passes in a new user's check (session 14). This tool builds the
pipeline several times in one process, so every build of a config starts from the random
state of its first (as_first_build); the round trip's build's seeds are then held to the
restore process's, and a first build's unseeded draws that a later build has seeded are a
risk (roundtrip.scenario). The graph's other constants are held the same way: a file list
shuffled in Python at build time without a seed is one constant in another order in every
process (a false pass in a new user's check, session 15).
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
from collections.abc import Iterator
from typing import Any

# (op, seed, seed2) of every random draw, in the order a walk from the output meets them.
Seeds = list[tuple[str, int, int]]
# (what it is, digest) of every other constant, in the order a walk from the output meets
# them (pipeline.risks.constants_in).
Constants = list[tuple[str, str]]

# Per process: the seeds and constants of the first build of each dataloader config (its
# JSON), as a job that builds the pipeline once would hold them. Kept for the process's life.
_FIRST_BUILD: dict[str, tuple[Seeds, Constants] | None] = {}
# Per process: the random state each config's first build started from (see as_first_build).
_FIRST_STATE: dict[str, tuple[Any, ...]] = {}


@contextlib.contextmanager
def as_first_build(dataloader_cfg: Any) -> Iterator[None]:
    """Build as this process first built `dataloader_cfg`: from the same random state.

    A job builds its pipeline once per process; this tool builds it several times in one
    (the estimator's builds come first). Seeds the user's code draws at build time (a
    global seed set when their module is imported, numpy's or Python's global generator)
    would otherwise move on from build to build: TensorFlow gives each op created under a
    global seed the next number of a generator seeded with it, so the round trip's own
    build had other seeds than the restore process's single build, and pipelines that
    resume exactly in a job were failed (a new user's check, session 14: six of them).
    The state is TensorFlow's global seed and its op-seed generator, numpy's and Python's
    global generators, and the generators the user's modules hold (_held_generators: a
    seeded `np.random.default_rng(0)` that each build draws a file order from, one build
    per process in a job, so it resumes; new users' checks got false alarms). The caller
    has imported the builder's module already (an import may set a seed). After a later
    build, the state it found is put back.
    """
    key = config_key(dataloader_cfg)
    module = _builder_module(dataloader_cfg)
    if key not in _FIRST_STATE:
        _FIRST_STATE[key] = _random_state(module)
        yield
        return
    found = _random_state(module)
    _set_random_state(_FIRST_STATE[key], module)
    try:
        yield
    finally:
        _set_random_state(found, module)


def _builder_module(dataloader_cfg: Any) -> Any:
    """The imported module of the config's `_target_` (None: not imported, or no target)."""
    import sys

    target = str(dataloader_cfg.get("_target_") or "")
    return sys.modules.get(target.rpartition(".")[0]) if "." in target else None


def _held_generators(module: Any) -> dict[tuple[str, ...], Any]:
    """The random generators the user's code holds, by where: globals and class attributes
    of the builder's module and of every other module not from the interpreter, its
    site-packages or this tool (a user's helper module: a new user's generators held as
    class attributes there were a false alarm). numpy's Generator and RandomState,
    Python's random.Random, TensorFlow's tf.random.Generator; not the global generators,
    kept apart in _random_state."""
    found: dict[tuple[str, ...], Any] = {}
    for holder in _user_modules(module):
        for name, value in list(vars(holder).items()):
            if _is_generator(value):
                found[(holder.__name__, name)] = value
            elif isinstance(value, type) and value.__module__ == holder.__name__:
                for attribute, held in list(vars(value).items()):
                    if _is_generator(held):
                        found[(holder.__name__, name, attribute)] = held
    return found


def _user_modules(module: Any) -> list[Any]:
    """`module`, then the loaded modules whose files lie outside the interpreter, its
    site-packages and this package."""
    import site
    import sys

    import dlckpt

    roots = [sys.prefix, sys.base_prefix, *site.getsitepackages(), *dlckpt.__path__]
    outside = tuple(os.path.realpath(root) + os.sep for root in roots)
    found = [module] if module is not None else []
    for loaded in list(sys.modules.values()):
        file = getattr(loaded, "__file__", None)
        if file and loaded is not module and not os.path.realpath(file).startswith(outside):
            found.append(loaded)
    return found


def _is_generator(value: Any) -> bool:
    import random
    import sys

    import numpy as np

    kinds: tuple[type, ...] = (np.random.Generator, np.random.RandomState, random.Random)
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        kinds += (tf.random.Generator,)
    return isinstance(value, kinds)


def _generator_state(generator: Any) -> Any:
    import numpy as np

    if isinstance(generator, np.random.Generator):
        return generator.bit_generator.state
    if isinstance(generator, np.random.RandomState):
        return generator.get_state()
    if hasattr(generator, "getstate"):
        return generator.getstate()
    return generator.state.numpy().copy()  # tf.random.Generator


def _set_generator_state(generator: Any, state: Any) -> None:
    import numpy as np

    if isinstance(generator, np.random.Generator):
        generator.bit_generator.state = state
    elif isinstance(generator, np.random.RandomState):
        generator.set_state(state)
    elif hasattr(generator, "setstate"):
        generator.setstate(state)
    else:
        generator.reset(state)  # tf.random.Generator


def _random_state(module: Any = None) -> tuple[Any, ...]:
    import random

    import numpy as np
    from tensorflow.python.eager import context

    generator = getattr(context.context(), "_rng", None)  # set by tf.random.set_seed
    op_seeds = generator.getstate() if generator is not None else None
    held = {where: _generator_state(g) for where, g in _held_generators(module).items()}
    return context.global_seed(), op_seeds, np.random.get_state(), random.getstate(), held


def _set_random_state(state: tuple[Any, ...], module: Any = None) -> None:
    import random

    import numpy as np
    from tensorflow.python.eager import context

    from dlckpt.runtime.tf_import import import_tensorflow

    global_seed, op_seeds, numpy_state, python_state, held = state
    import_tensorflow().random.set_seed(global_seed)
    if op_seeds is not None:
        context.context()._rng.setstate(op_seeds)
    np.random.set_state(numpy_state)
    random.setstate(python_state)
    generators = _held_generators(module)
    for where, generator_state in held.items():
        if where in generators:
            _set_generator_state(generators[where], generator_state)


def _read_build(dataset: Any) -> tuple[Seeds, Constants] | None:
    """`dataset`'s seeds and constants (None: its graph could not be read)."""
    from dlckpt.pipeline.risks import seeds_and_constants

    try:
        return seeds_and_constants(dataset)
    except Exception:  # GraphUnreadable, or a graph TensorFlow cannot serialize at all
        return None


def note_build(dataloader_cfg: Any, dataset: Any) -> None:
    """Keep `dataset`'s seeds and constants if it is this process's first build of
    `dataloader_cfg`."""
    key = config_key(dataloader_cfg)
    if key not in _FIRST_BUILD:
        _FIRST_BUILD[key] = _read_build(dataset)


def first_build(dataloader_cfg: Any) -> Seeds | None:
    """The seeds of this process's first build of `dataloader_cfg` (None: none, or unread)."""
    build = _FIRST_BUILD.get(config_key(dataloader_cfg))
    return build[0] if build is not None else None


def first_constants(dataloader_cfg: Any) -> Constants | None:
    """The constants of this process's first build of `dataloader_cfg` (None: none, unread)."""
    build = _FIRST_BUILD.get(config_key(dataloader_cfg))
    return build[1] if build is not None else None


def config_key(dataloader_cfg: Any) -> str:
    """A dataloader config (a mapping, or an OmegaConf node) as canonical JSON, without its
    shuffle buffer size: the estimator builds the pipeline at other buffers first, and the
    first of those builds is the one whose seeds a job's single build has."""
    from omegaconf import DictConfig, OmegaConf

    plain = (
        OmegaConf.to_container(dataloader_cfg, resolve=True)
        if isinstance(dataloader_cfg, DictConfig)
        else dict(dataloader_cfg)
    )
    assert isinstance(plain, dict)
    plain.pop("shuffle_buffer_size", None)
    return json.dumps(plain, sort_keys=True, default=str)


def unseeded(seeds: Seeds) -> list[str]:
    """The ops among `seeds` that pick their own seeds (seed and seed2 both 0)."""
    return [op for op, seed, seed2 in seeds if seed == 0 and seed2 == 0]


def differing(here: Seeds, there: Seeds) -> str | None:
    """The first draw whose seeds differ between two builds, as text (None: the same)."""
    if len(here) != len(there):
        return f"{len(here)} random draws here, {len(there)} there"
    for (op, *mine), (_, *theirs) in zip(here, there, strict=True):
        if mine != theirs:
            return f"{op}: seeds {tuple(mine)} here, {tuple(theirs)} in the restore process"
    return None


def differing_constants(here: Constants, there: Constants) -> str | None:
    """A constant one build holds and the other does not, or the first held in another
    order, as text (None: the same, in the same order)."""
    if [digest for _, digest in here] == [digest for _, digest in there]:
        return None
    theirs = collections.Counter(digest for _, digest in there)
    mine = collections.Counter(digest for _, digest in here)
    only_here = [what for what, digest in here if mine[digest] > theirs[digest]]
    only_there = [what for what, digest in there if theirs[digest] > mine[digest]]
    if not only_here and not only_there:  # the same constants, in another order
        index = next(i for i, (a, b) in enumerate(zip(here, there, strict=True)) if a[1] != b[1])
        return (
            f"the same constants in another order: {here[index][0]} here, "
            f"{there[index][0]} in its place in the restore process"
        )
    if not only_there:
        return f"{only_here[0]} here, not in the restore process"
    if not only_here:
        return f"{only_there[0]} in the restore process, not here"
    if only_here[0] == only_there[0]:  # a file the graph names: the same path, other bytes
        return f"{only_here[0]} holds other bytes in the restore process"
    return f"{only_here[0]} here, {only_there[0]} in the restore process"
