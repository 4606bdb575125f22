"""Decontamination a shard at a time gives what matching the whole dataset at once gave: the same rows,
reasons, matched names, counts and settings, with any executor and any embedding batch size."""

import shutil

import numpy as np
import pyarrow as pa
import pytest
from curate_corpus import build_corpus, scene_embeddings, write_dataset

from mmdata import layout
from mmdata.curate.decontaminate import decontaminate
from mmdata.curate.hashes import NearHashes, dataset_hashes, hash_rows, near_matches
from mmdata.curate.semantic import normalised
from mmdata.execution import ExecutionConfig
from mmdata.schemas.annotations import CONTAMINATION_SCHEMA
from mmdata.storage import read_parquet
from mmdata.table import read_embeddings

EPS = 0.02
PLANTED = ((0, "original"), (1, "redraw"), (2, "crop"), (3, "jpeg"), (4, "png_original"))


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    """A dataset of 6 scenes and their variants in shards of 7 (every 5th row a failed download), with
    stand-in embeddings; the evaluation set is another dataset of the same model holding a few of them."""
    folder = tmp_path_factory.mktemp("decontaminate-streaming")
    corpus = build_corpus(6, seed=5)
    embeddings = scene_embeddings(corpus)
    write_dataset(folder / "data", corpus, shard_size=7, scores=[0.3] * len(corpus), embeddings=embeddings,
                  failures_every=5)
    chosen = [row for row, item in enumerate(corpus) if (item.base, item.kind) in PLANTED]
    write_dataset(folder / "eval", [corpus[row] for row in chosen], shard_size=3, scores=[0.3] * len(chosen),
                  embeddings=embeddings[chosen])
    return folder / "data", folder / "eval"


def whole_dataset_contamination(root, evaluation) -> pa.Table:
    """The matching as it was done before it streamed: every sample's hashes and embeddings at once."""
    from mmdata.curate.decontaminate import load_eval_images

    images = load_eval_images(evaluation)
    eval_hashes = hash_rows(list(zip(images.names, images.images)))
    samples = dataset_hashes(root, execution=ExecutionConfig(executor="inline"))
    keys = samples.column("key").to_pylist()
    reason, matched_by = [None] * len(keys), [None] * len(keys)

    def mark(rows, names, tier):
        for row, name in zip(rows, names):
            if reason[row] is None:
                reason[row], matched_by[row] = tier, name

    eval_names = eval_hashes.column("key").to_pylist()
    for column in ("sha256", "pixel_hash"):
        lookup = dict(zip(eval_hashes.column(column).to_pylist(), eval_names))
        values = samples.column(column).to_pylist()
        rows = [row for row, value in enumerate(values) if value is not None and value in lookup]
        mark(rows, [lookup[values[row]] for row in rows], "exact")
    sample_rows, sample_near = NearHashes.from_table(samples)
    eval_rows, eval_near = NearHashes.from_table(eval_hashes)
    query, reference, distance = near_matches(sample_near, eval_near, 8, 24.0)
    order = np.lexsort((distance, query))
    mark(sample_rows[query[order]], [eval_names[eval_rows[row]] for row in reference[order]], "near")
    sample_keys, vectors = read_embeddings(root, "image", layout.default_model(root))
    eval_keys, eval_vectors = read_embeddings(evaluation, "image", layout.default_model(root))
    similarity = normalised(vectors) @ normalised(eval_vectors).T
    best = similarity.argmax(axis=1)
    position = {key: row for row, key in enumerate(keys)}
    hits = np.flatnonzero(similarity[np.arange(len(best)), best] > 1 - EPS)
    mark([position[sample_keys[row]] for row in hits], [eval_keys[best[row]] for row in hits], "embedding")
    return pa.table({"key": keys, "contaminated": [value is not None for value in reason],
                     "contaminated_by": matched_by, "contamination_reason": reason}, schema=CONTAMINATION_SCHEMA)


@pytest.mark.parametrize("executor, batch_size", [("inline", 8192), ("processes", 1)])
def test_shard_tasks_give_the_whole_dataset_matching(datasets, tmp_path, executor, batch_size):
    data, evaluation = datasets
    root = shutil.copytree(data, tmp_path / "data")
    expected = whole_dataset_contamination(data, evaluation)
    assert set(expected.column("contamination_reason").to_pylist()) == {None, "exact", "near", "embedding"}
    result = decontaminate(root, against=evaluation, eps=EPS, batch_size=batch_size, executor=executor, workers=2)
    written = read_parquet(layout.annotations_dir(root) / "contamination.parquet")
    assert written.select(expected.column_names).cast(expected.schema).equals(expected)
    assert result.table.equals(written)
    reasons = expected.column("contamination_reason").to_pylist()
    assert result.counts == {
        "examined": expected.num_rows, "eval_images": len(PLANTED), "eval_undecodable": 0,
        "contaminated": sum(value is not None for value in reasons),
        **{tier: reasons.count(tier) for tier in ("exact", "near", "embedding")},
    }
    assert not (layout.annotations_dir(root) / ".contamination").exists()  # the per-shard parts are gone


def test_a_failed_run_leaves_the_previous_table_and_a_rerun_completes(datasets, tmp_path, monkeypatch):
    from mmdata.curate import decontaminate as module

    data, evaluation = datasets
    root = shutil.copytree(data, tmp_path / "data")
    first = decontaminate(root, against=evaluation, eps=EPS, embedding=False, executor="inline").table
    calls = []

    def failing(root, shard, *arguments):
        calls.append(shard)
        if len(calls) == 3:
            raise RuntimeError("worker lost")
        return original(root, shard, *arguments)

    original = module.contamination_shard
    monkeypatch.setattr(module, "contamination_shard", failing)
    with pytest.raises(RuntimeError, match="worker lost"):
        decontaminate(root, against=evaluation, eps=EPS, executor="inline")
    assert read_parquet(layout.annotations_dir(root) / "contamination.parquet").equals(first)
    monkeypatch.setattr(module, "contamination_shard", original)
    again = decontaminate(root, against=evaluation, eps=EPS, executor="inline")
    assert again.counts["embedding"] >= 1 and again.table.num_rows == first.num_rows
