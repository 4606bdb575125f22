"""Fixtures of the hardening battery: a session HTTP server, and the download tests' dataset checks
(tests/download/download_checks.py) made importable from here."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "download"))

from http_server import TestHTTPServer  # noqa: E402  (tests/ is on sys.path through the root conftest)


@pytest.fixture(scope="session")
def hardening_server():
    """One threaded HTTP server on 127.0.0.1 for this folder's tests (routes in tests/http_server.py)."""
    server = TestHTTPServer().start()
    yield server
    server.stop()
