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

from dlckpt.pipeline.tensors import element_leaves, leading_dimension
from dlckpt.runtime.signals import die_with_parent
from dlckpt.runtime.tf_import import import_tensorflow

CHECKPOINT_NAME = "iterator"

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
        from dlckpt.pipeline.risks import ADVICE, generic_advice, stateful_kind

        match = re.search(r"(\w+) is stateful", str(error))
        if match is None:
            said = " ".join(str(error).split())[:200]
            return cls("unknown", f"TensorFlow said: {said}; {generic_advice('the stateful op')}")
        op = match.group(1)
        kind = stateful_kind(op)
        return cls(op, ADVICE[kind] if kind else generic_advice(op))


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


@dataclass
class DigestStream:
    """Digests of consecutive batches, and whether the stream ended right after them."""

    digests: list[Digest]
    elements: int  # elements in those batches (the leading dimension of each)
    ended: bool  # the iterator raised StopIteration after the last digest
    cut: bool = False  # the time budget stopped the reading before `count` batches


def take_digests(iterator: Any, count: int, deadline: float | None = None) -> DigestStream:
    """Digest up to `count` batches; stops early at the end of data or at `deadline`.

    `deadline` is a time.monotonic() value; reaching it sets `cut` (the caller says so).
    """
    stream = DigestStream([], 0, ended=False)
    while len(stream.digests) < count:
        if deadline is not None and time.monotonic() > deadline:
            stream.cut = True
            break
        try:
            batch = next(iterator)
        except StopIteration:
            stream.ended = True
            break
        stream.digests.append(digest_element(batch))
        stream.elements += leading_dimension(batch)
    return stream


def first_mismatch(expected: DigestStream, actual: DigestStream) -> Mismatch | None:
    """The first batch and key that differ, an early end, or an end where the original had none."""
    for batch, (want, got) in enumerate(zip(expected.digests, actual.digests, strict=False)):
        for key in sorted(set(want) | set(got)):
            if want.get(key) != got.get(key):
                return Mismatch(batch, key, want.get(key, "<missing>"), got.get(key, "<missing>"))
    if len(actual.digests) < len(expected.digests):
        return Mismatch(len(actual.digests), "<end of data>", "more batches", "end of data")
    if expected.ended and len(actual.digests) > len(expected.digests):
        return Mismatch(len(expected.digests), "<end of data>", "end of data", "another batch")
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


def restore_iterator(dataset: Any, prefix: str) -> Any:
    """A new iterator over `dataset` set to the state saved at `prefix` (a path or URI)."""
    tf = import_tensorflow()
    iterator = iter(dataset)
    tf.train.Checkpoint(iterator=iterator).read(prefix).assert_consumed()
    return iterator


@dataclass
class RestoreResult:
    stream: DigestStream
    restore_seconds: float
    error: str | None = None


def stream_from_json(data: dict[str, Any]) -> DigestStream:
    return DigestStream(data["digests"], data["elements"], data["ended"])


def restore_in_new_process(
    dataloader_cfg: dict[str, Any],
    prefix: str | Path,
    expected: DigestStream,
    workdir: Path,
    *,
    timeout_seconds: float | None = None,
    env: dict[str, str] | None = None,
) -> RestoreResult:
    """Run `python _roundtrip.py` in a fresh process: build, restore, digest as many batches.

    The new process reads one batch more than `expected` holds when the original stream
    ended there, so a restored stream that goes on is caught. `env` adds variables to the
    child's environment. A child still running after `timeout_seconds` is killed and the
    result says so.
    """
    request = workdir / "restore_request.json"
    result_path = workdir / "restore_result.json"
    batches = len(expected.digests) + (1 if expected.ended else 0)
    request.write_text(
        json.dumps({"dataloader": dataloader_cfg, "prefix": str(prefix), "batches": batches})
    )
    # Each restore writes its own result: a process that dies must not leave an earlier
    # restore's result to be read as its own.
    result_path.unlink(missing_ok=True)
    child_env = {**os.environ, **(env or {})}
    # The restore's temp files (TensorFlow's autograph writes generated code there) go in
    # this run's folder, removed with it: a restore stopped by an interrupt is killed and
    # cannot remove them itself. It only reads the checkpoint, so nothing large lands here.
    child_tmp = workdir / "restore-tmp"
    child_tmp.mkdir(exist_ok=True)
    child_env["TMPDIR"] = str(child_tmp)
    try:
        completed = subprocess.run(
            die_with_parent(
                [sys.executable, "-m", "dlckpt.roundtrip.child", str(request), str(result_path)]
            ),
            env=child_env,
            capture_output=True,
            text=True,
            check=False,
            timeout=timeout_seconds,
        )
    except subprocess.TimeoutExpired:  # run() has killed the child
        return RestoreResult(
            DigestStream([], 0, False),
            0.0,
            f"the restore process did not finish within {timeout_seconds:.0f} s "
            "(roundtrip.restore_timeout_seconds) and was stopped",
        )
    if not result_path.exists():
        tail = " | ".join(completed.stderr.strip().splitlines()[-3:])
        return RestoreResult(
            DigestStream([], 0, False),
            0.0,
            f"restore process exited {completed.returncode}: {tail}",
        )
    data = json.loads(result_path.read_text())
    return RestoreResult(stream_from_json(data), data["restore_seconds"], data.get("error"))


def _restore_main(argv: list[str]) -> int:
    """Entry point of the fresh process (not a user-facing command)."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("request")
    parser.add_argument("result")
    args = parser.parse_args(argv)
    from omegaconf import OmegaConf

    from dlckpt.pipeline.robot import instantiate_dataset

    request = json.loads(Path(args.request).read_text())
    result: dict[str, Any] = {"digests": [], "elements": 0, "ended": False, "restore_seconds": 0.0}
    try:
        dataset = instantiate_dataset(OmegaConf.create(request["dataloader"]))
        started = time.perf_counter()
        iterator = restore_iterator(dataset, request["prefix"])
        result["restore_seconds"] = time.perf_counter() - started
        stream = take_digests(iterator, request["batches"])
        result.update(digests=stream.digests, elements=stream.elements, ended=stream.ended)
    except Exception as error:
        result["error"] = (
            f"restore failed: {type(error).__name__}: {' '.join(str(error).split())[:300]}"
        )
    Path(args.result).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    from dlckpt.runtime.signals import exit_process

    exit_process(_restore_main(sys.argv[1:]))
