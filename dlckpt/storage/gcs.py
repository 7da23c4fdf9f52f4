"""Google Cloud Storage as the checkpoint's destination: one client, resumable verified copies.

GCS_TEST_BUCKET=gs://bucket/prefix names the user's bucket (ADC credentials); without it
the embedded server (storage.embedded) stands in on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

from dlckpt.errors import UsageError
from dlckpt.runtime.cleanup import (
    FAILURE_PATH_BUDGET_SECONDS,
    FAILURE_PATH_TIMEOUT_SECONDS,
    note_left_behind,
)
from dlckpt.storage.transfer import (
    MARKER_NAME,
    Cancelled,
    TransferError,
    cancellable,
    crc32c_of_file,
    file_manifest,
    in_parallel,
    is_cancelled,
    one_line,
    progress_bar,
)

if TYPE_CHECKING:
    from dlckpt.storage.embedded.server import EmbeddedGcs

EMBEDDED_BUCKET = "dlckpt-test"


RESUMABLE_CHUNK_BYTES = 16 * 1024 * 1024


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


def make_client() -> Any:
    """One storage client for the run.

    Anonymous against an emulator (STORAGE_EMULATOR_HOST set), Application Default
    Credentials otherwise.
    """
    with warnings.catch_warnings():
        # Older google-api-core (what a TensorFlow 2.15 environment's protobuf allows) warns
        # about Python's end of life on import: not about the checkpoint, and not the user's.
        warnings.filterwarnings("ignore", category=FutureWarning, module="google")
        from google.auth.exceptions import DefaultCredentialsError
        from google.cloud import storage

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="dlckpt-test", credentials=AnonymousCredentials())
    _check_credentials_file(os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"))
    try:
        return storage.Client()
    except DefaultCredentialsError as error:
        if os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
            raise UsageError(
                f"GOOGLE_APPLICATION_CREDENTIALS={os.environ['GOOGLE_APPLICATION_CREDENTIALS']}: "
                f"not usable credentials ({one_line(error, 160)}); expected a service-account "
                "or authorized-user JSON key file, or unset it to use "
                "`gcloud auth application-default login`"
            ) from None
        raise UsageError(
            "Google Cloud Storage: no Application Default Credentials found; run "
            "`gcloud auth application-default login` or set "
            "GOOGLE_APPLICATION_CREDENTIALS=/path/key.json"
        ) from None


def _check_credentials_file(value: str | None) -> None:
    """GOOGLE_APPLICATION_CREDENTIALS, when set, must name a readable JSON key file."""
    if not value:
        return
    name = "GOOGLE_APPLICATION_CREDENTIALS"
    expected = "expected the path of a service-account or authorized-user JSON key file"
    path = Path(value).expanduser()
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "no such file"
        raise UsageError(f"{name}={value}: {what} ({expected})")
    try:
        data = json.loads(path.read_text())
    except OSError as error:
        raise UsageError(f"{name}={value}: cannot be read ({error.strerror}); {expected}") from None
    except ValueError:
        raise UsageError(f"{name}={value}: is not JSON ({expected})") from None
    if not isinstance(data, dict) or "type" not in data:
        raise UsageError(f'{name}={value}: has no "type" field ({expected})')


class GcsDestination:
    """gs://bucket/prefix; the run writes only objects under <prefix>/<run prefix>/.

    Transfers use `request_timeout` seconds per request and google-cloud-storage's retry
    on transient errors for up to `retry_deadline` seconds. Cleanup after a failure
    (remove) is bounded instead: FAILURE_PATH_TIMEOUT_SECONDS a request, no retries,
    FAILURE_PATH_BUDGET_SECONDS in all; once the endpoint has not answered, later
    cleanup calls do not wait for it again.

    Larger than the house's ~200 lines on purpose: upload, verify, fetch and cleanup share
    the one client, its retry and timeouts, and the record of which run prefixes this run
    created (cleanup may remove only those); the pieces with no such state are in transfer.py.
    """

    def __init__(
        self,
        client: Any,
        location: GcsLocation,
        *,
        ephemeral: bool = False,
        embedded: EmbeddedGcs | None = None,
        request_timeout: float = 30.0,
        retry_deadline: float = 60.0,
    ) -> None:
        self.client = client
        self.location = location
        self.bucket = client.bucket(location.bucket)
        # The embedded server's objects vanish when it stops: nothing is kept for inspection.
        self.ephemeral = ephemeral
        self.embedded = embedded  # the embedded server behind it, when it is the one
        self.request_timeout = request_timeout
        self.retry_deadline = retry_deadline
        self._unanswered: str | None = None  # why the endpoint failed a cleanup call
        self._told: set[str] = set()  # what-is-left texts already given in a TransferError

    def _retry(self) -> Any:
        from google.cloud.storage.retry import DEFAULT_RETRY

        return DEFAULT_RETRY.with_timeout(self.retry_deadline)

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
                f"were refused ({one_line(error, 120)}); run "
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
        """Upload; on any failure the run's objects are removed (bounded) before it propagates.

        A storage error becomes a TransferError naming the first failure and what is left
        (see _put and remove); an interrupt propagates as itself, with what is left noted
        for the run's last line (runtime.cleanup).
        """
        if not run_prefix:
            raise ValueError("put() needs a run prefix")
        try:
            existing = self.list_run(run_prefix)
        except Exception as error:
            raise TransferError(
                f"{self.uri(run_prefix)}: could not list the run prefix ({one_line(error)}); "
                "nothing was uploaded"
            ) from None
        if existing:  # not this run's objects: never touched
            raise TransferError(
                f"{self.uri(run_prefix)}: already holds {len(existing)} objects; "
                "a run uploads only under a new run prefix"
            )
        try:
            self._put(files, run_prefix, opener=opener)
        except ValueError:
            raise
        except Exception as error:
            first = str(error) if isinstance(error, TransferError) else (
                f"{self.uri(run_prefix)}: upload failed ({one_line(error)}); "
                f"no {MARKER_NAME} marker was written"
            )  # fmt: skip
            left = self._discard(run_prefix)
            self._told.add(left)  # said in this error: a later remove() need not repeat it
            raise TransferError(first + (f"; {left}" if left else "")) from None
        except BaseException:  # an interrupt: remove what it wrote, then let it propagate
            left = self._discard(run_prefix)
            if left:
                note_left_behind(left)
            raise

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
        from tqdm.utils import CallbackIOWrapper

        open_file = opener or (lambda path: path.open("rb"))
        manifest = file_manifest(files)
        with progress_bar(sum(m["size"] for m in manifest.values()), "upload") as bar:

            def upload(path: Path, cancel: threading.Event) -> None:
                blob = self.bucket.blob(
                    self.location.key(run_prefix, path.name), chunk_size=RESUMABLE_CHUNK_BYTES
                )
                try:
                    with open_file(path) as handle:
                        # if_generation_match=0 (create only) makes the upload idempotent,
                        # so retrying a transient error cannot overwrite anything.
                        blob.upload_from_file(
                            CallbackIOWrapper(cancellable(bar.update, cancel), handle, "read"),
                            size=manifest[path.name]["size"],
                            checksum="crc32c",
                            if_generation_match=0,
                            timeout=self.request_timeout,
                            retry=self._retry(),
                        )
                except Exception as error:
                    if cancel.is_set() and is_cancelled(error):
                        raise Cancelled(path.name) from None
                    raise TransferError(
                        f"{self.uri(run_prefix)}/{path.name}: upload of {path} failed "
                        f"({one_line(error)}); no {MARKER_NAME} marker was written"
                    ) from error
                self._verify(blob, manifest[path.name])

            in_parallel(upload, files)
        marker = self.bucket.blob(self.location.key(run_prefix, MARKER_NAME))
        marker.upload_from_string(
            json.dumps({"files": manifest}),
            content_type="application/json",
            if_generation_match=0,
            timeout=self.request_timeout,
            retry=self._retry(),
        )

    def _verify(self, blob: Any, expected: dict[str, Any]) -> None:
        """The stored object's size and crc32c (GCS's metadata) against the source file's."""
        blob.reload(timeout=self.request_timeout, retry=self._retry())
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
            data = marker.download_as_bytes(timeout=self.request_timeout, retry=self._retry())
            return dict(json.loads(data)["files"])
        except api_exceptions.NotFound:
            raise TransferError(
                f"{self.uri(run_prefix)}: no {MARKER_NAME} marker, so the upload is incomplete; "
                "refusing to use it"
            ) from None
        except (ValueError, KeyError, TypeError) as error:
            raise TransferError(
                f"{self.uri(run_prefix)}/{MARKER_NAME}: unreadable marker ({one_line(error)})"
            ) from None

    def fetch(self, run_prefix: str, into: Path) -> list[Path]:
        """Download; any storage error becomes a TransferError naming the run (see _fetch)."""
        try:
            return self._fetch(run_prefix, into)
        except TransferError:
            raise
        except Exception as error:
            raise TransferError(
                f"{self.uri(run_prefix)}: download failed ({one_line(error)})"
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
        with progress_bar(sum(m["size"] for m in manifest.values()), "download") as bar:

            def download(name: str, cancel: threading.Event) -> Path:
                blob = self.bucket.blob(self.location.key(run_prefix, name))
                target = into / name
                try:
                    self._verify(blob, manifest[name])
                    with target.open("wb") as handle:
                        blob.download_to_file(
                            CallbackIOWrapper(cancellable(bar.update, cancel), handle, "write"),
                            checksum="crc32c",
                            timeout=self.request_timeout,
                            retry=self._retry(),
                        )
                except api_exceptions.NotFound:
                    raise TransferError(
                        f"{self.uri(run_prefix)}/{name}: listed in the marker but missing"
                    ) from None
                except TransferError:
                    raise
                except Exception as error:
                    if cancel.is_set() and is_cancelled(error):
                        raise Cancelled(name) from None
                    raise TransferError(
                        f"{self.uri(run_prefix)}/{name}: download failed ({one_line(error)})"
                    ) from None
                local = {"size": target.stat().st_size, "crc32c": crc32c_of_file(target)}
                if local != manifest[name]:
                    raise TransferError(
                        f"{self.uri(run_prefix)}/{name}: downloaded {local['size']} bytes crc32c "
                        f"{local['crc32c']}, expected {manifest[name]['size']} bytes "
                        f"crc32c {manifest[name]['crc32c']}"
                    )
                return target

            return in_parallel(download, sorted(manifest))

    def list_run(
        self, run_prefix: str, *, timeout: float | None = None, retry: Any = ...
    ) -> list[str]:
        """Names of the objects under this run's prefix, and nothing beside it.

        `timeout` and `retry` default to the transfer's (None: no retry).
        """
        # A run prefix may nest (a multi-host run's `<run prefix>/process_{i}-of-{n}`), but
        # never names the destination itself or climbs out of it.
        parts = run_prefix.strip("/").split("/")
        if not run_prefix.strip("/") or any(part in ("", ".", "..") for part in parts):
            raise ValueError(f"not a run prefix: {run_prefix!r}")
        prefix = self.location.key(run_prefix) + "/"
        listing = self.client.list_blobs(
            self.bucket,
            prefix=prefix,
            timeout=self.request_timeout if timeout is None else timeout,
            retry=self._retry() if retry is ... else retry,
        )
        return [blob.name for blob in listing]

    def remove(self, run_prefix: str) -> None:
        """Delete the run's objects (the marker first, so a partial run never looks whole).

        Bounded and quiet, as cleanup after a failure must be: it never raises, and what
        it could not delete is noted for the run's last line (see runtime.cleanup).
        """
        left = self._discard(run_prefix)
        if left and left not in self._told:
            note_left_behind(left)

    def _discard(self, run_prefix: str) -> str:
        """Delete the run's objects within the failure-path bounds; '' or what may be left.

        Each request waits FAILURE_PATH_TIMEOUT_SECONDS, without retries; the whole
        removal stops after FAILURE_PATH_BUDGET_SECONDS. After a call the endpoint did not
        answer, later calls do not wait for it again. The embedded server's objects go
        with it, so nothing is reported left there.
        """
        if not run_prefix:
            return ""
        where = self.uri(run_prefix) + "/"
        if self._unanswered is not None:
            return self._left(where, None, self._unanswered)
        deadline = time.monotonic() + FAILURE_PATH_BUDGET_SECONDS
        names: list[str] | None = None
        try:
            names = self.list_run(run_prefix, timeout=FAILURE_PATH_TIMEOUT_SECONDS, retry=None)
            marker = self.location.key(run_prefix, MARKER_NAME)
            for name in sorted(names, key=lambda n: n != marker):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"removal stopped after {FAILURE_PATH_BUDGET_SECONDS:.0f} s")
                self._delete(name)
        except Exception as error:
            self._unanswered = one_line(error, 120)
            return self._left(where, names, self._unanswered)
        return ""

    def _delete(self, name: str) -> None:
        from google.api_core import exceptions as api_exceptions

        with contextlib.suppress(api_exceptions.NotFound):  # already gone: nothing to do
            self.bucket.blob(name).delete(timeout=FAILURE_PATH_TIMEOUT_SECONDS, retry=None)

    def _left(self, where: str, names: list[str] | None, reason: str) -> str:
        if self.ephemeral:
            return ""
        if names is None:
            what = "any object the run wrote"
        else:
            short = [name.rsplit("/", 1)[-1] for name in names]
            what = f"up to {len(names)} objects ({', '.join(short)})"
        return (
            f"{where} may still hold {what}: cleanup could not reach the bucket ({reason}); "
            f"remove it with `gcloud storage rm -r {where}`"
        )


@contextlib.contextmanager
def embedded_gcs_server(scratch_root: Path | None = None) -> Iterator[EmbeddedGcs]:
    """Start the embedded GCS server (see storage.embedded.server) and yield its endpoint.

    fake-gcs-server behind an HTTPS front on 127.0.0.1, objects on disk under a
    `dlckpt-gcs-*` folder in `scratch_root` (default: the temp folder). While the block
    runs, this process (and what it starts) has STORAGE_EMULATOR_HOST plus the variables
    that send TensorFlow's own GCS filesystem there (embedded.server.tensorflow_env) and
    the GCS_* bounds on its waits (tf_gcs.EMBEDDED_BOUNDS) the user did not set; they are
    restored on exit, and the server is stopped with its storage removed.
    """
    from dlckpt.storage.embedded.server import applied, embedded_gcs
    from dlckpt.storage.tf_gcs import tool_bounds

    with embedded_gcs(scratch_root) as server:
        # TensorFlow reads its GCS_* settings once, at import: these bound its waits on this
        # server only when it is imported inside the block (the scripts import it later;
        # the processes started here import it afresh).
        server.bounds = tool_bounds()
        with applied({**server.bounds, **server.env}):
            yield server
