"""``mmdata annotate``: the blur measure on known sharp and blurred pictures, the caption-length ratio,
and the stage (inline = processes, re-runs skip what did not change, s3 = local)."""

import numpy as np
import pyarrow as pa
import pytest
from curate_corpus import Scene, Shape, build_corpus, encode, random_scene, render, write_dataset
from PIL import Image, ImageFilter

from mmdata import layout
from mmdata.cli import main as cli_main
from mmdata.curate.annotate import annotate, annotation_path
from mmdata.curate.image_quality import WORK_SIDE, caption_chars_per_100px, image_quality_table, laplacian_variance
from mmdata.storage import read_parquet
from mmdata.table import read_table

CAPTIONS = [
    "a red circle and a blue square on a plain background",
    "ein roter Kreis und ein blaues Quadrat auf einfarbigem Hintergrund",
    "un cercle rouge et un carré bleu sur un fond uni",
    "un círculo rojo y un cuadrado azul sobre un fondo liso",
    "",
]


def _pictures(count: int, seed: int, enlarge: int = 3) -> list[Image.Image]:
    """Dark shapes with hard edges on a light background (the Laplacian's variance grows with edge
    contrast, so every picture here has plenty), enlarged to well above the working size."""
    rng = np.random.default_rng(seed)
    pictures = []
    for _ in range(count):
        scene = random_scene(rng)
        dark = tuple(Shape(shape.kind, shape.box, tuple(c // 3 for c in shape.colour)) for shape in scene.shapes)
        picture = render(Scene(scene.size, (245, 245, 240), dark))
        pictures.append(picture.resize((picture.width * enlarge, picture.height * enlarge), Image.NEAREST))
    return pictures


def test_blur_separates_sharp_pictures_from_blurred_copies():
    pictures = _pictures(12, seed=4)
    sharp = np.array([laplacian_variance(encode(picture, "jpeg", quality=92)) for picture in pictures])
    blurred = np.array([
        laplacian_variance(encode(picture.filter(ImageFilter.GaussianBlur(5)), "jpeg", quality=92))
        for picture in pictures
    ])
    assert blurred.max() < sharp.min(), (sharp, blurred)
    assert np.all(blurred < 0.05 * sharp)
    lightly = np.array([
        laplacian_variance(encode(picture.filter(ImageFilter.GaussianBlur(1.5)), "png")) for picture in pictures
    ])
    assert np.all((blurred < lightly) & (lightly < sharp))  # the measure orders blur strength


def test_blur_is_comparable_across_image_sizes():
    """The same picture at other sizes above the working size gets about the same number (without the
    fixed working size, a 2x larger copy would get several times less)."""
    for picture in _pictures(8, seed=6, enlarge=4):
        base = laplacian_variance(encode(picture, "png"))
        for scale in (0.7, 2.0):
            size = (round(picture.width * scale), round(picture.height * scale))
            assert min(size) > WORK_SIDE
            resized = laplacian_variance(encode(picture.resize(size, Image.LANCZOS), "jpeg", quality=95))
            assert 0.6 < resized / base < 1.3, (picture.size, scale, base, resized)
    panorama = Image.new("L", (4000, 100), 0)
    panorama.paste(255, (0, 0, 4000, 50))
    assert laplacian_variance(encode(panorama, "png")) > 0  # measured on its centre, at a bounded size


def test_image_quality_rows_hand_computed():
    good = encode(_pictures(1, seed=1)[0], "png")
    metadata = pa.table({
        "key": ["a", "b", "c", "d", "e"],
        "status": ["success", "success", "success", "failed_to_download", "success"],
        "caption": ["twelve chars", "x", None, "lost", "é" * 50],
        "width": [512, 300, 300, None, 10],
        "height": [256, 300, 300, None, 40],
        "original_width": [1024, None, 300, 800, 0],
        "original_height": [400, None, 300, 200, 0],
    })
    table = image_quality_table(metadata, [("a", good), ("b", b"not an image"), ("c", None), ("x", good)])
    rows = {row["key"]: row for row in table.to_pylist()}
    assert rows["a"]["laplacian_variance"] > 0 and rows["a"]["image_quality_error"] is None
    assert rows["b"]["laplacian_variance"] is None and "UnidentifiedImageError" in rows["b"]["image_quality_error"]
    assert rows["c"]["image_quality_error"] == "no image member"
    assert rows["d"]["laplacian_variance"] is None and rows["d"]["image_quality_error"] is None  # a failed download
    assert rows["e"]["image_quality_error"] == "no sample in the shard's tar"
    ratio = caption_chars_per_100px(metadata).to_pylist()
    # 12 chars / (400 original px / 100); 1 / (300 stored / 100); no caption; 4 / 2; original side 0
    assert ratio[0] == pytest.approx(3.0) and ratio[1] == pytest.approx(1 / 3)
    assert ratio[2] is None and ratio[3] == pytest.approx(2.0) and ratio[4] is None


@pytest.fixture(scope="module")
def corpus():
    items = build_corpus(3, seed=11)  # 33 images: originals, copies, resized and cropped variants
    return items, [CAPTIONS[i % len(CAPTIONS)] for i in range(len(items))]


def _annotations(root) -> dict:
    return {kind: read_parquet(annotation_path(root, kind)) for kind in ("language", "image_quality")}


def test_annotate_inline_and_processes_give_identical_tables(corpus, tmp_path):
    items, captions = corpus
    from mmdata.curate.language import language_model

    tables = {}
    language_model.cache_clear()
    for executor in ("processes", "inline"):
        root = tmp_path / executor
        write_dataset(root, items, shard_size=8, captions=captions, failures_every=6)
        result = annotate(root, executor=executor, workers=2)
        assert result.computed == {"language": result.shards, "image_quality": result.shards} and result.shards == 5
        tables[executor] = _annotations(root)
        if executor == "processes":  # the workers loaded the model; the driver did not
            assert language_model.cache_info().currsize == 0
    for kind in ("language", "image_quality"):
        assert tables["inline"][kind].equals(tables["processes"][kind]), kind

    joined = read_table(tmp_path / "inline")
    rows = joined.to_pylist()
    successes = [row for row in rows if row["status"] == "success"]
    assert len(successes) == len(items) and len(rows) > len(items)
    expected_language = {CAPTIONS[0]: "en", CAPTIONS[1]: "de", CAPTIONS[2]: "fr", CAPTIONS[3]: "es", "": None}
    assert all(row["caption_language"] == expected_language[row["caption"]] for row in successes)
    assert all(row["laplacian_variance"] > 0 and row["image_quality_error"] is None for row in successes)
    failed = [row for row in rows if row["status"] != "success"]
    assert failed and all(row["laplacian_variance"] is None and row["caption_language"] is None for row in failed)
    assert {"caption_language", "caption_language_score", "laplacian_variance", "caption_chars_per_100px"} <= set(
        joined.column_names
    )


def test_a_rerun_computes_only_the_shards_that_changed(corpus, tmp_path):
    items, captions = corpus
    root = tmp_path / "data"
    write_dataset(root, items, shard_size=8, captions=captions)
    first = annotate(root, executor="inline")
    tables = _annotations(root)
    written = {kind: annotation_path(root, kind).local_path().stat().st_mtime_ns for kind in first.paths}

    again = annotate(root, executor="inline")
    assert again.computed == {"language": 0, "image_quality": 0} and again.counts == {}
    assert {kind: annotation_path(root, kind).local_path().stat().st_mtime_ns for kind in first.paths} == written

    # a shard committed again (download --retry-failed rewrites its stats) is annotated again, alone
    stats = layout.stats_path(root, "00002")
    stats.write_json({**stats.read_json(), "end_time": "later"})
    redone = annotate(root, executor="inline")
    assert redone.computed == {"language": 1, "image_quality": 1}
    assert all(_annotations(root)[kind].equals(tables[kind]) for kind in tables)  # its data did not change
    assert tables["language"].num_rows == len(items)

    # a kind asked for alone is computed alone
    (layout.annotations_dir(root) / "image_quality.parquet").remove()
    only = annotate(root, language=False, executor="inline")
    assert only.computed == {"image_quality": 0} and annotation_path(root, "image_quality").exists()


def test_cli_annotates_the_kinds_named(corpus, tmp_path, capsys):
    items, captions = corpus
    root = tmp_path / "data"
    write_dataset(root, items[:10], shard_size=5, captions=captions[:10])
    assert cli_main(["annotate", str(root), "--language", "--executor", "inline"]) == 0
    printed = capsys.readouterr().out
    assert "language: 2 of 2 shards computed" in printed
    assert annotation_path(root, "language").exists() and not annotation_path(root, "image_quality").exists()
    with pytest.raises(ValueError, match="nothing to annotate"):
        annotate(root, language=False, image_quality=False)
    assert cli_main(["annotate", str(tmp_path / "empty"), "--executor", "inline"]) == 2
    assert "no complete shard" in capsys.readouterr().err


def test_annotate_on_s3_matches_a_local_folder(s3_bucket, corpus, tmp_path):
    items, captions = corpus
    local, remote = tmp_path / "data", f"{s3_bucket}/data"
    for root in (local, remote):
        write_dataset(root, items[:16], shard_size=6, captions=captions[:16], failures_every=5)
    annotate(local, executor="inline")
    result = annotate(remote, executor="processes", workers=2)
    assert result.computed == {"language": 4, "image_quality": 4}
    on_disk, on_s3 = _annotations(local), _annotations(remote)
    for kind in on_disk:
        assert on_s3[kind].equals(on_disk[kind]), kind
    assert annotate(remote, executor="inline").computed == {"language": 0, "image_quality": 0}
    columns = ["key", "caption_language", "laplacian_variance"]
    assert read_table(remote, columns).equals(read_table(local, columns))


def test_an_image_that_does_not_decode_is_a_row_not_a_crash(tmp_path):
    from mmdata.shard_output import shard_output

    root = tmp_path / "broken"
    good = encode(_pictures(1, seed=2)[0], "jpeg", quality=90)
    with shard_output(root, 0) as out:
        for row, blob in enumerate([good, good[: len(good) // 3], b"<html>not an image</html>"]):
            key = layout.sample_key(0, row, 10)
            out.add({"key": key, "uid": key, "caption": "a picture", "status": "success", "width": 10, "height": 10},
                    {"jpg": blob, "txt": b"a picture"})
        out.commit({"count": 3})
    result = annotate(root, language=False, executor="inline")
    assert result.counts["image_errors"] == 2
    rows = read_parquet(annotation_path(root, "image_quality")).to_pylist()
    assert rows[0]["laplacian_variance"] > 0 and rows[0]["image_quality_error"] is None
    assert rows[2]["laplacian_variance"] is None and "UnidentifiedImageError" in rows[2]["image_quality_error"]
    assert rows[1]["laplacian_variance"] is None and "truncated" in rows[1]["image_quality_error"]
