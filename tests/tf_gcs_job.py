"""Run by tests/test_tf_gcs.py in fresh processes: TensorFlow's own gs:// filesystem at work.

    python tf_gcs_job.py save URI BUFFER OUT.json [GFILE_FOLDER_URI]
    python tf_gcs_job.py restore URI BUFFER OUT.json

`save` checkpoints an iterator to URI (and, given a folder, first writes, lists and reads
back files there with tf.io.gfile); `restore` restores it and takes the same batches.
Each writes OUT.json; an error from TensorFlow is one line on stderr with exit 1.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
import tensorflow as tf

ELEMENT_BYTES = 64 * 1024  # one buffered element: a 64 KiB uint8 frame
BATCHES_BEFORE_SAVE = 3
BATCHES_COMPARED = 3
# Bytes that look like an HTTP head: the front must pass bodies through untouched.
HEADLIKE = b"\r\n\r\nPUT / HTTP/1.1\r\nTransfer-Encoding: identity\r\nContent-Length: 0\r\n\r\n"


def dataset(buffer: int) -> tf.data.Dataset:
    """Random frames (seeded per element) through a shuffle buffer of `buffer` elements."""

    def frame(index: tf.Tensor) -> dict[str, tf.Tensor]:
        pixels = tf.random.stateless_uniform(
            [ELEMENT_BYTES], seed=tf.stack([index, 7]), maxval=256, dtype=tf.int64
        )
        return {"index": index, "frame": tf.cast(pixels, tf.uint8)}

    return tf.data.Dataset.range(10**6).map(frame).shuffle(buffer, seed=3).batch(2)


def digests(iterator, count: int) -> list[str]:  # type: ignore[no-untyped-def]
    out = []
    for _ in range(count):
        batch = next(iterator)
        sha = hashlib.sha256(batch["index"].numpy().tobytes() + batch["frame"].numpy().tobytes())
        out.append(sha.hexdigest())
    return out


def save(uri: str, buffer: int) -> dict[str, object]:
    iterator = iter(dataset(buffer))
    for _ in range(BATCHES_BEFORE_SAVE):
        next(iterator)
    path = tf.train.Checkpoint(iterator=iterator).write(uri)
    return {"path": path, "digests": digests(iterator, BATCHES_COMPARED)}


def restore(uri: str, buffer: int) -> dict[str, object]:
    iterator = iter(dataset(buffer))
    tf.train.Checkpoint(iterator=iterator).read(uri).assert_consumed()
    return {"digests": digests(iterator, BATCHES_COMPARED)}


def gfile(folder: str) -> dict[str, object]:
    contents = {
        "empty.bin": b"",
        "small.txt": b"hello from tf.io.gfile\n",
        "large.bin": os.urandom(3 * 1024 * 1024) + HEADLIKE + os.urandom(5 * 1024 * 1024 + 3),
    }
    tf.io.gfile.makedirs(folder)
    for name, data in contents.items():
        with tf.io.gfile.GFile(f"{folder}/{name}", "wb") as handle:
            handle.write(data)
    read_back = {}
    for name in contents:
        with tf.io.gfile.GFile(f"{folder}/{name}", "rb") as handle:
            read_back[name] = hashlib.sha256(handle.read()).hexdigest()
    return {
        "written": {name: hashlib.sha256(data).hexdigest() for name, data in contents.items()},
        "read": read_back,
        "listed": sorted(tf.io.gfile.listdir(folder)),
    }


def main(argv: list[str]) -> int:
    command, uri, buffer, out, *folder = argv
    try:
        if command == "save":
            files = gfile(folder[0]) if folder else {}
            result = {**save(uri, int(buffer)), "gfile": files}
        else:
            result = restore(uri, int(buffer))
    except tf.errors.OpError as error:
        print(f"{type(error).__name__}: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    with open(out, "w") as handle:
        json.dump(result, handle)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
