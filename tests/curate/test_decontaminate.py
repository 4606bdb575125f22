"""Decontamination against a folder of evaluation images and against another dataset."""

import io

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_corpus import build_corpus, encode, random_scene, render, variant, write_dataset
from PIL import Image, ImageOps

from mmdata import layout
from mmdata.cli import main as cli_main
from mmdata.curate.decontaminate import decontaminate, encode_images
from mmdata.score.model import tiny_model_config, write_model_config
from mmdata.table import read_embeddings


def decoded(blob):
    return Image.open(io.BytesIO(blob)).convert("RGB")


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("decontaminate")
    corpus = build_corpus(4, seed=21)
    keys = write_dataset(root, corpus, shard_size=16)
    return root, dict(zip(keys, corpus))


def key_of(items, base, kind):
    return next(key for key, item in items.items() if item.base == base and item.kind == kind)


def test_folder_of_images_marks_exact_and_near_matches(dataset, tmp_path, capsys):
    root, items = dataset
    evaluation = tmp_path / "eval"
    (evaluation / "nested").mkdir(parents=True)
    original = items[key_of(items, 0, "original")]
    png = items[key_of(items, 1, "png_original")]
    (evaluation / "copy.jpg").write_bytes(original.image)  # same bytes as scene 0's original and copy
    # same pixels
    (evaluation / "nested" / "resaved.png").write_bytes(encode(decoded(png.image), "png", compress_level=6))
    cropped, image_format, options = variant(
        decoded(items[key_of(items, 2, "original")].image), "crop", np.random.default_rng(0)
    )
    (evaluation / "crop.jpg").write_bytes(encode(cropped, image_format, **options))
    (evaluation / "unrelated.jpg").write_bytes(
        encode(render(random_scene(np.random.default_rng(123))), "jpeg", quality=90)
    )
    (evaluation / "notes.txt").write_text("not an image")
    (evaluation / "broken.jpg").write_bytes(b"\xff\xd8 truncated")

    assert cli_main(
        ["decontaminate", str(root), "--against", str(evaluation), "--no-embedding", "--executor", "inline"]
    ) == 0
    printed = capsys.readouterr().out
    assert f"{'eval_images':<24}{5:>12,}" in printed and f"{'eval_undecodable':<24}{1:>12,}" in printed
    table = pq.read_table(layout.annotations_dir(root) / "contamination.parquet")
    rows = {row["key"]: row for row in table.to_pylist()}
    assert set(rows) == set(items)
    flagged = {key for key, row in rows.items() if row["contaminated"]}
    for key in flagged:
        assert items[key].base in (0, 1, 2) and items[key].kind not in ("lookalike", "redraw"), items[key]
    assert rows[key_of(items, 0, "copy")]["contamination_reason"] == "exact"
    assert rows[key_of(items, 0, "copy")]["contaminated_by"] == "copy.jpg"
    assert rows[key_of(items, 1, "png_original")]["contaminated_by"] == "nested/resaved.png"
    assert rows[key_of(items, 1, "png_original")]["contamination_reason"] == "exact"
    assert rows[key_of(items, 2, "original")]["contamination_reason"] == "near"
    assert rows[key_of(items, 2, "original")]["contaminated_by"] == "crop.jpg"
    # every re-encode, resize, crop and colour shift of the three scenes is caught by the near tier
    for base in (0, 1, 2):
        for kind in ("jpeg", "resize", "crop", "colour"):
            assert rows[key_of(items, base, kind)]["contaminated"], (base, kind)
    assert not any(rows[key]["contaminated"] for key, item in items.items() if item.base == 3)


def test_embedding_tier_rebuilds_the_scoring_model(dataset, tmp_path, ray_local):
    """Plumbing with a random tiny CLIP (it cannot tell scenes apart, so no precision claim here):
    the model is rebuilt from the score run's record even after its config file is gone, it
    reproduces the stored embeddings, and a mirrored image (which hashes miss) matches its source."""
    from mmdata.score.job import score

    root, items = dataset
    config_path = write_model_config(tmp_path / "tinyclip.json", tiny_model_config())
    score(dataset=str(root), model=str(config_path), device="cpu", batch_size=32, show_progress=False)
    config_path.unlink()
    model_id = layout.default_model(root)
    keys, stored = read_embeddings(root, "image", model_id)
    sample = [items[key].image for key in keys[:6]]
    rebuilt = encode_images(layout.read_model_record(root, model_id), sample)
    assert np.all(np.einsum("ij,ij->i", rebuilt, stored[:6]) > 0.999)

    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    source = key_of(items, 3, "original")
    mirrored = ImageOps.mirror(decoded(items[source].image))
    (evaluation / "mirrored.jpg").write_bytes(encode(mirrored, "jpeg", quality=90))
    result = decontaminate(root, against=evaluation, embedding=True, eps=0.01, executor="inline")
    rows = {row["key"]: row for row in result.table.to_pylist()}
    assert rows[source]["contamination_reason"] == "embedding" and rows[source]["contaminated_by"] == "mirrored.jpg"
    assert result.counts["exact"] == result.counts["near"] == 0
    assert result.counts["embedding"] == result.counts["contaminated"] >= 1


def test_another_dataset_as_the_evaluation_set(dataset, tmp_path):
    root, items = dataset
    chosen = [key_of(items, 1, "original"), key_of(items, 3, "resize")]
    other = tmp_path / "evalset"
    other_keys = write_dataset(other, [items[key] for key in chosen], shard_size=10)
    result = decontaminate(root, against=other, embedding=False, executor="inline")
    rows = {row["key"]: row for row in result.table.to_pylist()}
    assert rows[chosen[0]]["contaminated_by"] == other_keys[0] and rows[chosen[0]]["contamination_reason"] == "exact"
    assert rows[key_of(items, 3, "original")]["contamination_reason"] == "near"
    assert result.counts["eval_images"] == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no images"):
        decontaminate(root, against=empty, embedding=False)
