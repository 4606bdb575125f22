"""A real threaded HTTP server on 127.0.0.1 for download tests (img2dataset's tests/http_server.py
pattern): honest, broken and hostile responses, with per-path hit records the tests assert on.
It can also listen on another loopback address (canaries) and serve https (`tls=`).

Routes (path → response):
  /img/<name>.<jpg|png|webp|gif|bmp|tiff>?w=&h=&mode=RGB|RGBA|P|L|CMYK&delay=
                               an image whose pixels are a pure function of <name> (which may hold
                               `/`, giving a test its own sub-tree); `delay` (s) holds the request
                               first (for concurrency tests)
  /status/<code>               that status with a short text body
  /redirect?to=<path>          302 to <path> (one hop; UTF-8 on the wire)
  /redirect-chain/<n>?delay=   302 to /redirect-chain/<n-1> (each hop waiting `delay` s first);
                               /redirect-chain/0 serves an image
  /redirect-loop               302 to itself, forever
  /redirect-to-url?url=<abs>   302 to any absolute URL (for redirects to disallowed addresses)
  /slow-headers?s=             waits s seconds before the status line, then an image
  /slow-drip?interval=         headers at once, then one body byte every `interval` s (0.05), forever
  /endless                     headers at once, then zeros as fast as the client reads, no length
  /big?bytes=N                 N bytes with an honest Content-Length
  /html                        an HTML page served as text/html
  /garbage                     random bytes served as image/jpeg
  /truncated.jpg               the first half of a JPEG
  /bomb.png                    a 69-byte PNG whose header declares 100000 x 100000 pixels
  /optout?directive=D          an image with `X-Robots-Tag: D` (repeat `directive` for several
                               headers; D may be `noai` or the `agent: noai` form)
  /flaky/<id>?fail=N&code=503  fails N times per <id> with `code`, then serves an image
  /ratelimit/<id>?retry_after=S&fail=N
                               429 with `Retry-After: S` N times per <id>, then an image
  /bad-chunked                 a chunked body whose chunk size is not hexadecimal
  /many-headers?n=200          n response headers (http.client refuses more than 100)
  /drop<any suffix>?delay=     waits `delay` s, then closes the connection without answering
  /gzip-bomb?mib=N             `Content-Encoding: gzip` of N MiB of zeros (default 1024), streamed
  /lying-length?claim=more|less|huge
                               a JPEG whose Content-Length claims more bytes than are sent, fewer
                               than are sent, or 10**12
  anything else                404

Every request is recorded at arrival (`hits(path)` gives monotonic arrival times, query ignored,
`last_headers(path)` the latest request's headers);
`max_in_flight(prefix)` gives the most requests under a path prefix held at once before their
answer started.
"""

from __future__ import annotations

import hashlib
import io
import random
import socket
import socketserver
import ssl
import struct
import threading
import time
import zlib
from collections import defaultdict
from functools import lru_cache
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import numpy as np
from PIL import Image

IMAGE_FORMATS = {
    "jpg": ("JPEG", "image/jpeg"),
    "png": ("PNG", "image/png"),
    "webp": ("WEBP", "image/webp"),
    "gif": ("GIF", "image/gif"),
    "bmp": ("BMP", "image/bmp"),
    "tiff": ("TIFF", "image/tiff"),
}
IMAGE_MODES = ("RGB", "RGBA", "P", "L", "CMYK")
# Modes each encoder cannot write are converted to the nearest one it can.
_ENCODABLE = {
    "JPEG": {"RGB", "L", "CMYK"},
    "PNG": {"RGB", "RGBA", "P", "L"},
    "WEBP": {"RGB", "RGBA"},
    "GIF": {"P", "L"},
    "BMP": {"RGB", "P", "L"},
    "TIFF": {"RGB", "RGBA", "P", "L", "CMYK"},
}
BOMB_SIDE = 100_000
_STREAM_LIMIT_S = 120.0  # a hostile route never outlives a forgotten client by more than this


@lru_cache(maxsize=512)
def image_bytes(name: str, fmt: str = "jpg", width: int = 64, height: int = 48, mode: str = "RGB") -> bytes:
    """Encoded image whose pixels depend only on `name` (so a test can recompute them)."""
    pil_format = IMAGE_FORMATS[fmt][0]
    seed = int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")
    rng = np.random.default_rng(seed)
    # Smooth gradients plus a per-name colour: compressible and distinct between names.
    base = rng.integers(0, 256, size=3)
    ys, xs = np.mgrid[0:height, 0:width]
    rgb = np.stack([(base[c] + xs * (c + 1) + ys * (3 - c)) % 256 for c in range(3)], axis=-1)
    image = Image.fromarray(rgb.astype(np.uint8), "RGB")
    if mode == "RGBA":
        alpha = Image.fromarray(((xs * 255) // max(width - 1, 1)).astype(np.uint8), "L")
        image = image.convert("RGBA")
        image.putalpha(alpha)
    elif mode == "P":
        image = image.convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    elif mode in ("L", "CMYK"):
        image = image.convert(mode)
    if image.mode not in _ENCODABLE[pil_format]:
        image = image.convert("RGB" if "RGB" in _ENCODABLE[pil_format] else "P")
    out = io.BytesIO()
    image.save(out, format=pil_format)
    return out.getvalue()


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(side: int = BOMB_SIDE) -> bytes:
    """A valid-looking PNG, ~100 bytes, whose header declares side x side RGB pixels."""
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


class _Handler(BaseHTTPRequestHandler):
    server: "TestHTTPServer"
    _in_flight_path: str | None = None
    protocol_version = "HTTP/1.0"  # one request per connection: bodies end at close

    def log_message(self, format, *args):  # noqa: A002 - the base class's name
        pass  # quiet test output

    def do_GET(self):
        parts = urlsplit(self.path)
        path, query = parts.path, {k: v for k, v in parse_qs(parts.query).items()}
        self._in_flight_path = path
        self.server._record_arrival(path, dict(self.headers.items()))
        try:
            self._route(path, query)
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            pass  # the client gave up: expected for the hostile routes
        finally:
            self._leave()

    def send_response(self, code, message=None):
        # A request stops counting as in flight when its answer starts: a client that has read
        # the answer can never see itself counted twice.
        self._leave()
        super().send_response(code, message)

    def _leave(self):
        if self._in_flight_path is not None:
            self.server._record_departure(self._in_flight_path)
            self._in_flight_path = None

    # -- helpers -----------------------------------------------------------------------------
    def _send(self, code: int, body: bytes, content_type: str = "application/octet-stream", headers=()):
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_image(self, name: str, fmt: str = "jpg", headers=()):
        self._send(200, image_bytes(name, fmt), IMAGE_FORMATS[fmt][1], headers)

    def _redirect(self, location: str, code: int = 302):
        self.send_response(code)
        self.send_header("Location", location)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stream(self, chunks, headers):
        """Send headers then `chunks` until the client leaves or the safety limit passes."""
        self.send_response(200)
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        stop_at = time.monotonic() + _STREAM_LIMIT_S
        for chunk in chunks:
            if time.monotonic() > stop_at:
                return
            self.wfile.write(chunk)
            self.wfile.flush()

    # -- routes ------------------------------------------------------------------------------
    def _route(self, path: str, query: dict[str, list[str]]):
        arg = lambda key, default: query.get(key, [default])[0]  # noqa: E731
        if path.startswith("/img/"):
            name, _, fmt = path[len("/img/"):].rpartition(".")
            mode = arg("mode", "RGB")
            if fmt not in IMAGE_FORMATS or mode not in IMAGE_MODES or not name:
                return self._send(400, b"bad image request", "text/plain")
            delay = float(arg("delay", "0"))
            if delay:
                time.sleep(delay)  # holds the request open: the concurrency being measured
            body = image_bytes(name, fmt, int(arg("w", "64")), int(arg("h", "48")), mode)
            return self._send(200, body, IMAGE_FORMATS[fmt][1])
        if path.startswith("/status/"):
            code = int(path[len("/status/"):])
            return self._send(code, f"status {code}".encode(), "text/plain")
        if path == "/redirect":
            # Sent as UTF-8 bytes on the wire, as real servers do with non-ASCII locations.
            return self._redirect(arg("to", "/img/redirected.jpg").encode("utf-8").decode("latin-1"))
        if path.startswith("/redirect-chain/"):
            hops = int(path[len("/redirect-chain/"):])
            delay = float(arg("delay", "0"))
            if delay:
                time.sleep(delay)
            if hops <= 0:
                return self._send_image("chain-end")
            return self._redirect(f"/redirect-chain/{hops - 1}" + (f"?delay={delay:g}" if delay else ""))
        if path == "/redirect-loop":
            return self._redirect("/redirect-loop")
        if path == "/redirect-to-url":
            return self._redirect(arg("url", "http://127.0.0.1:1/"))
        if path == "/slow-headers":
            time.sleep(float(arg("s", "5")))
            return self._send_image("slow-headers")
        if path == "/slow-drip":
            interval = float(arg("interval", "0.05"))

            def drip():
                while True:
                    time.sleep(interval)
                    yield b"\xff"

            return self._stream(drip(), [("Content-Type", "image/jpeg")])
        if path == "/endless":
            zeros = bytes(64 * 1024)
            return self._stream(iter(lambda: zeros, None), [("Content-Type", "image/jpeg")])
        if path == "/big":
            return self._send(200, bytes(int(arg("bytes", str(1 << 20)))), "image/jpeg")
        if path == "/html":
            return self._send(200, b"<!doctype html><html><body><p>not an image</p></body></html>", "text/html")
        if path == "/garbage":
            return self._send(200, random.Random(path).randbytes(4096), "image/jpeg")
        if path == "/truncated.jpg":
            full = image_bytes("truncated", "jpg", 256, 192)
            return self._send(200, full[: len(full) // 2], "image/jpeg")
        if path == "/bomb.png":
            return self._send(200, bomb_png(), "image/png")
        if path == "/optout":
            headers = [("X-Robots-Tag", value) for value in query.get("directive", ["noai"])]
            return self._send_image("optout", headers=headers)
        if path.startswith("/flaky/"):
            if self.server._count_failure(path) <= int(arg("fail", "1")):
                code = int(arg("code", "503"))
                return self._send(code, f"status {code}".encode(), "text/plain")
            return self._send_image(path)
        if path.startswith("/ratelimit/"):
            if self.server._count_failure(path) <= int(arg("fail", "1")):
                return self._send(429, b"slow down", "text/plain", [("Retry-After", arg("retry_after", "1"))])
            return self._send_image(path)
        if path == "/bad-chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            self.wfile.write(b"zz-not-hex\r\nabc\r\n0\r\n\r\n")
            return None
        if path == "/many-headers":
            self.send_response(200)
            for index in range(int(arg("n", "200"))):
                self.send_header(f"X-Filler-{index}", "x")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if path.startswith("/drop"):
            time.sleep(float(arg("delay", "0")))
            self.close_connection = True
            return None
        if path == "/gzip-bomb":
            return self._stream(
                _gzip_zeros(int(arg("mib", "1024"))),
                [("Content-Type", "image/png"), ("Content-Encoding", "gzip")],
            )
        if path == "/lying-length":
            body = image_bytes("lying-length", "jpg", 128, 96)
            claim = arg("claim", "more")
            declared = {"more": len(body) * 2, "less": len(body) // 2, "huge": 10**12}[claim]
            self.send_response(200)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(declared))
            self.end_headers()
            self.wfile.write(body)
            return None
        return self._send(404, b"not found", "text/plain")


def _gzip_zeros(mib: int):
    """A gzip stream of `mib` MiB of zeros, produced as it is sent (about 1 KiB per MiB)."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 31)
    zeros = bytes(1 << 20)
    for _ in range(mib):
        chunk = compressor.compress(zeros)
        if chunk:
            yield chunk
    yield compressor.flush()


class TestHTTPServer(ThreadingHTTPServer):
    """ThreadingHTTPServer on 127.0.0.1 (a free port) that records hits and concurrency."""

    __test__ = False  # not a pytest test class
    daemon_threads = True
    request_queue_size = 1024
    allow_reuse_address = True

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, tls: tuple[str, str] | None = None):
        """`tls` = (certificate PEM, key PEM) serves https instead of http."""
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        super().__init__((host, port), _Handler)
        self._tls = None
        if tls is not None:
            self._tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self._tls.load_cert_chain(*tls)
        self._lock = threading.Lock()
        self._arrivals: dict[str, list[float]] = defaultdict(list)
        self._headers: dict[str, dict[str, str]] = {}
        self._failures: dict[str, int] = defaultdict(int)
        self._in_flight: dict[str, int] = defaultdict(int)
        self._max_in_flight: dict[str, int] = defaultdict(int)
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self._tls else 'http'}://{host}:{port}"

    @property
    def port(self) -> int:
        return self.server_address[1]

    def url(self, path: str) -> str:
        return self.base_url + (path if path.startswith("/") else "/" + path)

    def hits(self, path: str) -> list[float]:
        """Monotonic arrival times of requests for `path` (the query string is ignored)."""
        with self._lock:
            return list(self._arrivals.get(urlsplit(path).path, ()))

    def last_headers(self, path: str) -> dict[str, str] | None:
        """The request headers of the latest request for `path`."""
        with self._lock:
            return self._headers.get(urlsplit(path).path)

    def total_hits(self) -> int:
        with self._lock:
            return sum(len(times) for times in self._arrivals.values())

    def max_in_flight(self, prefix: str) -> int:
        """Most requests whose path starts with `prefix` that were being served at once."""
        with self._lock:
            return self._max_in_flight.get(prefix, 0)

    def server_bind(self):
        # HTTPServer.server_bind asks reverse DNS for a name (getfqdn): slow or hanging offline.
        socketserver.TCPServer.server_bind(self)
        self.server_name, self.server_port = self.server_address[:2]

    def finish_request(self, request, client_address):
        # The TLS handshake runs here, on the request's own thread, not in the accept loop.
        if self._tls is not None:
            try:
                request = self._tls.wrap_socket(request, server_side=True)
            except (ssl.SSLError, OSError):
                return  # a client that refused our certificate: the test looks at its side
            try:
                super().finish_request(request, client_address)
            finally:
                request.close()
            return
        super().finish_request(request, client_address)

    def start(self) -> "TestHTTPServer":
        self._thread = threading.Thread(target=self.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()

    def _prefixes(self, path: str):
        # Every leading segment ("/img/", "/img/a.jpg" ...) so tests can watch any sub-tree.
        segments = path.split("/")
        yield from ("/".join(segments[:i]) + "/" for i in range(2, len(segments)))
        yield path

    def _record_arrival(self, path: str, headers: dict[str, str]) -> None:
        now = time.monotonic()
        with self._lock:
            self._arrivals[path].append(now)
            self._headers[path] = headers
            for prefix in self._prefixes(path):
                self._in_flight[prefix] += 1
                self._max_in_flight[prefix] = max(self._max_in_flight[prefix], self._in_flight[prefix])

    def _record_departure(self, path: str) -> None:
        with self._lock:
            for prefix in self._prefixes(path):
                self._in_flight[prefix] -= 1

    def _count_failure(self, key: str) -> int:
        with self._lock:
            self._failures[key] += 1
            return self._failures[key]


def image_urls(server: TestHTTPServer, count: int, *, prefix: str = "bulk", fmt: str = "jpg", width: int = 64,
               height: int = 48) -> list[str]:
    """`count` distinct image URLs on `server` (for bulk download tests)."""
    return [server.url(f"/img/{prefix}-{i:06d}.{fmt}?w={width}&h={height}") for i in range(count)]
