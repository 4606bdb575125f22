"""A DataComp metadata parquet through the per-row options DataComp's download uses: its uid
saved as the sample's uid, face boxes blurred, sha256 verified."""

from __future__ import annotations

import hashlib
import json
import uuid

import pyarrow as pa
import pyarrow.parquet as pq
from http_server import image_bytes

import mmdata
from mmdata import layout
from mmdata.download.image import ImageOptions, process_image
from mmdata.shards import iter_samples

# DataComp's columns (a subset): uid, url, text, original_width, original_height, sha256, face_bboxes.
SCHEMA = pa.schema([
    ("uid", pa.string()), ("url", pa.string()), ("text", pa.string()), ("original_width", pa.int64()),
    ("original_height", pa.int64()), ("sha256", pa.string()), ("face_bboxes", pa.list_(pa.list_(pa.float64()))),
])


def test_datacomp_parquet_as_datacomp_downloads_it(http_server, tmp_path):
    run = uuid.uuid4().hex[:8]
    names = [f"{run}-{i}" for i in range(5)]
    bodies = [image_bytes(name, "jpg", 120, 90) for name in names]
    uids = [hashlib.md5(name.encode()).hexdigest() for name in names]
    uids[3], uids[4] = None, ""  # not DataComp's, but a uid column may have holes
    faces = [[[0.2, 0.1, 0.5, 0.6]], [], None, [[0.6, 0.5, 0.9, 0.95], [0.0, 0.0, 0.2, 0.3]], None]
    table = pa.table({
        "uid": uids, "url": [http_server.url(f"/img/{name}.jpg?w=120&h=90") for name in names],
        "text": [f"caption {i}" for i in range(5)], "original_width": [120] * 5, "original_height": [90] * 5,
        "sha256": [hashlib.sha256(body).hexdigest() for body in bodies], "face_bboxes": faces,
    }, schema=SCHEMA)
    pq.write_table(table, tmp_path / "0000.parquet")

    options = dict(image_size=64, resize_mode="center_crop", encode_format="jpg")
    mmdata.download(input=tmp_path / "0000.parquet", output_dir=tmp_path / "shards", caption_col="text",
                    save_additional_columns=["uid"], bbox_col="face_bboxes", verify_hash=["sha256", "sha256"],
                    allow_network=["127.0.0.1/32"], executor="inline", **options)

    rows = pq.read_table(tmp_path / "shards" / "00000.parquet").to_pylist()
    assert [row["status"] for row in rows] == ["success"] * 5
    assert [row["uid"] for row in rows[:3]] == uids[:3]
    for row in rows[3:]:  # no usable uid: mmdata's own, from url and caption
        assert row["uid"] == layout.sample_uid(row["url"], row["caption"])
    assert [row["sha256"] for row in rows] == table.column("sha256").to_pylist()
    assert [row["face_bboxes"] for row in rows] == faces
    stored = dict(iter_samples(tmp_path / "shards" / "00000.tar"))
    for row, body, boxes in zip(rows, bodies, faces):
        sample = stored[row["key"]]
        assert json.loads(sample["json"])["uid"] == row["uid"]
        expected = process_image(body, ImageOptions(**options), [tuple(box) for box in boxes or []])
        assert sample["jpg"] == expected.data
