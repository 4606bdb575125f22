"""A real S3-protocol server on 127.0.0.1 for the object-storage tests, with a fault switch in front.

:class:`MotoServer` runs ``moto_server`` (moto's S3 server, which honours ``If-None-Match: *``) as a
subprocess on a free loopback port, and puts a :class:`FaultProxy` before it: a small threaded
HTTP proxy, also on 127.0.0.1, that forwards every request to moto and can be told to

- answer ``503 SlowDown`` (or any status) to the next N requests: :meth:`FaultProxy.fail_next`;
- stop: every new connection is reset and counted in ``refused``, open ones are cut
  (:meth:`FaultProxy.stop`), until :meth:`FaultProxy.start` lets requests through again.

Clients use :attr:`MotoServer.endpoint` (the proxy's URL); :meth:`MotoServer.env` gives the
``AWS_*`` variables with which ``s3fs.S3FileSystem()`` reaches it with no arguments.

    store = MotoServer().start()
    os.environ.update(store.env())
    store.proxy.fail_next(20)        # a burst of 503s
    store.proxy.stop(); ...; store.proxy.start()
    store.stop()
"""

from __future__ import annotations

import atexit
import contextlib
import http.client
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

HOST = "127.0.0.1"
_HOP_BY_HOP = {"connection", "keep-alive", "proxy-connection", "transfer-encoding", "te", "trailer", "upgrade",
               "expect", "content-length"}
_ERROR_CODES = {500: "InternalError", 503: "SlowDown"}


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return probe.getsockname()[1]


def wait_until(condition, timeout: float = 30.0, what: str = "the condition", interval: float = 0.02) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} did not hold within {timeout} s")
        time.sleep(interval)


def _moto_command() -> list[str]:
    beside = Path(sys.executable).with_name("moto_server")
    program = str(beside) if beside.exists() else shutil.which("moto_server")
    if program is None:
        raise RuntimeError("moto_server is not installed (pip install 'moto[server]')")
    return [program]


class MotoServer:
    """moto's S3 server as a subprocess on 127.0.0.1, behind a :class:`FaultProxy`."""

    def __init__(self, port: int | None = None):
        self.port = port
        self.process: subprocess.Popen | None = None
        self.proxy: FaultProxy | None = None
        self._log_dir = Path(tempfile.mkdtemp(prefix="mmdata-moto-"))

    # --- the moto process ------------------------------------------------------------------
    @property
    def direct_endpoint(self) -> str:
        """moto itself, bypassing the proxy (for setup that no fault may touch)."""
        return f"http://{HOST}:{self.port}"

    @property
    def endpoint(self) -> str:
        """What clients use: the fault proxy in front of moto."""
        return self.proxy.url if self.proxy is not None else self.direct_endpoint

    def start(self) -> "MotoServer":
        if self.port is None:
            self.port = free_port()
        log = open(self._log_dir / "moto.log", "ab")
        try:
            self.process = subprocess.Popen(
                [*_moto_command(), "-H", HOST, "-p", str(self.port)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, start_new_session=True,
                env={key: value for key, value in os.environ.items() if not key.startswith("AWS_")},
            )
        finally:
            log.close()
        atexit.register(self.stop)  # its own session: not killed with this process otherwise
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.process.poll() is not None:
                raise RuntimeError(f"moto_server exited {self.process.returncode}: {self.log()[-2000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"moto_server did not answer within 60 s: {self.log()[-2000:]}")
            time.sleep(0.05)
        if self.proxy is None:
            self.proxy = FaultProxy(self.port).serve()
        return self

    def stop(self) -> None:
        """Stop moto (its data is lost; the proxy keeps its port)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.process = None

    def restart(self) -> "MotoServer":
        """Stop moto and start it again on the same port (empty: moto keeps its data in memory)."""
        self.stop()
        return self.start()

    def close(self) -> None:
        """Stop moto and the proxy."""
        self.stop()
        if self.proxy is not None:
            self.proxy.close()
            self.proxy = None
        shutil.rmtree(self._log_dir, ignore_errors=True)

    def log(self) -> str:
        try:
            return (self._log_dir / "moto.log").read_text(errors="replace")
        except OSError:
            return ""

    def _answers(self) -> bool:
        connection = http.client.HTTPConnection(HOST, self.port, timeout=2)
        try:
            connection.request("GET", "/")
            return connection.getresponse().status < 500
        except OSError:
            return False
        finally:
            connection.close()

    # --- clients ---------------------------------------------------------------------------
    def env(self) -> dict[str, str]:
        """The variables with which ``s3fs.S3FileSystem()`` (and boto) reach this server."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_EC2_METADATA_DISABLED": "true"}

    def filesystem(self, direct: bool = False):
        """A fresh (uncached) s3fs filesystem on this server; ``direct`` skips the fault proxy."""
        import s3fs

        endpoint = self.direct_endpoint if direct else self.endpoint
        return s3fs.S3FileSystem(key="testing", secret="testing", endpoint_url=endpoint, skip_instance_cache=True)

    def make_bucket(self, name: str) -> str:
        """Create bucket ``name`` (directly on moto) and return ``s3://name``."""
        self.filesystem(direct=True).mkdir(name)
        return f"s3://{name}"

    def __enter__(self) -> "MotoServer":
        return self.start()

    def __exit__(self, *_) -> None:
        self.close()


class _ProxyHandler(BaseHTTPRequestHandler):
    server: "FaultProxy"
    protocol_version = "HTTP/1.1"  # keep-alive, as S3 clients expect
    timeout = 120  # an idle client connection is dropped after this

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass

    def handle_one_request(self):
        try:
            super().handle_one_request()
        except (OSError, http.client.HTTPException):
            self.close_connection = True
        if self.server.down:
            self.close_connection = True

    def do_GET(self):
        self._forward()

    do_HEAD = do_PUT = do_POST = do_DELETE = do_PATCH = do_OPTIONS = do_GET

    def _read_body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return b"".join(chunks)
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _forward(self):
        body = self._read_body()
        fault = self.server._arrived(self.command, self.path)
        if fault is not None:
            return self._fail(fault)
        headers = {name: value for name, value in self.headers.items() if name.lower() not in _HOP_BY_HOP}
        if body or self.command in ("PUT", "POST"):
            headers["Content-Length"] = str(len(body))
        try:
            status, reason, answer_headers, data = self.server._upstream(self.command, self.path, body, headers)
        except OSError:
            self.server._count("upstream_failures")
            return self._fail(502)
        self.send_response(status, reason)
        for name, value in answer_headers:
            if name.lower() not in _HOP_BY_HOP:
                self.send_header(name, value)
        if self.command == "HEAD":
            declared = next((value for name, value in answer_headers if name.lower() == "content-length"), "0")
            self.send_header("Content-Length", declared)
        else:
            self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if self.command != "HEAD" and data:
            self.wfile.write(data)

    def _fail(self, status: int):
        code = _ERROR_CODES.get(status, "ServiceUnavailable")
        body = (f'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>{code}</Code><Message>injected by the test '
                f'proxy</Message><RequestId>fault</RequestId></Error>').encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/xml")
        self.send_header("Content-Length", str(0 if self.command == "HEAD" else len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


class FaultProxy(ThreadingHTTPServer):
    """Forwards HTTP requests on 127.0.0.1 to ``upstream_port``, with injectable faults.

    Counters (read under no lock; they only grow): ``requests`` (every request that arrived while
    up), ``faults`` (answered with an injected error), ``refused`` (connections reset while stopped),
    ``upstream_failures`` (moto unreachable: answered 502)."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 256

    def __init__(self, upstream_port: int, port: int = 0):
        super().__init__((HOST, port), _ProxyHandler)
        self.upstream_port = upstream_port
        self.down = False
        self.requests = self.faults = self.refused = self.upstream_failures = 0
        self.log: list[tuple[str, str]] = []  # (method, path) of each request, in arrival order
        self._lock = threading.Lock()
        self._fail_next = 0
        self._fail_status = 503
        self._fail_match: str | None = None
        self._open: set[socket.socket] = set()
        self._local = threading.local()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    # --- the switch ------------------------------------------------------------------------
    def fail_next(self, count: int, status: int = 503, *, matching: str | None = None) -> None:
        """Answer ``status`` to the next ``count`` requests (whose path contains ``matching``, if given)."""
        with self._lock:
            self._fail_next, self._fail_status, self._fail_match = count, status, matching

    @property
    def pending_faults(self) -> int:
        with self._lock:
            return self._fail_next

    def stop(self) -> None:
        """The store goes away: open connections are cut, new ones reset (counted in ``refused``)."""
        with self._lock:
            self.down = True
            connections = list(self._open)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def start(self) -> None:
        """The store is back."""
        with self._lock:
            self.down = False

    def reset(self) -> None:
        """Up, no pending faults (between tests)."""
        self.fail_next(0)
        self.start()

    # --- lifecycle -------------------------------------------------------------------------
    def serve(self) -> "FaultProxy":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
                                        name="s3-fault-proxy")
        self._thread.start()
        return self

    def close(self) -> None:
        self.stop()
        self.shutdown()
        self.server_close()

    # --- socketserver hooks ----------------------------------------------------------------
    def verify_request(self, request, client_address) -> bool:
        if self.down:
            self._count("refused")
            with contextlib.suppress(OSError):
                request.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            return False  # closed at once, with a reset
        with self._lock:
            self._open.add(request)
        return True

    def shutdown_request(self, request) -> None:
        with self._lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def server_bind(self):
        # HTTPServer.server_bind asks reverse DNS for a name (getfqdn): slow offline.
        import socketserver

        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    # --- used by the handler ---------------------------------------------------------------
    def _count(self, name: str) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + 1)

    def _arrived(self, method: str, path: str) -> int | None:
        """Record a request; the status to fail it with, or None to forward it."""
        with self._lock:
            self.requests += 1
            self.log.append((method, path))
            if self._fail_next > 0 and (self._fail_match is None or self._fail_match in path):
                self._fail_next -= 1
                self.faults += 1
                return self._fail_status
        return None

    def _upstream(self, method: str, path: str, body: bytes, headers: dict):
        """One request to moto on this thread's kept-alive connection (reconnecting once)."""
        for attempt in range(2):
            connection = getattr(self._local, "connection", None)
            if connection is None:
                connection = self._local.connection = http.client.HTTPConnection(HOST, self.upstream_port,
                                                                                  timeout=60)
            try:
                connection.request(method, path, body=body, headers=headers)
                answer = connection.getresponse()
                data = answer.read()
                if answer.will_close:
                    connection.close()
                    self._local.connection = None
                return answer.status, answer.reason, answer.getheaders(), data
            except (OSError, http.client.HTTPException):
                connection.close()
                self._local.connection = None
                if attempt:
                    raise OSError("moto is unreachable") from None
        raise AssertionError("unreachable")
