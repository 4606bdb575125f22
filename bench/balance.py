"""Benchmark: MetaCLIP balancing of a metadata-only dataset against a large entry list.

Writes parquet shards with the real SAMPLE_SCHEMA (no tars: balancing reads only the metadata) whose
captions draw entries from a Zipf distribution (a heavy head, a long tail, multi-word and
overlapping entries), then times ``mmdata.balance`` and samples the resident memory of the driver and
of every worker process it starts (psutil, every 50 ms).

    python bench/balance.py --quick    # 100k rows, 50k entries
    python bench/balance.py            # 1M rows in 100 shards, 500k entries, t=20000
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import mmdata
from mmdata import layout
from mmdata.atomic import write_json, write_parquet
from mmdata.schemas.samples import SAMPLE_SCHEMA

WORK = Path(__file__).resolve().parent / "_work" / "balance"
SYLLABLES = ("ka", "lo", "mi", "ne", "ru", "ta", "so", "vi", "be", "do", "fa", "gu", "hi", "jo", "pe", "qu",
             "ze", "xa", "yo", "wu", "an", "el", "is", "or", "um")
FILLER = ("a", "photo", "of", "the", "with", "and", "in", "on", "my", "new")


def word(number: int) -> str:
    letters = []
    while True:
        letters.append(SYLLABLES[number % len(SYLLABLES)])
        number //= len(SYLLABLES)
        if number == 0:
            return "".join(letters)


def entry_list(count: int) -> list[str]:
    """Distinct entries: two of three single words, one of three two-word phrases of existing words."""
    entries, seen, number = [], set(), 0
    while len(entries) < count:
        entry = word(number) if number % 3 else f"{word(number // 3)} {word(number + 7)}"
        number += 1
        if entry not in seen:
            seen.add(entry)
            entries.append(entry)
    return entries


def write_dataset(root: Path, rows: int, shard_size: int, entries: list[str], seed: int) -> None:
    rng = np.random.default_rng(seed)
    for shard, start in enumerate(range(0, rows, shard_size)):
        size = min(shard_size, rows - start)
        picks = (rng.zipf(1.15, size=(size, 2)) - 1) % len(entries)
        fillers = rng.integers(0, len(FILLER), size=(size, 4))
        captions = [
            f"{FILLER[f[0]]} {FILLER[f[1]]} {entries[p[0]]} {FILLER[f[2]]}, {FILLER[f[3]]} {entries[p[1]]}."
            for p, f in zip(picks.tolist(), fillers.tolist())
        ]
        keys = [layout.sample_key(shard, row, shard_size) for row in range(size)]
        urls = [f"http://img{shard}.test/{row}.jpg" for row in range(size)]
        statuses = np.where(rng.random(size) < 0.9, "success", "failed_to_download")
        table = pa.table({
            "key": keys,
            "uid": [layout.sample_uid(url, caption) for url, caption in zip(urls, captions)],
            "url": urls,
            "caption": captions,
            "status": statuses.tolist(),
            "error_message": [None if status == "success" else "HTTP 404" for status in statuses],
            "tar_offset": np.arange(size, dtype=np.int64) * 4096,
            "tar_size": np.full(size, 4096, dtype=np.int64),
        })
        write_parquet(table, layout.parquet_path(root, shard), SAMPLE_SCHEMA)
        write_json(layout.stats_path(root, shard), {"count": size, "successes": int((statuses == "success").sum())})


class TreeRss:
    """Peak resident memory of this process and of each child process, sampled every 50 ms."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._stop = threading.Event()
        self.driver_peak = 0
        self.worker_peaks: dict[int, int] = {}
        self.total_peak = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        import psutil

        driver = self._process.memory_info().rss
        self.driver_peak = max(self.driver_peak, driver)
        total = driver
        for child in self._process.children(recursive=True):
            try:
                rss = child.memory_info().rss
            except psutil.Error:
                continue
            self.worker_peaks[child.pid] = max(self.worker_peaks.get(child.pid, 0), rss)
            total += rss
        self.total_peak = max(self.total_peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            self._stop.wait(0.05)

    def __enter__(self) -> "TreeRss":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k rows and 50k entries")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--entries", type=int)
    parser.add_argument("--shard-size", type=int, default=10_000)
    parser.add_argument("--t", type=int, default=None, help="default: 20000 (2000 with --quick)")
    parser.add_argument("--executor", default="processes")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the generated dataset in bench/_work/balance")
    arguments = parser.parse_args(argv)
    rows = arguments.rows or (100_000 if arguments.quick else 1_000_000)
    entry_count = arguments.entries or (50_000 if arguments.quick else 500_000)
    t = arguments.t or (2_000 if arguments.quick else 20_000)

    shutil.rmtree(WORK, ignore_errors=True)
    WORK.mkdir(parents=True)
    root = WORK / "data"
    started = time.perf_counter()
    entries = entry_list(entry_count)
    (WORK / "entries.txt").write_text("\n".join(entries) + "\n")
    write_dataset(root, rows, arguments.shard_size, entries, seed=0)
    generate_seconds = time.perf_counter() - started

    started = time.perf_counter()
    with TreeRss() as memory:
        result = mmdata.balance(root, metadata=str(WORK / "entries.txt"), t=t, view="balanced",
                                executor=arguments.executor, workers=arguments.workers)
    seconds = time.perf_counter() - started
    counts = result.entry_counts.column("count").to_numpy()
    kept = result.entry_counts.column("kept").to_numpy()
    report = {
        "rows": rows, "shards": -(-rows // arguments.shard_size), "entries": entry_count, "t": t,
        "executor": arguments.executor, "workers": arguments.workers,
        "generate_seconds": round(generate_seconds, 1),
        "balance_seconds": round(seconds, 1),
        "rows_per_second": round(rows / seconds),
        "driver_peak_rss_mib": round(memory.driver_peak / 2**20),
        "worker_peak_rss_mib": round(max(memory.worker_peaks.values(), default=0) / 2**20),
        "workers_seen": len(memory.worker_peaks),
        "total_peak_rss_mib": round(memory.total_peak / 2**20),
        "view_rows": result.rows,
        "funnel": result.funnel,
        "entries_matched": int((counts > 0).sum()),
        "head_entries": int((counts > t).sum()),
        "largest_count_before": int(counts.max()),
        "largest_count_after": int(kept.max()),
    }
    print(json.dumps(report, indent=2))
    if not arguments.keep:
        shutil.rmtree(WORK, ignore_errors=True)
    return report


if __name__ == "__main__":
    main()
    sys.exit(0)
