import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmdata import layout
from mmdata.dataset import ShardOutput
from mmdata.schemas import SchemaError, align_table
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.shards import SampleSpan, ShardFormatError, iter_samples, read_sample
from mmdata.stats import Stats


def test_keys_follow_img2dataset_digits():
    assert layout.sample_key(3, 7, 10000) == "000030007"
    assert layout.sample_key(12, 42, 100) == "0001242"
    assert layout.sample_uid("http://a/x.jpg", "cat") == layout.sample_uid("http://a/x.jpg", "cat")
    assert layout.sample_uid("http://a/x.jpg", "cat") != layout.sample_uid("http://a/x.jpg", "dog")


def test_align_fills_orders_and_refuses():
    table = pa.table({"status": ["success"], "uid": ["u"], "key": ["k"], "width": [3], "extra": [1]})
    aligned = align_table(table, SAMPLE_SCHEMA, keep_extra=True)
    assert aligned.schema.names[:3] == ["key", "uid", "url"]
    assert aligned.schema.names[-1] == "extra"
    assert aligned.column("width").type == pa.int32()
    with pytest.raises(SchemaError, match="status"):
        align_table(pa.table({"key": ["k"], "uid": ["u"]}), SAMPLE_SCHEMA)
    with pytest.raises(SchemaError, match="width"):
        align_table(pa.table({"key": ["k"], "uid": ["u"], "status": ["s"], "width": ["wide"]}), SAMPLE_SCHEMA)


def test_shard_output_commits_tar_parquet_stats(tmp_path):
    with ShardOutput(tmp_path, 0) as shard:
        shard.add({"key": "0000000", "uid": "a", "status": "success"}, {"jpg": b"\xff\xd8x", "txt": b"cat"})
        shard.add({"key": "0000001", "uid": "b", "status": "failed_to_download", "error_message": "404"})
        shard.add({"key": "0000002", "uid": "c", "status": "success"}, {"jpg": b"y" * 700, "txt": "dög".encode()})
        shard.commit({"count": 3})
    assert layout.complete_shards(tmp_path) == ["00000"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
    table = pq.read_table(layout.parquet_path(tmp_path, 0))
    assert table.column("status").to_pylist() == ["success", "failed_to_download", "success"]
    samples = list(iter_samples(layout.tar_path(tmp_path, 0)))
    assert [key for key, _ in samples] == ["0000000", "0000002"]
    with open(layout.tar_path(tmp_path, 0), "rb") as handle:
        row = table.slice(2, 1).to_pylist()[0]
        key, members = read_sample(handle, SampleSpan(row["tar_offset"], row["tar_size"]))
    assert key == "0000002" and members["txt"].decode() == "dög"
    assert json.loads(layout.stats_path(tmp_path, 0).read_text()) == {"count": 3}


def test_failed_shard_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with ShardOutput(tmp_path, 1) as shard:
            shard.add({"key": "1", "uid": "a", "status": "success"}, {"jpg": b"x"})
            raise RuntimeError("worker died")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, kind",
    [("../evil.jpg", tarfile.REGTYPE), ("/abs.jpg", tarfile.REGTYPE), ("k.jpg", tarfile.SYMTYPE), ("k.jpg", tarfile.CHRTYPE)],
)
def test_reader_refuses_hostile_members(name, kind):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
        archive.addfile(info, io.BytesIO(b"") if kind == tarfile.REGTYPE else None)
    buffer.seek(0)
    with pytest.raises(ShardFormatError):
        list(iter_samples(buffer))


def test_reader_drops_pickle_members_and_caps_size():
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, payload in [("k.jpg", b"img"), ("k.pickle", b"cos\nsystem\n"), ("j.txt", b"x" * 100)]:
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            archive.addfile(info, io.BytesIO(payload))
    buffer.seek(0)
    assert list(iter_samples(buffer, max_member_bytes=1000)) == [("k", {"jpg": b"img"}), ("j", {"txt": b"x" * 100})]
    buffer.seek(0)
    with pytest.raises(ShardFormatError, match="limit"):
        list(iter_samples(buffer, max_member_bytes=10))


def test_stats_add_up():
    a, b = Stats(), Stats()
    a.add("success", 2)
    b.add("success")
    b.add("failed_to_download")
    total = a + b
    assert total["success"] == 3 and total["failed_to_download"] == 1
    assert Stats.from_dict(total.to_dict()).counts == total.counts
