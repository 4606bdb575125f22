"""Crash safety: SIGKILL mid-run then re-run, resume after a lost shard, and --retry-failed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from download_checks import check_dataset, read_metadata, tar_samples, write_input
from session_kill import kill_session

import mmdata
from mmdata import layout
from mmdata.storage.location import TEMP_SUFFIX

OPTIONS = dict(allow_network=["127.0.0.1/32"], timeout=2.0, retries=0, image_size=32, workers=2, threads=4)


def file_states(root: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, size) of every file in a dataset folder."""
    return {path.name: (path.stat().st_mtime_ns, path.stat().st_size) for path in root.iterdir() if path.is_file()}


def wait_for(condition, process: subprocess.Popen, log: Path, timeout: float = 120.0) -> None:
    """Poll ``condition`` until it holds; fail if the process ends first or the time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if process.poll() is not None:
            pytest.fail(f"the download ended (exit {process.returncode}) before the condition held:\n"
                        f"{log.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            pytest.fail("the condition did not hold in time")
        try:
            process.wait(timeout=0.05)  # returns early if the process ends: then the check above fails
        except subprocess.TimeoutExpired:
            pass


@pytest.mark.parametrize("executor", ["ray", "processes"])
def test_sigkill_mid_run_then_rerun_gives_every_row_once(http_server, tmp_path, executor):
    run = uuid.uuid4().hex[:8]
    rows = []
    for index in range(60):
        # Slowish answers so the kill lands while shards are being written; a few failures too.
        path = f"/missing/{run}-{index}" if index % 9 == 4 else f"/img/kill-{run}-{index}.jpg?w=64&h=48&delay=0.25"
        rows.append({"url": http_server.url(path), "caption": f"kill test {index}"})
    source = write_input(rows, tmp_path, "parquet")
    output = tmp_path / "out"
    command = [
        sys.executable, "-m", "mmdata", "download", str(source), "--output", str(output), "--shard-size", "10",
        "--workers", "2", "--threads", "4", "--retries", "0", "--image-size", "32", "--allow-network", "127.0.0.1/32",
        "--executor", executor,
    ]
    environment = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "HF_HUB_OFFLINE": "1"}

    log = tmp_path / "first-run.log"
    with open(log, "w") as log_file:
        first = subprocess.Popen(command, env=environment, start_new_session=True, stdout=log_file, stderr=log_file)
    try:
        # Kill once a shard is complete and another is half-written (its temporary tar exists).
        wait_for(lambda: layout.complete_shards(output) and _temporaries(output), first, log)
    finally:
        kill_session(first)
    complete_before = layout.complete_shards(output)
    assert 1 <= len(complete_before) < 6 and not layout.manifest_path(output).exists()
    states_before = file_states(output)

    second = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]

    by_key, _ = check_dataset(output, rows, 10)
    assert layout.manifest_path(output).exists()
    assert sum(row["status"] == "success" for row in by_key.values()) == sum(1 for i in range(60) if i % 9 != 4)
    states_after = file_states(output)
    for name in complete_before:  # complete shards were skipped, not redone
        for path in (layout.tar_path(output, name), layout.parquet_path(output, name), layout.stats_path(output, name)):
            assert states_after[path.name] == states_before[path.name]
    assert "60 samples in 6 shards" in second.stdout


def test_rerun_redoes_only_incomplete_shards(http_server, ray_local, tmp_path):
    run = uuid.uuid4().hex[:8]
    rows = [
        {"url": http_server.url(f"/img/resume-{run}-{index}.png?w=40&h=40"), "caption": f"r{index}"}
        for index in range(12)
    ]
    source = write_input(rows, tmp_path, "csv")
    output = tmp_path / "out"
    mmdata.download(input=source, output_dir=output, shard_size=4, **OPTIONS)
    # A crash after shard 1's tar was renamed but before its stats: incomplete; plus a stray temporary.
    layout.stats_path(output, 1).remove()
    layout.manifest_path(output).remove()
    stray = output / f".00001.parquet.0123456789ab{TEMP_SUFFIX}"
    stray.write_bytes(b"partial")
    before = file_states(output)

    manifest = mmdata.download(input=source, output_dir=output, shard_size=4, **OPTIONS)

    check_dataset(output, rows, 4)
    after = file_states(output)
    assert not stray.exists()
    assert after["00001_stats.json"] and after["00001.tar"] != before["00001.tar"]
    for name in ("00000.tar", "00000.parquet", "00000_stats.json", "00002.tar", "00002_stats.json"):
        assert after[name] == before[name], name
    assert manifest["totals"]["successes"] == 12
    assert manifest["last_run"]["samples"] == 4


def test_rerun_with_other_shard_size_is_refused(http_server, ray_local, tmp_path):
    rows = [{"url": http_server.url(f"/img/size-{index}.jpg"), "caption": "c"} for index in range(4)]
    source = write_input(rows, tmp_path, "parquet")
    mmdata.download(input=source, output_dir=tmp_path / "out", shard_size=2, **OPTIONS)
    layout.manifest_path(tmp_path / "out").remove()
    with pytest.raises(ValueError, match="other settings"):
        mmdata.download(input=source, output_dir=tmp_path / "out", shard_size=3, **OPTIONS)


def test_retry_failed_rewrites_only_shards_with_transient_failures(http_server, ray_local, tmp_path):
    run = uuid.uuid4().hex[:8]
    good = lambda index: http_server.url(f"/img/retry-{run}-{index}.jpg?w=50&h=50")  # noqa: E731
    rows = [{"url": good(index), "caption": f"g{index}"} for index in range(4)]  # shard 0: all fine
    rows += [
        {"url": good(4), "caption": "g4"},
        {"url": http_server.url(f"/flaky/{run}-a?fail=1"), "caption": "flaky 503"},
        {"url": http_server.url(f"/missing/{run}"), "caption": "a 404 is not transient"},
        {"url": good(7), "caption": "g7"},
    ]
    rows += [
        {"url": http_server.url(f"/ratelimit/{run}?retry_after=0&fail=1"), "caption": "429 once"},
        {"url": good(9), "caption": "g9"},
    ]
    source = write_input(rows, tmp_path, "parquet")
    output = tmp_path / "out"
    first = mmdata.download(input=source, output_dir=output, shard_size=4, **OPTIONS)
    assert first["totals"]["successes"] == 7
    before = file_states(output)
    old_members = tar_samples(output)

    manifest = mmdata.download(input=source, output_dir=output, shard_size=4, retry_failed=True, **OPTIONS)

    by_key, samples = check_dataset(output, rows, 4)
    after = file_states(output)
    for name in ("00000.tar", "00000.parquet", "00000_stats.json"):
        assert after[name] == before[name], f"{name} was rewritten though shard 0 had no failure"
    assert after["00001.tar"] != before["00001.tar"] and after["00002.tar"] != before["00002.tar"]
    statuses = {row["caption"]: (row["status"], row["error_class"]) for row in by_key.values()}
    assert statuses["flaky 503"] == ("success", None)
    assert statuses["429 once"] == ("success", None)
    assert statuses["a 404 is not transient"] == ("failed_to_download", "http_404")
    assert len(http_server.hits(f"/missing/{run}")) == 1, "a permanent failure was fetched again"
    for key, members in old_members.items():  # earlier successes kept byte for byte
        assert samples[key] == members
    assert manifest["totals"]["successes"] == 9
    assert json.loads(layout.stats_path(output, 1).read_text())["retried"] == 1
    assert read_metadata(output).num_rows == len(rows)


def _temporaries(root: Path) -> list[Path]:
    return [path for path in root.iterdir() if path.name.endswith(TEMP_SUFFIX)] if root.is_dir() else []
