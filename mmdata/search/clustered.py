"""Synthetic embeddings shaped like real CLIP ones, for the benchmark and tests: unit vectors in
topic clusters, each cluster spread along a few directions of its own (low intrinsic dimension),
plus a little isotropic noise."""

from __future__ import annotations

import numpy as np


def clustered_embeddings(
    count: int,
    dim: int = 512,
    *,
    clusters: int = 1000,
    spread_rank: int = 16,
    spread: float = 0.25,
    noise: float = 0.15,
    seed: int = 0,
    chunk: int = 100_000,
) -> np.ndarray:
    """``count`` float32 unit vectors [count, dim], rows grouped by cluster within each chunk of ``chunk``
rows (callers that care shuffle); generated in chunks so 1M x 512 peaks near 2 GB."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((clusters, dim)).astype(np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    bases = rng.standard_normal((clusters, spread_rank, dim)).astype(np.float32) / np.sqrt(dim)
    sizes = rng.dirichlet(np.full(clusters, 2.0))  # uneven topics, as on the web
    output = np.empty((count, dim), dtype=np.float32)
    for start in range(0, count, chunk):
        stop = min(count, start + chunk)
        labels = np.sort(rng.choice(clusters, size=stop - start, p=sizes))
        weights = rng.standard_normal((stop - start, spread_rank)).astype(np.float32) * spread
        block = rng.standard_normal((stop - start, dim)).astype(np.float32) * (noise / np.sqrt(dim))
        bounds = np.searchsorted(labels, np.arange(clusters + 1))
        for cluster in np.flatnonzero(np.diff(bounds)):
            rows = slice(bounds[cluster], bounds[cluster + 1])
            block[rows] += centres[cluster] + weights[rows] @ bases[cluster]
        block /= np.linalg.norm(block, axis=1, keepdims=True)
        output[start:stop] = block
    return output
