"""Pure, deterministic partitioning and shuffling: which samples each rank and DataLoader worker
reads, in which order, for an epoch.

Everything here is a function of integers (sample counts, topology, seed, epoch) returning arrays,
so every process computes the same plan without talking to the others, and the main process can
work out what its workers have delivered from a batch count alone.

The plan of an epoch: shards in an order drawn from (seed, epoch), samples in tar order within a
shard; ranks take contiguous slices of that sequence, workers contiguous slices of their rank's;
each worker then emits its slice through a bounded shuffle buffer drawn from (seed, epoch, rank,
worker). Contiguous slices keep reads sequential and coalescible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(part) for part in parts])


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which shards are visited this epoch."""
    if not shuffle:
        return np.arange(num_shards, dtype=np.int64)
    return _rng(seed, epoch, 0).permutation(num_shards).astype(np.int64)


def global_order(shard_sizes: np.ndarray, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """Catalog indices of the whole epoch (catalog = samples grouped by shard, in tar order)."""
    shard_sizes = np.asarray(shard_sizes, dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(shard_sizes)[:-1]]) if len(shard_sizes) else shard_sizes
    order = shard_order(len(shard_sizes), seed=seed, epoch=epoch, shuffle=shuffle)
    pieces = [np.arange(starts[s], starts[s] + shard_sizes[s], dtype=np.int64) for s in order]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def rank_positions(n: int, *, world_size: int, rank: int, drop_last: bool, pad: bool) -> np.ndarray:
    """Positions in the epoch sequence that ``rank`` reads.

    Default: contiguous slices whose sizes differ by at most one. ``drop_last``: every rank gets
    ``n // world_size`` (the tail is left out this epoch). ``pad``: every rank gets
    ``ceil(n / world_size)``, the missing positions wrap around to the start of the sequence.
    """
    if drop_last and pad:
        raise ValueError("drop_last and pad are exclusive: choose one way to equalise ranks")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if drop_last:
        per_rank = n // world_size
        return np.arange(rank * per_rank, (rank + 1) * per_rank, dtype=np.int64)
    if pad:
        per_rank = math.ceil(n / world_size) if n else 0
        return np.arange(rank * per_rank, (rank + 1) * per_rank, dtype=np.int64) % max(n, 1)
    start, stop = split_bounds(n, world_size)[rank]
    return np.arange(start, stop, dtype=np.int64)


def split_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` slices of ``range(n)``, sizes differing by at most one."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def buffer_shuffle(n: int, buffer_size: int, rng: np.random.Generator) -> np.ndarray:
    """The emission order of a bounded shuffle buffer fed ``0..n-1`` in order.

    Emitting item ``t`` never needs an input beyond ``t + buffer_size``, so a reader that reads in
    input order holds at most ``buffer_size`` items.
    """
    if n == 0 or buffer_size <= 1:
        return np.arange(n, dtype=np.int64)
    size = min(buffer_size, n)
    buffer = list(range(size))
    out = np.empty(n, dtype=np.int64)
    picks = rng.integers(0, size, n - size).tolist()
    for step, incoming in enumerate(range(size, n)):
        slot = picks[step]
        out[step] = buffer[slot]
        buffer[slot] = incoming
    out[n - size :] = rng.permutation(np.asarray(buffer, dtype=np.int64))
    return out


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's epoch: ``read_order`` (catalog indices, the order bytes are read in) and
    ``emit_order`` (indices into ``read_order``, the order samples are yielded in)."""

    read_order: np.ndarray
    emit_order: np.ndarray


def worker_plan(
    shard_sizes: np.ndarray,
    *,
    seed: int,
    epoch: int,
    shuffle: bool,
    world_size: int,
    rank: int,
    num_workers: int,
    worker: int,
    buffer_size: int,
    drop_last: bool = False,
    pad: bool = False,
) -> WorkerPlan:
    sequence = global_order(shard_sizes, seed=seed, epoch=epoch, shuffle=shuffle)
    mine = sequence[rank_positions(len(sequence), world_size=world_size, rank=rank, drop_last=drop_last, pad=pad)]
    start, stop = split_bounds(len(mine), num_workers)[worker]
    read_order = mine[start:stop]
    if shuffle:
        emit_order = buffer_shuffle(len(read_order), buffer_size, _rng(seed, epoch, 1, rank, worker))
    else:
        emit_order = np.arange(len(read_order), dtype=np.int64)
    return WorkerPlan(read_order, emit_order)


def worker_sizes(n: int, *, world_size: int, rank: int, num_workers: int, drop_last: bool, pad: bool) -> list[int]:
    """How many samples each worker of ``rank`` yields per epoch."""
    per_rank = len(rank_positions(n, world_size=world_size, rank=rank, drop_last=drop_last, pad=pad))
    return [stop - start for start, stop in split_bounds(per_rank, num_workers)]


def round_robin_take(remaining: list[int], batch_size: int, batches: int) -> tuple[list[int], int]:
    """Which samples ``batches`` batches took from workers served in turn (DataLoader's in-order
    delivery: round ``j`` holds batch ``j`` of every worker that has one, in worker order).

    ``remaining``: each worker's sample count, in serving order. Returns the samples taken per
    worker and the index of the worker whose batch comes next.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    worker_batches = np.array([math.ceil(r / batch_size) for r in remaining], dtype=np.int64)
    total = int(worker_batches.sum())
    if batches > total:
        raise ValueError(f"{batches} batches consumed but the workers only hold {total}")
    # Full rounds: the largest j with sum(min(worker_batches, j)) <= batches.
    low, high = 0, int(worker_batches.max()) if len(worker_batches) else 0
    while low < high:
        middle = (low + high + 1) // 2
        if int(np.minimum(worker_batches, middle).sum()) <= batches:
            low = middle
        else:
            high = middle - 1
    rounds = low
    taken = np.minimum(worker_batches, rounds)
    left = batches - int(taken.sum())
    next_worker = 0
    if left:
        active = np.flatnonzero(worker_batches > rounds)
        taken[active[:left]] += 1
        next_worker = int(active[left - 1]) + 1
        if next_worker == len(remaining):
            next_worker = 0
    samples = [min(int(b) * batch_size, r) for b, r in zip(taken, remaining)]
    return samples, next_worker
