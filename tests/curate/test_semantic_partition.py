"""The cluster file: each cluster's vectors contiguous, the groups and edges of the in-memory tier, exactly."""

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from mmdata.curate.semantic import SemanticConfig, assign_clusters, cluster_members, semantic_edges
from mmdata.curate.semantic_check import nearest_similarity
from mmdata.curate.semantic_partition import ClusterFile, cluster_file_pass, write_cluster_file
from mmdata.curate.semantic_stream import SpilledEmbeddings
from mmdata.execution import ExecutionConfig, open_executor

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from dedup import clustered_embeddings  # noqa: E402  (the benchmark's generator)


@pytest.fixture(scope="module")
def embeddings():
    return clustered_embeddings(3000, 32, 0.05, seed=5)[0]


@pytest.mark.parametrize("block_rows", [1, 7, 4096])  # a row at a time, blocks cutting clusters, all at once
@pytest.mark.parametrize("cluster_ids", [(0, 1, 2), (9, 2, 5)])  # in order; with gaps (empty clusters) and unordered
def test_each_cluster_is_its_members_vectors_in_the_in_memory_order(tmp_path, block_rows, cluster_ids):
    vectors = np.arange(60, dtype=np.float16).reshape(20, 3)
    primary = np.array(cluster_ids)[np.arange(20) % 3]
    guests = np.array([1, 4, 13, 19])  # each also in a second cluster, after that cluster's own rows
    guest_clusters = np.array(cluster_ids)[[2, 0, 2, 0]]
    rows = np.concatenate([np.arange(20), guests])
    clusters = np.concatenate([primary, guest_clusters])
    written = write_cluster_file(vectors, rows, clusters, str(tmp_path / "clusters.bin"),
                                 block_bytes=block_rows * vectors.itemsize * 3)
    expected = cluster_members(rows, clusters)
    assert len(written) == len(expected) == 3
    for index, members in enumerate(expected):
        assert np.array_equal(written.members(index), members)
        assert np.array_equal(written.vectors(index), vectors[members])
        assert written.vectors(index).dtype == np.float16
    assert (tmp_path / "clusters.bin").stat().st_size == len(rows) * 3 * 2  # a slot per membership, no gap


def test_one_pass_over_a_spill_gives_the_groups_edges_and_nearest_neighbours_of_the_matrix(embeddings, tmp_path):
    path = tmp_path / "spill.bin"
    embeddings.tofile(path)
    spilled = SpilledEmbeddings(str(path), *embeddings.shape, embeddings.dtype)
    config = SemanticConfig(eps=0.05, clusters=9, boundary_margin=0.05, block_rows=100)
    member_rows, member_clusters = assign_clusters(embeddings, config)
    assert len(member_rows) > len(embeddings)  # guests
    groups = cluster_members(member_rows, member_clusters)
    written = write_cluster_file(spilled, member_rows, member_clusters, str(tmp_path / "clusters.bin"),
                                 block_bytes=50_000)  # about 780 rows a block: clusters cut across blocks
    assert [list(written.members(index)) for index in range(len(written))] == [list(group) for group in groups]
    sample = np.sort(np.random.default_rng(0).choice(len(embeddings), 500, replace=False))
    edges = semantic_edges(embeddings, config, groups=groups)
    nearest = nearest_similarity(embeddings, sample, groups, block_rows=config.block_rows)
    found, measured = cluster_file_pass(written, config, sample)
    assert len(edges[0]) > 50 and np.isfinite(nearest).all()
    assert np.array_equal(found[0], edges[0]) and np.array_equal(found[1], edges[1])  # same order too
    assert np.array_equal(measured, nearest)  # guests: the best of a row's two clusters


def test_tasks_read_their_clusters_and_find_what_the_in_memory_tasks_find(embeddings, tmp_path):
    config = SemanticConfig(eps=0.05, clusters=9, block_rows=128)
    member_rows, member_clusters = assign_clusters(embeddings, config)
    groups = cluster_members(member_rows, member_clusters)
    written = write_cluster_file(embeddings, member_rows, member_clusters, str(tmp_path / "clusters.bin"))
    one = written.subset([2])
    assert len(pickle.dumps(one)) < len(pickle.dumps(written)) / 3  # a task carries its clusters' row ids only
    assert np.array_equal(one.vectors(0), embeddings[groups[2]])
    sample = np.arange(0, len(embeddings), 7)
    with open_executor(ExecutionConfig(executor="processes", workers=2)) as executor:
        in_memory = semantic_edges(embeddings, config, groups=groups, executor=executor, tasks=3)
        from_file, nearest = cluster_file_pass(written, config, sample, executor=executor, tasks=3)
    assert len(in_memory[0]) > 50
    assert sorted(zip(*from_file)) == sorted(zip(*in_memory))  # each task's edges; tasks in completion order
    assert np.array_equal(nearest, nearest_similarity(embeddings, sample, groups, block_rows=config.block_rows))


def test_a_single_row_is_one_cluster_of_one(tmp_path):
    written = write_cluster_file(np.ones((1, 4), np.float16), np.array([0]), np.array([0]), str(tmp_path / "c.bin"))
    assert isinstance(written, ClusterFile) and len(written) == 1 and list(written.members(0)) == [0]
    (left, _), nearest = cluster_file_pass(written, SemanticConfig(), np.array([0]))
    assert len(left) == 0 and nearest.tolist() == [-np.inf]
