"""The load test's server, run as its own process so that it does not share the client's CPU time
or memory: ``python load_server.py STALL_SECONDS RETRY_AFTER`` prints its port, then serves

  /load/ok/<id>      a small JPEG, after 10 ms
  /load/429/<id>     429 with ``Retry-After: RETRY_AFTER`` the first time, then the JPEG
  /load/503/<id>     503 the first time, then the JPEG
  /load/stall/<id>   holds the first request STALL_SECONDS before answering (or until the client
                     closes), then the JPEG
  /stats             JSON: requests; the most requests in flight at once, counting each from its
                     arrival to the start of its answer and leaving out requests the client
                     abandoned (a stall past its deadline: the client's slot is freed by its close,
                     which the server sees only later, so counting them would over-count); the
                     same count with them (``max_in_flight_raw``); for every 429 id the gap between
                     its first and second arrival (server clock)

and a black hole on 127.0.0.2 (the same port): connections are accepted by the kernel and never
answered, so every request to that host times out.
"""

from __future__ import annotations

import io
import json
import select
import socket
import sys
import threading
import time
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from PIL import Image

# Every image answer takes this long, so requests overlap at the server and the cap is observable.
ANSWER_SECONDS = 0.01


def small_jpeg() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 24), (90, 140, 200)).save(buffer, format="JPEG", quality=80)
    return buffer.getvalue()


class LoadServer(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 4096

    def __init__(self, stall: float, retry_after: int):
        super().__init__(("127.0.0.1", 0), Handler)
        self.stall, self.retry_after, self.body = stall, retry_after, small_jpeg()
        self.lock = threading.Lock()
        self.requests = 0
        self.in_flight = self.max_in_flight = 0
        self.arrivals: dict[str, list[float]] = defaultdict(list)
        self.intervals: list[tuple[float, float]] = []  # answered requests: (arrival, answer start)

    def server_bind(self):
        socket.socket.setsockopt(self.socket, socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.socket.bind(self.server_address)
        self.server_address = self.socket.getsockname()


class Handler(BaseHTTPRequestHandler):
    server: LoadServer
    protocol_version = "HTTP/1.0"

    def log_message(self, format, *args):  # noqa: A002
        pass

    def do_GET(self):
        server = self.server
        if self.path == "/stats":
            with server.lock:
                gaps = [
                    times[1] - times[0]
                    for path, times in server.arrivals.items()
                    if "/429/" in path and len(times) > 1
                ]
                stats = {"requests": server.requests, "max_in_flight": max_overlap(server.intervals),
                         "max_in_flight_raw": server.max_in_flight, "retry_gaps": gaps}
            return self.answer(200, json.dumps(stats).encode(), "application/json")
        self.arrival = time.monotonic()
        with server.lock:
            server.requests += 1
            server.in_flight += 1
            server.max_in_flight = max(server.max_in_flight, server.in_flight)
            server.arrivals[self.path].append(self.arrival)
            first = len(server.arrivals[self.path]) == 1
        try:
            kind = self.path.split("/")[2]
            if first and kind == "429":  # refusals are immediate
                return self.answer(429, b"slow down", "text/plain", [("Retry-After", str(server.retry_after))])
            if first and kind == "503":
                return self.answer(503, b"busy", "text/plain")
            if first and kind == "stall" and self.client_waits(server.stall):
                return None  # the client gave up (its deadline): no longer in flight
            time.sleep(ANSWER_SECONDS)
            return self.answer(200, server.body, "image/jpeg")
        except (BrokenPipeError, ConnectionResetError):
            pass
        finally:
            self.leave()

    def client_waits(self, seconds: float) -> bool:
        """Hold the request up to ``seconds``; True as soon as the client closes its end."""
        readable, _, _ = select.select([self.connection], [], [], seconds)
        return bool(readable)

    def leave(self):
        if getattr(self, "_counted", True):
            self._counted = False
            with self.server.lock:
                self.server.in_flight -= 1

    def answer(self, code: int, body: bytes, content_type: str, headers=()):
        if self.path != "/stats":
            self.leave()  # in flight until the answer starts, as the client's slot is held until it ends
            with self.server.lock:
                self.server.intervals.append((self.arrival, time.monotonic()))
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for name, value in headers:
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = current = 0
    for _, step in events:  # at equal times an end (-1) sorts before a start: touching is not overlapping
        current += step
        most = max(most, current)
    return most


def main() -> None:
    server = LoadServer(float(sys.argv[1]), int(sys.argv[2]))
    black_hole = socket.socket()
    black_hole.bind(("127.0.0.2", server.server_address[1]))
    black_hole.listen(4096)  # never accepted: requests are never answered
    print(server.server_address[1], flush=True)
    server.serve_forever(poll_interval=0.05)


if __name__ == "__main__":
    main()
