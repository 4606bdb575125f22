"""Helpers shared by the benchmarks: a fast static file server (nginx) and side virtual environments.

nginx-light serves ~30k requests/s on this kind of machine, so the server does not eat the CPU being
measured (Python's http.server manages ~1k/s and would).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Iterator

REPO = Path(__file__).resolve().parent.parent
CACHE = REPO / ".cache"
WORK = REPO / "bench" / "_work"

_NGINX_CONF = """
daemon off;
master_process off;
worker_processes 1;
pid {temp}/nginx.pid;
error_log {temp}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 100000;
    client_body_temp_path {temp}/body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    types {{ image/jpeg jpg; image/png png; image/webp webp; }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
    }}
}}
"""


def nginx_binary() -> str:
    """The nginx executable; installs Debian's nginx-light when it is missing (needs root and apt)."""
    found = shutil.which("nginx") or (os.path.exists("/usr/sbin/nginx") and "/usr/sbin/nginx")
    if found:
        return found
    print("installing nginx-light (apt-get) ...", file=sys.stderr)
    environment = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "install", "-y", "-q", "nginx-light"], check=True, env=environment,
                   stdout=subprocess.DEVNULL)
    return shutil.which("nginx") or "/usr/sbin/nginx"


@contextlib.contextmanager
def nginx_serving(root: Path, probe: str) -> Iterator[str]:
    """Serve ``root`` on 127.0.0.1 with nginx as a child process; yields the base URL once
    ``probe`` (a path under root) answers 200."""
    with tempfile.TemporaryDirectory(prefix="mmdata-nginx-") as temp:
        port = _free_port()
        conf = Path(temp) / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(temp=temp, port=port, root=root.resolve()))
        process = subprocess.Popen([nginx_binary(), "-c", str(conf), "-p", temp, "-e", f"{temp}/error.log"],
                                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        base_url = f"http://127.0.0.1:{port}"
        try:
            _wait_until_serving(f"{base_url}/{probe}", process)
            yield base_url
        finally:
            process.terminate()
            process.wait(timeout=10)


def side_venv(name: str, requirements: list[str], *, environment: dict | None = None) -> Path:
    """A virtual environment under ``.cache/`` holding ``requirements`` (created once); returns its bin/."""
    venv = CACHE / name
    marker = venv / ".installed"
    if marker.exists() and marker.read_text() == "\n".join(requirements):
        return venv / "bin"
    print(f"creating {venv} with {' '.join(requirements)} ...", file=sys.stderr)
    shutil.rmtree(venv, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *requirements], check=True,
                   env={**os.environ, **(environment or {})})
    marker.write_text("\n".join(requirements))
    return venv / "bin"


def timed_run(command: list[str], *, environment: dict | None = None, log: Path) -> float:
    """Run ``command`` to completion, output to ``log``; returns its wall-clock seconds."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        start = time.perf_counter()
        completed = subprocess.run(
            command, stdout=handle, stderr=subprocess.STDOUT, env={**os.environ, **(environment or {})}
        )
        seconds = time.perf_counter() - start
    if completed.returncode != 0:
        raise RuntimeError(f"{command[0]} failed with exit code {completed.returncode}; see {log}")
    return seconds


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _wait_until_serving(url: str, process: subprocess.Popen, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx exited with {process.returncode}: {process.stderr.read().decode()[-2000:]}")
        with contextlib.suppress(OSError):
            with urllib.request.urlopen(url, timeout=1) as response:
                if response.status == 200:
                    return
        time.sleep(0.05)  # polling a server that is starting: there is nothing to wait on
    raise RuntimeError(f"nginx did not serve {url} within {timeout} s")
