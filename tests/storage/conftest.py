"""Fixtures of the object-storage battery: an image server with gates (requests held until the test
releases them), and the download tests' helpers (tests/download/download_checks.py) made importable."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "download"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from http_server import TestHTTPServer, _Handler, image_bytes  # noqa: E402  (tests/ is on sys.path)

GATE_LIMIT_S = 300.0  # a forgotten gate never holds a request longer than this


class Gate:
    """Holds the first ``hold`` requests under ``/gate/<name>/`` until :meth:`release`; later ones pass."""

    def __init__(self, hold: int):
        self.hold = hold
        self.admitted = 0  # requests that arrived while the gate still held
        self.waiting = 0  # of those, how many are held now
        self.passed = 0  # requests that went through without waiting
        self._open = threading.Event()

    def release(self) -> None:
        self._open.set()


class _GatedHandler(_Handler):
    def _route(self, path, query):
        if not path.startswith("/gate/"):
            return super()._route(path, query)
        gate_name, _, rest = path[len("/gate/"):].partition("/")
        name, _, fmt = rest.rpartition(".")
        self.server.pass_gate(gate_name)
        body = image_bytes(f"{gate_name}/{name}", fmt, int(query.get("w", ["64"])[0]), int(query.get("h", ["48"])[0]))
        return self._send(200, body, "image/jpeg" if fmt == "jpg" else f"image/{fmt}")


class GatedHTTPServer(TestHTTPServer):
    """tests/http_server.py's routes, plus ``/gate/<gate>/<name>.<fmt>?w=&h=``: an image held at
    its gate (see :meth:`gate`)."""

    def __init__(self):
        super().__init__()
        self.RequestHandlerClass = _GatedHandler
        self._gates: dict[str, Gate] = {}

    def gate(self, name: str, hold: int = 1) -> Gate:
        with self._lock:
            self._gates[name] = Gate(hold)
            return self._gates[name]

    def pass_gate(self, name: str) -> None:
        with self._lock:
            gate = self._gates.get(name)
            if gate is None or gate.admitted >= gate.hold or gate._open.is_set():
                if gate is not None:
                    gate.passed += 1
                return
            gate.admitted += 1
            gate.waiting += 1
        gate._open.wait(GATE_LIMIT_S)
        with self._lock:
            gate.waiting -= 1


@pytest.fixture(scope="session")
def http_server():
    """One threaded image server on 127.0.0.1 for this folder's tests (with gates)."""
    server = GatedHTTPServer().start()
    yield server
    server.stop()
