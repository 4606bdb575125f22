"""Faults during ``mmdata download``: SIGKILL at random points, a crash between a shard's tar rename
and its stats write, and a full disk. After each, a re-run of the same command must leave every
input row exactly once, readable tars, and no temporary file."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from download_checks import check_dataset, write_input
from processes import ENVIRONMENT, download_command, start, wait_for
from session_kill import kill_session

import mmdata
from mmdata import layout
from mmdata.shards import iter_samples
from mmdata.storage.location import TEMP_SUFFIX

CRASH_HOOK = Path(__file__).resolve().parent / "crash_hook"


def image_rows(server, count: int, *, delay: float = 0.0, failing_every: int = 0, size: int = 64) -> list[dict]:
    run = uuid.uuid4().hex[:8]
    rows = []
    for index in range(count):
        if failing_every and index % failing_every == failing_every - 1:
            path = f"/missing/{run}-{index}"
        else:
            path = f"/img/fault-{run}-{index}.jpg?w={size}&h={size}" + (f"&delay={delay:g}" if delay else "")
        rows.append({"url": server.url(path), "caption": f"fault test {index} ünïcode"})
    return rows


def temporaries(root: Path) -> list[str]:
    return sorted(path.name for path in root.iterdir() if path.name.endswith(TEMP_SUFFIX)) if root.is_dir() else []


def check_complete_shards(root: Path) -> int:
    """The invariant that holds at every instant: a shard with stats has a readable tar holding
    exactly its successes, and a parquet with exactly its rows. Returns the complete shard count."""
    names = layout.complete_shards(root)
    for name in names:
        stats = json.loads(layout.stats_path(root, name).read_text())
        metadata = pq.read_table(layout.parquet_path(root, name)).to_pylist()
        assert len(metadata) == stats["count"], name
        stored = [key for key, _ in iter_samples(layout.tar_path(root, name))]
        assert stored == [row["key"] for row in metadata if row["status"] == "success"], name
        assert len(stored) == len(set(stored)) == stats["successes"], name
    return len(names)


def kill_point(rng: random.Random, output: Path, complete_before: int):
    """A random moment to kill the run at, as a condition to poll, and its description."""
    started = time.monotonic()
    choice = rng.choice(("shards", "mid-shard", "elapsed"))
    if choice == "shards":  # right after k more shards complete
        more = rng.randint(1, 3)
        return (lambda: len(layout.complete_shards(output)) >= complete_before + more), f"+{more} shards"
    if choice == "mid-shard":  # while a shard's temporary tar is being written, a random time in
        delay, seen, stale = rng.uniform(0.0, 1.0), {}, set(temporaries(output))  # the last run's are removed at start

        def writing() -> bool:
            now = time.monotonic()
            for name in set(temporaries(output)) - stale:
                if ".tar." in name:
                    seen.setdefault(name, now)
            return any(now - first >= delay for first in seen.values())

        return writing, f"mid-shard +{delay:.2f} s"
    seconds = rng.uniform(0.5, 15.0)  # any time, Ray's start-up included
    return (lambda: time.monotonic() - started >= seconds), f"{seconds:.1f} s"


@pytest.mark.slow
def test_ten_sigkills_at_random_points_then_a_rerun_keeps_every_row_once(hardening_server, tmp_path):
    rng = random.Random(7)
    rows = image_rows(hardening_server, 240, delay=0.05, failing_every=11)
    source = write_input(rows, tmp_path, "parquet")
    output = tmp_path / "out"
    command = download_command(source, output, "--shard-size", "8", "--workers", "2", "--threads", "4",
                               "--retries", "0", "--image-size", "32")
    kills = []
    for attempt in range(10):
        before = len(layout.complete_shards(output))
        condition, point = kill_point(rng, output, before)
        process = start(command)
        try:
            reached = wait_for(condition, process)
        finally:
            kill_session(process)
        assert reached, f"run {attempt} ended (exit {process.returncode}) before {point}: too few shards for ten kills"
        complete = check_complete_shards(output)
        assert not layout.manifest_path(output).exists()
        kills.append((point, before, complete, len(temporaries(output))))
    assert len(layout.complete_shards(output)) < 30, f"the kills left nothing to resume: {kills}"

    final = subprocess.run(command, env=ENVIRONMENT, capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr[-3000:]
    by_key, _ = check_dataset(output, rows, 8)
    assert check_complete_shards(output) == 30 and layout.manifest_path(output).exists()
    assert sum(row["status"] == "success" for row in by_key.values()) == sum(1 for i in range(240) if i % 11 != 10)
    assert temporaries(output) == []
    print("kill points (condition, complete before, complete after, temporaries):", kills)


@pytest.mark.slow
def test_crash_between_the_tar_rename_and_the_stats_write_leaves_no_duplicate(hardening_server, tmp_path):
    """The whole job is SIGKILLed at the instant a worker renames shard 00001's stats into place
    (injected through an audit hook in every process of the run; see crash_hook/sitecustomize.py)."""
    rows = image_rows(hardening_server, 30, failing_every=7)
    source = write_input(rows, tmp_path, "parquet")
    output = tmp_path / "out"
    marker = tmp_path / "crashed"
    command = download_command(source, output, "--shard-size", "10", "--workers", "1", "--threads", "4",
                               "--retries", "0", "--image-size", "32")
    environment = {**ENVIRONMENT,
                   "PYTHONPATH": os.pathsep.join(filter(None, [str(CRASH_HOOK), os.environ.get("PYTHONPATH")])),
                   "MMDATA_TEST_CRASH_AT": str(layout.stats_path(output, 1)), "MMDATA_TEST_CRASH_MARKER": str(marker)}
    process = start(command, environment)
    try:
        process.wait(timeout=300)
    finally:
        kill_session(process)
    assert marker.exists(), "the crash point was never reached"
    assert process.returncode == -9
    # Shard 1's tar and parquet are in place, its stats are not: incomplete, to be redone.
    assert layout.tar_path(output, 1).exists() and layout.parquet_path(output, 1).exists()
    assert not layout.stats_path(output, 1).exists() and "00001" not in layout.complete_shards(output)
    check_complete_shards(output)

    rerun = subprocess.run(command, env=ENVIRONMENT, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    by_key, samples = check_dataset(output, rows, 10)  # each key once in the metadata and in the tars
    assert len(samples) == sum(1 for i in range(30) if i % 7 != 6)
    assert temporaries(output) == []


@contextlib.contextmanager
def small_tmpfs(folder: Path, size: str):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8)")
    folder.mkdir(parents=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], check=False)


def test_disk_full_mid_shard_is_a_clear_error_and_a_rerun_with_space_completes(hardening_server, ray_local, tmp_path):
    rows = image_rows(hardening_server, 60, size=256)
    source = write_input(rows, tmp_path, "parquet")
    options = dict(input=source, shard_size=10, allow_network=["127.0.0.1/32"], timeout=5.0, retries=0,
                   image_size=256, encode_format="png", workers=2, threads=4)
    with small_tmpfs(tmp_path / "small", "1m") as small:
        output = small / "out"
        with pytest.raises(Exception, match="No space left on device") as caught:
            mmdata.download(output_dir=output, **options)
        message = str(caught.value)
        assert temporaries(output) == [], "a failed write left temporaries"
        complete = check_complete_shards(output)
        assert complete < 6 and not layout.manifest_path(output).exists()

        subprocess.run(["mount", "-o", "remount,size=64m", str(small)], check=True)
        manifest = mmdata.download(output_dir=output, **options)
        by_key, _ = check_dataset(output, rows, 10)
        assert manifest["totals"]["successes"] == 60 == sum(row["status"] == "success" for row in by_key.values())
        assert temporaries(output) == []
    print("disk-full error:", message.splitlines()[-1][:300], "| complete shards before the re-run:", complete)
