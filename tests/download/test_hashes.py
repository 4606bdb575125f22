"""verify_hash and compute_hash (img2dataset's options), end to end against the local HTTP server."""

from __future__ import annotations

import hashlib
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from http_server import image_bytes

import mmdata
from mmdata.download.config import DownloadConfig
from mmdata.shards import iter_samples

OPTIONS = dict(allow_network=["127.0.0.1/32"], executor="inline", image_size=32, timeout=2.0, backoff_base=0.01)


def download(tmp_path, rows: list[dict], **options) -> list[dict]:
    """Download ``rows`` (one shard) and return its metadata rows."""
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "in.parquet")
    mmdata.download(input=tmp_path / "in.parquet", output_dir=tmp_path / "out", **{**OPTIONS, **options})
    return pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()


def digest(algorithm: str, body: bytes) -> str:
    return hashlib.new(algorithm, body).hexdigest()


def test_verify_hash_fails_a_body_whose_hash_differs(http_server, tmp_path):
    run = uuid.uuid4().hex[:8]
    names = [f"{run}-match", f"{run}-mismatch", f"{run}-null", f"{run}-upper"]
    bodies = [image_bytes(name) for name in names]
    expected = [digest("sha256", bodies[0]), digest("sha256", b"other"), None, digest("sha256", bodies[3]).upper()]
    rows = [{"url": http_server.url(f"/img/{name}.jpg"), "caption": name, "sha256": value}
            for name, value in zip(names, expected)]
    stored = download(tmp_path, rows, verify_hash=["sha256", "sha256"])

    match, mismatch, null, upper = stored
    assert match["status"] == upper["status"] == "success"
    assert match["sha256"] == match["expected_sha256"] == digest("sha256", bodies[0])
    assert (mismatch["status"], mismatch["error_class"]) == ("failed_to_download", "hash_mismatch")
    assert "hash mismatch" in mismatch["error_message"] and digest("sha256", bodies[1]) in mismatch["error_message"]
    assert mismatch["sha256"] is None and mismatch["tar_offset"] is None and mismatch["http_status"] == 200
    # img2dataset fails a row without an expected hash as a mismatch; here it is not even fetched
    assert (null["status"], null["error_class"]) == ("failed_to_download", "hash_missing")
    assert "null" in null["error_message"] and not http_server.hits(f"/img/{names[2]}.jpg")
    keys = [key for key, _ in iter_samples(tmp_path / "out" / "00000.tar")]
    assert keys == [match["key"], upper["key"]]


def test_verify_hash_reads_any_column_and_algorithm(http_server, tmp_path):
    name = f"{uuid.uuid4().hex[:8]}-md5"
    body = image_bytes(name)
    rows = [{"url": http_server.url(f"/img/{name}.jpg"), "caption": "c", "checksum": digest("md5", body)}]
    (row,) = download(tmp_path, rows, verify_hash=["checksum", "md5"], compute_hash="sha512")
    assert row["status"] == "success"
    assert row["expected_md5"] == digest("md5", body) and "checksum" not in row  # stored under its own name
    assert row["sha512"] == digest("sha512", body) and row["sha256"] is None and row["md5"] is None


@pytest.mark.parametrize("algorithm", ["md5", "sha256", "sha512", None])
def test_compute_hash_fills_the_column_of_its_algorithm(http_server, tmp_path, algorithm):
    name = f"{uuid.uuid4().hex[:8]}-hash"
    rows = [{"url": http_server.url(f"/img/{name}.jpg"), "caption": "c"},
            {"url": http_server.url("/html"), "caption": "not an image"}]
    image, page = download(tmp_path, rows, compute_hash=algorithm)
    assert image["status"] == "success" and page["status"] == "failed_to_decode"
    for column in ("md5", "sha256", "sha512"):
        expected = digest(column, image_bytes(name)) if column == algorithm else None
        assert image[column] == expected, column
        assert (page[column] is None) == (column != algorithm), column  # the body that came is hashed too
    sample = json.loads(next(members for _, members in iter_samples(tmp_path / "out" / "00000.tar"))["json"])
    assert sample.get(algorithm or "sha256") == image[algorithm or "sha256"]


def test_a_retried_row_is_verified_again(http_server, tmp_path):
    """The expected hash is stored with the row, so retry_failed checks the body fetched then."""
    run = uuid.uuid4().hex[:8]
    good, bad = f"/flaky/{run}-good", f"/flaky/{run}-bad"
    rows = [{"url": http_server.url(f"{good}?fail=1"), "caption": "a", "sha": digest("sha256", image_bytes(good))},
            {"url": http_server.url(f"{bad}?fail=1"), "caption": "b", "sha": digest("sha256", b"not it")}]
    first = download(tmp_path, rows, verify_hash=["sha", "sha256"], retries=0)
    assert [row["error_class"] for row in first] == ["http_503", "http_503"]
    mmdata.download(input=tmp_path / "in.parquet", output_dir=tmp_path / "out", verify_hash=["sha", "sha256"],
                    retries=0, retry_failed=True, **OPTIONS)
    retried = pq.read_table(tmp_path / "out" / "00000.parquet").to_pylist()
    assert retried[0]["status"] == "success" and retried[0]["sha256"] == rows[0]["sha"]
    assert retried[1]["error_class"] == "hash_mismatch"


@pytest.mark.parametrize(
    "options, message",
    [
        ({"verify_hash": ["sha256", "sha1"]}, "md5, sha256, sha512"),
        ({"verify_hash": "sha256"}, r"\[column, algorithm\]"),
        ({"verify_hash": ["sha256"]}, r"\[column, algorithm\]"),
        ({"verify_hash": ["url", "sha256"]}, "column of expected hashes"),
        ({"verify_hash": ["h", "md5"], "save_additional_columns": ["expected_md5"]}, "expected_md5"),
        ({"compute_hash": "crc32"}, "md5, sha256, sha512 or None"),
        ({"bbox_col": "face_bboxes", "disable_all_reencoding": True}, "disable_all_reencoding"),
        ({"bbox_col": "status"}, "another column"),
    ],
)
def test_bad_row_options_are_refused_at_once(tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "out", **options)


def test_new_options_at_their_defaults_keep_the_earlier_fingerprint(tmp_path):
    """A dataset started before these options existed resumes: its fingerprint hashed the input and
    image options without them."""
    config = DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "out")
    legacy_input = {"path": config.input.path, "input_format": None, "url_col": "url", "caption_col": "caption",
                    "no_header": False, "columns": None, "save_additional_columns": []}
    legacy_image = {"image_size": 256, "resize_mode": "border", "encode_format": "jpg", "encode_quality": 95,
                    "min_image_size": 0, "max_aspect_ratio": None, "skip_reencode": False,
                    "max_image_pixels": 89_478_485}
    shaping = {"input": legacy_input, "shard_size": 10_000, "image": legacy_image}
    assert config.fingerprint() == hashlib.sha256(json.dumps(shaping, sort_keys=True).encode()).hexdigest()[:16]
    for changed in ({"compute_hash": "md5"}, {"extract_exif": False}, {"bbox_col": "faces"},
                    {"downscale_interpolation": "area"}):
        other = DownloadConfig.from_options(input=tmp_path, output_dir=tmp_path / "out", **changed)
        assert other.fingerprint() != config.fingerprint(), changed
