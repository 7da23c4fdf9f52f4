"""Save and restore a tf.data iterator with tf.train.Checkpoint (a folder or a gs:// URI).

The two halves are symmetric: `save_iterator` writes `<directory>/iterator.*` and says
what it wrote; `restore_iterator` reads a prefix into a fresh iterator and asserts that
every saved value was consumed. A Grain iterator's state is JSON instead
(`restore_grain_iterator`). A save straight to gs:// through TensorFlow's own GCS
filesystem, with its local staging measured, is storage.tf_gcs.save_iterator_to_gcs.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from dlckpt.runtime.tf_import import import_tensorflow

CHECKPOINT_NAME = "iterator"


def unsaveable_errors(tf: Any) -> tuple[type[Exception], ...]:
    """The errors TensorFlow raises for an iterator it cannot serialize: FailedPrecondition
    for a stateful op, Unimplemented for a dataset with no checkpoint support (a generator,
    the copy under prefetch_to_device)."""
    return (tf.errors.FailedPreconditionError, tf.errors.UnimplementedError)


class UnsaveablePipeline(Exception):
    """TensorFlow refused to serialize the iterator; names the op (and, where it can be
    told, the transformation the user wrote) and a fix that works for it."""

    def __init__(self, op: str, detail: str, transformation: str | None = None) -> None:
        self.op = op
        self.detail = detail
        self.transformation = transformation
        if transformation is not None:
            text = (
                f"TensorFlow cannot save this pipeline's iterator: {transformation} keeps "
                f"state outside the dataset (op {op}), so a resume could not reproduce it; "
                f"{detail}"
            )
        else:
            text = (
                f"TensorFlow cannot save this pipeline's iterator: op {op} is stateful (its "
                f"state lives outside the dataset, so a resume could not reproduce it); {detail}"
            )
        super().__init__(text)

    @classmethod
    def from_tf_error(cls, error: Exception) -> UnsaveablePipeline:
        from dlckpt.pipeline.risks import ADVICE, generic_advice, stateful_kind

        text = str(error)
        match = re.search(r"(\w+) is stateful", text) or re.search(
            r"(\w+) does not support checkpointing", text
        )
        if match is None:
            said = " ".join(text.split())[:200]
            return cls("unknown", f"TensorFlow said: {said}; {generic_advice('the stateful op')}")
        op = match.group(1)
        kind = "py" if op == "GeneratorDataset" else stateful_kind(op)
        return cls(op, ADVICE[kind] if kind else generic_advice(op))

    def naming(self, dataset: Any) -> UnsaveablePipeline:
        """The same refusal, naming the transformation in `dataset` that holds the op and
        its own fix, where that can be told (else self)."""
        from dlckpt.pipeline.risks import TRANSFORMATION_FIXES, unsaveable_transformation

        found = unsaveable_transformation(dataset, self.op)
        if found is None:
            return self
        return UnsaveablePipeline(self.op, TRANSFORMATION_FIXES[found], found)


@dataclass
class SavedCheckpoint:
    prefix: Path  # the tf.train.Checkpoint prefix: files are <prefix>.index, <prefix>.data-*
    bytes: int
    files: int
    save_seconds: float


def save_iterator(iterator: Any, directory: Path) -> SavedCheckpoint:
    """Write the iterator with tf.train.Checkpoint; UnsaveablePipeline if TensorFlow refuses."""
    tf = import_tensorflow()
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    started = time.perf_counter()
    try:
        checkpoint.write(str(directory / CHECKPOINT_NAME))
    except unsaveable_errors(tf) as error:
        raise UnsaveablePipeline.from_tf_error(error) from None
    seconds = time.perf_counter() - started
    files = [p for p in directory.iterdir() if p.name.startswith(CHECKPOINT_NAME)]
    return SavedCheckpoint(
        prefix=directory / CHECKPOINT_NAME,
        bytes=sum(p.stat().st_size for p in files),
        files=len(files),
        save_seconds=seconds,
    )


def restore_grain_iterator(dataset: Any, state: str) -> Any:
    """A new iterator over a Grain dataset set to the JSON state saved in the file `state`."""
    iterator = iter(dataset)
    iterator.set_state(json.loads(Path(state).read_text()))
    return iterator


def restore_iterator(dataset: Any, prefix: str) -> Any:
    """A new iterator over `dataset` set to the state saved at `prefix` (a path or URI)."""
    tf = import_tensorflow()
    iterator = iter(dataset)
    tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()
    return iterator
