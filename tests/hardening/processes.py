"""Running ``mmdata download`` as a child in its own session and killing the whole session with
SIGKILL (Ray's workers leave the job's process group but stay in its session)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ENVIRONMENT = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "HF_HUB_OFFLINE": "1"}


def download_command(source: Path, output: Path, *options: str) -> list[str]:
    return [sys.executable, "-m", "mmdata", "download", str(source), "--output", str(output),
            "--allow-network", "127.0.0.1/32", *options]


def start(command: list[str], environment: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, env=environment or ENVIRONMENT, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_for(condition, process: subprocess.Popen, timeout: float = 180.0) -> bool:
    """Poll ``condition`` until it holds (True) or the process ends first (False)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            return False
        if time.monotonic() > deadline:
            pytest.fail("the condition did not hold in time")
        try:
            process.wait(timeout=0.02)  # returns early if the process ends
        except subprocess.TimeoutExpired:
            pass
    return True
