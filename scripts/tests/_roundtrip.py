"""The checkpoint round trip: save an iterator, resume it in a new process, compare bit for bit.

A same-process restore hides unseeded randomness (the restored pipeline shares the
process's random state and can look identical), so the restore always runs in a fresh
Python process started from this file, as a resumed training job would.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from _signals import die_with_parent
from _tensors import element_leaves
from _tf import import_tensorflow

CHECKPOINT_NAME = "iterator"
SCRIPTS_DIR = Path(__file__).resolve().parent

# What to do instead, by the stateful op TensorFlow names when it refuses to save.
_STATEFUL_OP_ADVICE = {
    "PyFunc": (
        "Dataset.from_generator / tf.numpy_function run Python whose state TensorFlow cannot "
        "save; read from files (TFRecord, ArrayRecord) or generate with Dataset.range + map"
    ),
    "EagerPyFunc": (
        "tf.py_function runs Python whose state TensorFlow cannot save; rewrite it with TF ops"
    ),
}
_RANDOM_OP_ADVICE = (
    "an unseeded tf.random op keeps hidden generator state; use tf.random.stateless_* with a "
    "seed derived from the element (e.g. its index, or zip in tf.data.Dataset.random(seed=...))"
)

Digest = dict[str, str]  # key path -> "dtype shape sha256"


class UnsaveablePipeline(Exception):
    """TensorFlow refused to serialize the iterator; names the op and what to do instead."""

    def __init__(self, op: str, detail: str) -> None:
        self.op = op
        self.detail = detail
        super().__init__(
            f"TensorFlow cannot save this pipeline's iterator: op {op} is stateful "
            f"(its state lives outside the dataset, so a resume could not reproduce it); {detail}"
        )

    @classmethod
    def from_tf_error(cls, error: Exception) -> UnsaveablePipeline:
        match = re.search(r"(\w+) is stateful", str(error))
        op = match.group(1) if match else "unknown"
        if op in _STATEFUL_OP_ADVICE:
            return cls(op, _STATEFUL_OP_ADVICE[op])
        if "Random" in op or op in {"TruncatedNormal", "Multinomial"}:
            return cls(op, _RANDOM_OP_ADVICE)
        return cls(op, f"TensorFlow said: {' '.join(str(error).split())[:200]}")


@dataclass
class SavedCheckpoint:
    prefix: Path  # the tf.train.Checkpoint prefix: files are <prefix>.index, <prefix>.data-*
    bytes: int
    files: int
    save_seconds: float


@dataclass
class Mismatch:
    batch: int
    key: str
    expected: str
    actual: str

    def describe(self) -> str:
        return (
            f"batch {self.batch}, key {self.key}: expected {self.expected}, restored {self.actual}"
        )


def digest_element(element: Any) -> Digest:
    """Key path -> dtype, shape and sha256 of the exact bytes (strings length-prefixed).

    Composite tensors are digested by their components (see _tensors.element_leaves), so
    ragged and sparse values compare by value, and a change of structure is a mismatch.
    """
    digests = {}
    for key, array in element_leaves(element):
        sha = hashlib.sha256()
        if array.dtype == object:
            for item in array.reshape(-1):
                item_bytes = bytes(item)
                sha.update(len(item_bytes).to_bytes(8, "little") + item_bytes)
        else:
            sha.update(np.ascontiguousarray(array).tobytes())
        digests[key] = f"{array.dtype} {list(array.shape)} {sha.hexdigest()[:16]}"
    return digests


def take_digests(iterator: Any, count: int) -> list[Digest]:
    return [digest_element(next(iterator)) for _ in range(count)]


def first_mismatch(expected: list[Digest], actual: list[Digest]) -> Mismatch | None:
    for batch, (want, got) in enumerate(zip(expected, actual, strict=False)):
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                return Mismatch(batch, key, want.get(key, "<missing>"), got.get(key, "<missing>"))
    if len(actual) < len(expected):
        return Mismatch(len(actual), "<end of data>", "more batches", "end of data")
    return None


def save_iterator(iterator: Any, directory: Path) -> SavedCheckpoint:
    """Write the iterator with tf.train.Checkpoint; UnsaveablePipeline if TensorFlow refuses."""
    tf = import_tensorflow()
    directory.mkdir(parents=True, exist_ok=True)
    checkpoint = tf.train.Checkpoint(iterator=iterator)
    started = time.perf_counter()
    try:
        checkpoint.write(str(directory / CHECKPOINT_NAME))
    except tf.errors.FailedPreconditionError as error:
        raise UnsaveablePipeline.from_tf_error(error) from None
    seconds = time.perf_counter() - started
    files = [p for p in directory.iterdir() if p.name.startswith(CHECKPOINT_NAME)]
    return SavedCheckpoint(
        prefix=directory / CHECKPOINT_NAME,
        bytes=sum(p.stat().st_size for p in files),
        files=len(files),
        save_seconds=seconds,
    )


def restore_iterator(dataset: Any, prefix: Path) -> Any:
    tf = import_tensorflow()
    iterator = iter(dataset)
    tf.train.Checkpoint(iterator=iterator).read(str(prefix)).assert_consumed()
    return iterator


@dataclass
class RestoreResult:
    digests: list[Digest]
    restore_seconds: float
    error: str | None = None


def restore_in_new_process(
    dataloader_cfg: dict[str, Any], prefix: Path, batches: int, workdir: Path
) -> RestoreResult:
    """Run `python _roundtrip.py` in a fresh process: build, restore, take `batches`, digest."""
    request = workdir / "restore_request.json"
    result_path = workdir / "restore_result.json"
    request.write_text(
        json.dumps({"dataloader": dataloader_cfg, "prefix": str(prefix), "batches": batches})
    )
    # Each restore writes its own result: a process that dies must not leave an earlier
    # restore's result to be read as its own.
    result_path.unlink(missing_ok=True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(SCRIPTS_DIR), env.get("PYTHONPATH")) if p)
    completed = subprocess.run(
        die_with_parent([sys.executable, str(Path(__file__)), str(request), str(result_path)]),
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    if not result_path.exists():
        tail = " | ".join(completed.stderr.strip().splitlines()[-3:])
        return RestoreResult([], 0.0, f"restore process exited {completed.returncode}: {tail}")
    data = json.loads(result_path.read_text())
    return RestoreResult(data["digests"], data["restore_seconds"], data.get("error"))


def _restore_main(argv: list[str]) -> int:
    """Entry point of the fresh process (not a user-facing command)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("request")
    parser.add_argument("result")
    args = parser.parse_args(argv)
    from _pipeline import instantiate_dataset
    from omegaconf import OmegaConf

    request = json.loads(Path(args.request).read_text())
    result: dict[str, Any] = {"digests": [], "restore_seconds": 0.0}
    try:
        dataset = instantiate_dataset(OmegaConf.create(request["dataloader"]))
        started = time.perf_counter()
        iterator = restore_iterator(dataset, Path(request["prefix"]))
        result["restore_seconds"] = time.perf_counter() - started
        result["digests"] = take_digests(iterator, request["batches"])
    except StopIteration:
        result["error"] = "the restored iterator ended early"
    except Exception as error:
        result["error"] = (
            f"restore failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        )
    Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(_restore_main(sys.argv[1:]))
