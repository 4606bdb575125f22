import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import mmdata
from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.cli import main
from mmdata.schemas.views import VIEW_SCHEMA
from mmdata.score import store
from mmdata.search.encode import ModelMismatchError
from mmdata.search.index import build_index, load_index, read_index_info

# Measured on the 48-scene shapes dataset with the 300-step model, over runs: recall@1 0.21-0.46,
# recall@5 0.79-0.98 (chance: 0.02 and 0.10; CPU training is not bit-reproducible across runs).
# The floors keep a margin below the worst run and stay 5-6x above chance.
RECALL_AT_1_FLOOR = 0.10
RECALL_AT_5_FLOOR = 0.60


def test_text_to_image_recall(shapes_dataset, capsys):
    ranks = []
    for key, caption in shapes_dataset.captions.items():
        hits = mmdata.search(shapes_dataset.root, text=caption, k=5)
        assert all(hit.similarity >= next_hit.similarity for hit, next_hit in zip(hits, hits[1:]))
        found = [hit.key for hit in hits]
        ranks.append(found.index(key) if key in found else None)
    recall_1 = sum(rank == 0 for rank in ranks) / len(ranks)
    recall_5 = sum(rank is not None for rank in ranks) / len(ranks)
    with capsys.disabled():
        print(f"\ntext->image over {len(ranks)} samples: recall@1 {recall_1:.3f}, recall@5 {recall_5:.3f}")
    assert recall_1 >= RECALL_AT_1_FLOOR
    assert recall_5 >= RECALL_AT_5_FLOOR


def test_hits_carry_metadata_and_key_queries_find_themselves(shapes_dataset):
    key, caption = next(iter(shapes_dataset.captions.items()))
    hits = mmdata.search(shapes_dataset.root, key=key, k=3)
    assert hits[0].key == key and hits[0].similarity == pytest.approx(1.0, abs=1e-2)
    assert hits[0].caption == caption and hits[0].shard == key[:5] and hits[0].url.endswith(f"{key}.png")
    with pytest.raises(ValueError, match="no image embedding"):
        mmdata.search(shapes_dataset.root, key="nope", k=3)


def test_image_queries_find_the_picture_and_its_caption(shapes_dataset, tmp_path):
    from mmdata.shards import iter_samples

    key, members = next(iter(iter_samples(layout.tar_path(shapes_dataset.root, 1))))
    picture = tmp_path / "query.png"
    picture.write_bytes(members["png"])
    image_hits = mmdata.search(shapes_dataset.root, image=picture, k=3)
    assert image_hits[0].key == key and image_hits[0].similarity > 0.99  # same pixels, same model
    caption_hits = mmdata.search(shapes_dataset.root, image=picture, k=5, kind="text")
    assert key in [hit.key for hit in caption_hits]  # image -> caption


def test_view_restricts_hits(shapes_dataset, tmp_path):
    root = tmp_path / "data"
    shutil.copytree(shapes_dataset.root, root)
    red = sorted(key for key, caption in shapes_dataset.captions.items() if " red " in caption)
    view = pa.table({"key": red, "shard": [key[:5] for key in red]})
    write_parquet(view, layout.views_dir(root) / "red.parquet", VIEW_SCHEMA)
    hits = mmdata.search(root, text="a blue circle", k=10, view="red")
    assert len(hits) == len(red) and sorted(hit.key for hit in hits) == red
    unrestricted = mmdata.search(root, text="a blue circle", k=10)
    assert any(hit.key not in red for hit in unrestricted)
    with pytest.raises(FileNotFoundError, match="no view 'blue'"):
        mmdata.search(root, text="a blue circle", view="blue")


def test_index_rebuilt_only_when_embeddings_change(shapes_dataset, tmp_path):
    root = tmp_path / "data"
    # not the index other tests built
    shutil.copytree(shapes_dataset.root, root, ignore=shutil.ignore_patterns("index"))
    first = build_index(root)
    assert first.rebuilt and first.report["plan"]["kind"] == "flat" and first.count == len(shapes_dataset.captions)
    again = build_index(root)
    assert not again.rebuilt and again.version == first.version
    model_id = first.model_id
    score_file = layout.score_path(root, model_id, "00001")
    table = pq.read_table(score_file)
    write_parquet(table.slice(0, table.num_rows - 1), score_file, table.schema)  # one sample's score is gone
    rebuilt = build_index(root)
    assert rebuilt.rebuilt and rebuilt.version != first.version and rebuilt.count == first.count - 1
    assert [name for name, entry in rebuilt.folder.list().items() if entry["type"] == "directory"] == [rebuilt.version]
    assert read_index_info(root, model_id, "image").version == rebuilt.version
    assert build_index(root, force=True).version != rebuilt.version
    custom = build_index(root, max_index_memory="1GB")
    assert custom.rebuilt and custom.report["config"]["max_index_memory"] == 10**9
    assert not build_index(root).rebuilt  # a plain call (as search makes) keeps the committed settings


def test_index_is_the_same_whichever_executor_reads_the_shards(shapes_dataset, tmp_path):
    built = {}
    for executor in ("inline", "processes"):
        root = tmp_path / executor
        shutil.copytree(shapes_dataset.root, root, ignore=shutil.ignore_patterns("index"))
        loaded = load_index(build_index(root, executor=executor, workers=2))
        built[executor] = loaded.rows.read(), np.asarray(loaded.ann.vectors)
    (rows, vectors), (pool_rows, pool_vectors) = built["inline"], built["processes"]
    assert rows.equals(pool_rows) and np.array_equal(vectors, pool_vectors)
    keys = rows.column("key").to_pylist()
    assert keys == sorted(shapes_dataset.captions)  # ids follow the shards, whichever task finished first
    assert rows.column("caption").to_pylist() == [shapes_dataset.captions[key] for key in keys]
    assert set(rows.column("shard").to_pylist()) == {"00000", "00001"}


def test_query_with_another_model_is_refused(shapes_dataset, tmp_path):
    from mmdata.score.model import tiny_model_config, write_model_config

    other_config = tiny_model_config(embed_dim=32, image_size=32, width=64, layers=3)
    other = write_model_config(tmp_path / "other.json", other_config)
    with pytest.raises(ModelMismatchError, match="differs from the model that made these embeddings"):
        mmdata.search(shapes_dataset.root, text="a red circle", model=str(other))
    # the right architecture with random weights is another model too
    with pytest.raises(ModelMismatchError, match="differs"):
        mmdata.search(shapes_dataset.root, text="a red circle", model=str(shapes_dataset.config_path))
    # naming the stored model and checkpoint explicitly is accepted
    hits = mmdata.search(shapes_dataset.root, text="a red circle", model=str(shapes_dataset.config_path),
                         pretrained=str(shapes_dataset.checkpoint), k=2)
    assert len(hits) == 2


def test_moved_or_changed_checkpoint_is_refused(shapes_dataset, tmp_path):
    import torch

    root = tmp_path / "data"
    shutil.copytree(shapes_dataset.root, root)
    model_id = layout.scored_models(root)[0]
    moved = tmp_path / "moved.pt"
    shutil.copy(shapes_dataset.checkpoint, moved)
    record = layout.read_model_record(root, model_id)
    store.write_model_record(root, model_id, {**record, "pretrained": str(tmp_path / "gone.pt")})
    with pytest.raises(ModelMismatchError, match="checkpoint is gone"):
        mmdata.search(root, text="a red circle")
    assert mmdata.search(root, text="a red circle", pretrained=str(moved), k=1)  # pointed at the moved file
    state = torch.load(moved, weights_only=True)
    state["logit_scale"] = state["logit_scale"] + 1
    torch.save(state, moved)
    with pytest.raises(ModelMismatchError, match="is not the one that made the embeddings"):
        mmdata.search(root, text="a red circle", pretrained=str(moved))


def test_cli_index_search_and_html(shapes_dataset, tmp_path, capsys):
    assert main(["index", str(shapes_dataset.root)]) == 0
    assert "flat" in capsys.readouterr().out.lower()
    page = tmp_path / "hits.html"
    assert main(["search", str(shapes_dataset.root), "--text", "a green star", "-k", "4", "--html", str(page)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len([line for line in lines if "shard" in line]) == 4
    html = page.read_text()
    assert html.count("data:image/png;base64,") == 4 and "a green star" in html
    other = tmp_path / "other.json"
    other.write_text(json.dumps(json.loads(shapes_dataset.config_path.read_text()) | {"embed_dim": 16}))
    assert main(["search", str(shapes_dataset.root), "--text", "x", "--model", str(other)]) == 2
    assert "differs" in capsys.readouterr().err
