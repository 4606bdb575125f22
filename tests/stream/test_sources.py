"""Shards without byte offsets in their metadata (img2dataset's) get a member index by scanning the
tar once (cached); any fsspec filesystem is a source."""

import pyarrow as pa
import pyarrow.parquet as pq

import mmdata
from mmdata import layout
from mmdata.stream.index import scan_members


def strip_offsets(root):
    for shard in layout.complete_shards(root):
        path = layout.parquet_path(root, shard)
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["tar_offset", "tar_size"]), path)


def test_scanned_index_matches_the_writer_and_is_cached(dataset_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDATA_CACHE", str(tmp_path / "cache"))
    root, keys = dataset_factory([6, 4], failures_every=3)
    written = pq.read_table(layout.parquet_path(root, 0)).filter(pa.compute.equal(pa.compute.field("status"), "success"))
    scanned = scan_members(layout.tar_path(root, 0).read_bytes())
    assert scanned.column("key").to_pylist() == written.column("key").to_pylist()
    assert scanned.column("tar_offset").to_pylist() == written.column("tar_offset").to_pylist()
    assert scanned.column("tar_size").to_pylist() == written.column("tar_size").to_pylist()
    strip_offsets(root)
    assert [item["key"] for item in mmdata.stream(root, shuffle=False, decode=None)] == keys
    assert len(list((tmp_path / "cache" / "member-index").glob("*.parquet"))) == 2
    chosen = keys[1::2]
    assert sorted(item["key"] for item in mmdata.stream(root, view=chosen, decode=None)) == sorted(chosen)


def test_fsspec_memory_filesystem(dataset_factory):
    import fsspec

    root, keys = dataset_factory([3, 5])
    memory = fsspec.filesystem("memory")
    for path in root.iterdir():
        memory.pipe_file(f"/streamtest/{path.name}", path.read_bytes())
    items = list(mmdata.stream("memory://streamtest", shuffle=False, columns=["quality"]))
    assert [item["key"] for item in items] == keys
    assert items[0]["image"].size == (8, 8) and items[0]["quality"] == 0.0
