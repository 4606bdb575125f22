"""Load: many rows against a local server where 5% answer 429 (Retry-After), 5% answer 503 and 5%
stall past the deadline, plus a host that never answers. Per-host concurrency stays under the cap,
no request comes before Retry-After, resident memory stays bounded, the failing host is backed off
and its rows fail fast. Figures are printed (run with -s to see them).

The default run uses 2,000 rows; the slow step runs 100,000."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from pathlib import Path

import psutil
import pytest

from mmdata.download.net import Fetcher, FetchPolicy

SERVER = Path(__file__).resolve().parent / "load_server.py"
MAX_PER_HOST = 32
THREADS = 2 * MAX_PER_HOST
RETRY_AFTER = 1
TIMEOUT = 0.75
STALL = 1.5
# Above the cap: stalled requests pile up in the slots and time out together, so a limit under
# the cap would back off a host with a mere 5% of stalls (see the issue-7 note).
FAILURE_LIMIT = 2 * MAX_PER_HOST


def start_server():
    process = subprocess.Popen(
        [sys.executable, str(SERVER), str(STALL), str(RETRY_AFTER)], stdout=subprocess.PIPE, text=True
    )
    port = int(process.stdout.readline())
    return process, port


def plan_rows(count: int, port: int, seed: int = 0) -> list[tuple[str, str]]:
    """(kind, url) per row: 83% ok, 5% each of 429, 503 and stall, and 2% to the black-hole host."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        draw = rng.random()
        kind = (
            "ok" if draw < 0.83
            else "429" if draw < 0.88
            else "503" if draw < 0.93
            else "stall" if draw < 0.98
            else "dead"
        )
        host = "127.0.0.2" if kind == "dead" else "127.0.0.1"
        rows.append((kind, f"http://{host}:{port}/load/{kind}/{index}"))
    return rows


class MemoryWatch:
    """Samples this process's resident memory every 0.2 s on a thread."""

    def __init__(self):
        self.process = psutil.Process()
        self.start = self.peak = self.process.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(0.2):
            self.peak = max(self.peak, self.process.memory_info().rss)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc_info):
        self._stop.set()
        self._thread.join()


def run_load(count: int) -> dict:
    server, port = start_server()
    try:
        rows = plan_rows(count, port)
        fetcher = Fetcher(FetchPolicy(timeout=TIMEOUT, retries=2, backoff_base=0.1, max_per_host=MAX_PER_HOST,
                                      host_failure_limit=FAILURE_LIMIT, host_backoff=3600.0,
                                      allowed_networks=("127.0.0.0/8",)))

        def fetch(row):
            kind, url = row
            started = time.monotonic()
            result = fetcher.fetch(url)
            return kind, result.status, result.error_class, result.attempts, time.monotonic() - started

        outcomes: Counter = Counter()
        dead_seconds: dict[str, list[float]] = {"timeout": [], "host_backoff": []}
        pending, lock = iter(rows), threading.Lock()

        def work():
            """One of THREADS workers pulling rows, so only the rows in flight are held."""
            while True:
                with lock:
                    row = next(pending, None)
                if row is None:
                    return
                kind, status, error_class, _, seconds = fetch(row)
                with lock:
                    outcomes[(kind, status, error_class)] += 1
                    if kind == "dead":
                        dead_seconds.setdefault(error_class, []).append(seconds)

        with MemoryWatch() as memory:
            started = time.monotonic()
            workers = [threading.Thread(target=work) for _ in range(THREADS)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            elapsed = time.monotonic() - started
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=30) as answer:
            server_stats = json.load(answer)
    finally:
        server.kill()
        server.wait()
    return {
        "rows": count,
        "seconds": round(elapsed, 1),
        "rows_per_second": round(count / elapsed, 1),
        "rss_start_mib": round(memory.start / 2**20, 1),
        "rss_peak_mib": round(memory.peak / 2**20, 1),
        "outcomes": {"/".join(map(str, key)): value for key, value in sorted(outcomes.items(), key=str)},
        "kinds": Counter(kind for kind, _ in rows),
        "server": {name: server_stats[name] for name in ("requests", "max_in_flight", "max_in_flight_raw")},
        "retry_gaps": server_stats["retry_gaps"],
        "dead_seconds": dead_seconds,
    }


def check_load(report: dict) -> None:
    kinds, outcomes = report["kinds"], report["outcomes"]
    printable = {key: value for key, value in report.items() if key not in ("retry_gaps", "dead_seconds")}
    printable["dead_rows"] = {name: len(times) for name, times in report["dead_seconds"].items()}
    backed_off = sorted(report["dead_seconds"].get("host_backoff", []))
    printable["backed_off_row_median_ms"] = round(1000 * backed_off[len(backed_off) // 2], 3) if backed_off else None
    print("\nload test:", json.dumps(printable, default=str))
    # Every row of the healthy host succeeds (each transient failure is retried once).
    healthy = sum(count for kind, count in kinds.items() if kind != "dead")
    assert sum(value for key, value in outcomes.items() if key.endswith("success/None")) == healthy, outcomes
    # The cap held on the server's side.
    assert report["server"]["max_in_flight"] <= MAX_PER_HOST
    assert report["server"]["max_in_flight"] >= MAX_PER_HOST // 2, "the load never reached the cap"
    # No second request for a 429 id before Retry-After (server clock).
    gaps = report["retry_gaps"]
    assert len(gaps) == kinds["429"] and min(gaps) >= RETRY_AFTER, min(gaps)
    # The dead host: a few timeouts, then backed off; its other rows fail at once with a clear status.
    dead = report["dead_seconds"]
    assert set(dead) <= {"timeout", "host_backoff"}, set(dead)
    assert len(dead["timeout"]) <= FAILURE_LIMIT + MAX_PER_HOST
    assert len(dead["host_backoff"]) >= kinds["dead"] - FAILURE_LIMIT - MAX_PER_HOST
    # Rows already in flight when the host was backed off finish their attempt; every later row
    # fails at once instead of holding a thread.
    slow = [seconds for seconds in dead["host_backoff"] if seconds > 0.1]
    assert len(slow) <= THREADS, f"{len(slow)} backed-off rows took over 0.1 s"
    assert outcomes.get("dead/failed_to_download/host_backoff", 0) == len(dead["host_backoff"])
    # Resident memory: bounded by the threads' buffers, not by the row count.
    assert report["rss_peak_mib"] - report["rss_start_mib"] < 64, report


def test_load_2k_rows_with_rate_limits_errors_and_stalls():
    check_load(run_load(2_000))


@pytest.mark.slow
def test_load_100k_rows_with_rate_limits_errors_and_stalls():
    report = run_load(100_000)
    check_load(report)
    output = os.environ.get("MMDATA_LOAD_REPORT")
    if output:
        Path(output).write_text(
            json.dumps({k: v for k, v in report.items() if k not in ("retry_gaps", "dead_seconds")}, default=str)
        )
