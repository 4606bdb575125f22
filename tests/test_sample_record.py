"""One sample record, one member rule: a sample stored under any image extension that img2dataset or
webdataset writes is hashed, scored and streamed like a JPEG (mmdata.schemas.members, used by all)."""

import io
import random

import pyarrow.parquet as pq
import pytest
from PIL import Image, features

import mmdata
from mmdata import layout
from mmdata.curate.hashes import cache_path, hash_rows, hash_shard
from mmdata.schemas.members import IMAGE_EXTENSIONS, image_member
from mmdata.schemas.samples import SUCCESS
from mmdata.score.model import load_clip, tiny_model_config, write_model_config
from mmdata.score.pipeline import ShardScorer, score_tar
from mmdata.shard_output import shard_output
from mmdata.shards import iter_samples

PIL_FORMATS = {"jpg": "JPEG", "jpeg": "JPEG", "png": "PNG", "webp": "WEBP", "gif": "GIF", "bmp": "BMP",
               "tif": "TIFF", "tiff": "TIFF", "avif": "AVIF"}
# AVIF only where the installed Pillow writes it (members.py: elsewhere such samples fail to decode).
EXTENSIONS = tuple(name for name in PIL_FORMATS if name != "avif" or features.check("avif"))


def picture(extension: str, index: int) -> tuple[bytes, tuple[int, int]]:
    """A noisy picture of its own size, so each sample hashes and embeds differently."""
    size = (40 + 4 * index, 48 - 2 * index)
    rng = random.Random(index)
    image = Image.new("RGB", size, (rng.randrange(256), rng.randrange(256), rng.randrange(256)))
    for _ in range(60):
        image.putpixel((rng.randrange(size[0]), rng.randrange(size[1])), (rng.randrange(256),) * 3)
    buffer = io.BytesIO()
    image.save(buffer, format=PIL_FORMATS[extension])
    return buffer.getvalue(), size


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """One shard with one sample per image extension; returns (root, {key: (extension, size)})."""
    root = tmp_path_factory.mktemp("record")
    stored = {}
    with shard_output(root, 0) as output:
        for index, extension in enumerate(EXTENSIONS):
            key = layout.sample_key(0, index, len(EXTENSIONS))
            data, size = picture(extension, index)
            caption = f"a picture stored as {extension}"
            output.add({"key": key, "uid": key, "caption": caption, "status": SUCCESS, "image_format": extension},
                       {extension: data, "txt": caption.encode(), "json": b"{}"})
            stored[key] = (extension, size)
        stats = output.commit()
    assert stats["successes"] == stats["count"] == len(EXTENSIONS)
    return root, stored


def test_the_record_covers_every_image_extension():
    assert set(PIL_FORMATS) == set(IMAGE_EXTENSIONS)


def test_every_extension_is_hashed(dataset):
    root, stored = dataset
    hash_shard(root, "00000")
    hashes = pq.read_table(cache_path(root, "00000")).to_pylist()
    assert [row["key"] for row in hashes] == list(stored)
    for row in hashes:
        assert row["hash_error"] is None and row["phash"] is not None, (stored[row["key"]], row["hash_error"])
    direct = hash_rows([(key, image_member(members)) for key, members in iter_samples(layout.tar_path(root, 0))])
    assert direct.column("phash").to_pylist() == [row["phash"] for row in hashes]


def test_every_extension_is_scored(dataset, tmp_path):
    root, stored = dataset
    config = write_model_config(tmp_path / "tiny.json", tiny_model_config())
    scorer = ShardScorer(load_clip(str(config)), batch_size=4, decode_workers=2)
    try:
        outcome = score_tar(scorer, "00000", layout.tar_path(root, 0), tmp_path / "scores.parquet")
    finally:
        scorer.close()
    assert outcome.error is None
    assert outcome.stats["samples"] == outcome.stats["scored"] == len(stored), outcome.stats.counts
    rows = pq.read_table(tmp_path / "scores.parquet").to_pylist()
    assert [row["key"] for row in rows] == list(stored)
    for row in rows:
        assert row["score_error"] is None and -1 <= row["clip_score"] <= 1, (stored[row["key"]], row["score_error"])


def test_every_extension_is_streamed(dataset):
    root, stored = dataset
    items = list(mmdata.stream(root, shuffle=False))
    assert [item["key"] for item in items] == list(stored)
    for item in items:
        extension, size = stored[item["key"]]
        assert isinstance(item["image"], Image.Image), extension
        assert item["image"].size == size and item["caption"] == f"a picture stored as {extension}"
