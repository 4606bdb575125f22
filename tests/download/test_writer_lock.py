"""One writer per shard: a shard's re-run waits for a live earlier writer instead of racing it."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.download.config import DownloadConfig
from mmdata.download.worker import download_shard
from mmdata.shards import iter_samples
from mmdata.storage.locks import _locked, remove_unheld_temporaries

OPTIONS = dict(allow_network=["127.0.0.1/32"], timeout=5.0, retries=0, image_size=32, threads=4)

# Holds shard `shard`'s writer lock, leaves a temporary of it, says so, then waits to be killed.
_HOLDER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from mmdata.storage.locks import hold_shard
    root, shard = sys.argv[1], int(sys.argv[2])
    with hold_shard(Path(root), f"{shard:05d}"):
        Path(root, f".{shard:05d}.tar.deadbeef0000.tmp").write_bytes(b"half a tar")
        print("holding", flush=True)
        sys.stdin.read()
""")


def _hold(root, shard: int) -> subprocess.Popen:
    holder = subprocess.Popen([sys.executable, "-c", _HOLDER, str(root), str(shard)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "holding"
    return holder


def _rows(http_server, tag: str, count: int) -> pa.Table:
    urls = [http_server.url(f"/img/lock-{tag}-{index}.jpg?w=40&h=40&delay=0.3") for index in range(count)]
    return pa.table({"url": urls, "caption": [f"c{index}" for index in range(count)]})


def test_rerun_waits_for_a_live_writer_and_keeps_its_shard(http_server, tmp_path):
    """Two writers of one shard (a worker of a killed run still going, or two runs of one command):
    the second waits for the first and returns its stats; nothing is fetched twice or interleaved."""
    tag = uuid.uuid4().hex[:8]
    config = DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "out", shard_size=10, **OPTIONS)
    rows = _rows(http_server, tag, 6)
    first = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import json, sys, pyarrow as pa
            from mmdata.download.config import DownloadConfig
            from mmdata.download.worker import download_shard
            options = json.loads(sys.argv[1])
            config = DownloadConfig.from_options(input=sys.argv[2], output_dir=sys.argv[3], shard_size=10, **options)
            print(json.dumps(download_shard(config, 0, pa.table(json.loads(sys.argv[4])))))
        """), json.dumps(OPTIONS), str(tmp_path), str(tmp_path / "out"), json.dumps(rows.to_pydict())],
        stdout=subprocess.PIPE, text=True,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and first.poll() is None:  # until the first writer holds the lock
        with _locked(tmp_path / "out", "00000", blocking=False) as free:
            if not free:
                break
    second = download_shard(config, 0, rows)
    first_stats = json.loads(first.communicate(timeout=60)[0].strip().splitlines()[-1])

    assert first.returncode == 0
    assert second == first_stats
    for index in range(6):
        assert len(http_server.hits(f"/img/lock-{tag}-{index}.jpg")) == 1
    table = pq.read_table(layout.parquet_path(tmp_path / "out", 0))
    assert [key for key, _ in iter_samples(layout.tar_path(tmp_path / "out", 0))] == table["key"].to_pylist()


def test_writer_killed_mid_shard_leaves_it_to_the_next(http_server, tmp_path):
    root = tmp_path / "out"
    holder = _hold(root, 0)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    config = DownloadConfig.from_options(input=tmp_path, output_dir=root, shard_size=10, **OPTIONS)

    stats = download_shard(config, 0, _rows(http_server, uuid.uuid4().hex[:8], 3))

    assert stats["successes"] == 3
    assert sorted(path.name for path in root.iterdir()) == [".locks", "00000.parquet", "00000.tar", "00000_stats.json"]


def test_startup_cleanup_spares_the_temporaries_of_live_writers(tmp_path):
    root = tmp_path / "out"
    holder = _hold(root, 1)
    try:
        (root / ".00002.tar.0123456789ab.tmp").write_bytes(b"orphan")
        (root / ".00002_stats.json.0123456789ab.tmp").write_bytes(b"orphan")
        (root / ".manifest.json.0123456789ab.tmp").write_bytes(b"orphan")

        assert remove_unheld_temporaries(root) == 3

        assert sorted(path.name for path in root.iterdir() if path.is_file()) == [".00001.tar.deadbeef0000.tmp"]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert remove_unheld_temporaries(root) == 1  # its writer is gone now
