import shutil
import subprocess

import pytest
from http_server import TestHTTPServer


@pytest.fixture(scope="session")
def http_server():
    """One threaded HTTP server on 127.0.0.1 for the whole session; routes in tests/http_server.py."""
    server = TestHTTPServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tls_certificate(tmp_path_factory):
    """A self-signed certificate (cert.pem, key.pem) for `localhost` and `images.test`."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is needed to make a test certificate")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
         "-keyout", str(key), "-out", str(cert), "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,DNS:images.test",
         "-addext", "basicConstraints=critical,CA:TRUE"],
        check=True, capture_output=True,
    )
    return str(cert), str(key)


@pytest.fixture(scope="session")
def https_server(tls_certificate):
    """The same routes over TLS on 127.0.0.1, with the certificate from `tls_certificate`."""
    server = TestHTTPServer(tls=tls_certificate).start()
    yield server
    server.stop()


@pytest.fixture
def loopback_only(monkeypatch):
    """Any socket connect outside loopback fails (and is recorded), so a regression in the address
    check shows up as a failed test instead of a request to a real network."""
    import ipaddress
    import socket

    real_connect = socket.socket.connect
    refused: list[str] = []

    def connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            ip = ipaddress.ip_address(address[0].split("%")[0])
            mapped = getattr(ip, "ipv4_mapped", None) or ip
            if not (mapped.is_loopback or mapped.is_unspecified):
                refused.append(str(ip))
                raise PermissionError(f"test guard: no connections outside loopback ({ip})")
        return real_connect(sock, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    yield refused
    assert not refused, f"the code under test tried to connect to {refused}"
