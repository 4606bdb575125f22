"""The near tier on planted copies of photo-like pictures with look-alike uniques (``photo_corpus``):
recall >= 0.97 at precision >= 0.99, where a plain sha256 + pHash <= 8 reference merges look-alikes
and misses mirrors and some crops. Plus the pieces that got it there: bars trimmed the same in a
brighter or darker copy, brightness shifts taken out of the thumbnail comparison, mirrored hashes."""

import io

import numpy as np
import pytest
from photo_corpus import COPY_KINDS, build_photo_corpus, corpus_hashes, near_tier_labels, quality, reference_labels
from PIL import Image, ImageOps

from mmdata.curate.hashes import NearHashes, hamming, hash_rows, near_matches
from mmdata.curate.thumbnails import THUMBNAIL_TOLERANCE, content_box, thumbnail_distance


@pytest.fixture(scope="module")
def photos():
    corpus = build_photo_corpus(80, seed=0)  # 560 pictures of 128-192 px
    return corpus, corpus_hashes(corpus)


def test_near_tier_finds_planted_copies_and_leaves_lookalikes(photos):
    corpus, hashes = photos
    figures = quality(near_tier_labels(corpus, hashes), corpus)
    assert figures["recall"] >= 0.97 and figures["precision"] >= 0.99, figures
    assert all(recall >= 0.95 for recall in figures["recall_by_kind"].values()), figures
    reference = quality(reference_labels(corpus, hashes), corpus)
    # the reference merges look-alikes of one layout and cannot see mirrors
    assert reference["precision"] < 0.9 and reference["recall_by_kind"]["mirror"] == 0.0, reference
    assert figures["recall"] > reference["recall"] and figures["precision"] > reference["precision"]


def test_mirrors_are_duplicates_only_when_asked(photos):
    corpus, hashes = photos
    without = quality(near_tier_labels(corpus, hashes, mirrors=False), corpus)
    assert without["recall_by_kind"]["mirror"] <= 0.1, without
    assert all(without["recall_by_kind"][kind] >= 0.95 for kind in COPY_KINDS if kind != "mirror"), without
    # the low-level matcher leaves mirrors out unless asked (decontamination calls it without)
    _, near = NearHashes.from_table(hashes)
    mirrored = [row for row, photo in enumerate(corpus) if photo.kind == "mirror"]
    originals = [row - COPY_KINDS.index("mirror") - 2 for row in mirrored]
    assert all(corpus[row].kind == "original" for row in originals)
    query, reference = near.take(np.array(mirrored)), near.take(np.array(originals))
    assert np.median(hamming(query.phash, reference.phash)) > 16  # a plain pHash does not see the mirror
    assert np.median(hamming(query.phash, reference.mirror)) <= 4

    def matched(found) -> float:  # query i is the mirror of reference i
        return len({q for q, r in zip(found[0], found[1]) if q == r}) / len(mirrored)

    assert matched(near_matches(query, reference, 8, 24.0, mirrors=True)) >= 0.95
    assert matched(near_matches(query, reference, 8, 24.0)) <= 0.1


def _white_product(shift: int = 0, quality: int = 90) -> bytes:
    pixels = np.full((150, 200, 3), 255, dtype=np.int16)
    pixels[40:110, 60:130] = (120, 40, 160)  # a purple box on a white backdrop
    pixels = np.clip(pixels + shift, 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def _box(blob: bytes) -> tuple[int, int, int, int]:
    with Image.open(io.BytesIO(blob)) as image:
        return content_box(image.convert("RGB"))


@pytest.mark.parametrize("shift,quality", [(-12, 90), (12, 90), (0, 55)])
def test_a_brighter_darker_or_reencoded_copy_trims_the_same_backdrop(shift, quality):
    # a fixed near-white level trimmed the original's backdrop (255) but not the -12 copy's (243)
    original, copy = _box(_white_product()), _box(_white_product(shift, quality))
    assert original != (0, 0, 200, 150)  # the backdrop is trimmed ...
    assert 40 <= original[0] < 60 and 120 < original[2] <= 140  # ... down to the box and a margin
    assert np.abs(np.subtract(original, copy)).max() <= 4, (original, copy)


@pytest.mark.parametrize("level", [20, 128])
def test_dark_and_mid_tone_backgrounds_are_not_trimmed(level):
    pixels = np.full((120, 160, 3), level, dtype=np.uint8)
    pixels[50:70, 60:100] = (250, 200, 30)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=55)
    assert _box(buffer.getvalue()) == (0, 0, 160, 120)


def test_a_uniform_brightness_shift_costs_nothing_in_the_thumbnail_comparison(photos):
    corpus, hashes = photos
    offset = 2 + COPY_KINDS.index("brightness")  # each original is followed by its look-alike and its copies
    pairs = [(row, row + offset) for row, photo in enumerate(corpus) if photo.kind == "original"]
    assert all(corpus[copy].kind == "brightness" for _, copy in pairs)
    _, near = NearHashes.from_table(hashes)
    left, right = near.take(np.array([a for a, _ in pairs])), near.take(np.array([b for _, b in pairs]))
    distance = thumbnail_distance(left.thumbnails, right.thumbnails)
    assert np.quantile(distance, 0.9) <= THUMBNAIL_TOLERANCE / 2, np.sort(distance)
    # while a look-alike of the same layout stays out
    alike = near.take(np.array([a + 1 for a, _ in pairs]))
    assert all(corpus[a + 1].kind == "lookalike" for a, _ in pairs)
    assert np.mean(thumbnail_distance(left.thumbnails, alike.thumbnails) > THUMBNAIL_TOLERANCE) >= 0.95


def test_hashes_include_the_mirrored_phash():
    blob = _white_product()
    with Image.open(io.BytesIO(blob)) as image:
        flipped = io.BytesIO()
        ImageOps.mirror(image).save(flipped, format="JPEG", quality=90)
    table = hash_rows([("a", blob), ("b", flipped.getvalue())])
    phash, mirror = (
        table.column(name).to_numpy(zero_copy_only=False).astype(np.uint64) for name in ("phash", "mirror_phash")
    )
    assert hamming(phash, mirror[::-1]).max() <= 4  # each one's hash is (up to JPEG noise) the other's mirrored
    assert hamming(phash[:1], phash[1:])[0] > 8
