"""Downloading into s3:// (moto on 127.0.0.1): the same shards as into a local folder, the CLI's
--storage-options, a clear error for a missing bucket, and a job killed mid-run then resumed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid

import pytest
from download_checks import check_dataset, write_input
from s3_checks import assert_committed_shards_whole, assert_only_data, mirror, store_files, wait_for
from session_kill import kill_session

import mmdata
from mmdata import layout
from mmdata.cli import main
from mmdata.storage import location, read_parquet

SHARD_SIZE = 4
NETWORK = dict(allow_network=["127.0.0.1/32"], timeout=10.0, retries=0, image_size=32, threads=2)
# Stats fields that time the run, and those only the object-store commit adds.
_RUN_FIELDS = {"duration", "start_time", "end_time", "attempt", "generation", "objects"}


def mixed_rows(server, count: int = 9) -> list[dict]:
    run = uuid.uuid4().hex[:8]
    rows = [{"url": server.url(f"/img/s3dl-{run}-{index}.jpg?w=48&h=36"), "caption": f"caption {index}"}
            for index in range(count)]
    if count > 6:
        rows[2]["url"] = server.url("/status/404")
        rows[5]["url"] = server.url(f"/img/s3dl-{run}-gif.gif?w=40&h=40&mode=P")
        rows[6]["caption"] = None
    return rows


def shard_contents(root_url: str) -> dict[str, dict]:
    """Per shard: metadata rows, tar bytes and stats without the run's timings."""
    root = location(root_url)
    contents = {}
    for name in layout.complete_shards(root):
        stats = layout.stats_path(root, name).read_json()
        contents[name] = {"rows": read_parquet(layout.parquet_path(root, name)).to_pylist(),
                          "tar": layout.tar_path(root, name).read_bytes(),
                          "stats": {key: value for key, value in stats.items() if key not in _RUN_FIELDS}}
    return contents


def test_s3_and_local_downloads_write_the_same_shards(s3_bucket, http_server, tmp_path):
    rows = mixed_rows(http_server)
    source = write_input(rows, tmp_path, "parquet")
    local = tmp_path / "local"
    remote = f"{s3_bucket}/ds"
    local_manifest = mmdata.download(input=str(source), output_dir=str(local), shard_size=SHARD_SIZE,
                                     executor="inline", **NETWORK)
    remote_manifest = mmdata.download(input=str(source), output_dir=remote, shard_size=SHARD_SIZE,
                                      executor="processes", workers=2, **NETWORK)
    assert remote_manifest["shards"] == local_manifest["shards"]
    assert remote_manifest["totals"] == local_manifest["totals"]
    assert remote_manifest["config_fingerprint"] == local_manifest["config_fingerprint"]
    assert remote_manifest["options"]["output_dir"] == remote
    assert (location(remote) / "manifest.json").read_json()["shards"] == local_manifest["shards"]
    expected, found = shard_contents(str(local)), shard_contents(remote)
    assert sorted(found) == sorted(expected) == ["00000", "00001", "00002"]
    for name in expected:
        assert found[name]["rows"] == expected[name]["rows"], name
        assert found[name]["tar"] == expected[name]["tar"], name
        assert found[name]["stats"] == expected[name]["stats"], name
    assert assert_only_data(remote) == ["00000", "00001", "00002"]
    assert assert_committed_shards_whole(remote) == ["00000", "00001", "00002"]
    by_key, _ = check_dataset(mirror(remote, tmp_path / "mirror"), rows, SHARD_SIZE)
    assert by_key[layout.sample_key(0, 2, SHARD_SIZE)]["status"] != "success"
    # A re-run of a complete job reads its manifest and writes nothing.
    before = store_files(remote)
    assert mmdata.download(input=str(source), output_dir=remote, shard_size=SHARD_SIZE, executor="inline",
                           **NETWORK)["shards"] == local_manifest["shards"]
    assert store_files(remote) == before


def test_the_cli_passes_storage_options_to_the_store(s3, s3_bucket, http_server, tmp_path, monkeypatch, capsys):
    """The endpoint and keys come only from --storage-options: the environment points nowhere."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing answers there
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "wrong")
    monkeypatch.setenv("MMDATA_STORAGE_RETRY_SECONDS", "2")
    rows = mixed_rows(http_server, 5)
    source = write_input(rows, tmp_path, "parquet")
    output = f"{s3_bucket}/cli"
    options = {"endpoint_url": s3.endpoint, "key": "testing", "secret": "testing"}
    requests_before = s3.proxy.requests
    code = main(["download", str(source), "--output", output, "--allow-network", "127.0.0.1/32", "--shard-size", "4",
                 "--image-size", "32", "--executor", "inline", "--storage-options", json.dumps(options)])
    assert code == 0, capsys.readouterr().err
    assert "success" in capsys.readouterr().out
    assert s3.proxy.requests > requests_before, "the store named in --storage-options was used"
    fs = s3.filesystem()
    manifest = json.loads(fs.cat_file(f"{output[len('s3://'):]}/manifest.json"))
    assert [shard["count"] for shard in manifest["shards"]] == [4, 1]
    assert "storage_options" not in json.dumps(manifest["options"]), "storage options (secrets) stay out"
    assert "testing" not in json.dumps(manifest)


def test_a_missing_bucket_fails_with_a_clear_error(s3, http_server, tmp_path, capsys):
    rows = mixed_rows(http_server, 3)
    source = write_input(rows, tmp_path, "parquet")
    bucket = f"no-such-bucket-{uuid.uuid4().hex[:8]}"
    started = time.monotonic()
    code = main(["download", str(source), "--output", f"s3://{bucket}/ds", "--allow-network", "127.0.0.1/32",
                 "--image-size", "32", "--executor", "inline"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "does not exist" in err and bucket in err, f"the error names the missing bucket: {err!r}"
    assert "Traceback" not in err
    assert time.monotonic() - started < 20, "a missing bucket is not a store failure to retry for long"
    assert bucket not in s3.filesystem().ls(""), "no bucket was created on the way"


def test_a_download_killed_mid_job_resumes_to_every_row_once(s3_bucket, http_server, tmp_path):
    run = uuid.uuid4().hex[:8]
    rows = [{"url": http_server.url(f"/img/s3kill-{run}-{index}.jpg?w=40&h=30&delay=0.15"), "caption": f"c{index}"}
            for index in range(40)]
    source = write_input(rows, tmp_path, "parquet")
    output = f"{s3_bucket}/ds"
    root = location(output)
    command = [sys.executable, "-m", "mmdata", "download", str(source), "--output", output, "--allow-network",
               "127.0.0.1/32", "--shard-size", "4", "--image-size", "32", "--threads", "2", "--timeout", "10",
               "--retries", "0", "--executor", "processes", "--workers", "2"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(layout.complete_shards(root)) >= 1, timeout=120, what="a committed shard",
                 process=process)
    finally:
        kill_session(process)
    committed_at_kill = layout.complete_shards(root)
    assert 1 <= len(committed_at_kill) < 10, committed_at_kill
    assert not (root / "manifest.json").exists()
    assert assert_committed_shards_whole(output) == committed_at_kill, "what is committed is whole"
    kept = {name: layout.stats_path(root, name).read_json() for name in committed_at_kill}

    manifest = mmdata.download(input=str(source), output_dir=output, shard_size=4, executor="processes", workers=2,
                               **{**NETWORK, "timeout": 10.0})
    assert manifest["totals"]["successes"] == 40 and len(manifest["shards"]) == 10
    for name, stats in kept.items():
        assert layout.stats_path(root, name).read_json() == stats, f"{name} was committed before and kept"
    assert assert_only_data(output) == [layout.shard_name(shard) for shard in range(10)]
    assert len(assert_committed_shards_whole(output)) == 10
    check_dataset(mirror(output, tmp_path / "mirror"), rows, 4)


@pytest.mark.parametrize("relative", ["ds", "deep/er/ds"])
def test_output_urls_are_written_back_as_given(s3_bucket, http_server, tmp_path, relative):
    rows = mixed_rows(http_server, 2)
    source = write_input(rows, tmp_path, "parquet")
    output = f"{s3_bucket}/{relative}/"
    manifest = mmdata.download(input=str(source), output_dir=output, shard_size=4, executor="inline", **NETWORK)
    assert manifest["options"]["output_dir"] == output.rstrip("/")
    assert sorted(store_files(output.rstrip("/"))) == ["00000.parquet", "00000.tar", "00000_stats.json",
                                                       "manifest.json"]
