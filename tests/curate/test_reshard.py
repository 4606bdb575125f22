"""Reshard: a view becomes a new dataset with exactly its samples, scores and embeddings; resumable."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_corpus import PIXEL_MODEL_ID, build_corpus, scene_embeddings, write_dataset

from mmdata import layout
from mmdata.cli import main as cli_main
from mmdata.curate.reshard import reshard
from mmdata.curate.view import filter_view
from mmdata.shards import iter_samples
from mmdata.table import read_embeddings, read_table


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    corpus = build_corpus(5, seed=11)  # 55 images
    rng = np.random.default_rng(4)
    scores = [float(v) for v in rng.uniform(0.0, 0.4, len(corpus))]
    write_dataset(root, corpus, shard_size=16, scores=scores, embeddings=scene_embeddings(corpus), failures_every=6)
    view = filter_view(root, view="best", top_fraction=0.6)
    return root, view


def members_by_key(root):
    found = {}
    for shard in layout.complete_shards(root):
        for key, members in iter_samples(layout.tar_path(root, shard)):
            found[key] = members
    return found


def test_reshard_writes_exactly_the_view(source, tmp_path, capsys):
    root, view = source
    output = tmp_path / "out"
    assert cli_main([
        "reshard", str(root), "--view", "best", "--output", str(output), "--shard-size", "7", "--executor", "inline"
    ]) == 0
    manifest = json.loads(layout.manifest_path(output).read_text())
    assert not [path.name for path in output.iterdir() if path.name.startswith(".")]  # no locks nor temporaries
    selected = view.column("key").to_pylist()
    assert manifest["samples"] == len(selected) == manifest["stats"]["successes"]

    table = read_table(output)
    assert table.column("source_key").to_pylist() == selected  # same samples, view order, no extras
    assert table.column("uid").to_pylist() == view.column("uid").to_pylist()
    sizes = [pq.read_metadata(layout.parquet_path(output, shard)).num_rows for shard in layout.complete_shards(output)]
    assert sizes == [7] * (len(selected) // 7) + ([len(selected) % 7] if len(selected) % 7 else [])
    assert table.column("key").to_pylist() == [layout.sample_key(i // 7, i % 7, 7) for i in range(len(selected))]

    old, new = members_by_key(root), members_by_key(output)
    for row in table.to_pylist():
        assert new[row["key"]]["jpg" if "jpg" in new[row["key"]] else "png"] == old[row["source_key"]].get(
            "jpg", old[row["source_key"]].get("png")
        )
        assert new[row["key"]]["txt"] == old[row["source_key"]]["txt"]

    source_table = read_table(root)
    score_of = dict(zip(source_table.column("key").to_pylist(), source_table.column("clip_score").to_pylist()))
    assert table.column("clip_score").to_pylist() == [score_of[key] for key in selected]
    old_keys, old_vectors = read_embeddings(root, "image", PIXEL_MODEL_ID)
    new_keys, new_vectors = read_embeddings(output, "image", PIXEL_MODEL_ID)
    old_row = {key: row for row, key in enumerate(old_keys)}
    source_of = dict(zip(table.column("key").to_pylist(), selected))
    assert new_keys == table.column("key").to_pylist()
    assert np.array_equal(new_vectors, old_vectors[[old_row[source_of[key]] for key in new_keys]])
    assert (output / "scores" / PIXEL_MODEL_ID / "model.json").exists()
    capsys.readouterr()
    assert cli_main(["stats", str(output)]) == 0  # shard stats in the download's shape
    assert f"{len(selected)} samples in {len(sizes)} shards: {len(selected)} stored" in capsys.readouterr().out


def test_interrupted_reshard_resumes_without_duplicates(source, tmp_path, ray_local):
    root, view = source
    output = tmp_path / "out"
    reshard(root, view="best", output=output, shard_size=5, executor="inline")
    shards = layout.complete_shards(output)
    untouched = layout.tar_path(output, shards[0]).local_path().stat().st_mtime_ns
    # an interruption: the last shards lost their commit markers, a temporary was left behind
    layout.manifest_path(output).remove()
    for shard in shards[-2:]:
        layout.stats_path(output, shard).remove()
    (output / f".{shards[-1]}.tar.dead.tmp").write_bytes(b"partial")
    manifest = reshard(root, view="best", output=output, shard_size=5)  # the two missing shards, as Ray tasks
    assert layout.complete_shards(output) == shards
    assert layout.tar_path(output, shards[0]).local_path().stat().st_mtime_ns == untouched
    assert not list(output.glob(".*.tmp"))
    keys = read_table(output).column("source_key").to_pylist()
    assert keys == view.column("key").to_pylist() and manifest["samples"] == len(keys)


def test_reshard_refuses_to_mix_plans(source, tmp_path):
    root, _ = source
    output = tmp_path / "out"
    reshard(root, view="best", output=output, shard_size=50, executor="inline")
    with pytest.raises(ValueError, match="another plan"):
        reshard(root, view="best", output=output, shard_size=8, executor="inline")
    with pytest.raises(ValueError, match="new folder"):
        reshard(root, view="best", output=root, executor="inline")
    with pytest.raises(FileNotFoundError, match="no view"):
        reshard(root, view="missing", output=tmp_path / "other", executor="inline")
