"""Streaming a dataset from S3 (moto on 127.0.0.1): the same samples and bytes as from the local
folder, across ranks and forked DataLoader workers; ranges read coalesced and retried; the
caller's ``storage_options`` reach every worker; a replaced shard is re-indexed."""

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from s3_server import free_port

import mmdata
from mmdata import layout
from mmdata.storage import StorageError, location
from mmdata.stream.source import open_source


def upload(local_root, url) -> None:
    """Every file of a local dataset folder (not the writers' lock folder) to ``url``."""
    target = location(url)
    for path in sorted(local_root.rglob("*")):
        if path.is_file() and ".locks" not in path.parts:
            (target / path.relative_to(local_root).as_posix()).write_bytes(path.read_bytes())


def strip_offsets(root) -> None:
    """Drop the byte index from the shard metadata, as in img2dataset's output."""
    for shard in layout.complete_shards(root):
        path = layout.parquet_path(root, shard)
        pq.write_table(pq.read_table(path).drop_columns(["tar_offset", "tar_size"]), path)


def write_view(root, keys, name="third"):
    (root / "views").mkdir(exist_ok=True)
    pq.write_table(pa.table({"key": keys}), root / "views" / f"{name}.parquet")


def collate_items(items):
    return [(item["key"], item["image"], item["caption"]) for item in items]


def streamed(root, view, **options):
    """What each of 2 ranks reads through a DataLoader of 2 workers: ``[(key, image, caption)]``."""
    per_rank = []
    for rank in range(2):
        dataset = mmdata.stream(root, view=view, rank=rank, world_size=2, decode=None, seed=3, **options)
        loader = dataset.loader(batch_size=2, num_workers=2, collate_fn=collate_items)
        per_rank.append([item for batch in loader for item in batch])
    return per_rank


def test_s3_stream_matches_the_local_one_across_ranks_and_workers(s3_bucket, dataset_factory):
    root, keys = dataset_factory([7, 5, 9], failures_every=5)
    chosen = keys[::3]
    write_view(root, chosen)
    url = f"{s3_bucket}/ds"
    upload(root, url)
    for view, expected in ((None, keys), ("third", chosen)):
        remote = streamed(url, view)
        assert sorted(key for rank in remote for key, _, _ in rank) == sorted(expected), "every key exactly once"
        assert remote == streamed(root, view), "the same order, images and captions as the local folder"
    # The forked workers left this process's connections to the store working.
    (location(url) / "after.txt").write_text("still reachable")
    assert (location(url) / "after.txt").read_text() == "still reachable"


def test_s3_view_reads_coalesced_ranges_and_retries(s3, s3_bucket, dataset_factory):
    root, keys = dataset_factory([6, 9, 4])
    chosen = keys[::3]
    write_view(root, chosen)
    url = f"{s3_bucket}/ds"
    upload(root, url)
    local_items = list(mmdata.stream(root, view="third", shuffle=False, decode=None))
    dataset = mmdata.stream(url, view="third", shuffle=False, decode=None)
    logged, faults = len(s3.proxy.log), s3.proxy.faults
    s3.proxy.fail_next(2, matching=".tar")  # two transient 503s on range reads
    items = list(dataset)
    assert [item["key"] for item in items] == chosen
    assert items == local_items
    assert s3.proxy.faults == faults + 2
    tar_gets = [path for method, path in s3.proxy.log[logged:] if method == "GET" and ".tar" in path]
    # small samples a few KiB apart: one range read per shard, plus the two answered 503 and retried
    assert len(tar_gets) == 3 + 2


def test_storage_options_reach_the_store_and_the_workers(s3, s3_bucket, dataset_factory, monkeypatch):
    root, keys = dataset_factory([5, 4])
    url = f"{s3_bucket}/ds"
    upload(root, url)
    direct = {"endpoint_url": s3.direct_endpoint, "key": "testing", "secret": "testing"}
    through_proxy = s3.proxy.requests
    dataset = mmdata.stream(url, decode=None, storage_options=direct)
    loader = dataset.loader(batch_size=2, num_workers=2, collate_fn=lambda items: [i["key"] for i in items])
    assert sorted(key for batch in loader for key in batch) == sorted(keys)
    assert s3.proxy.requests == through_proxy, "the explicit endpoint (not AWS_ENDPOINT_URL) was used everywhere"

    monkeypatch.setenv("MMDATA_STORAGE_RETRY_SECONDS", "0")
    nowhere = {"endpoint_url": f"http://127.0.0.1:{free_port()}"}
    with pytest.raises(StorageError, match=s3_bucket.removeprefix("s3://")):
        mmdata.stream(url, storage_options=nowhere)


def test_storage_options_are_refused_for_http():
    with pytest.raises(ValueError, match="storage_options do not apply"):
        mmdata.stream("http://127.0.0.1:1/ds", storage_options={"anon": True})


def test_a_replaced_shard_is_indexed_again(s3_bucket, dataset_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDATA_CACHE", str(tmp_path / "cache"))
    first, first_keys = dataset_factory([4, 3])
    other, other_keys = dataset_factory([2])
    strip_offsets(first)
    strip_offsets(other)
    url = f"{s3_bucket}/ds"
    upload(first, url)
    source = open_source(url)
    token = source.cache_token("00000.tar")
    assert [item["key"] for item in mmdata.stream(url, shuffle=False, decode=None)] == first_keys

    for name in ("00000.tar", "00000.parquet"):
        (location(url) / name).write_bytes((other / name).read_bytes())
    assert source.cache_token("00000.tar") != token
    streamed_keys = [item["key"] for item in mmdata.stream(url, shuffle=False, decode=None)]
    assert streamed_keys == other_keys + first_keys[4:]
    assert len(list((tmp_path / "cache" / "member-index").glob("*.parquet"))) == 3
