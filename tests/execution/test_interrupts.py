"""Ctrl-C and SIGTERM during a real `mmdata download`, on every executor, as a user meets them."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from http_server import TestHTTPServer

from mmdata.execution import EXECUTORS

SHARDS = 3


@pytest.fixture(scope="module")
def server():
    started = TestHTTPServer().start()
    yield started
    started.stop()


def _slow_input(server, folder, tag: str) -> list[str]:
    """Images the server holds open for a minute: the job is mid-shard when the signal comes."""
    paths = [f"/img/{tag}-{index}.jpg" for index in range(SHARDS * 2)]
    rows = [{"url": server.url(f"{path}?delay=60"), "caption": "slow"} for path in paths]
    pq.write_table(pa.Table.from_pylist(rows), folder / "urls.parquet")  # its row count is known up front
    return paths


def _session_processes(session: int) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter():
        try:
            if os.getsid(process.pid) == session and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
        except (psutil.Error, ProcessLookupError):
            continue
    return found


@pytest.mark.parametrize("executor", EXECUTORS)
@pytest.mark.parametrize("signum, whole_group", [(signal.SIGINT, True), (signal.SIGTERM, False)])
def test_a_signal_stops_the_job_with_one_line_and_leaves_nothing_running(server, tmp_path, executor, signum,
                                                                        whole_group):
    paths = _slow_input(server, tmp_path, f"{executor}-{signum}")
    command = [sys.executable, "-m", "mmdata", "download", str(tmp_path / "urls.parquet"), "--output",
               str(tmp_path / "out"), "--shard-size", "2", "--threads", "2", "--timeout", "120", "--retries", "0",
               "--allow-network", "127.0.0.1/32", "--executor", executor, "--workers", "2"]
    job = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any(server.hits(path) for path in paths):  # a shard is fetching: the job is mid-run
        assert job.poll() is None, job.stderr.read()[-3000:]
        assert time.monotonic() < deadline, "the job never started fetching"
        time.sleep(0.02)
    signalled = time.monotonic()
    if whole_group:  # Ctrl-C in a terminal reaches the whole foreground process group
        os.killpg(job.pid, signum)
    else:  # `kill PID`
        job.send_signal(signum)
    _, stderr = job.communicate(timeout=60)
    stopped_after = time.monotonic() - signalled
    assert job.returncode == 128 + signum, stderr[-3000:]
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr[-3000:]
    last_line = stderr.strip().splitlines()[-1]
    assert last_line == (f"mmdata download: interrupted: 0 of {SHARDS} shards complete; "
                         "re-run the same command to resume"), stderr[-3000:]
    assert stopped_after < 10, f"took {stopped_after:.1f} s to stop"  # the target is 2 s; this only catches hangs
    _, left = psutil.wait_procs(_session_processes(job.pid), timeout=20)
    assert left == [], [process.cmdline() for process in left]
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_missing_input_or_column_fails_before_any_executor_starts(tmp_path):
    """Checked in a fresh process: Ray must not even be imported for a mistyped command."""
    (tmp_path / "urls.csv").write_text("link,text\nhttp://127.0.0.1/a.jpg,a\n")
    probe = (
        "import sys; from mmdata.cli import main; code = main(sys.argv[1:]); "
        "print('ray imported' if 'ray' in sys.modules else 'ray not imported'); sys.exit(code)"
    )
    for arguments, message in (
        ([str(tmp_path / "missing.parquet")], "does not exist"),
        ([str(tmp_path / "urls.csv")], "has no column 'url'"),
    ):
        completed = subprocess.run([sys.executable, "-c", probe, "download", *arguments, "--output",
                                    str(tmp_path / "out")], capture_output=True, text=True, timeout=120)
        assert completed.returncode == 2, completed.stderr
        assert message in completed.stderr, completed.stderr
        assert completed.stdout.strip() == "ray not imported"
        assert not (tmp_path / "out").exists()
