"""The embedded GCS server that TensorFlow's gs:// filesystem and google-cloud-storage share.

`embedded_gcs()` starts one process (front.py: fake-gcs-server behind an HTTPS front,
objects on disk under the run's scratch) and yields an EmbeddedGcs with the variables each
kind of client needs. Nothing is set machine-wide or in this process's environment unless
the caller applies `EmbeddedGcs.env` itself; a real bucket (GCS_TEST_BUCKET=gs://...)
never sees these variables.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

FRONT_MODULE = "dlckpt.storage.embedded.front"
START_SECONDS = 60.0
STOP_SECONDS = 10.0
# fake-gcs-server reads each upload whole into memory: its resident memory (with the
# front's) peaked at 6.4-7.2 bytes per uploaded byte over a 75 MB baseline
# (scripts/bench_tf_gcs.py --megabytes 64, 128 and 256; GOGC=50); the preflight reserves this.
SERVER_RAM_BASE_BYTES = 200 * 10**6
SERVER_RAM_BYTES_PER_BYTE = 8.0
# TensorFlow writes a checkpoint under <prefix>_temp/ and then renames it, which on GCS is a
# copy: the server's storage holds both for a moment. A 20 MB tmpfs held a 9.2 MiB
# checkpoint and not a 10.9 MiB one (a new-user fault probe); the preflight reserves two.
SERVER_COPIES = 2
# TensorFlow sends this as its bearer token; the emulator accepts any.
TEST_TOKEN = "dlckpt-embedded-server"
# What the embedded mode sets for the processes it runs; cleared for a real bucket.
VARIABLES = (
    "STORAGE_EMULATOR_HOST", "HTTPS_PROXY", "https_proxy", "http_proxy", "NO_PROXY",
    "no_proxy", "CURL_CA_BUNDLE", "GOOGLE_AUTH_TOKEN_FOR_TESTING",
)  # fmt: skip


class ServerStartError(RuntimeError):
    """The embedded GCS server did not come up; the message holds the end of its log."""


@dataclass
class EmbeddedGcs:
    """A running embedded server.

    `endpoint` is http://127.0.0.1:<port> (google-cloud-storage's STORAGE_EMULATOR_HOST and
    the proxy TensorFlow's libcurl uses); `workdir` holds `objects/` (the stored objects,
    bytes on disk) and `ca.pem` (the CA certificate TensorFlow trusts).
    """

    endpoint: str
    workdir: Path
    ca_file: Path
    front_pid: int
    server_pid: int
    server_port: int  # fake-gcs-server itself, behind the front (for benchmarks)
    env: dict[str, str] = field(default_factory=dict)
    # The GCS_* settings the tool set for its own runs against this server (tf_gcs.
    # EMBEDDED_BOUNDS less those the user set): storage.gcs.embedded_gcs_server fills it.
    bounds: dict[str, str] = field(default_factory=dict)

    @property
    def data_dir(self) -> Path:
        return self.workdir / "objects"

    @property
    def pids(self) -> tuple[int, int]:
        return self.front_pid, self.server_pid

    def trouble(self) -> str | None:
        """Why the server cannot answer now (one of its processes gone or stopped), or None."""
        for role, pid in (("HTTPS front", self.front_pid), ("fake-gcs-server", self.server_pid)):
            what = f"the embedded GCS server's {role} (pid {pid})"
            if process_gone(pid):
                return f"{what} is gone"
            if process_state(pid) in ("T", "t"):
                return f"{what} is stopped (SIGSTOP) and answers nothing"
        return None

    def create_bucket(self, name: str) -> None:
        """Create a bucket (JSON API, no proxy: this is loopback)."""
        request = urllib.request.Request(
            f"{self.endpoint}/storage/v1/b?project=dlckpt-test",
            data=json.dumps({"name": name}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        with opener.open(request, timeout=30) as response:
            response.read()


def tensorflow_env(endpoint: str, ca_file: Path) -> dict[str, str]:
    """The variables that send TensorFlow's GCS filesystem (and google-cloud-storage) here.

    TensorFlow's libcurl takes HTTPS_PROXY for www/storage.googleapis.com, http_proxy for
    plain-http upload URLs, CURL_CA_BUNDLE to trust the front's certificate, and
    GOOGLE_AUTH_TOKEN_FOR_TESTING instead of Application Default Credentials. NO_PROXY
    keeps loopback direct (the front itself, the restore's google-cloud-storage calls).
    """
    no_proxy = "127.0.0.1,localhost"
    return {
        "STORAGE_EMULATOR_HOST": endpoint,
        "HTTPS_PROXY": endpoint,
        "https_proxy": endpoint,
        "http_proxy": endpoint,
        "NO_PROXY": no_proxy,
        "no_proxy": no_proxy,
        "CURL_CA_BUNDLE": str(ca_file),
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": TEST_TOKEN,
    }


def _read_ready_line(process: subprocess.Popen[bytes], log: Path) -> dict[str, object]:
    assert process.stdout is not None
    deadline = time.monotonic() + START_SECONDS
    while time.monotonic() < deadline:
        ready, _, _ = select.select([process.stdout], [], [], 0.2)
        if ready:
            line = process.stdout.readline()
            if line:
                return dict(json.loads(line))
        if process.poll() is not None:
            break
    tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
    raise ServerStartError(f"the embedded GCS server did not start ({tail or 'no output'})")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.terminate()  # the front stops fake-gcs-server and removes the objects
        # A stopped (SIGSTOP) front would hold SIGTERM pending for good: continue it.
        with contextlib.suppress(OSError):
            os.kill(process.pid, signal.SIGCONT)
        try:
            process.wait(timeout=STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()  # fake-gcs-server has PR_SET_PDEATHSIG: it goes too
            process.wait()


@contextlib.contextmanager
def embedded_gcs(
    scratch_root: Path | str | None = None, *, bucket: str | None = None
) -> Iterator[EmbeddedGcs]:
    """Start fake-gcs-server behind its HTTPS front; stop it and remove its storage on exit.

    Objects are stored on disk under a new `dlckpt-gcs-*` folder in `scratch_root`
    (default: the temp folder), so memory does not hold them between requests. The server
    runs in its own session (a Ctrl-C to the terminal's process group does not reach it
    before the run has cleaned up) and dies with this process even on SIGKILL. Raises
    ServerStartError when it does not come up within START_SECONDS.
    """
    workdir = Path(tempfile.mkdtemp(prefix="dlckpt-gcs-", dir=scratch_root))
    log = workdir / "server.log"
    process = None
    try:
        with log.open("wb") as log_handle:
            process = subprocess.Popen(
                [sys.executable, "-m", FRONT_MODULE, "--parent-pid", str(os.getpid()),
                 "--workdir", str(workdir)],
                stdout=subprocess.PIPE,
                stderr=log_handle,
                env={**os.environ, "TMPDIR": str(workdir)},
                start_new_session=True,
            )  # fmt: skip
        ready = _read_ready_line(process, log)
        endpoint = f"http://127.0.0.1:{ready['port']}"
        ca_file = Path(str(ready["ca_file"]))
        server = EmbeddedGcs(
            endpoint=endpoint,
            workdir=workdir,
            ca_file=ca_file,
            front_pid=process.pid,
            server_pid=int(str(ready["server_pid"])),
            server_port=int(str(ready["server_port"])),
            env=tensorflow_env(endpoint, ca_file),
        )
        if bucket:
            server.create_bucket(bucket)
        yield server
    finally:
        if process is not None:
            _stop(process)
            if process.stdout is not None:
                process.stdout.close()
        shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def applied(env: dict[str, str]) -> Iterator[None]:
    """Set `env` in this process (and so in the processes it starts) for the block only."""
    previous = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


@contextlib.contextmanager
def watched(
    server: EmbeddedGcs | None,
    say: Callable[[str], None],
    note: str,
    *,
    give_up_after: float | None = None,
    on_stuck: Callable[[str], None] | None = None,
    poll_seconds: float = 0.25,
) -> Iterator[None]:
    """While the block runs, say `⚠ <trouble><note>` once if the server dies or stops; if
    the trouble lasts `give_up_after` seconds, call `on_stuck(trouble)` (which ends the run).

    TensorFlow's save cannot be interrupted from Python, and its retries nest (an upload's
    attempts, the upload session's, its writer's destructor uploading again): with
    fake-gcs-server stopped behind a live front a save waited 146 s under the GCS_* bounds
    (a new-user fault probe). A server that comes back (SIGCONT) before then is waited for.
    """
    if server is None:
        yield
        return
    done = threading.Event()

    def watch() -> None:
        since: float | None = None
        told = False
        while not done.wait(poll_seconds):
            trouble = server.trouble()
            if trouble is None:
                since = None
                continue
            since = time.monotonic() if since is None else since
            if not told:
                say(f"⚠ {trouble}{note}")
                told = True
            stuck_for = time.monotonic() - since
            if on_stuck and give_up_after is not None and stuck_for >= give_up_after:
                if not done.is_set():  # the save did not end meanwhile
                    on_stuck(trouble)
                return

    thread = threading.Thread(target=watch, name="dlckpt-embedded-gcs-watch", daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def process_state(pid: int) -> str | None:
    """The state letter of `pid` in /proc (R, S, T, Z, ...), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat") as handle:
            return handle.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return None


def process_gone(pid: int) -> bool:
    """True when `pid` no longer runs (exited, or a zombie waiting for its reaper)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    state = process_state(pid)
    return state is None or state in ("Z", "X")
