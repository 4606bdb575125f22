"""Streamed SemDeDup: the same edges and check as the in-memory tier, from chunks, with a spill on disk."""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

from mmdata.curate.components import connected_components
from mmdata.curate.semantic import SemanticConfig, normalised, semantic_edges, semantic_groups
from mmdata.curate.semantic_check import check_semantic
from mmdata.curate.semantic_stream import SpilledEmbeddings, semantic_duplicates
from mmdata.execution import ExecutionConfig, open_executor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from dedup import clustered_embeddings  # noqa: E402  (the benchmark's generator)
from embedding_corpus import EmbeddingSpec, add_embeddings, embedding_chunks, successful_rows  # noqa: E402
from metadata_corpus import CorpusSpec, write_corpus  # noqa: E402

from mmdata.table import read_embeddings  # noqa: E402


@pytest.fixture(scope="module")
def dataset():
    """6,000 float16 embeddings at scattered global rows of 8,000 (the others have none), a mask of rows
    other tiers grouped, and the planted copies as the near tier's pairs (global rows, each once)."""
    vectors, partner = clustered_embeddings(6000, 64, 0.05, seed=3)
    rng = np.random.default_rng(7)
    rows = np.sort(rng.choice(8000, len(vectors), replace=False)).astype(np.int64)
    copies = np.flatnonzero(partner >= 0)
    known = np.zeros(8000, dtype=bool)
    known[rows[copies[: len(copies) // 2]]] = known[rows[partner[copies[: len(copies) // 2]]]] = True
    left, right = rows[copies], rows[partner[copies]]
    pairs = (np.minimum(left, right), np.maximum(left, right))
    return vectors, rows, known, pairs


def chunked(rows, vectors, size):
    return lambda: ((rows[start : start + size], vectors[start : start + size]) for start in range(0, len(rows), size))


def in_memory(vectors, rows, known, pairs, config, force=False):
    """Today's path: semantic_groups, check_semantic on embedding positions, semantic_edges."""
    position = {row: index for index, row in enumerate(rows.tolist())}
    pair_positions = tuple(np.array([position[row] for row in side], dtype=np.int64) for side in pairs)
    groups = semantic_groups(vectors, config)
    check = check_semantic(vectors, groups, config.eps, known=known[rows], copy_pairs=pair_positions, force=force)
    left, right = semantic_edges(vectors, config, groups=groups) if check.ran else (np.empty(0, np.int64),) * 2
    return (rows[left], rows[right]), check


@pytest.mark.parametrize("chunk_rows,block_rows", [(997, 2048), (50, 64)])  # the second: a tight memory cap
def test_same_edges_and_check_as_in_memory(dataset, tmp_path, chunk_rows, block_rows):
    vectors, rows, known, pairs = dataset
    config = SemanticConfig(eps=0.05, clusters=12, block_rows=block_rows)
    edges, check = in_memory(vectors, rows, known, pairs, config)
    assert len(edges[0]) > 100 and check.ran and check.known_copies > 100
    with semantic_duplicates(chunked(rows, vectors, chunk_rows), config, known=known, copy_pairs=pairs, force=False,
                             scratch=str(tmp_path)) as outcome:
        assert outcome.check == check
        assert np.array_equal(outcome.edges[0], edges[0]) and np.array_equal(outcome.edges[1], edges[1])
        assert outcome.embeddings.dtype == np.float16  # spilled as stored, no float32 copy
    assert os.listdir(tmp_path) == []  # close() removed the spill


def test_default_clusters_and_a_refused_tier_match_too(tmp_path):
    rng = np.random.default_rng(1)
    vectors = normalised(rng.standard_normal((2500, 32)) * 0.02 + 1.0).astype(np.float16)  # everything alike
    rows, known = np.arange(2500, dtype=np.int64), np.zeros(2500, dtype=bool)
    config = SemanticConfig(eps=0.05)
    edges, check = in_memory(vectors, rows, known, (rows[:0], rows[:0]), config)
    assert check.refused and not len(edges[0])
    outcome = semantic_duplicates(chunked(rows, vectors, 300), config, known=known, copy_pairs=None, force=False,
                                  scratch=str(tmp_path))
    assert outcome.check == check and not len(outcome.edges[0])
    forced = semantic_duplicates(chunked(rows, vectors, 300), config, known=known, copy_pairs=None, force=True,
                                 scratch=str(tmp_path))
    assert forced.check.forced and len(forced.edges[0]) == len(semantic_edges(vectors, config)[0])


def test_clusters_compared_as_tasks_give_the_inline_answer(dataset, tmp_path):
    vectors, rows, known, pairs = dataset
    config = SemanticConfig(eps=0.05, clusters=12, block_rows=256)
    inline = semantic_duplicates(chunked(rows, vectors, 1000), config, known=known, copy_pairs=pairs, force=False,
                                 scratch=str(tmp_path))
    with open_executor(ExecutionConfig(executor="processes", workers=2)) as executor:
        tasks = semantic_duplicates(chunked(rows, vectors, 1000), config, known=known, copy_pairs=pairs, force=False,
                                    scratch=str(tmp_path), executor=executor)
    assert tasks.check == inline.check
    assert np.array_equal(connected_components(8000, *tasks.edges), connected_components(8000, *inline.edges))


def test_similarities_read_only_the_rows_asked_for(dataset, tmp_path):
    vectors, rows, known, pairs = dataset
    outcome = semantic_duplicates(chunked(rows, vectors, 800), SemanticConfig(eps=0.05, clusters=12), known=known,
                                  copy_pairs=pairs, force=False, scratch=str(tmp_path))
    missing = int(np.setdiff1d(np.arange(8000), rows)[0])
    left = np.concatenate([pairs[0], [missing, rows[0]]])
    right = np.concatenate([pairs[1], [rows[1], missing]])
    measured = outcome.similarities(left, right)
    unit = normalised(vectors)
    expected = np.einsum("ij,ij->i", unit[np.searchsorted(rows, pairs[0])], unit[np.searchsorted(rows, pairs[1])])
    assert measured.dtype == np.float32 and np.array_equal(measured[:-2], expected)
    assert np.isnan(measured[-2:]).all() and np.all(measured[:-2] > 0.9)
    with pytest.raises(ValueError, match="pairs"):
        outcome.similarities(left, right[:-1])


def test_spilled_embeddings_read_slices_and_row_ids(tmp_path):
    vectors = np.arange(40, dtype=np.float16).reshape(10, 4)
    path = tmp_path / "spill.bin"
    vectors.tofile(path)
    spilled = SpilledEmbeddings(str(path), 10, 4, np.float16)
    assert np.array_equal(spilled[3:7], vectors[3:7]) and np.array_equal(spilled[8:20], vectors[8:])
    assert np.array_equal(spilled[np.array([9, 0, 9])], vectors[[9, 0, 9]])
    assert spilled[np.array([], int)].shape == (0, 4)
    assert np.array_equal(spilled[np.array([[5, 6], [7, 1]])], vectors[[[5, 6], [7, 1]]])  # runs and shapes kept
    with pytest.raises(IndexError, match="row ids"):
        spilled[np.array([10])]
    with pytest.raises(TypeError, match="integer row ids"):
        spilled[np.ones(10, dtype=bool)]


def test_bad_chunks_raise(tmp_path):
    vectors = np.ones((4, 8), dtype=np.float16)
    config = SemanticConfig(clusters=1)
    options = dict(known=np.zeros(10, dtype=bool), copy_pairs=None, force=False, scratch=str(tmp_path))
    with pytest.raises(ValueError, match="ascending"):
        semantic_duplicates(lambda: [(np.array([3, 2, 5, 6]), vectors)], config, **options)
    with pytest.raises(ValueError, match="one model"):
        semantic_duplicates(lambda: [(np.array([0, 1]), vectors[:2]), (np.array([2]), np.ones((1, 4)))], config,
                            **options)
    with pytest.raises(ValueError, match="every sample row"):
        semantic_duplicates(lambda: [(np.array([7, 8, 9, 10]), vectors)], config, **options)
    with pytest.raises(ValueError, match="run mmdata score"):
        semantic_duplicates(lambda: iter([]), config, **options)
    assert os.listdir(tmp_path) == []  # a failed run leaves no spill behind


def test_a_scored_corpus_read_a_shard_at_a_time_matches_the_whole_matrix(tmp_path):
    """End to end on a metadata corpus with planted copies: chunks from iter_embeddings (float16 as stored)
    give what read_embeddings' whole matrix gives in memory, and the planted copies are found."""
    root = tmp_path / "corpus"
    write_corpus(root, CorpusSpec(rows=12_000, shard_size=1_500, annotations=False))
    add_embeddings(root, EmbeddingSpec(dim=64))
    keys, vectors = read_embeddings(root, "image", "bench-embed")
    chunks = embedding_chunks(root)
    rows = np.concatenate([chunk_rows for chunk_rows, _ in chunks()])
    assert vectors.dtype == np.float16 and len(rows) == len(keys) == len(vectors)
    known = np.zeros(successful_rows(root), dtype=bool)
    config = SemanticConfig(eps=0.05)
    edges, check = in_memory(vectors, rows, known, (rows[:0], rows[:0]), config)
    with semantic_duplicates(chunks, config, known=known, copy_pairs=None, force=False,
                             scratch=str(tmp_path / "scratch")) as outcome:
        assert outcome.check == check and check.ran
        assert np.array_equal(outcome.edges[0], edges[0]) and np.array_equal(outcome.edges[1], edges[1])
        similarity = outcome.similarities(*edges)
    assert len(edges[0]) >= 0.04 * len(rows) and np.all(similarity > 0.95)
