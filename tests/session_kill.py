"""Killing a job the way a crash would: every process of its session (the driver and the Ray
processes it started, which leave the process group but stay in the session)."""

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest


def kill_session(process: subprocess.Popen) -> None:
    """SIGKILL every process of the child's session until none is left."""
    deadline = time.monotonic() + 60
    while survivors := processes_in_session(process.pid):
        for pid in survivors:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if time.monotonic() > deadline:
            pytest.fail(f"processes of the killed run still alive: {survivors}")
        try:
            process.wait(timeout=0.05)
        except subprocess.TimeoutExpired:
            pass
    process.wait()


def processes_in_session(session_id: int) -> list[int]:
    """Live processes in a session."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == session_id and fields[0] != "Z":
                found.append(int(entry.name))
        except (OSError, IndexError, ValueError):
            continue
    return found
