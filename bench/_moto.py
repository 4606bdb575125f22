"""An S3-protocol server on loopback for the benchmarks: moto's ``moto_server``, started and stopped
by the caller, with what it cost during a phase (its CPU seconds, and the requests it logged).

moto runs in Python and shares the machine's cores with what is being measured, so a benchmark should
print the server's CPU next to each S3 figure: that much of an S3 run's time is the fake server, not
the client. moto also serves a ranged GET by reading the whole object and slicing it, so each ranged
read of a large tar costs it work in proportion to the object, not to the range (real S3 does not).

Set the endpoint variables (:func:`s3_environment`) in ``os.environ`` before anything imports s3fs,
so that child processes and their pool workers inherit them.
"""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import psutil
from _common import _free_port

# 127.0.0.1 - - [date] "GET /bucket/key?query HTTP/1.1" 206 -   (werkzeug colours some lines)
_REQUEST = re.compile(r'"(?:\x1b\[[0-9;]*m)*([A-Z]+) (\S+) HTTP/[0-9.]+(?:\x1b\[[0-9;]*m)*" (\d{3})')


def s3_environment(port: int) -> dict[str, str]:
    """What boto, s3fs and pyarrow need to reach moto on ``port``, with no other argument."""
    return {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "x",
        "AWS_SECRET_ACCESS_KEY": "x",
        "AWS_DEFAULT_REGION": "us-east-1",
    }


def free_port() -> int:
    return _free_port()


@dataclass(frozen=True)
class Mark:
    """Where the server stood when a phase began."""

    cpu_seconds: float
    log_offset: int


@dataclass(frozen=True)
class PhaseCost:
    """What the server did between a :class:`Mark` and now."""

    cpu_seconds: float
    requests: collections.Counter  # request kind -> count

    @property
    def total_requests(self) -> int:
        return sum(self.requests.values())

    def summary(self) -> str:
        return ", ".join(f"{kind} {count}" for kind, count in self.requests.most_common())


class MotoServer:
    def __init__(self, process: subprocess.Popen, port: int, log: Path):
        self.process, self.port, self.log = process, port, log
        self._ps = psutil.Process(process.pid)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def cpu_seconds(self) -> float:
        """User + system CPU seconds of the server (all its threads, and any children it reaped)."""
        times = self._ps.cpu_times()
        return times.user + times.system + times.children_user + times.children_system

    def mark(self) -> Mark:
        return Mark(self.cpu_seconds(), self.log.stat().st_size)

    def since(self, mark: Mark) -> PhaseCost:
        time.sleep(0.1)  # the server logs a request just after answering it
        with open(self.log, "rb") as handle:
            handle.seek(mark.log_offset)
            text = handle.read().decode("utf-8", "replace")
        kinds = collections.Counter(
            request_kind(m.group(1), m.group(2), m.group(3)) for m in _REQUEST.finditer(text)
        )
        return PhaseCost(self.cpu_seconds() - mark.cpu_seconds, kinds)


def request_kind(method: str, target: str, status: str = "200") -> str:
    """A short name for one logged request: LIST, GET range (206), GET, HEAD, PUT, PUT part, COPY?
    (a PUT onto a shard's final name, which mmdata's object-store commit makes by server-side copy),
    multipart init/complete, DELETE, DELETE batch, ... (the log shows no headers, so copies are inferred)."""
    path, _, query = target.partition("?")
    key = path.split("/", 2)[2] if path.count("/") >= 2 else ""
    if method == "GET" and ("list-type" in query or "prefix=" in query or not key):
        return "LIST" if "location" not in query else "GET bucket location"
    if method == "GET":
        return "GET range" if status == "206" else "GET"
    if method == "PUT" and "uploadId" in query:
        return "PUT part"
    if method == "PUT" and key and "/.attempts/" not in f"/{key}" and key.endswith((".tar", ".parquet")):
        return "COPY?"
    if method == "POST" and query.startswith("uploads"):
        return "multipart init"
    if method == "POST" and "uploadId" in query:
        return "multipart complete"
    if method == "POST" and "delete" in query:
        return "DELETE batch"
    return method


@contextlib.contextmanager
def moto_serving(port: int | None = None) -> Iterator[MotoServer]:
    """Run ``moto_server`` on 127.0.0.1:``port`` (a free one by default) until the block ends; its
    request log goes to a temporary file that :meth:`MotoServer.since` reads."""
    binary = Path(sys.executable).parent / "moto_server"
    if not binary.exists():
        raise RuntimeError(f"{binary} is missing: pip install 'moto[server]' s3fs (the test extra)")
    port = port or _free_port()
    with tempfile.TemporaryDirectory(prefix="mmdata-moto-") as temp:
        log = Path(temp) / "moto.log"
        with open(log, "wb") as handle:
            process = subprocess.Popen([str(binary), "-H", "127.0.0.1", "-p", str(port)],
                                       stdout=handle, stderr=subprocess.STDOUT,
                                       env={**os.environ, "PYTHONUNBUFFERED": "1"})
        server = MotoServer(process, port, log)
        try:
            _wait_until_serving(server)
            yield server
        finally:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def _wait_until_serving(server: MotoServer, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"moto_server exited with {server.process.returncode}: {server.log.read_text()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(server.endpoint, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.1)  # polling a server that is starting: there is nothing to wait on
    raise RuntimeError(f"moto_server did not answer on {server.endpoint} within {timeout} s")
