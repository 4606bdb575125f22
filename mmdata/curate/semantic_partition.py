"""The semantic tier's clusters in one flat file, cluster after cluster: reading a cluster is one read.

Once k-means has placed every row (and the boundary rows' guests in their second cluster), one
sequential pass over the spilled embeddings copies each (row, cluster) membership's vector into its
slot of this file: clusters in ascending order, within a cluster the order of
:func:`mmdata.curate.semantic.cluster_members`. The comparisons then read a cluster with one contiguous
read instead of gathering its rows from all over the spill, and read it once: :func:`compare_clusters`
normalises it, finds its duplicate pairs and measures the check's nearest neighbours
(:mod:`mmdata.curate.semantic_check`) with the same arithmetic as the in-memory tier's two passes, so the
same edges and the same check. Memory: one block of the spill while writing, one cluster while
comparing, and the memberships (row ids); never every vector.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

from mmdata.curate.semantic import (
    SemanticConfig,
    balanced_split,
    cluster_duplicate_edges,
    compared_in_tasks,
    concatenated_edges,
    normalised,
)
from mmdata.curate.semantic_check import cluster_nearest
from mmdata.execution import Executor

WRITE_BLOCK_BYTES = 64 << 20  # spilled vectors read at once while writing the file


class ClusterFile:
    """Clusters whose vectors lie in ``path``: cluster ``index`` holds ``members(index)``, their vectors
    in slots ``starts[index]`` onwards. Small to pickle when taken a few clusters at a time
    (:meth:`subset`): a task reads its clusters from the file itself."""

    def __init__(self, path: str, dim: int, dtype: np.dtype, starts: np.ndarray, groups: list[np.ndarray]):
        self.path, self.dim, self.dtype = path, dim, np.dtype(dtype)
        self.starts, self.groups = np.asarray(starts, dtype=np.int64), groups

    def __len__(self) -> int:
        return len(self.groups)

    def members(self, index: int) -> np.ndarray:
        return self.groups[index]

    def vectors(self, index: int) -> np.ndarray:
        count = len(self.groups[index])
        offset = int(self.starts[index]) * self.dim * self.dtype.itemsize
        return np.fromfile(self.path, self.dtype, count * self.dim, offset=offset).reshape(count, self.dim)

    def subset(self, indices: list[int]) -> "ClusterFile":
        """The clusters ``indices``, in that order, reading the same file."""
        return ClusterFile(self.path, self.dim, self.dtype, self.starts[indices], [self.groups[i] for i in indices])


def write_cluster_file(
    embeddings, member_rows: np.ndarray, member_clusters: np.ndarray, path: str, *,
    block_bytes: int = WRITE_BLOCK_BYTES,
) -> ClusterFile:
    """Write every membership's vector to ``path``, grouped by cluster (empty clusters take no slot).

    ``embeddings``: a ``[rows, dim]`` matrix read by contiguous slices (a spill); ``member_rows`` /
    ``member_clusters``: each membership's row and cluster, as :func:`mmdata.curate.semantic.assign_clusters`
    returns them. The spill is read once, in order, a block of ``block_bytes`` at a time.
    """
    rows, dim = embeddings.shape
    dtype = np.dtype(embeddings.dtype)
    member_rows = np.asarray(member_rows, dtype=np.int64)
    member_clusters = np.asarray(member_clusters, dtype=np.int64)
    by_cluster = np.argsort(member_clusters, kind="stable")
    boundaries = np.flatnonzero(np.diff(member_clusters[by_cluster])) + 1
    starts = np.concatenate([[0], boundaries]).astype(np.int64) if len(by_cluster) else np.empty(0, np.int64)
    groups = np.split(member_rows[by_cluster], boundaries) if len(by_cluster) else []
    slot = np.empty(len(by_cluster), dtype=np.int64)
    slot[by_cluster] = np.arange(len(by_cluster))
    del by_cluster
    by_row = np.argsort(member_rows, kind="stable")
    sorted_rows, slot = member_rows[by_row], slot[by_row]
    del by_row
    row_bytes = dim * dtype.itemsize
    step = max(1, block_bytes // max(1, row_bytes))
    descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        for start in range(0, rows, step):
            first, last = np.searchsorted(sorted_rows, [start, start + step])
            if first == last:
                continue
            block = np.asarray(embeddings[start : start + step])
            order = np.argsort(slot[first:last], kind="stable")
            slots = slot[first:last][order]
            gathered = np.ascontiguousarray(block[sorted_rows[first:last][order] - start], dtype=dtype)
            _write_runs(descriptor, gathered, slots, row_bytes)
    finally:
        os.close(descriptor)
    return ClusterFile(path, dim, dtype, starts, groups)


@dataclass
class ComparedClusters:
    """What :func:`compare_clusters` found: the clusters' duplicate edges (global row ids, spanning forests
    one cluster after the other) and, for the sampled rows they hold, the similarity to their nearest
    other member (a row in two clusters: once per cluster)."""

    left: np.ndarray
    right: np.ndarray
    sampled: np.ndarray  # int64: positions in the sample
    nearest: np.ndarray  # float32, one per entry of ``sampled``


def compare_clusters(clusters: ClusterFile, sample: np.ndarray, threshold: float, block_rows: int) -> ComparedClusters:
    """Each cluster read and normalised once: :func:`mmdata.curate.semantic.cluster_duplicate_edges` and,
    where it holds rows of ``sample`` (ascending row ids), :func:`mmdata.curate.semantic_check.cluster_nearest`
    (a task's unit of work)."""
    edges, sampled, nearest = [], [], []
    for index in range(len(clusters)):
        members = clusters.members(index)
        if len(members) < 2:
            continue
        unit = normalised(clusters.vectors(index))
        edges.append(cluster_duplicate_edges(unit, members, threshold, block_rows))
        found = np.minimum(np.searchsorted(sample, members), max(0, len(sample) - 1))
        inside = np.flatnonzero(sample[found] == members) if len(sample) else found[:0]
        if len(inside):
            sampled.append(found[inside])
            nearest.append(cluster_nearest(unit, members, inside, block_rows))
    left, right = concatenated_edges(edges)
    return ComparedClusters(left=left, right=right,
                            sampled=np.concatenate(sampled) if sampled else np.empty(0, np.int64),
                            nearest=np.concatenate(nearest) if nearest else np.empty(0, np.float32))


def cluster_file_pass(
    clusters: ClusterFile, config: SemanticConfig, sample: np.ndarray, *, executor: Executor | None = None,
    tasks: int = 64,
) -> tuple[tuple[np.ndarray, np.ndarray], np.ndarray]:
    """(the edges of :func:`mmdata.curate.semantic.semantic_edges`, the check's
    :func:`mmdata.curate.semantic_check.nearest_similarity` of ``sample``) in one pass over the file:
    here, the edges in cluster order; with an ``executor``, ``tasks`` tasks of balanced cost, each reading
    its clusters from the file (edges in their completion order)."""
    threshold = 1.0 - config.eps
    if executor is None:
        results = [compare_clusters(clusters, sample, threshold, config.block_rows)]
    else:
        batches = balanced_split([len(members) for members in clusters.groups], tasks)
        results = compared_in_tasks(executor, compare_clusters, [
            (clusters.subset(batch), sample, threshold, config.block_rows) for batch in batches])
    best = np.full(len(sample), -np.inf, dtype=np.float32)
    for result in results:
        np.maximum.at(best, result.sampled, result.nearest)
    return concatenated_edges([(result.left, result.right) for result in results]), best


def _write_runs(descriptor: int, vectors: np.ndarray, slots: np.ndarray, row_bytes: int) -> None:
    """Write ``vectors`` (one row per slot, ``slots`` ascending) with one write per run of consecutive slots."""
    breaks = np.flatnonzero(np.diff(slots) != 1) + 1
    data = memoryview(vectors.reshape(-1).view(np.uint8))
    for begin, end in zip([0, *breaks.tolist()], [*breaks.tolist(), len(slots)]):
        piece, offset = data[begin * row_bytes : end * row_bytes], int(slots[begin]) * row_bytes
        while len(piece):
            written = os.pwrite(descriptor, piece, offset)
            piece, offset = piece[written:], offset + written
