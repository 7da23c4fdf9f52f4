"""Where a run's checkpoint goes: a local folder or Google Cloud Storage.

All GCS access is here, through google-cloud-storage with one client passed in.
Every run writes under its own run prefix; listing and deletion never leave it.
Uploads are resumable with the library's retries and crc32c checks, the checkpoint's
files move in parallel, and a marker object written last tells a whole upload from a
half one.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from _errors import UsageError

MARKER_NAME = "_COMPLETE.json"
EMBEDDED_BUCKET = "dlckpt-test"
RESUMABLE_CHUNK_BYTES = 16 * 1024 * 1024
TRANSFER_WORKERS = 4


class TransferError(Exception):
    """An object that does not match its source (size or crc32c) or a missing marker."""


def _one_line(error: BaseException, limit: int = 200) -> str:
    return f"{type(error).__name__}: {' '.join(str(error).split())[:limit]}"


def new_run_prefix(script: str) -> str:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return f"dlckpt-{script}-{stamp}-{secrets.token_hex(3)}"


def crc32c_of_file(path: Path) -> str:
    """Base64 crc32c, the form GCS reports in object metadata."""
    import base64

    import google_crc32c

    checksum = google_crc32c.Checksum()
    with path.open("rb") as handle:
        for chunk in iter(lambda: handle.read(8 * 1024 * 1024), b""):
            checksum.update(chunk)
    return base64.b64encode(checksum.digest()).decode("ascii")


def _in_parallel(work: Callable[[Any], Any], items: list[Any]) -> list[Any]:
    """work(item) on TRANSFER_WORKERS threads, results in order.

    On the first error or a Ctrl-C, transfers not yet started are cancelled and running
    ones are waited for, so nothing is still writing under the run prefix once the
    caller cleans it up.
    """
    pool = ThreadPoolExecutor(TRANSFER_WORKERS)
    try:
        futures = [pool.submit(work, item) for item in items]
        return [future.result() for future in futures]
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    finally:
        pool.shutdown(wait=True)


def _manifest(files: list[Path]) -> dict[str, dict[str, Any]]:
    """Every file's size and crc32c: what the marker records and each copy is checked against."""
    return {p.name: {"size": p.stat().st_size, "crc32c": crc32c_of_file(p)} for p in files}


# --- destination parsing -------------------------------------------------------------


@dataclass(frozen=True)
class GcsLocation:
    bucket: str
    prefix: str  # no leading or trailing slash; may be empty

    def uri(self, *parts: str) -> str:
        path = "/".join(p for p in (self.prefix, *parts) if p)
        return f"gs://{self.bucket}/{path}" if path else f"gs://{self.bucket}"

    def key(self, *parts: str) -> str:
        return "/".join(p for p in (self.prefix, *parts) if p)


def parse_gcs_uri(uri: str, source: str = "GCS_TEST_BUCKET") -> GcsLocation:
    """Parse gs://bucket[/prefix] strictly, by GCS's bucket-naming rules.

    A bucket name is lower-case letters, digits, '-', '_' and '.', starting and ending
    with a letter or digit, 3-63 characters (up to 222 with dots). Against an emulator
    (STORAGE_EMULATOR_HOST set) a shorter name such as gs://b/p is accepted, since
    emulators allow it. The prefix may not hold empty, '.' or '..' segments.
    """
    import re

    expected = "expected gs://bucket[/prefix] with a lower-case bucket name"
    match = re.fullmatch(r"gs://([^/]*)(/.*)?", uri)
    if not match:
        raise UsageError(f"{source}={uri!r}: {expected} (or a writable local folder)")
    bucket, path = match.group(1), (match.group(2) or "/")[1:]
    path = path[:-1] if path.endswith("/") else path
    shortest = 1 if os.environ.get("STORAGE_EMULATOR_HOST") else 3
    longest = 222 if "." in bucket else 63
    if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]*[a-z0-9])?", bucket) or ".." in bucket:
        raise UsageError(f"{source}={uri!r}: bucket name {bucket!r} is not valid; {expected}")
    if not shortest <= len(bucket) <= longest:
        raise UsageError(
            f"{source}={uri!r}: bucket name {bucket!r} is {len(bucket)} characters long; "
            f"GCS allows {shortest}-{longest}"
        )
    segments = path.split("/") if path else []
    if any(part in ("", ".", "..") for part in segments) or any(ord(c) < 32 for c in path):
        raise UsageError(
            f"{source}={uri!r}: the prefix has an empty, '.' or '..' segment; {expected}"
        )
    return GcsLocation(bucket, path)


# --- local folder --------------------------------------------------------------------


class LocalDestination:
    """A folder the user named; the run writes only under <folder>/<run prefix>/."""

    def __init__(self, root: Path) -> None:
        self.root = root

    @classmethod
    def from_setting(cls, value: str, source: str = "GCS_TEST_BUCKET") -> LocalDestination:
        root = Path(value).expanduser().resolve()
        if not root.is_dir():
            raise UsageError(
                f"{source}={value!r}: no such folder "
                "(expected gs://bucket[/prefix] or an existing local folder)"
            )
        if not os.access(root, os.W_OK | os.X_OK):
            raise UsageError(
                f"{source}={value!r}: folder is not writable (expected a writable folder)"
            )
        return cls(root)

    def uri(self, run_prefix: str) -> str:
        return str(self.root / run_prefix)

    def put(self, files: list[Path], run_prefix: str) -> None:
        """Copy, check each copy's size and crc32c, then write the marker (as for GCS)."""
        target = self.root / run_prefix
        target.mkdir(parents=True, exist_ok=False)
        manifest = _manifest(files)
        for path in files:
            shutil.copy2(path, target / path.name)
        self._check(target, manifest)
        (target / MARKER_NAME).write_text(json.dumps({"files": manifest}))

    def fetch(self, run_prefix: str, into: Path) -> list[Path]:
        """Copy a complete run (marker present) into `into`, checking every file."""
        source = self.root / run_prefix
        try:
            manifest = dict(json.loads((source / MARKER_NAME).read_text())["files"])
        except (OSError, ValueError, KeyError) as error:
            raise TransferError(
                f"{source}: no readable {MARKER_NAME} marker, so the copy is incomplete ({error})"
            ) from None
        into.mkdir(parents=True, exist_ok=True)
        copies = [Path(shutil.copy2(source / name, into / name)) for name in sorted(manifest)]
        self._check(into, manifest)
        return copies

    @staticmethod
    def _check(folder: Path, manifest: dict[str, dict[str, Any]]) -> None:
        for name, expected in manifest.items():
            found = {
                "size": (folder / name).stat().st_size,
                "crc32c": crc32c_of_file(folder / name),
            }
            if found != expected:
                raise TransferError(
                    f"{folder / name}: {found['size']} bytes crc32c {found['crc32c']}, "
                    f"expected {expected['size']} bytes crc32c {expected['crc32c']}"
                )

    def remove(self, run_prefix: str) -> None:
        if run_prefix and (self.root / run_prefix).is_dir():
            shutil.rmtree(self.root / run_prefix)


# --- Google Cloud Storage -------------------------------------------------------------


def make_client() -> Any:
    """One storage client for the run.

    Anonymous against an emulator (STORAGE_EMULATOR_HOST set), Application Default
    Credentials otherwise.
    """
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="dlckpt-test", credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except DefaultCredentialsError:
        raise UsageError(
            "Google Cloud Storage: no Application Default Credentials found; run "
            "`gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS=/path/key.json"
        ) from None


def _progress(total: int, description: str) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        desc=description,
        unit="B",
        unit_scale=True,
        unit_divisor=1024,
        disable=not sys.stderr.isatty(),
        leave=False,
    )


class GcsDestination:
    """gs://bucket/prefix; the run writes only objects under <prefix>/<run prefix>/."""

    def __init__(self, client: Any, location: GcsLocation, *, ephemeral: bool = False) -> None:
        self.client = client
        self.location = location
        self.bucket = client.bucket(location.bucket)
        # The embedded server's objects vanish when it stops: nothing is kept for inspection.
        self.ephemeral = ephemeral

    def check_bucket(self) -> None:
        from google.api_core import exceptions as api_exceptions
        from google.api_core.retry import Retry
        from google.auth.exceptions import RefreshError

        try:
            # Listing needs only storage.objects.list (Storage Object Admin/Viewer has it);
            # bucket.reload() would also need storage.buckets.get.
            listing = self.client.list_blobs(
                self.bucket, max_results=1, timeout=10, retry=Retry(timeout=20)
            )
            next(iter(listing), None)
        except api_exceptions.NotFound:
            raise UsageError(
                f"GCS_TEST_BUCKET={self.location.uri()}: bucket {self.location.bucket!r} "
                "does not exist "
                "(create it, or set GCS_TEST_BUCKET to a bucket you can write)"
            ) from None
        except api_exceptions.Forbidden as error:
            raise UsageError(
                f"GCS_TEST_BUCKET={self.location.uri()}: access denied ({error.message}); "
                "check the "
                "Application Default Credentials' permissions on the bucket"
            ) from None
        except (api_exceptions.Unauthorized, RefreshError) as error:
            raise UsageError(
                f"GCS_TEST_BUCKET={self.location.uri()}: the Application Default Credentials "
                f"were refused ({_one_line(error, 120)}); run "
                "`gcloud auth application-default login` or set "
                "GOOGLE_APPLICATION_CREDENTIALS=/path/key.json"
            ) from None
        except Exception as error:
            raise UsageError(
                f"GCS_TEST_BUCKET={self.location.uri()}: bucket unreachable "
                f"({type(error).__name__}: {' '.join(str(error).split())[:160]})"
            ) from None

    def uri(self, run_prefix: str) -> str:
        return self.location.uri(run_prefix)

    def put(
        self,
        files: list[Path],
        run_prefix: str,
        *,
        opener: Callable[[Path], BinaryIO] | None = None,
    ) -> None:
        """Upload; any storage error becomes a TransferError naming the run (see _put)."""
        try:
            self._put(files, run_prefix, opener=opener)
        except (TransferError, ValueError):
            raise
        except Exception as error:
            raise TransferError(
                f"{self.uri(run_prefix)}: upload failed ({_one_line(error)}); "
                f"no {MARKER_NAME} marker was written"
            ) from None

    def _put(
        self,
        files: list[Path],
        run_prefix: str,
        *,
        opener: Callable[[Path], BinaryIO] | None = None,
    ) -> None:
        """Upload in parallel, verify size + crc32c of each object, then write the marker.

        Each file goes up as a resumable upload (in RESUMABLE_CHUNK_BYTES chunks) with
        google-cloud-storage's own retry on transient errors and its crc32c check of the
        whole object; the object's stored size and crc32c are then compared with the
        file's. The marker (a manifest of every file's size and crc32c) is written only
        after every object matched, so an upload cut short leaves no marker and `fetch`
        refuses it. `opener` opens a file for reading (fault injection in the tests).
        """
        from google.cloud.storage.retry import DEFAULT_RETRY
        from tqdm.utils import CallbackIOWrapper

        if not run_prefix:
            raise ValueError("put() needs a run prefix")
        existing = self.list_run(run_prefix)
        if existing:
            raise TransferError(
                f"{self.uri(run_prefix)}: already holds {len(existing)} objects; "
                "a run uploads only under a new run prefix"
            )
        open_file = opener or (lambda path: path.open("rb"))
        manifest = _manifest(files)
        with _progress(sum(m["size"] for m in manifest.values()), "upload") as bar:

            def upload(path: Path) -> None:
                blob = self.bucket.blob(
                    self.location.key(run_prefix, path.name), chunk_size=RESUMABLE_CHUNK_BYTES
                )
                try:
                    with open_file(path) as handle:
                        # if_generation_match=0 (create only) makes the upload idempotent,
                        # so retrying a transient error cannot overwrite anything.
                        blob.upload_from_file(
                            CallbackIOWrapper(bar.update, handle, "read"),
                            size=manifest[path.name]["size"],
                            checksum="crc32c",
                            if_generation_match=0,
                            retry=DEFAULT_RETRY,
                        )
                except Exception as error:
                    raise TransferError(
                        f"{self.uri(run_prefix)}/{path.name}: upload of {path} failed "
                        f"({_one_line(error)}); no {MARKER_NAME} marker was written"
                    ) from error
                self._verify(blob, manifest[path.name])

            _in_parallel(upload, files)
        marker = self.bucket.blob(self.location.key(run_prefix, MARKER_NAME))
        marker.upload_from_string(
            json.dumps({"files": manifest}),
            content_type="application/json",
            if_generation_match=0,
            retry=DEFAULT_RETRY,
        )

    def _verify(self, blob: Any, expected: dict[str, Any]) -> None:
        """The stored object's size and crc32c (GCS's metadata) against the source file's."""
        blob.reload()
        if blob.size != expected["size"] or blob.crc32c != expected["crc32c"]:
            kind = "truncated" if (blob.size or 0) < expected["size"] else "corrupted"
            raise TransferError(
                f"gs://{self.location.bucket}/{blob.name}: {kind}: stored {blob.size} bytes crc32c "
                f"{blob.crc32c}, expected {expected['size']} bytes crc32c {expected['crc32c']}"
            )

    def read_marker(self, run_prefix: str) -> dict[str, dict[str, Any]]:
        """The manifest in the run's marker; TransferError when there is none (incomplete)."""
        from google.api_core import exceptions as api_exceptions

        marker = self.bucket.blob(self.location.key(run_prefix, MARKER_NAME))
        try:
            return dict(json.loads(marker.download_as_bytes())["files"])
        except api_exceptions.NotFound:
            raise TransferError(
                f"{self.uri(run_prefix)}: no {MARKER_NAME} marker, so the upload is incomplete; "
                "refusing to use it"
            ) from None
        except (ValueError, KeyError, TypeError) as error:
            raise TransferError(
                f"{self.uri(run_prefix)}/{MARKER_NAME}: unreadable marker ({_one_line(error)})"
            ) from None

    def fetch(self, run_prefix: str, into: Path) -> list[Path]:
        """Download; any storage error becomes a TransferError naming the run (see _fetch)."""
        try:
            return self._fetch(run_prefix, into)
        except TransferError:
            raise
        except Exception as error:
            raise TransferError(
                f"{self.uri(run_prefix)}: download failed ({_one_line(error)})"
            ) from None

    def _fetch(self, run_prefix: str, into: Path) -> list[Path]:
        """Download a complete upload (marker present) into `into`, in parallel.

        Each object's stored size and crc32c are checked against the marker's manifest
        before the download, the download itself is crc32c-checked by the library, and the
        written file is checked again; the first object that differs is named.
        """
        from google.api_core import exceptions as api_exceptions
        from tqdm.utils import CallbackIOWrapper

        manifest = self.read_marker(run_prefix)
        into.mkdir(parents=True, exist_ok=True)
        with _progress(sum(m["size"] for m in manifest.values()), "download") as bar:

            def download(name: str) -> Path:
                blob = self.bucket.blob(self.location.key(run_prefix, name))
                target = into / name
                try:
                    self._verify(blob, manifest[name])
                    with target.open("wb") as handle:
                        blob.download_to_file(
                            CallbackIOWrapper(bar.update, handle, "write"), checksum="crc32c"
                        )
                except api_exceptions.NotFound:
                    raise TransferError(
                        f"{self.uri(run_prefix)}/{name}: listed in the marker but missing"
                    ) from None
                except TransferError:
                    raise
                except Exception as error:
                    raise TransferError(
                        f"{self.uri(run_prefix)}/{name}: download failed ({_one_line(error)})"
                    ) from None
                local = {"size": target.stat().st_size, "crc32c": crc32c_of_file(target)}
                if local != manifest[name]:
                    raise TransferError(
                        f"{self.uri(run_prefix)}/{name}: downloaded {local['size']} bytes crc32c "
                        f"{local['crc32c']}, expected {manifest[name]['size']} bytes "
                        f"crc32c {manifest[name]['crc32c']}"
                    )
                return target

            return _in_parallel(download, sorted(manifest))

    def list_run(self, run_prefix: str) -> list[str]:
        """Names of the objects under this run's prefix, and nothing beside it."""
        if not run_prefix or "/" in run_prefix.strip("/"):
            raise ValueError(f"not a run prefix: {run_prefix!r}")
        prefix = self.location.key(run_prefix) + "/"
        return [blob.name for blob in self.client.list_blobs(self.bucket, prefix=prefix)]

    def remove(self, run_prefix: str) -> None:
        """Delete the run's objects (the marker first, so a partial run never looks whole)."""
        if not run_prefix:
            return
        names = self.list_run(run_prefix)
        marker = self.location.key(run_prefix, MARKER_NAME)
        for name in sorted(names, key=lambda n: n != marker):
            with contextlib.suppress(Exception):  # already gone: nothing to do
                self.bucket.blob(name).delete()


# --- the embedded GCS server -----------------------------------------------------------


@contextlib.contextmanager
def embedded_gcs_server(scratch_root: Path | None = None) -> Iterator[str]:
    """Start the embedded GCS server (see _gcs_server) and yield its endpoint.

    fake-gcs-server behind an HTTPS front on 127.0.0.1, objects on disk under a
    `dlckpt-gcs-*` folder in `scratch_root` (default: the temp folder). While the block
    runs, this process (and what it starts) has STORAGE_EMULATOR_HOST plus the variables
    that send TensorFlow's own GCS filesystem there (_gcs_server.tensorflow_env); they are
    restored on exit, and the server is stopped with its storage removed.
    """
    from _gcs_server import applied, embedded_gcs

    with embedded_gcs(scratch_root) as server, applied(server.env):
        yield server.endpoint
