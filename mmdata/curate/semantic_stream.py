"""SemDeDup over embeddings that do not fit in memory: the same decisions as the in-memory tier.

One pass over the caller's chunks spills the vectors, in their stored dtype, to a flat file under
``scratch``; the tier's k-means (:mod:`mmdata.curate.semantic`) reads it as :class:`SpilledEmbeddings`, a
block or a sample at a time. One more pass copies each cluster's vectors (guests included) next to each
other into a cluster file (:mod:`mmdata.curate.semantic_partition`), and one pass over that file, here or
in tasks, reads each cluster once to compare its rows and to measure the check's nearest neighbours
(:mod:`mmdata.curate.semantic_check`); the check then decides whether the edges are kept. Same
arithmetic, same seeds and same row order as the in-memory path, so the same edges and the same check;
the process holds the k-means sample, one cluster (or spill block) and a few bytes per row (row ids,
cluster ids), never every embedding.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import numpy as np

from mmdata.curate.semantic import SemanticConfig, assign_clusters, normalised
from mmdata.curate.semantic_check import SemanticCheck, check_sample, decide
from mmdata.curate.semantic_partition import cluster_file_pass, write_cluster_file
from mmdata.execution import Executor

Chunks = Callable[[], Iterable[tuple[np.ndarray, np.ndarray]]]
SIMILARITY_BATCH = 65_536  # pairs whose vectors :meth:`SemanticOutcome.similarities` gathers at once


class SpilledEmbeddings:
    """A read-only ``[rows, dim]`` embedding matrix in a flat file, indexed like an array: a slice or an
    array of row ids returns those rows as an ndarray. Rows are read into the array returned (one read per
    run of consecutive rows), never mapped, so resident memory is what the caller keeps, however scattered
    the rows; small and picklable."""

    def __init__(self, path: str, rows: int, dim: int, dtype: np.dtype):
        self.path = path
        self.shape = (rows, dim)
        self.dtype = np.dtype(dtype)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        rows, dim = self.shape
        if isinstance(index, slice):
            start, stop, step = index.indices(rows)
            if step != 1:
                raise ValueError("SpilledEmbeddings reads contiguous slices only")
            count = max(0, stop - start)
            values = np.fromfile(self.path, self.dtype, count * dim, offset=start * dim * self.dtype.itemsize)
            return values.reshape(count, dim)
        positions = np.asarray(index)
        if positions.dtype == bool or positions.dtype.kind not in "iu":
            raise TypeError(f"index SpilledEmbeddings with a slice or integer row ids, not {positions.dtype}")
        if not positions.size:
            return np.empty((*positions.shape, dim), self.dtype)
        flat = positions.reshape(-1).astype(np.int64)
        if flat.min() < 0 or flat.max() >= rows:
            raise IndexError(f"row ids must lie in [0, {rows}) (no negative ids)")
        return self._rows(flat).reshape(*positions.shape, dim)

    def _rows(self, positions: np.ndarray) -> np.ndarray:
        order = np.argsort(positions, kind="stable")
        ordered = positions[order]
        found = np.empty((len(positions), self.shape[1]), self.dtype)
        row_bytes = self.shape[1] * self.dtype.itemsize
        target = memoryview(found.reshape(-1).view(np.uint8))
        breaks = (np.flatnonzero(np.diff(ordered) != 1) + 1).tolist()
        with open(self.path, "rb", buffering=0) as source:
            for begin, end in zip([0, *breaks], [*breaks, len(ordered)]):
                piece = target[begin * row_bytes : end * row_bytes]
                source.seek(int(ordered[begin]) * row_bytes)
                while len(piece):
                    read = source.readinto(piece)
                    if not read:
                        raise OSError(f"{self.path} ended before row {int(ordered[end - 1])}: the spill is truncated")
                    piece = piece[read:]
        result = np.empty_like(found)
        result[order] = found
        return result


@dataclass
class SemanticOutcome:
    """What :func:`semantic_duplicates` found, in global sample rows. The spilled embeddings stay on disk
    for :meth:`similarities` until :meth:`close` (or until the outcome is garbage-collected)."""

    edges: tuple[np.ndarray, np.ndarray]  # spanning forest of each cluster's duplicates (empty: refused)
    check: SemanticCheck
    rows: np.ndarray  # int64: the global row of each embedding, ascending
    embeddings: SpilledEmbeddings
    folder: str

    def __post_init__(self) -> None:
        self._cleanup = weakref.finalize(self, shutil.rmtree, self.folder, True)

    def similarities(self, left_rows: np.ndarray, right_rows: np.ndarray) -> np.ndarray:
        """float32 cosine between each pair of global rows (NaN where either has no embedding), reading
        only those rows, :data:`SIMILARITY_BATCH` pairs at a time."""
        left, right = self.positions(left_rows), self.positions(right_rows)
        if left.shape != right.shape:
            raise ValueError(f"similarities takes pairs: {len(left)} left rows but {len(right)} right rows")
        result = np.full(len(left), np.nan, dtype=np.float32)
        both = np.flatnonzero((left >= 0) & (right >= 0))
        for start in range(0, len(both), SIMILARITY_BATCH):
            chosen = both[start : start + SIMILARITY_BATCH]
            result[chosen] = np.einsum("ij,ij->i", normalised(self.embeddings[left[chosen]]),
                                       normalised(self.embeddings[right[chosen]]))
        return result

    def positions(self, rows: np.ndarray) -> np.ndarray:
        """Each global row's position among the embeddings, -1 where it has none."""
        return _positions(self.rows, rows)

    def close(self) -> None:
        """Delete the spilled embeddings (:meth:`similarities` no longer works)."""
        self._cleanup()

    def __enter__(self) -> "SemanticOutcome":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def semantic_duplicates(
    chunks: Chunks,
    config: SemanticConfig,
    *,
    known: np.ndarray,
    copy_pairs: tuple[np.ndarray, np.ndarray] | None,
    force: bool,
    scratch: str,
    executor: Executor | None = None,
    check_rows: int = 10_000,
) -> SemanticOutcome:
    """The semantic tier over ``chunks()``: ``(global rows int64 ascending, vectors [n, d])`` per chunk.

    ``known``: bool per global row, True where the exact/near tiers already found a copy (left out of
    the check's nearest-neighbour sample); ``copy_pairs``: the near tier's pixel-verified pairs as global
    rows (each once, identical files left out), or None when it did not run. Clusters are compared on
    ``executor`` (None: here, one after the other); its tasks read the cluster file under ``scratch``, so
    with Ray on several machines ``scratch`` must be a folder they share. The check's nearest neighbours are
    measured in the same pass as the comparisons: edges are dropped (empty) when the check refuses the tier
    and ``force`` is off.
    """
    os.makedirs(scratch, exist_ok=True)
    folder = tempfile.mkdtemp(prefix="semantic-", dir=scratch)
    try:
        rows, embeddings = _spill(chunks(), os.path.join(folder, "embeddings.bin"))
        known_rows = np.asarray(known, dtype=bool)
        if len(known_rows) <= rows[-1]:
            raise ValueError(f"known has {len(known_rows)} rows but the chunks reach row {rows[-1]}: pass a mask "
                             "over every sample row")
        clusters = write_cluster_file(embeddings, *assign_clusters(embeddings, config),
                                      os.path.join(folder, "clusters.bin"))
        rng = np.random.default_rng(config.seed)  # the check's draws, in check_semantic's order
        sample = check_sample(len(embeddings), known_rows[rows], check_rows, rng)
        (left, right), nearest = cluster_file_pass(clusters, config, sample, executor=executor)
        os.remove(clusters.path)  # the outcome keeps the spill only
        del clusters
        pairs = None if copy_pairs is None else _pair_positions(rows, copy_pairs)
        check = decide(embeddings, nearest, config.eps, copy_pairs=pairs, check_rows=check_rows, force=force,
                       rng=rng)
        if not check.ran:
            left = right = np.empty(0, np.int64)
        return SemanticOutcome(edges=(rows[left], rows[right]), check=check, rows=rows, embeddings=embeddings,
                               folder=folder)
    except BaseException:
        shutil.rmtree(folder, ignore_errors=True)
        raise


def _spill(chunks: Iterator[tuple[np.ndarray, np.ndarray]], path: str) -> tuple[np.ndarray, SpilledEmbeddings]:
    """Write every chunk's vectors to ``path`` (the first chunk's dtype and width); returns the rows."""
    row_parts: list[np.ndarray] = []
    dim = dtype = None
    last = -1
    with open(path, "wb") as target:
        for chunk_rows, vectors in chunks:
            chunk_rows = np.asarray(chunk_rows, dtype=np.int64)
            vectors = np.asarray(vectors)
            if vectors.ndim != 2 or len(vectors) != len(chunk_rows):
                raise ValueError(f"a chunk must be (rows [n], vectors [n, d]); got {len(chunk_rows)} rows and "
                                 f"vectors of shape {vectors.shape}")
            if not len(chunk_rows):
                continue
            if dim is None:
                dim, dtype = vectors.shape[1], vectors.dtype
            elif vectors.shape[1] != dim:
                raise ValueError(f"embeddings of width {vectors.shape[1]} after width {dim}: one model per run")
            if chunk_rows[0] <= last or np.any(np.diff(chunk_rows) <= 0):
                raise ValueError("chunks must give each global row once, in ascending order")
            last = int(chunk_rows[-1])
            np.ascontiguousarray(vectors, dtype=dtype).tofile(target)
            row_parts.append(chunk_rows)
    if dim is None:
        raise ValueError("no embeddings to compare: run mmdata score (with embeddings) first")
    rows = np.concatenate(row_parts)
    return rows, SpilledEmbeddings(path, len(rows), dim, dtype)


def _positions(sorted_rows: np.ndarray, rows: np.ndarray) -> np.ndarray:
    rows = np.asarray(rows, dtype=np.int64)
    found = np.minimum(np.searchsorted(sorted_rows, rows), len(sorted_rows) - 1)
    return np.where(sorted_rows[found] == rows, found, -1)


def _pair_positions(sorted_rows: np.ndarray, pairs: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Pairs of global rows as embedding positions, those with an embedding on both sides, in order."""
    left, right = (_positions(sorted_rows, side) for side in pairs)
    both = (left >= 0) & (right >= 0)
    return left[both], right[both]
