"""A small threaded static server on 127.0.0.1 with per-path status codes and headers.

It stands in for "the web" in the offline demo and the end-to-end tests: each server is one site
(``127.0.0.1:<port>`` is its domain in the report), and ``routes.json`` makes some paths answer 500
or carry an ``X-Robots-Tag`` opt-out.
"""

from __future__ import annotations

import contextlib
import json
import mimetypes
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

_TYPES = {".jpg": "image/jpeg", ".png": "image/png", ".webp": "image/webp"}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    root: Path
    routes: dict

    def do_GET(self) -> None:  # noqa: N802 - the http.server API
        path = self.path.split("?", 1)[0]
        route = self.routes.get(path, {})
        status = route.get("status", 200)
        file_path = (self.root / path.lstrip("/")).resolve()
        body = b""
        if status == 200:
            if self.root not in file_path.parents or not file_path.is_file():
                status = 404
            else:
                body = file_path.read_bytes()
        self.send_response(status)
        content_type = _TYPES.get(file_path.suffix) or mimetypes.guess_type(file_path.name)[0]
        self.send_header("Content-Type", content_type if status == 200 and content_type else "text/plain")
        for name, value in route.get("headers", {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - the http.server API
        """Silent: a demo's console is for its results, not one line per request."""


@contextlib.contextmanager
def serve_folder(root: str | os.PathLike, *, routes: dict | None = None, port: int = 0) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 (``port=0``: any free port) and yield its base URL."""
    handler = type("Handler", (_Handler,), {"root": Path(root).resolve(), "routes": routes or {}})
    server = ThreadingHTTPServer(("127.0.0.1", port), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name=f"serve-{server.server_port}", daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@contextlib.contextmanager
def serve_corpus(corpus: str | os.PathLike, *, sites: int = 3, ports: list[int] | None = None) -> Iterator[list[str]]:
    """Serve a synthetic corpus (``mmdata.synthetic``) as ``sites`` local sites; yield their base URLs.

    ``ports`` pins the ports (to resume a download whose URL table names them); by default any free ones.
    """
    corpus = Path(corpus)
    routes = json.loads((corpus / "routes.json").read_text()) if (corpus / "routes.json").exists() else {}
    ports = ports or [0] * sites
    with contextlib.ExitStack() as stack:
        yield [stack.enter_context(serve_folder(corpus / "files", routes=routes, port=port)) for port in ports]
