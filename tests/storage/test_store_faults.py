"""The store failing under a running download (a fault proxy before moto, tests/s3_server.py): bursts
of 503/500 answers are retried, a short outage is ridden out, and an outage longer than
MMDATA_STORAGE_RETRY_SECONDS fails the job with a StorageError naming the object, leaving every
committed shard whole."""

from __future__ import annotations

import threading
import uuid

import pytest
from download_checks import check_dataset, write_input
from s3_checks import assert_committed_shards_whole, assert_only_data, mirror, wait_for

import mmdata
from mmdata import layout
from mmdata.storage import StorageError, location

pytestmark = pytest.mark.slow

SHARD_SIZE = 4
ROWS = 40


def job(server, tmp_path, output: str) -> tuple[list[dict], dict]:
    run = uuid.uuid4().hex[:8]
    rows = [{"url": server.url(f"/img/faults-{run}-{index}.jpg?w=40&h=30&delay=0.05"), "caption": f"c{index}"}
            for index in range(ROWS)]
    options = dict(input=str(write_input(rows, tmp_path, "parquet")), output_dir=output, shard_size=SHARD_SIZE,
                   image_size=32, timeout=10.0, retries=0, threads=2, allow_network=["127.0.0.1/32"],
                   executor="inline")
    return rows, options


def in_background(function, **options):
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = function(**options)
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def join(thread: threading.Thread, timeout: float = 240) -> None:
    thread.join(timeout)
    assert not thread.is_alive(), f"the job still runs after {timeout} s"


def check_complete(output: str, rows: list[dict], tmp_path) -> None:
    assert assert_only_data(output) == [layout.shard_name(shard) for shard in range(ROWS // SHARD_SIZE)]
    assert len(assert_committed_shards_whole(output)) == ROWS // SHARD_SIZE
    check_dataset(mirror(output, tmp_path / f"mirror-{uuid.uuid4().hex[:6]}"), rows, SHARD_SIZE)


@pytest.mark.parametrize("status", [503, 500])
def test_a_burst_of_errors_is_retried_and_the_job_completes(s3, s3_bucket, http_server, tmp_path, status):
    output = f"{s3_bucket}/ds"
    rows, options = job(http_server, tmp_path, output)
    root = location(output)
    thread, outcome = in_background(mmdata.download, **options)
    wait_for(lambda: len(layout.complete_shards(root)) >= 1 or not thread.is_alive(), what="a committed shard")
    s3.proxy.fail_next(8, status)
    join(thread)
    assert "error" not in outcome, repr(outcome.get("error"))
    assert s3.proxy.faults >= 8 and s3.proxy.pending_faults == 0, "every injected error was answered"
    assert outcome["result"]["totals"]["successes"] == ROWS
    check_complete(output, rows, tmp_path)


def test_a_store_down_for_a_few_seconds_is_ridden_out(s3, s3_bucket, http_server, tmp_path):
    output = f"{s3_bucket}/ds"
    rows, options = job(http_server, tmp_path, output)
    root = location(output)
    thread, outcome = in_background(mmdata.download, **options)
    wait_for(lambda: len(layout.complete_shards(root)) >= 1 or not thread.is_alive(), what="a committed shard")
    refused_before = s3.proxy.refused
    s3.proxy.stop()
    try:
        # down until the job's requests have failed a few times (each retried after a backoff)
        wait_for(lambda: s3.proxy.refused >= refused_before + 3 or not thread.is_alive(), timeout=60,
                 what="requests failing against the stopped store")
    finally:
        s3.proxy.start()
    assert thread.is_alive(), f"the job ended while the store was down: {outcome!r}"
    join(thread)
    assert "error" not in outcome, repr(outcome.get("error"))
    assert outcome["result"]["totals"]["successes"] == ROWS
    check_complete(output, rows, tmp_path)


def test_a_store_down_for_longer_than_the_retries_fails_cleanly(s3, s3_bucket, http_server, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDATA_STORAGE_RETRY_SECONDS", "2")
    output = f"{s3_bucket}/ds"
    rows, options = job(http_server, tmp_path, output)
    root = location(output)
    thread, outcome = in_background(mmdata.download, **options)
    wait_for(lambda: len(layout.complete_shards(root)) >= 1 or not thread.is_alive(), what="a committed shard")
    s3.proxy.stop()
    try:
        join(thread, timeout=180)
    finally:
        s3.proxy.start()
    error = outcome.get("error")
    assert isinstance(error, StorageError), f"expected a StorageError, got {error!r}"
    message = str(error)
    assert output in message and "gave up after retries" in message, message
    assert s3.proxy.refused >= 1
    assert not (root / "manifest.json").exists()
    committed = assert_committed_shards_whole(output)
    assert 1 <= len(committed) < ROWS // SHARD_SIZE, committed

    # The store is back: the same command finishes the job, every row once.
    monkeypatch.setenv("MMDATA_STORAGE_RETRY_SECONDS", "30")
    manifest = mmdata.download(**options)
    assert manifest["totals"]["successes"] == ROWS
    check_complete(output, rows, tmp_path)


def test_a_store_that_is_down_fails_with_a_storage_error_naming_the_object(s3, s3_bucket, monkeypatch):
    target = location(f"{s3_bucket}/ds/00000_stats.json")
    target.write_json({"shard": "00000"})
    monkeypatch.setenv("MMDATA_STORAGE_RETRY_SECONDS", "1")
    s3.proxy.stop()
    try:
        with pytest.raises(StorageError, match=r"read s3://test-\w+/ds/00000_stats.json failed"):
            target.read_bytes()
        assert s3.proxy.refused >= 1
    finally:
        s3.proxy.start()
    assert target.read_json() == {"shard": "00000"}
