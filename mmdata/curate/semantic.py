"""SemDeDup: semantic duplicates among embeddings, in memory bounded by the largest cluster.

k-means (faiss, trained on a sample) splits the embeddings into clusters; within each cluster, every
pair whose cosine similarity exceeds ``1 - eps`` is a duplicate. ``eps`` is a cosine *distance*:
``eps=0`` flags only identical directions, and a larger ``eps`` flags (and removes) more.
Each cluster's pairs are reduced to a spanning forest before leaving the cluster, so a cluster of
10,000 copies yields 9,999 edges, not 50 million.

Plain SemDeDup misses duplicate pairs that k-means puts in two clusters. Rows almost as close to
their second centroid as to their first (within ``boundary_margin`` of cosine) also join that
second cluster as guests, which recovers most of them for a few percent more comparisons.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mmdata.curate.components import connected_components, forest_edges
from mmdata.execution import Executor, StageProgress
from mmdata.execution.progress import COUNT


@dataclass(frozen=True, kw_only=True)
class SemanticConfig:
    eps: float = 0.05  # cosine distance: pairs with cosine similarity > 1 - eps are duplicates
    clusters: int | None = None  # k-means clusters; None: about one per 1,000 embeddings
    train_points_per_cluster: int = 32  # k-means trains on at most this many points per centroid
    iterations: int = 10
    block_rows: int = 2048  # rows of a cluster compared at once (memory: block_rows × cluster size)
    boundary_margin: float = 0.03  # cosine: rows this close to their second centroid join it too
    seed: int = 0

    def __post_init__(self) -> None:
        if not 0.0 <= self.eps < 2.0:
            raise ValueError(
                f"eps must be a cosine distance in [0, 2), got {self.eps}: 0.05 flags pairs with cosine > 0.95"
            )
        if self.clusters is not None and self.clusters < 1:
            raise ValueError(f"clusters must be >= 1, got {self.clusters}")
        if self.boundary_margin < 0:
            raise ValueError(f"boundary_margin must be >= 0 (0: each row in one cluster), got {self.boundary_margin}")
        if self.block_rows < 1 or self.train_points_per_cluster < 1 or self.iterations < 1:
            raise ValueError("block_rows, train_points_per_cluster and iterations must be >= 1")

    def cluster_count(self, rows: int) -> int:
        wanted = self.clusters if self.clusters is not None else max(1, round(rows / 1000))
        return max(1, min(wanted, rows))


def normalised(vectors: np.ndarray) -> np.ndarray:
    """float32 unit rows (a copy); zero rows stay zero. The arithmetic of ``np.linalg.norm`` (the sum of
    squares along each row, its square root), without its extra copies."""
    vectors = np.array(vectors, dtype=np.float32)
    norms = np.sqrt(np.add.reduce(vectors * vectors, axis=1, keepdims=True))
    vectors /= np.maximum(norms, 1e-12)
    return vectors


def assign_clusters(
    embeddings: np.ndarray, config: SemanticConfig, *, block_rows: int = 65536
) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means trained on a sample, then every row assigned in blocks.

    Returns (rows, clusters): each row once with its nearest centroid, and again with its second
    nearest when that one is within ``boundary_margin``.
    """
    import faiss

    rows, dim = embeddings.shape
    clusters = config.cluster_count(rows)
    if clusters == 1:
        return np.arange(rows, dtype=np.int64), np.zeros(rows, dtype=np.int64)
    rng = np.random.default_rng(config.seed)
    sample_size = min(rows, clusters * config.train_points_per_cluster)
    sample = normalised(embeddings[np.sort(rng.choice(rows, sample_size, replace=False))])
    kmeans = faiss.Kmeans(
        dim, clusters, niter=config.iterations, seed=config.seed, spherical=True,
        max_points_per_centroid=config.train_points_per_cluster, min_points_per_centroid=1, verbose=False,
    )
    kmeans.train(sample)
    index = faiss.IndexFlatIP(dim)
    index.add(kmeans.centroids)
    primary = np.empty(rows, dtype=np.int64)
    guest_rows, guest_clusters = [], []
    for start in range(0, rows, block_rows):
        similarity, nearest = index.search(normalised(embeddings[start : start + block_rows]), 2)
        primary[start : start + block_rows] = nearest[:, 0]
        close = np.flatnonzero((similarity[:, 0] - similarity[:, 1] <= config.boundary_margin) & (nearest[:, 1] >= 0))
        guest_rows.append(close + start)
        guest_clusters.append(nearest[close, 1])
    member_rows = np.concatenate([np.arange(rows, dtype=np.int64), *guest_rows])
    member_clusters = np.concatenate([primary, *guest_clusters]).astype(np.int64)
    return member_rows, member_clusters


def cluster_duplicate_edges(
    unit: np.ndarray, members: np.ndarray, threshold: float, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """Spanning-forest edges (global row ids) among ``members`` whose cosine exceeds ``threshold``;
    ``unit``: their vectors, :func:`normalised`, in that order."""
    if len(members) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    lefts, rights = [], []
    for start in range(0, len(members), block_rows):
        similarity = unit[start : start + block_rows] @ unit[start:].T
        # flat positions: np.nonzero on a 2-D mask costs ten times more for the same pairs in the same order
        rows, columns = np.divmod(np.flatnonzero(similarity > threshold), similarity.shape[1])
        columns = columns + start
        rows = rows + start
        upper = columns > rows
        lefts.append(rows[upper])
        rights.append(columns[upper])
    left, right = np.concatenate(lefts), np.concatenate(rights)
    if not len(left):
        return left.astype(np.int64), right.astype(np.int64)
    nodes, roots = forest_edges(connected_components(len(members), left, right))
    return members[nodes], members[roots]


def batch_duplicate_edges(
    embeddings: np.ndarray, groups: list[np.ndarray], threshold: float, block_rows: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`cluster_duplicate_edges` for a batch of clusters, one after the other (a task's unit of work)."""
    return concatenated_edges([cluster_duplicate_edges(normalised(embeddings[members]), members, threshold,
                                                       block_rows) for members in groups])


def concatenated_edges(found: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """One (left, right) from several, in their order."""
    if not found:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def compared_in_tasks(executor: Executor, function, argument_lists: list[tuple]) -> list:
    """``function`` (a batch of clusters compared) over ``argument_lists`` on ``executor``, with a progress
    bar; the results in completion order."""
    progress = StageProgress("semantic dedup", total=len(argument_lists), unit="batch", tasks=len(argument_lists),
                             task_unit="batch", final_counts=lambda result: (id(result), {COUNT: 1}))
    with progress:
        return executor.run_tasks(function, argument_lists, progress=progress)


def cluster_members(rows: np.ndarray, clusters: np.ndarray) -> list[np.ndarray]:
    """Row ids of each non-empty cluster, from (row, cluster) memberships."""
    order = np.argsort(clusters, kind="stable")
    boundaries = np.flatnonzero(np.diff(clusters[order])) + 1
    return [rows[part] for part in np.split(order, boundaries) if len(part)]


def balanced_split(sizes: np.ndarray, batches: int) -> list[list[int]]:
    """Indices of clusters of ``sizes`` in ``batches`` lists of about equal cost (cost ∝ size²), largest
    first (equal sizes in their order)."""
    buckets: list[list[int]] = [[] for _ in range(max(1, batches))]
    loads = np.zeros(len(buckets))
    sizes = np.asarray(sizes, dtype=np.int64)
    for index in np.argsort(-sizes, kind="stable").tolist():
        target = int(np.argmin(loads))
        buckets[target].append(index)
        loads[target] += float(sizes[index]) ** 2
    return [bucket for bucket in buckets if bucket]


def balanced_batches(groups: list[np.ndarray], batches: int) -> list[list[np.ndarray]]:
    """Split clusters into ``batches`` lists of about equal cost (:func:`balanced_split`)."""
    return [[groups[index] for index in bucket] for bucket in balanced_split([len(g) for g in groups], batches)]


def semantic_groups(embeddings: np.ndarray, config: SemanticConfig) -> list[np.ndarray]:
    """Row ids of each k-means cluster (boundary rows in two): the groups compared within."""
    return cluster_members(*assign_clusters(embeddings, config))


def semantic_edges(
    embeddings: np.ndarray,
    config: SemanticConfig,
    *,
    executor: Executor | None = None,
    tasks: int = 64,
    groups: list[np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Duplicate edges among ``embeddings`` rows (any float dtype; normalised per cluster).

    With an ``executor`` the embeddings are shared once with its workers and clusters are compared
    by ``tasks`` tasks of balanced cost; otherwise clusters run one after the other here. ``groups``:
    the clusters from :func:`semantic_groups`, when the caller has them already.
    """
    if len(embeddings) < 2:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    threshold = 1.0 - config.eps
    groups = semantic_groups(embeddings, config) if groups is None else groups
    if executor is None:
        return batch_duplicate_edges(embeddings, groups, threshold, config.block_rows)
    shared = executor.share(embeddings)
    return concatenated_edges(compared_in_tasks(executor, batch_duplicate_edges, [
        (shared, batch, threshold, config.block_rows) for batch in balanced_batches(groups, tasks)]))
