import io
import json
import tarfile

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mmdata import layout
from mmdata.curate import hashes, thumbnails
from mmdata.schemas import SchemaError, align_table
from mmdata.schemas.hashes import CROP_COUNT, HASH_SCHEMA, THUMB_BYTES
from mmdata.schemas.members import (
    IMAGE_EXTENSIONS,
    caption_member,
    image_extension,
    image_member,
    metadata_member,
)
from mmdata.schemas.samples import (
    FAILED_TO_DOWNLOAD,
    IDENTITY_FIELDS,
    INPUT_FIELDS,
    OK,
    OUTCOME_FIELDS,
    SAMPLE_SCHEMA,
    SPAN_FIELDS,
    STATUSES,
    SUCCESS,
    Outcome,
)
from mmdata.shard_output import shard_output
from mmdata.shards import SampleSpan, ShardFormatError, iter_samples, read_sample
from mmdata.stats import Stats, load_shard_stats, total_stats
from mmdata.storage.commit import finish_dataset


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
    with shard_output(tmp_path, 0) as shard:
        shard.add({"key": "0000000", "uid": "a", "status": "success"}, {"jpg": b"\xff\xd8x", "txt": b"cat"})
        shard.add({"key": "0000001", "uid": "b", "status": "failed_to_download", "error_message": "404"})
        shard.add({"key": "0000002", "uid": "c", "status": "success"}, {"jpg": b"y" * 700, "txt": "dög".encode()})
        stats = shard.commit({"count": 3, "source": "test"})
    assert layout.complete_shards(tmp_path) == ["00000"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".") and p.name != ".locks"]
    finish_dataset(layout.dataset(tmp_path))  # what a job does once every shard is in
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no lock or temporary left"
    table = pq.read_table(layout.parquet_path(tmp_path, 0))
    assert table.column("status").to_pylist() == ["success", "failed_to_download", "success"]
    samples = list(iter_samples(layout.tar_path(tmp_path, 0)))
    assert [key for key, _ in samples] == ["0000000", "0000002"]
    with open(layout.tar_path(tmp_path, 0), "rb") as handle:
        row = table.slice(2, 1).to_pylist()[0]
        key, members = read_sample(handle, SampleSpan(row["tar_offset"], row["tar_size"]))
    assert key == "0000002" and members["txt"].decode() == "dög"
    written = json.loads(layout.stats_path(tmp_path, 0).read_text())
    assert written == stats and load_shard_stats(tmp_path) == [stats]
    assert (stats["shard"], stats["count"], stats["successes"], stats["failed_to_download"]) == ("00000", 3, 2, 1)
    assert stats["status_dict"] == {"success": 2, "failed_to_download": 1} and stats["source"] == "test"
    assert total_stats([stats, stats])["status_dict"] == {"success": 4, "failed_to_download": 2}


def test_shard_output_refuses_extra_stats_that_disagree_with_the_rows(tmp_path):
    with pytest.raises(ValueError, match="successes"):
        with shard_output(tmp_path, 0) as shard:
            shard.add({"key": "0", "uid": "a", "status": "failed_to_download", "error_message": "404"})
            shard.commit({"successes": 1})
    assert layout.complete_shards(tmp_path) == []


def test_failed_shard_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with shard_output(tmp_path, 1) as shard:
            shard.add({"key": "1", "uid": "a", "status": "success"}, {"jpg": b"x"})
            raise RuntimeError("worker died")
    assert [p.name for p in tmp_path.iterdir()] == [".locks"]  # the writer lock only, no shard file
    finish_dataset(layout.dataset(tmp_path))
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "name, kind",
    [
        ("../evil.jpg", tarfile.REGTYPE), ("/abs.jpg", tarfile.REGTYPE),
        ("k.jpg", tarfile.SYMTYPE), ("k.jpg", tarfile.CHRTYPE),
    ],
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


def test_sample_fields_are_grouped_once():
    groups = (IDENTITY_FIELDS, INPUT_FIELDS, OUTCOME_FIELDS, SPAN_FIELDS)
    assert sorted(name for group in groups for name in group) == sorted(SAMPLE_SCHEMA.names)
    assert "status" in OUTCOME_FIELDS and "tar_offset" not in OUTCOME_FIELDS


def test_outcome_is_a_closed_status_with_a_message_for_failures():
    assert OK.ok and OK.fields() == {"status": SUCCESS, "error_class": None, "error_message": None}
    failure = Outcome(FAILED_TO_DOWNLOAD, "http_404", "HTTP 404 Not Found")
    assert not failure.ok and failure.failure_class == "http_404" and OK.failure_class is None
    assert Outcome(FAILED_TO_DOWNLOAD, None, "lost").failure_class == FAILED_TO_DOWNLOAD
    assert Outcome.of_row({"key": "k", **failure.fields()}) == failure
    assert len(set(STATUSES)) == len(STATUSES) == 7 and SUCCESS in STATUSES
    with pytest.raises(ValueError, match="unknown status"):
        Outcome("failed")
    with pytest.raises(ValueError, match="error_message"):
        Outcome(FAILED_TO_DOWNLOAD, "timeout", "")


def test_members_pick_the_image_by_extension_order_and_ignore_case():
    assert IMAGE_EXTENSIONS[:2] == ("jpg", "jpeg") and {"gif", "bmp", "tif", "tiff", "avif"} <= set(IMAGE_EXTENSIONS)
    for extension in IMAGE_EXTENSIONS:
        members = {"txt": b"cat", extension.upper(): b"pixels", "json": b"{}"}
        assert image_extension(members) == extension.upper() and image_member(members) == b"pixels"
    assert image_member({"png": b"second", "jpg": b"first"}) == b"first"
    assert image_member({"txt": b"cat", "pdf": b"%PDF"}) is None and image_extension({}) is None
    assert caption_member({"TXT": b"cat"}) == b"cat" and caption_member({"jpg": b"x"}) is None
    assert metadata_member({"json": b"{}", "Json": b"other"}) == b"{}"


def test_hash_schema_widths_are_what_the_hashes_produce():
    assert len(hashes.CROP_OFFSETS) ** 2 == CROP_COUNT == HASH_SCHEMA.field("crop_hashes").type.list_size
    assert thumbnails.THUMB_BYTES == THUMB_BYTES == HASH_SCHEMA.field("thumbnails").type.byte_width
