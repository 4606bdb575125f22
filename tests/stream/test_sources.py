"""Shards without byte offsets in their metadata (img2dataset's) get a member index by scanning the
tar once (cached); any fsspec filesystem is a source."""

import io
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmdata
from mmdata import layout
from mmdata.shards import ShardFormatError
from mmdata.stream.index import scan_members


def strip_offsets(root):
    for shard in layout.complete_shards(root):
        path = layout.parquet_path(root, shard)
        table = pq.read_table(path)
        pq.write_table(table.drop_columns(["tar_offset", "tar_size"]), path)


def test_scanned_index_matches_the_writer_and_is_cached(dataset_factory, tmp_path, monkeypatch):
    monkeypatch.setenv("MMDATA_CACHE", str(tmp_path / "cache"))
    root, keys = dataset_factory([6, 4], failures_every=3)
    written = pq.read_table(layout.parquet_path(root, 0)).filter(
        pa.compute.equal(pa.compute.field("status"), "success")
    )
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
    for path in (path for path in root.iterdir() if path.is_file()):
        memory.pipe_file(f"/streamtest/{path.name}", path.read_bytes())
    items = list(mmdata.stream("memory://streamtest", shuffle=False, columns=["quality"]))
    assert [item["key"] for item in items] == keys
    assert items[0]["image"].size == (8, 8) and items[0]["quality"] == 0.0


def hostile_tar(path, kind: str) -> None:
    """A tar whose second sample has a member the safe reader refuses."""
    with tarfile.open(path, "w", format=tarfile.USTAR_FORMAT) as archive:
        for name, payload in (("good.jpg", b"x"), ("good.txt", b"c")):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
        info = tarfile.TarInfo({"dotdot": "../outside/bad.jpg", "symlink": "bad.jpg", "huge": "bad.jpg"}[kind])
        if kind == "symlink":
            info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
        if kind == "huge":
            info.size = 10**12  # declared only: a scan that skipped the body would seek a terabyte
            archive.fileobj.write(info.tobuf(tarfile.GNU_FORMAT))  # base-256 size field
            return
        archive.addfile(info, io.BytesIO(b""))


@pytest.mark.parametrize("kind, reason", [("dotdot", "escapes the archive"), ("symlink", "not a regular file"),
                                          ("huge", "over the .* limit")])
def test_scan_refuses_what_the_safe_reader_refuses_naming_the_tar(dataset_factory, tmp_path, monkeypatch, kind, reason):
    monkeypatch.setenv("MMDATA_CACHE", str(tmp_path / "cache"))
    root, keys = dataset_factory([2])
    strip_offsets(root)
    hostile_tar(layout.tar_path(root, 0), kind)
    with pytest.raises(ShardFormatError, match=f"00000.tar: cannot index its samples: .*{reason}"):
        mmdata.stream(root)
    assert not (tmp_path / "outside").exists()
