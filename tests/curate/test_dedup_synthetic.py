"""The near tier on the end-to-end demo's corpus (``mmdata.synthetic``): web-style pictures on flat,
border-padded backgrounds, where a grey pHash alone links plainly different pictures.

The dataset is built without HTTP: each corpus body goes through the download's own
``process_image`` (border mode, 256 px), so the stored images are what a download would store.
"""

import io
import random

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

import mmdata
from mmdata import layout
from mmdata.curate.hashes import NearHashes, hash_rows
from mmdata.curate.thumbnails import BAR_MARGIN, THUMBNAIL_TOLERANCE, content_box, verified
from mmdata.download.image import ImageOptions, process_image
from mmdata.shard_output import shard_output
from mmdata.synthetic import Scene, SyntheticConfig, draw_scene, encode, generate_corpus, near_duplicate

CONFIG = SyntheticConfig(samples=600, seed=11)  # the demo's image sizes (200-800 px); 36 near duplicates
SHARD_SIZE = 200


@pytest.fixture(scope="module")
def demo_dataset(tmp_path_factory):
    corpus = tmp_path_factory.mktemp("corpus")
    root = tmp_path_factory.mktemp("dataset")
    truth = pq.read_table(generate_corpus(corpus, CONFIG)).to_pylist()
    options = ImageOptions(image_size=256, resize_mode="border")
    stored = [row for row in truth if (corpus / "files" / row["path"].lstrip("/")).is_file()]
    truth_of_key = {}
    for shard, start in enumerate(range(0, len(stored), SHARD_SIZE)):
        with shard_output(root, shard) as out:
            for position, row in enumerate(stored[start : start + SHARD_SIZE]):
                key = layout.sample_key(shard, position, SHARD_SIZE)
                url = f"http://127.0.0.1/{row['path'].lstrip('/')}"
                result = process_image((corpus / "files" / row["path"].lstrip("/")).read_bytes(), options)
                sample = {"key": key, "uid": layout.sample_uid(url, row["caption"]), "url": url,
                          "caption": row["caption"], "status": result.status, "error_message": result.error_message}
                if result.status != "success":
                    out.add(sample)
                    continue
                sample.update(width=result.width, height=result.height, image_format=result.extension)
                out.add(sample, {result.extension: result.data, "txt": row["caption"].encode()})
                truth_of_key[key] = row
            out.commit({"count": len(stored[start : start + SHARD_SIZE])})
    return root, truth_of_key


def near_quality(table, truth_of_key):
    """Near-tier precision (a flagged sample's kept twin is of its planted duplicate group) and recall
    (planted near duplicates that end up with their original's group, through any tier)."""
    rows = {row["key"]: row for row in table.to_pylist()}

    def kept(key):
        return rows[key]["duplicate_of"] or key

    flagged = [row for row in rows.values() if row["dup_reason"] == "near"]
    correct = sum(
        truth_of_key[row["key"]]["dup_group"] is not None
        and truth_of_key[row["key"]]["dup_group"] == truth_of_key[row["duplicate_of"]]["dup_group"]
        for row in flagged
    )
    key_of_row = {truth["row"]: key for key, truth in truth_of_key.items()}
    planted = [key for key, truth in truth_of_key.items() if truth["kind"] == "near_dup"]
    found = sum(kept(key) == kept(key_of_row[truth_of_key[key]["duplicate_of"]]) for key in planted)
    return {"flagged": len(flagged), "correct": correct, "precision": correct / len(flagged),
            "planted": len(planted), "found": found, "recall": found / len(planted)}


def test_near_tier_is_precise_on_the_demo_corpus_at_default_settings(demo_dataset):
    root, truth_of_key = demo_dataset
    quality = near_quality(mmdata.dedup(root, exact=True, near=True, executor="inline").table, truth_of_key)
    assert quality["planted"] == 36 and quality["flagged"] >= 0.9 * quality["planted"], quality
    assert quality["precision"] >= 0.95, quality
    assert quality["recall"] >= 0.9, quality


def test_the_hash_alone_is_not_precise_here(demo_dataset):
    # the failure the content verification exists for: without it, background-dominated hashes of
    # plainly different pictures chain into false groups
    root, truth_of_key = demo_dataset
    quality = near_quality(
        mmdata.dedup(root, exact=True, near=True, thumbnail_tolerance=None, executor="inline").table, truth_of_key
    )
    assert quality["precision"] < 0.9, quality


def test_content_is_compared_without_the_border_padding():
    rng = random.Random(5)
    options = ImageOptions(image_size=256, resize_mode="border")

    def stored(image):
        return process_image(encode(image, "png"), options).data

    original = draw_scene(Scene(2, "orange", "diamond", "grey", "striped"), 400, 200, rng)
    other_shape = draw_scene(Scene(2, "orange", "hexagon", "grey", "plain"), 400, 200, rng)
    images = [stored(original), stored(near_duplicate(original, "crop", rng)),
              stored(near_duplicate(original, "colour_shift", rng)), stored(other_shape)]
    with Image.open(io.BytesIO(images[0])) as padded:
        left, top, right, bottom = content_box(padded.convert("RGB"))
    # 2:1 picture, white bars above and below (rows 0-63 and 192-255), trimmed but for a margin of
    # BAR_MARGIN of the picture's height
    margin = BAR_MARGIN * 128
    assert (left, right) == (0, 256) and abs(top - (64 - margin)) <= 3 and abs(bottom - (192 + margin)) <= 3
    _, hashes = NearHashes.from_table(hash_rows([(str(i), blob) for i, blob in enumerate(images)]))
    first = hashes.take(np.zeros(4, dtype=np.int64))
    agree = verified(
        first.thumbnails, hashes.thumbnails, first.texture, hashes.texture, first.aspect, hashes.aspect,
        THUMBNAIL_TOLERANCE,
    )
    assert agree.tolist() == [True, True, True, False]  # itself, the crop, the brightness shift; not the other shape
