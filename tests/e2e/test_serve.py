"""The loopback static server: files, per-path statuses and headers, nothing outside its folder."""

import urllib.error
import urllib.request

import pytest

from mmdata.serve import serve_folder


def test_serves_files_routes_and_refuses_escapes(tmp_path):
    root = tmp_path / "site"
    root.mkdir()
    (root / "a.png").write_bytes(b"png bytes")
    (tmp_path / "secret.txt").write_text("outside")
    routes = {"/a.png": {"headers": {"X-Robots-Tag": "noai"}}, "/down.jpg": {"status": 503}}
    with serve_folder(root, routes=routes) as base:
        assert base.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(f"{base}/a.png", timeout=10) as response:
            assert response.read() == b"png bytes"
            assert response.headers["Content-Type"] == "image/png"
            assert response.headers["X-Robots-Tag"] == "noai"
        for path, code in (
            ("/down.jpg", 503), ("/missing.jpg", 404), ("/../secret.txt", 404), ("/%2e%2e/secret.txt", 404)
        ):
            with pytest.raises(urllib.error.HTTPError) as error:
                urllib.request.urlopen(f"{base}{path}", timeout=10)
            assert error.value.code == code, path
