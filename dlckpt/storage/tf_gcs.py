"""TensorFlow's own gs:// save: where it stages and how much, its GCS_* settings, its failure line.

TensorFlow's GCS filesystem writes each checkpoint file whole into its local temp folder
(TEST_TMPDIR, else TMPDIR, else TMP, else /tmp: tempdir.tf_temp_dir) and uploads it
when the file is closed. A save to gs:// therefore needs the largest file's size free
there, which is what fails in production with "Could not append to the internal
temporary file".
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from dlckpt.paths import command
from dlckpt.units import format_size

if TYPE_CHECKING:
    from dlckpt.storage.embedded.server import EmbeddedGcs

# The variables TensorFlow's GCS filesystem reads (tensorflow/tsl/platform/cloud/
# gcs_file_system.cc); shown by `make disk-check` and in the report when set.
TF_GCS_VARIABLES = (
    "GCS_WRITE_REQUEST_TIMEOUT_SECS",
    "GCS_READ_REQUEST_TIMEOUT_SECS",
    "GCS_METADATA_REQUEST_TIMEOUT_SECS",
    "GCS_REQUEST_CONNECTION_TIMEOUT_SECS",
    "GCS_REQUEST_IDLE_TIMEOUT_SECS",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US",
    "GCS_RETRY_CONFIG_MAX_RETRIES",
    "GCS_APPEND_MODE",
    "GCS_READ_CACHE_BLOCK_SIZE_MB",
    "GCS_READ_CACHE_MAX_SIZE_MB",
    "GCS_READ_CACHE_MAX_STALENESS",
    "GCS_STAT_CACHE_MAX_AGE",
    "GCS_STAT_CACHE_MAX_ENTRIES",
    "GCS_MATCHING_PATHS_CACHE_MAX_AGE",
    "GCS_MATCHING_PATHS_CACHE_MAX_ENTRIES",
    "GCS_RESOLVE_REFRESH_SECS",
    "GCS_ADDITIONAL_REQUEST_HEADER",
    "GCS_ALLOWED_BUCKET_LOCATIONS",
    "GCS_THROTTLE_TOKEN_RATE",
    "GCS_THROTTLE_BUCKET_SIZE",
    "GCS_TOKENS_PER_REQUEST",
    "GCS_INITIAL_TOKENS",
)
POLL_SECONDS = 0.02

# What the tool sets for the embedded server (a user's own GCS_* values win). TensorFlow's
# GCS filesystem is built when TensorFlow is imported and reads these then, so they must be
# in the environment before that (storage.gcs.embedded_gcs_server applies them; the
# processes it starts inherit them). Its defaults wait for a server that stopped answering
# for many minutes: with the embedded front SIGKILLed 0.1 s into a save, TensorFlow 2.21
# gave up after 780 s ("All 10 retry attempts failed"); with these after 2.5 s, and 31.5 s
# with the front SIGSTOPped (scripts/bench_tf_gcs_fault.py, --with-defaults). On loopback
# no request waits for the network: 15 s without a byte moving means a dead or frozen
# server. The whole-request timeouts (GCS_WRITE/READ_REQUEST_TIMEOUT_SECS) stay
# TensorFlow's: a large checkpoint's upload may rightly take long while bytes move.
EMBEDDED_BOUNDS = {
    "GCS_REQUEST_CONNECTION_TIMEOUT_SECS": "5",
    "GCS_REQUEST_IDLE_TIMEOUT_SECS": "15",
    "GCS_METADATA_REQUEST_TIMEOUT_SECS": "30",
    "GCS_RETRY_CONFIG_MAX_RETRIES": "1",
    "GCS_RETRY_CONFIG_INIT_DELAY_TIME_US": "200000",
    "GCS_RETRY_CONFIG_MAX_DELAY_TIME_US": "1000000",
}
# The settings that decide how long TensorFlow waits for a server that stopped answering:
# named in a transfer failure's line, for a user's bucket too.
WAIT_SETTINGS = (
    "GCS_REQUEST_IDLE_TIMEOUT_SECS",
    "GCS_REQUEST_CONNECTION_TIMEOUT_SECS",
    "GCS_RETRY_CONFIG_MAX_RETRIES",
    "GCS_WRITE_REQUEST_TIMEOUT_SECS",
    "GCS_READ_REQUEST_TIMEOUT_SECS",
)
# How long the embedded server may stay dead or stopped during a save before the run ends
# without waiting for TensorFlow (see embedded.server.watched): a transient freeze of a
# few seconds is waited out.
GIVE_UP_SECONDS = 20.0
# How TensorFlow's errors read when a request to GCS failed (libcurl, HTTP, retries).
_TRANSFER_SIGNS = ("Error executing an HTTP request", "libcurl code", "retry attempts failed")


def tf_gcs_settings(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The TF_GCS_VARIABLES that are set, name -> value (empty when none is)."""
    env = os.environ if environ is None else environ
    return {name: env[name] for name in TF_GCS_VARIABLES if name in env}


def tool_bounds(environ: Mapping[str, str] | None = None) -> dict[str, str]:
    """The EMBEDDED_BOUNDS the tool sets: those `environ` (default: this process's) does not
    set already, since the user's own values win."""
    env = os.environ if environ is None else environ
    return {name: value for name, value in EMBEDDED_BOUNDS.items() if name not in env}


def is_transfer_error(text: str) -> bool:
    """True when TensorFlow's error text says a request to GCS failed (not the pipeline)."""
    return any(sign in text for sign in _TRANSFER_SIGNS)


def wait_settings_text(environ: Mapping[str, str] | None = None) -> str:
    """`GCS_REQUEST_IDLE_TIMEOUT_SECS=15, …` for the WAIT_SETTINGS set, or that none is."""
    env = os.environ if environ is None else environ
    named = [f"{name}={env[name]}" for name in WAIT_SETTINGS if name in env]
    if not named:
        return (
            "TensorFlow's defaults (10 retries); GCS_REQUEST_IDLE_TIMEOUT_SECS and "
            "GCS_RETRY_CONFIG_MAX_RETRIES shorten the wait"
        )
    return ", ".join(named)


class TempPeak:
    """The most bytes seen in files that appeared in `folder` while the block ran (polled
    every POLL_SECONDS).

    TensorFlow names its temp files itself; any top-level file created during the save is
    counted, files that were there before are not. A small checkpoint's staging files can
    come and go between two polls: `peak` is then 0, which means "not seen", not "none".
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.peak = 0
        self._before: set[str] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _staged_bytes(self) -> int:
        total = 0
        try:
            with os.scandir(self.folder) as entries:
                for entry in entries:
                    if entry.name not in self._before and entry.is_file(follow_symlinks=False):
                        # A file removed between the listing and the stat counts 0.
                        with contextlib.suppress(OSError):
                            total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            return 0
        return total

    def _run(self) -> None:
        while not self._stop.wait(POLL_SECONDS):
            self.peak = max(self.peak, self._staged_bytes())

    def __enter__(self) -> TempPeak:
        try:
            self._before = set(os.listdir(self.folder))
        except OSError:
            self._before = set()
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class GcsSave:
    """A checkpoint TensorFlow wrote straight to gs://."""

    prefix: str  # gs://bucket/.../iterator: the files are <prefix>.index, <prefix>.data-*
    bytes: int
    files: int
    save_seconds: float
    temp_dir: str  # where TensorFlow staged the files
    temp_source: str  # the variable that chose it ("default": /tmp)
    temp_peak_bytes: int  # the most seen there during the save (polled; 0: none seen)


class StagingFull(Exception):
    """TensorFlow's gs:// writer ran out of room in its temp folder; the message is the ✗ line."""


def save_iterator_to_gcs(iterator: Any, prefix: str) -> GcsSave:
    """tf.train.Checkpoint(iterator=...).write(prefix) through TensorFlow's GCS filesystem.

    Raises UnsaveablePipeline when TensorFlow refuses the pipeline; other TensorFlow
    errors propagate (see staging_full_line for the disk-full one).
    """
    from dlckpt.ckpt_io import UnsaveablePipeline, unsaveable_errors
    from dlckpt.runtime.tf_import import import_tensorflow
    from dlckpt.tempdir import tf_temp_dir

    tf = import_tensorflow()
    folder, source, _ = tf_temp_dir()
    with TempPeak(folder) as staged:
        started = time.perf_counter()
        try:
            tf.train.Checkpoint(iterator=iterator).write(prefix)
        except unsaveable_errors(tf) as error:
            raise UnsaveablePipeline.from_tf_error(error) from None
        seconds = time.perf_counter() - started
    files = tf.io.gfile.glob(prefix + "*")
    return GcsSave(
        prefix=prefix,
        bytes=sum(int(tf.io.gfile.stat(name).length) for name in files),
        files=len(files),
        save_seconds=seconds,
        temp_dir=folder,
        temp_source=source,
        temp_peak_bytes=staged.peak,
    )


def staged_text(saved: GcsSave) -> str:
    """Where TensorFlow staged the save and the most seen there, or that polling missed it."""
    seen = (
        f"at most {format_size(saved.temp_peak_bytes)}"
        if saved.temp_peak_bytes
        else f"too brief to see when polled every {POLL_SECONDS * 1000:.0f} ms"
    )
    return f"staged in {saved.temp_dir} from {saved.temp_source}, {seen}"


def staging_full_line(
    tf_text: str, needed_bytes: int, environ: Mapping[str, str] | None = None
) -> str:
    """The one line for a gs:// save that ran out of room where TensorFlow stages it.

    Names the folder, the variable that chose it, the bytes needed (the estimate) against
    those free, and the fixes.
    """
    from dlckpt.tempdir import roomy_folder, tf_temp_dir

    env = dict(os.environ if environ is None else environ)
    folder, source, _ = tf_temp_dir(env)
    free = shutil.disk_usage(folder).free if Path(folder).is_dir() else 0
    chosen = (
        f"{source}={folder}"
        if source != "default"
        else f"{folder} (no TEST_TMPDIR, TMPDIR or TMP set)"
    )
    fixes = []
    if source == "TEST_TMPDIR":
        fixes.append(
            "unset TEST_TMPDIR: TensorFlow reads it before TMPDIR"
            + (f" (TMPDIR={env['TMPDIR']})" if env.get("TMPDIR") else "")
        )
    roomy = roomy_folder(max(needed_bytes, 1), folder)
    variable = "TEST_TMPDIR" if source == "TEST_TMPDIR" else "TMPDIR"
    target = roomy[0] if roomy else "/path/on/a/bigger/disk"
    fixes.append(
        f"export {variable}={target}" + (f" ({format_size(roomy[1])} free)" if roomy else "")
    )
    fixes.append(f"save locally and upload instead: {command('local-staging')}")
    fixes.append(
        f"or a smaller dataloader.shuffle_buffer_size ({command('estimate', '--fit-budget')})"
    )
    return (
        f"CHECKPOINT DID NOT FIT: TensorFlow's gs:// writer stages each checkpoint file in "
        f"{chosen} and ran out of room ({tf_text}): needs ~{format_size(needed_bytes)}, "
        f"{format_size(free)} free there. Fixes: " + "; ".join(fixes)
    )


def transfer_failure_line(
    tf_text: str,
    uri: str,
    embedded: EmbeddedGcs | None = None,
    needed_bytes: int = 0,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """What a gs:// save or restore through TensorFlow that failed on the way to GCS says
    after `TRANSFER FAILED: `, or None when TensorFlow's error is not about the transfer.

    The cause named first: the embedded server's storage full (free bytes under
    `needed_bytes`, the estimate), a process of it gone or stopped; else that the request
    to `uri` failed. Then TensorFlow's own text and the GCS_* settings that set its wait.
    """
    trouble = embedded.trouble() if embedded is not None else None
    full = _embedded_storage_full(embedded, needed_bytes) if embedded is not None else None
    if trouble is None and full is None and not is_transfer_error(tf_text):
        return None
    text = " ".join(tf_text.split())
    said = f"TensorFlow: {text[:240]}{'…' if len(text) > 240 else ''}"
    if full is not None:
        return f"{full} ({said})"
    cause = trouble or f"TensorFlow's gs:// filesystem could not complete a request to {uri}"
    return f"{cause}; {said}; its wait is set by {wait_settings_text(environ)}"


def _embedded_storage_full(embedded: EmbeddedGcs, needed_bytes: int) -> str | None:
    """The line for the embedded server's storage holding less than the checkpoint, or None."""
    from dlckpt.storage.embedded.server import SERVER_COPIES
    from dlckpt.tempdir import roomy_folder

    folder = embedded.workdir.parent
    try:
        free = shutil.disk_usage(embedded.workdir).free
    except OSError:
        return None
    needed = SERVER_COPIES * needed_bytes
    if free >= max(needed, 1):
        return None
    roomy = roomy_folder(needed, str(folder))
    target = f"{roomy[0]} ({format_size(roomy[1])} free)" if roomy else "/path/on/a/bigger/disk"
    return (
        f"the embedded GCS server's storage {folder} is full: {format_size(free)} free, the "
        f"checkpoint needs ~{format_size(needed)} there ({SERVER_COPIES} copies while "
        f"TensorFlow renames it). Fixes: export TMPDIR={target} (the server keeps its objects "
        "in the temp folder), or GCS_TEST_BUCKET=gs://your-bucket/prefix"
    )


def abandon_save(
    line: str, report: dict[str, Any], folders: list[Path], embedded: EmbeddedGcs
) -> NoReturn:
    """End the process now, from the save watch's thread: TensorFlow's save is blocked in
    its own code on a server that cannot answer, and Python cannot interrupt it.

    Prints `✗ <line>`, stops the embedded server's processes (SIGKILL: a stopped process
    takes nothing else), removes its storage, `folders` (the run's scratch) and the
    staging files this process holds open in TensorFlow's temp folder, writes the report
    (`report` plus exit code 1), then exits 1 through runtime.signals.exit_process (atexit
    still runs: autograph's files go).
    """
    from dlckpt.errors import EXIT_FAILED
    from dlckpt.report import write_exit_report
    from dlckpt.runtime.signals import exit_process
    from dlckpt.tempdir import tf_temp_dir

    print(f"✗ {line}", flush=True)
    for pid in embedded.pids:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    for folder in [*folders, embedded.workdir]:
        shutil.rmtree(folder, ignore_errors=True)
    _remove_open_staging_files(tf_temp_dir()[0])
    problem = write_exit_report(EXIT_FAILED, line, report, fallback=None)
    if problem:
        print(f"✗ {problem}", flush=True)
    exit_process(EXIT_FAILED)


def _remove_open_staging_files(folder: str) -> None:
    """Remove TensorFlow's staging files (tmp_file_tensorflow_*) in `folder` that this
    process has open: only its own, never another job's in the same temp folder."""
    with contextlib.suppress(OSError):
        for fd in os.listdir("/proc/self/fd"):
            with contextlib.suppress(OSError):
                target = os.readlink(f"/proc/self/fd/{fd}")
                name = os.path.basename(target)
                if os.path.dirname(target) == folder and name.startswith("tmp_file_tensorflow_"):
                    os.unlink(target)
