"""Fixtures of the end-to-end tests."""

import pytest
from http_server import TestHTTPServer


@pytest.fixture(scope="module")
def server():
    """The test image server (tests/http_server.py) on 127.0.0.1, for one test module."""
    started = TestHTTPServer().start()
    yield started
    started.stop()
