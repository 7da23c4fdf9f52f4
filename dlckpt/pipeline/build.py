"""How a config's `dataloader` node becomes the user's tf.data.Dataset (or one clear line).

The node's `_target_` names a function (module.function on PYTHONPATH); the rest of the
node are its keyword arguments. Every failure on the user's side is a UsageError (exit 2)
naming the target and what was expected.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
import sys
import threading
import traceback
from collections.abc import Iterator
from typing import Any, NoReturn

from dlckpt.errors import CheckFailed, UsageError
from dlckpt.runtime.signals import received_interrupt
from dlckpt.runtime.tf_import import import_tensorflow


def _missing_module(error: BaseException) -> str | None:
    """The top-level name of a module that is not installed, from anywhere in the error's
    chain (hydra wraps the ImportError of the user's module in its own errors), or None.
    A module of this package or of the user's own missing file is not "not installed"
    when its top-level package imports: then it is a typo, reported as one."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ModuleNotFoundError) and current.name:
            top = current.name.split(".")[0]
            if importlib.util.find_spec(top) is None:
                return top
        current = current.__cause__ or current.__context__
    return None


class _BuilderExit(BaseException):
    """The user's builder called os._exit: raised in its place so the run can answer (a
    BaseException, as SystemExit is, so that Hydra does not wrap it as the builder's error)."""


_REAL_EXIT = os._exit
_building = threading.local()  # .target: the builder this thread is running, if any


def _guarded_exit(status: int) -> NoReturn:
    """os._exit while the tool runs: a raise inside a builder (see _exits_raise), the real
    exit anywhere else. Per thread: the run's own exit (runtime.signals.exit_process) may come
    while another thread is still inside a builder."""
    if getattr(_building, "target", None) is not None:
        raise _BuilderExit(status)
    _REAL_EXIT(status)


@contextlib.contextmanager
def _exits_raise(target: Any) -> Iterator[None]:
    """A builder that ends the process (sys.exit, os._exit, or raises KeyboardInterrupt
    without a signal) gets the tool's answer: exit 2, one line saying what it did, the report
    written, the run's files removed. os._exit would skip all of that, so while this thread
    runs the builder it raises instead."""
    os._exit = _guarded_exit  # once is enough; it is the real exit outside a builder
    previous = getattr(_building, "target", None)
    _building.target = target
    try:
        yield
    except SystemExit as exit_:
        raise UsageError(
            f"dataloader: {target} called sys.exit({exit_.code!r}) while building the dataset "
            "(expected it to return a tf.data.Dataset, or raise an exception)"
        ) from None
    except _BuilderExit as exit_:
        raise UsageError(
            f"dataloader: {target} called os._exit({exit_.args[0]!r}) while building the "
            "dataset (expected it to return a tf.data.Dataset, or raise an exception)"
        ) from None
    except KeyboardInterrupt:
        if received_interrupt() is not None:  # a real Ctrl-C / SIGTERM: the run's own answer
            raise
        raise UsageError(
            f"dataloader: {target} raised KeyboardInterrupt while building the dataset, with no "
            "signal received (expected it to return a tf.data.Dataset)"
        ) from None
    except Exception:
        raise  # the caller answers these (Hydra wraps them)
    except BaseException as raised:  # the user's own BaseException subclass: Hydra passes it
        raise UsageError(
            f"dataloader: {target} raised {type(raised).__name__} while building the dataset: "
            f"{' '.join(str(raised).split())[:300]}"
        ) from None
    finally:
        _building.target = previous


def instantiate_dataset(dataloader_cfg: Any) -> Any:
    """Call the config's `dataloader._target_` with the rest of the node as keyword arguments."""
    from hydra.errors import InstantiationException
    from hydra.utils import instantiate

    # Import TensorFlow our way (quiet) before the user's module imports it its way.
    tf = import_tensorflow()
    target = dataloader_cfg.get("_target_")
    from dlckpt.pipeline.seeds import as_first_build

    try:
        with _exits_raise(target):
            _import_target(target)  # its import may set a seed: before the state is kept
            with as_first_build(dataloader_cfg):
                dataset = instantiate(dataloader_cfg, _convert_="all")
    except InstantiationException as exc:
        cause = exc.__cause__ or exc
        missing = _missing_module(exc)
        # The target's own package missing is a PYTHONPATH (or spelling) matter, answered
        # below; a package the target imports is one the user's environment has and ours not.
        if missing is not None and missing != str(target).split(".")[0]:
            raise UsageError(
                f"dataloader._target_={target!r} needs the module {missing!r}, which the "
                f"environment running this ({sys.prefix}) does not have: run in your training "
                "environment (`make … PYTHON=/path/to/its/python`, or `pip install` this tool "
                "there: README, In your own environment)"
            ) from None
        if isinstance(cause, (ImportError, AttributeError)) or "Error locating target" in str(exc):
            raise UsageError(
                f"dataloader._target_={target!r} does not import "
                f"(expected module.function on PYTHONPATH): {' '.join(str(cause).split())[:300]}"
            ) from None
        if isinstance(cause, TypeError) and _a_call_signature_error(cause):
            # A misspelled or extra key in the dataloader node: the function's own message
            # names the argument.
            raise UsageError(
                f"dataloader: {target} does not accept these settings "
                f"(expected its keyword arguments): {' '.join(str(cause).split())[:300]}"
            ) from None
        # The builder itself raised: the user's code, so bad input rather than our failure.
        raise UsageError(
            f"dataloader: {target} raised {type(cause).__name__} while building the dataset: "
            f"{' '.join(str(cause).split())[:300]}"
        ) from None
    if isinstance(dataset, tf.distribute.DistributedDataset):
        raise CheckFailed(distributed_dataset_text(target, dataset))
    if not isinstance(dataset, tf.data.Dataset):
        raise UsageError(
            f"dataloader._target_={target!r} returned {type(dataset).__name__}, "
            "expected a tf.data.Dataset"
        )
    _check_element_kinds(target, dataset)
    from dlckpt.pipeline.seeds import note_build

    note_build(dataloader_cfg, dataset)
    return dataset


def _check_element_kinds(target: Any, dataset: Any) -> None:
    """UsageError when an element holds something other than tensors (dense, ragged,
    sparse): a dataset (window() without a flat_map), an Optional. TensorFlow saves such an
    iterator, but its batches cannot be read as values, so nothing could be compared (a new
    user's check ended in exit 4 with "Cannot convert a Tensor of dtype variant")."""
    tf = import_tensorflow()
    kinds = (tf.TensorSpec, tf.RaggedTensorSpec, tf.SparseTensorSpec)
    for spec in tf.nest.flatten(dataset.element_spec, expand_composites=False):
        if not isinstance(spec, kinds):
            raise UsageError(
                f"dataloader: {target} yields elements holding a {type(spec).__name__}; the "
                "test compares tensors (dense, ragged or sparse): make them tensors first "
                "(window(n): .flat_map(lambda w: w.batch(n)); an Optional: its value)"
            )


def _a_call_signature_error(error: TypeError) -> bool:
    """Whether a TypeError says the call did not fit the function's keyword arguments (a
    misspelled or extra key), not that the builder's own code failed (an int32 % int64 in a
    map was once answered "does not accept these settings")."""
    text = str(error)
    return any(
        words in text
        for words in ("unexpected keyword argument", "required positional argument",
                      "required keyword-only argument", "positional argument but",
                      "positional arguments but")
    )  # fmt: skip


def _import_target(target: Any) -> None:
    """Import the module of `dataloader._target_`; a target that does not import is left to
    instantiate, which says so in its own words (handled above)."""
    import importlib

    module = str(target).rsplit(".", 1)[0] if target and "." in str(target) else None
    if module:
        with contextlib.suppress(Exception):
            importlib.import_module(module)


def distributed_dataset_text(target: Any, dataset: Any) -> str:
    """Why a tf.distribute dataset's position cannot be checkpointed, and what works instead.

    tf.train.Checkpoint refuses a tf.distribute.DistributedIterator (ValueError: not a
    trackable object), whatever the strategy: shown under MultiWorkerMirroredStrategy with
    two workers by tests/test_multi_worker_strategy.py, on TensorFlow 2.15 and 2.21; reported
    upstream as tensorflow/tensorflow#56372. The same test shows the way that works.
    """
    return (
        f"CHECKPOINT CANNOT BE SAVED: dataloader._target_={target!r} returned a tf.distribute "
        f"{type(dataset).__name__} (strategy.distribute_datasets_from_function or "
        "experimental_distribute_dataset), and TensorFlow cannot checkpoint its iterator: "
        "tf.train.Checkpoint raises ValueError, a tf.distribute.DistributedIterator is not "
        "trackable (tensorflow/tensorflow#56372), under MultiWorkerMirroredStrategy too. What "
        "works: on each worker iterate its own tf.data.Dataset (iter(dataset_fn(input_context"
        "))), pass its batches to strategy.run, and checkpoint that iterator; to test it here, "
        "point dataloader._target_ at the function that builds it (it gets process_index and "
        "process_count, as InputContext's input_pipeline_id and num_input_pipelines; "
        "docs/multi-host.md)"
    )


def read_failure(error: BaseException) -> UsageError | None:
    """The user's pipeline failing as it is read (a TensorFlow error raised by an iterator's
    next element: a truncated TFRecord's DataLossError, a map's InvalidArgumentError) as
    bad input naming what it raised; None for any other error. Exit 2, not 4: it is the
    pipeline that fails, before anything is saved (a new user's check: exit 4 for both)."""
    tf = sys.modules.get("tensorflow")
    if tf is None or not isinstance(error, tf.errors.OpError):
        return None
    frames = traceback.extract_tb(error.__traceback__)
    if not any(frame.filename.endswith(_ITERATOR_SOURCE) for frame in frames):
        return None
    # Without TensorFlow's wrappers: "{{function_node __wrapped__IteratorGetNext...}}" before
    # the message, " [Op:IteratorGetNext] name:" after it.
    message = re.sub(r"\{\{function_node [^}]*\}\}", "", str(error.message))
    message = re.sub(r"\s*\[Op:\w+\]( name:.*)?$", "", message.strip())
    # "Error in user-defined function passed to MapDataset:32 transformation with iterator:
    # Iterator::Root::…: " before, " [[{{node StringToNumber}}]]" after: where inside the
    # graph (this tool's own sampling pipeline, at times), not what went wrong.
    message = re.sub(r"Error in user-defined function passed to \S+ transformation with "
                     r"iterator: \S+: ", "", message)  # fmt: skip
    message = re.sub(r"\s*\[\[\{\{node [^}]*\}\}\]\]", "", message)
    detail = " ".join(message.split())[:300]
    return UsageError(
        f"dataloader: the pipeline raised {type(error).__name__} while reading its elements: "
        f"{detail}; it fails without this tool too (`for batch in dataset: pass`): fix it, "
        "then run again"
    )


# Where TensorFlow raises a dataset iterator's errors (tf.data's Python iterator).
_ITERATOR_SOURCE = os.path.join("data", "ops", "iterator_ops.py")
