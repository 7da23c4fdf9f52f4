"""GCS transfers against the embedded GCS server (fake-gcs-server on loopback), no mocks.

Each test uploads real files with google-cloud-storage and checks the bytes that land,
the crc32c checks, the completion marker and that deletion stays inside the run prefix.
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import pytest

from dlckpt.errors import UsageError
from dlckpt.storage.gcs import RESUMABLE_CHUNK_BYTES, GcsDestination, GcsLocation, parse_gcs_uri
from dlckpt.storage.transfer import MARKER_NAME, TransferError, crc32c_of_file


@pytest.fixture
def checkpoint_files(tmp_path: Path) -> list[Path]:
    """Files shaped like a tf.train.Checkpoint: a small index and a data shard.

    The shard is larger than google-cloud-storage's multipart limit (8 MiB), so it goes
    up as a resumable upload in several chunks.
    """
    folder = tmp_path / "staged"
    folder.mkdir()
    index = folder / "iterator.index"
    index.write_bytes(os.urandom(1_234))
    shard = folder / "iterator.data-00000-of-00001"
    shard.write_bytes(os.urandom(RESUMABLE_CHUNK_BYTES + 3 * 1024 * 1024 + 17))
    return [index, shard]


def _destination(gcs_client, gcs_bucket, prefix: str = "runs/p") -> GcsDestination:
    return GcsDestination(gcs_client, GcsLocation(gcs_bucket.name, prefix))


def test_upload_and_download_match_byte_for_byte(
    gcs_client, gcs_bucket, checkpoint_files, tmp_path
):
    destination = _destination(gcs_client, gcs_bucket)
    destination.put(checkpoint_files, "run-1")

    stored = {blob.name: blob for blob in gcs_client.list_blobs(gcs_bucket, prefix="runs/p/run-1/")}
    assert sorted(stored) == sorted(
        [f"runs/p/run-1/{p.name}" for p in checkpoint_files] + [f"runs/p/run-1/{MARKER_NAME}"]
    )
    for path in checkpoint_files:
        blob = stored[f"runs/p/run-1/{path.name}"]
        assert blob.download_as_bytes() == path.read_bytes()
        assert blob.crc32c == crc32c_of_file(path)
    manifest = json.loads(stored[f"runs/p/run-1/{MARKER_NAME}"].download_as_bytes())["files"]
    assert manifest == {
        p.name: {"size": p.stat().st_size, "crc32c": crc32c_of_file(p)} for p in checkpoint_files
    }

    fetched = destination.fetch("run-1", tmp_path / "downloaded")
    assert [p.name for p in fetched] == sorted(p.name for p in checkpoint_files)
    for path in checkpoint_files:
        assert (tmp_path / "downloaded" / path.name).read_bytes() == path.read_bytes()


@pytest.mark.parametrize(
    ("damage", "kind"),
    [
        (lambda data: data[:-100], "truncated"),
        (lambda data: bytes([data[0] ^ 0xFF]) + data[1:], "corrupted"),
    ],
    ids=["truncated", "corrupted"],
)
def test_damaged_object_is_detected_and_named(
    gcs_client, gcs_bucket, checkpoint_files, tmp_path, damage, kind
):
    destination = _destination(gcs_client, gcs_bucket)
    destination.put(checkpoint_files, "run-1")
    index = checkpoint_files[0]
    gcs_bucket.blob(f"runs/p/run-1/{index.name}").upload_from_string(damage(index.read_bytes()))

    with pytest.raises(TransferError) as caught:
        destination.fetch("run-1", tmp_path / "downloaded")
    message = str(caught.value)
    assert f"gs://{gcs_bucket.name}/runs/p/run-1/{index.name}" in message
    assert kind in message
    assert str(index.stat().st_size) in message


class _BreaksAfter(io.RawIOBase):
    """A readable file that raises OSError after `limit` bytes: an upload cut short."""

    def __init__(self, path: Path, limit: int) -> None:
        self._handle = path.open("rb")
        self._left = limit

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[no-untyped-def]
        if self._left <= 0:
            raise OSError("connection lost mid-upload (injected)")
        data = self._handle.read(min(len(buffer), self._left))
        self._left -= len(data)
        buffer[: len(data)] = data
        return len(data)

    def tell(self) -> int:
        return self._handle.tell()

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._handle.seek(offset, whence)

    def close(self) -> None:
        self._handle.close()
        super().close()


def test_upload_cut_short_leaves_no_marker_and_fetch_refuses(
    gcs_client, gcs_bucket, checkpoint_files, tmp_path
):
    destination = _destination(gcs_client, gcs_bucket)
    shard = checkpoint_files[1]

    def opener(path: Path):
        if path == shard:
            return io.BufferedReader(_BreaksAfter(path, RESUMABLE_CHUNK_BYTES + 1024))
        return path.open("rb")

    with pytest.raises(TransferError) as caught:
        destination.put(checkpoint_files, "run-1", opener=opener)
    assert shard.name in str(caught.value)
    assert "injected" in str(caught.value)

    names = destination.list_run("run-1")
    assert f"runs/p/run-1/{MARKER_NAME}" not in names
    assert f"runs/p/run-1/{shard.name}" not in names
    with pytest.raises(TransferError, match=f"no {MARKER_NAME} marker"):
        destination.fetch("run-1", tmp_path / "downloaded")
    assert not (tmp_path / "downloaded").exists()


def test_removal_stays_inside_the_run_prefix(gcs_client, gcs_bucket, checkpoint_files):
    destination = _destination(gcs_client, gcs_bucket)
    beside = ["runs/p/run-1x/keep.txt", "runs/p/run-2/keep.txt", "runs/p/keep.txt", "keep.txt"]
    for name in beside:
        gcs_bucket.blob(name).upload_from_string(b"not the run's")
    destination.put(checkpoint_files, "run-1")

    assert all(name.startswith("runs/p/run-1/") for name in destination.list_run("run-1"))
    destination.remove("run-1")

    remaining = sorted(blob.name for blob in gcs_client.list_blobs(gcs_bucket))
    assert remaining == sorted(beside)
    for outside in ("", "/", "run-1//x", "run-1/..", "./run-1"):
        with pytest.raises(ValueError):
            destination.list_run(outside)


def test_a_nested_run_prefix_is_removed_and_nothing_beside_it(
    gcs_client, gcs_bucket, checkpoint_files
):
    """A multi-host run's process writes under `<run prefix>/process_{i}-of-{n}`: removing
    one process's leaves its peers' (process_1-of-20 shares a string prefix)."""
    destination = _destination(gcs_client, gcs_bucket)
    for name in ("run-1/process_1-of-2", "run-1/process_1-of-20"):
        destination.put(checkpoint_files, name)
    destination.remove("run-1/process_1-of-2")
    remaining = {blob.name.rsplit("/", 2)[1] for blob in gcs_client.list_blobs(gcs_bucket)}
    assert remaining == {"process_1-of-20"}


def test_a_run_prefix_is_never_reused(gcs_client, gcs_bucket, checkpoint_files):
    destination = _destination(gcs_client, gcs_bucket)
    destination.put(checkpoint_files, "run-1")
    with pytest.raises(TransferError, match="already holds 3 objects"):
        destination.put(checkpoint_files, "run-1")


def test_missing_bucket_is_a_usage_error(gcs_client):
    destination = GcsDestination(gcs_client, GcsLocation("no-such-bucket-here", "p"))
    with pytest.raises(UsageError, match="bucket 'no-such-bucket-here' does not exist"):
        destination.check_bucket()


@pytest.mark.parametrize(
    ("uri", "bucket", "prefix"),
    [
        ("gs://my-bucket", "my-bucket", ""),
        ("gs://my-bucket/", "my-bucket", ""),
        ("gs://my-bucket/a/b", "my-bucket", "a/b"),
        ("gs://my-bucket/a/b/", "my-bucket", "a/b"),
        ("gs://my.dotted_bucket/x", "my.dotted_bucket", "x"),
    ],
)
def test_parse_gcs_uri_accepts(uri, bucket, prefix, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    assert parse_gcs_uri(uri) == GcsLocation(bucket, prefix)


@pytest.mark.parametrize(
    "uri",
    [
        "gs://", "gs:/bucket", "s3://bucket/p", "gs://My-Bucket/p", "gs://-bucket/p",
        "gs://bucket-/p", "gs://bu/p", "gs://bucket//p", "gs://bucket/a/../b", "gs://bucket/a//",
        "gs://a..b/p", "gs://" + "b" * 64,
    ],
)  # fmt: skip
def test_parse_gcs_uri_rejects(uri, monkeypatch):
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    with pytest.raises(UsageError, match="GCS_TEST_BUCKET="):
        parse_gcs_uri(uri)


def test_parse_gcs_uri_short_bucket_only_with_an_emulator(monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:1")
    assert parse_gcs_uri("gs://b/p") == GcsLocation("b", "p")
    monkeypatch.delenv("STORAGE_EMULATOR_HOST")
    with pytest.raises(UsageError, match="3-63"):
        parse_gcs_uri("gs://b/p")
