"""The index build streams: shards are read a few at a time into ``rows.parquet`` and ``vectors.npy`` and
the vectors are added in batches. On small sets it gives what a build over the whole set in memory gives:
the same rows, the same stored vectors and the same hits (exact kinds always; trained kinds when the
training sample is the whole set; HNSW when its batch holds every vector), whatever the batch size."""

import shutil

import numpy as np
import pyarrow as pa
import pytest
from embedding_corpus import EmbeddingSpec, add_embeddings
from metadata_corpus import CorpusSpec, write_corpus

from mmdata import layout
from mmdata.atomic import parquet_writer
from mmdata.cli import main
from mmdata.schemas.index import ROWS_SCHEMA
from mmdata.search.ann import FLAT, HNSW, IVF_PQ, AnnIndex, IndexConfig, VectorFile, normalise, recall_at_k
from mmdata.search.clustered import clustered_embeddings
from mmdata.search.index import IndexRows, build_index, load_index, read_shard_embeddings
from mmdata.storage import location, read_parquet
from mmdata.table import read_embeddings

MODEL = "bench-embed"
FORCE_IVF = IndexConfig(exact_max_vectors=0, hnsw_max_vectors=0)
FORCE_HNSW = IndexConfig(exact_max_vectors=0, hnsw_max_vectors=10**6)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """2,400 rows in 6 shards (some failed downloads, some failed scores) with 32-d float16 embeddings."""
    root = tmp_path_factory.mktemp("corpus")
    write_corpus(root, CorpusSpec(rows=2_400, shard_size=400, annotations=False))
    add_embeddings(root, EmbeddingSpec(dim=32))
    return root


@pytest.fixture(scope="module")
def queries():
    return normalise(np.random.default_rng(5).standard_normal((40, 32)))


def whole_set(root):
    """What the build gave when it held everything: every shard's rows and vectors, one in-memory build."""
    shards = layout.complete_shards(root)
    rows = pa.concat_tables([read_shard_embeddings(layout.dataset(root), MODEL, "image", shard).rows
                             for shard in shards])
    return rows, read_embeddings(root, "image", MODEL)[1]


@pytest.mark.parametrize("config, kind", [(IndexConfig(), FLAT), (FORCE_IVF, IVF_PQ)])
@pytest.mark.parametrize("executor, batch_size", [("inline", 65_536), ("processes", 7)])
def test_streamed_build_gives_the_in_memory_index(corpus, queries, tmp_path, config, kind, executor, batch_size):
    expected_rows, vectors = whole_set(corpus)
    expected = AnnIndex.build(vectors, config)
    info = build_index(corpus, model=MODEL, config=config, force=True, batch_size=batch_size, executor=executor,
                       workers=2)
    loaded = load_index(info)
    assert info.count == len(vectors) == loaded.rows.num_rows and loaded.ann.kind == kind
    assert loaded.rows.read().equals(expected_rows)
    assert np.array_equal(np.asarray(loaded.ann.vectors), expected.vectors)
    assert info.report["search_params"] == expected.report.search_params
    assert info.report["tuned_recall"] == expected.report.tuned_recall
    similarities, ids = loaded.ann.search(queries, 10)
    expected_similarities, expected_ids = expected.search(queries, 10)
    assert np.array_equal(ids, expected_ids) and np.array_equal(similarities, expected_similarities)


def test_hnsw_in_one_batch_is_the_in_memory_graph_and_in_small_batches_as_good(tmp_path):
    vectors = clustered_embeddings(3_000, 32, clusters=30, seed=4).astype(np.float16)
    path = tmp_path / "vectors.npy"
    with VectorFile(path, 32) as written:
        for start in range(0, len(vectors), 999):
            written.append(vectors[start : start + 999])
    assert np.array_equal(np.load(path), vectors)
    queries = normalise(vectors[:50].astype(np.float32) + 0.05)
    expected = AnnIndex.build(vectors, FORCE_HNSW)
    assert expected.kind == HNSW
    one_batch = AnnIndex.build_from_file(path, FORCE_HNSW)
    assert np.array_equal(one_batch.search(queries, 10)[1], expected.search(queries, 10)[1])
    assert np.array_equal(np.asarray(one_batch.vectors), expected.vectors)  # normalised in place
    small = tmp_path / "small.npy"
    with VectorFile(small, 32) as written:
        written.append(vectors)
    batched = AnnIndex.build_from_file(small, FORCE_HNSW, batch_size=64)
    truth = np.argsort(-(normalise(queries) @ normalise(vectors).T), axis=1)[:, :10]
    assert batched.report.tuned_recall >= FORCE_HNSW.target_recall
    assert recall_at_k(batched.search(queries, 10)[1], truth) >= 0.9


def test_a_trained_index_on_a_sample_is_the_in_memory_one(tmp_path):
    """Past 64 x nlist vectors the quantiser trains on a seeded sample, drawn in one pass over the file: the
    same sample an in-memory build draws, so the same index."""
    vectors = clustered_embeddings(20_000, 32, clusters=40, seed=6)
    path = tmp_path / "vectors.npy"
    with VectorFile(path, 32) as written:
        written.append(vectors)
    config = IndexConfig(exact_max_vectors=0, hnsw_max_vectors=0)
    index = AnnIndex.build_from_file(path, config, batch_size=1_000)
    assert index.report.plan["nlist"] * 64 < len(vectors)
    assert index.report.tuned_recall >= 0.9  # 4-bit codes of 32-d clusters; the target needs longer codes
    same = AnnIndex.build(vectors.astype(np.float16), config)
    queries = normalise(vectors[:30] + 0.05)
    assert np.array_equal(index.search(queries, 10)[1], same.search(queries, 10)[1])


def test_cli_batch_size_and_a_failed_build_leaves_nothing(corpus, tmp_path, capsys):
    corpus = shutil.copytree(corpus, tmp_path / "corpus", ignore=shutil.ignore_patterns("index"))
    assert main(["index", str(corpus), "--model", MODEL, "--batch-size", "3", "--force", "--executor", "inline"]) == 0
    assert "Flat" in capsys.readouterr().out
    with pytest.raises(ValueError, match="batch_size"):
        build_index(corpus, model=MODEL, batch_size=0)
    folder = layout.dataset(corpus) / "index" / MODEL / "image"
    versions = [name for name, entry in folder.list().items() if entry["type"] == "directory"]
    with pytest.raises(ValueError, match="has no text embeddings"):
        build_index(corpus, model=MODEL, kind="text")  # the corpus's text embeddings are all null
    assert not list((corpus / "index" / MODEL / "text").glob("*"))  # the failed version was removed
    assert [name for name, entry in folder.list().items() if entry["type"] == "directory"] == versions
    assert read_parquet(folder / versions[0] / "rows.parquet").num_rows == build_index(corpus, model=MODEL).count


def test_index_rows_are_read_a_row_group_at_a_time(corpus, tmp_path):
    rows, _ = whole_set(corpus)
    path = location(tmp_path / "rows.parquet")
    with parquet_writer(path, ROWS_SCHEMA, group_rows=97) as writer:
        for start in range(0, rows.num_rows, 50):
            writer.write(rows.slice(start, 50))
    index_rows = IndexRows(path)
    assert index_rows.file.count > 10 and index_rows.num_rows == rows.num_rows
    assert index_rows.read().equals(rows)
    ids = np.array([rows.num_rows - 1, 0, 500, 96, 97, 500, 1234])
    assert index_rows.take(ids).equals(rows.take(pa.array(ids)))
    assert index_rows.take(np.array([], np.int64)).num_rows == 0
    keys = rows.column("key").to_pylist()
    asked = [keys[1234], "nope", keys[0], keys[-1], keys[97]]
    assert index_rows.ids_of(asked).to_pylist() == [1234, None, 0, rows.num_rows - 1, 97]
    assert index_rows.ids_of([]).to_pylist() == []
