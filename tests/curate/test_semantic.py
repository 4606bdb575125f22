"""SemDeDup: finds what brute force finds, eps is a distance, Ray gives the same answer."""

import sys
from pathlib import Path

import numpy as np
import pytest

from mmdata.curate.components import connected_components
from mmdata.curate.semantic import (
    SemanticConfig,
    balanced_batches,
    balanced_split,
    cluster_members,
    normalised,
    semantic_edges,
)
from mmdata.execution import ExecutionConfig, open_executor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from dedup import brute_force_pairs, clustered_embeddings  # noqa: E402  (the benchmark's generator)


@pytest.fixture(scope="module")
def embeddings():
    return clustered_embeddings(6000, 64, 0.05, seed=3)


def test_recall_against_brute_force(embeddings):
    vectors, partner = embeddings
    config = SemanticConfig(eps=0.05, clusters=12)
    left, right = semantic_edges(vectors, config)
    labels = connected_components(len(vectors), left, right)
    truth_left, truth_right = brute_force_pairs(vectors, 1 - config.eps)
    assert len(truth_left) > 100
    assert np.mean(labels[truth_left] == labels[truth_right]) >= 0.95
    planted = np.flatnonzero(partner >= 0)
    assert np.mean(labels[planted] == labels[partner[planted]]) >= 0.9
    # forest edges: at most one per merged row per cluster a row belongs to
    assert len(left) <= 2 * (len(vectors) - len(np.unique(labels)))
    # no edge below the threshold (spanning-forest edges join a row to its component's root, which
    # may be a chain away, so check the direct pairs found by brute force instead)
    unit = vectors.astype(np.float32) / np.linalg.norm(vectors.astype(np.float32), axis=1, keepdims=True)
    joined = labels[truth_left] == labels[truth_right]
    assert np.all(np.einsum("ij,ij->i", unit[truth_left[joined]], unit[truth_right[joined]]) > 0.95)


def test_larger_eps_removes_more(embeddings):
    vectors, _ = embeddings
    removed = []
    for eps in (0.01, 0.05, 0.6):
        left, right = semantic_edges(vectors, SemanticConfig(eps=eps, clusters=12))
        removed.append(len(vectors) - len(np.unique(connected_components(len(vectors), left, right))))
    assert removed[0] < removed[1] < removed[2]
    with pytest.raises(ValueError, match="cosine distance"):
        SemanticConfig(eps=2.5)


@pytest.mark.parametrize("executor", ["ray", "processes"])
def test_tasks_on_an_executor_give_the_in_process_answer(embeddings, ray_local, executor):
    vectors, _ = embeddings
    config = SemanticConfig(eps=0.05, clusters=12, block_rows=256)
    local = connected_components(len(vectors), *semantic_edges(vectors, config))
    with open_executor(ExecutionConfig(executor=executor, workers=2)) as opened:
        remote = connected_components(len(vectors), *semantic_edges(vectors, config, executor=opened, tasks=4))
    assert np.array_equal(local, remote)


def test_clusters_split_into_balanced_batches():
    assignments = np.array([0, 1, 1, 2, 2, 2, 2, 5])
    groups = cluster_members(np.arange(8), assignments)
    assert [list(group) for group in groups] == [[0], [1, 2], [3, 4, 5, 6], [7]]
    batches = balanced_batches(groups, 2)
    assert sorted(sum(len(group) for group in batch) for batch in batches) == [4, 4]
    assert sorted(np.concatenate([np.concatenate(batch) for batch in batches])) == list(range(8))
    assert balanced_split([2, 3, 3, 1], 2) == [[1, 0], [2, 3]]  # largest first, equal sizes in their order


@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_normalised_rounds_as_numpy_norm_and_copies(embeddings, dtype):
    vectors = embeddings[0][:500].astype(dtype)
    vectors[3] = 0
    as_float = vectors.astype(np.float32)
    expected = as_float / np.maximum(np.linalg.norm(as_float, axis=1, keepdims=True), 1e-12)
    unit = normalised(vectors)
    assert unit.dtype == np.float32 and np.array_equal(unit, expected) and not unit[3].any()
    assert not np.shares_memory(unit, vectors)
