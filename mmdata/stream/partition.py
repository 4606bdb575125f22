"""Pure, deterministic partitioning and shuffling: which samples each rank and DataLoader worker
reads, in which order, for an epoch.

Everything here is a function of integers (per-shard sample counts, topology, seed, epoch), so every
process computes the same plan without talking to the others, and the main process can work out what
its workers have delivered from a batch count alone. Nothing here is of the dataset's size: a plan is
a few rows per shard it touches, and a shuffle is produced a chunk at a time.

The plan of an epoch: shards in an order drawn from (seed, epoch), samples in tar order within a
shard; ranks take contiguous slices of that sequence, workers contiguous slices of their rank's, so
a rank reads the samples of about ``1 / world_size`` of the shards (its slice's, at most two of them
shared with a neighbour). Each worker emits its slice through a bounded shuffle buffer drawn from
(seed, epoch, rank, worker). Contiguous slices keep reads sequential and coalescible.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterator

import numpy as np

SHUFFLE_CHUNK = 1 << 16  # buffer steps drawn and resolved at once (even: see BufferShuffle)


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(part) for part in parts])


def shard_order(num_shards: int, *, seed: int, epoch: int, shuffle: bool) -> np.ndarray:
    """The order in which shards are visited this epoch."""
    if not shuffle:
        return np.arange(num_shards, dtype=np.int64)
    return _rng(seed, epoch, 0).permutation(num_shards).astype(np.int64)


def rank_span(n: int, *, world_size: int, rank: int, drop_last: bool, pad: bool) -> tuple[int, int]:
    """The slice ``[start, stop)`` of the epoch sequence (of ``n`` samples) that ``rank`` reads.

    Default: contiguous slices whose sizes differ by at most one. ``drop_last``: every rank gets
    ``n // world_size`` (the tail is left out this epoch). ``pad``: every rank gets
    ``ceil(n / world_size)``; ``stop`` may pass ``n``, the positions beyond wrap around to the start.
    """
    if drop_last and pad:
        raise ValueError("drop_last and pad are exclusive: choose one way to equalise ranks")
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is outside world_size {world_size}")
    if drop_last:
        per_rank = n // world_size
        return rank * per_rank, (rank + 1) * per_rank
    if pad:
        per_rank = math.ceil(n / world_size) if n else 0
        return rank * per_rank, (rank + 1) * per_rank
    return split_bounds(n, world_size)[rank]


def split_bounds(n: int, parts: int) -> list[tuple[int, int]]:
    """``parts`` contiguous ``(start, stop)`` slices of ``range(n)``, sizes differing by at most one."""
    base, extra = divmod(n, parts)
    bounds, start = [], 0
    for part in range(parts):
        stop = start + base + (1 if part < extra else 0)
        bounds.append((start, stop))
        start = stop
    return bounds


def epoch_segments(shard_sizes: np.ndarray, start: int, stop: int, *, seed: int, epoch: int,
                   shuffle: bool) -> np.ndarray:
    """Positions ``[start, stop)`` of the epoch sequence as ``[k, 3]`` rows ``(shard, first, stop)``
    in read order: the samples ``first..stop-1`` (in tar order) of catalog shard ``shard``. Positions
    from ``n`` on wrap around to the start of the sequence (``pad``)."""
    shard_sizes = np.asarray(shard_sizes, dtype=np.int64)
    n = int(shard_sizes.sum())
    if n == 0 or start >= stop:
        return np.zeros((0, 3), dtype=np.int64)
    order = shard_order(len(shard_sizes), seed=seed, epoch=epoch, shuffle=shuffle)
    bounds = np.concatenate([[0], np.cumsum(shard_sizes[order])])
    pieces, position = [], start
    while position < stop:
        low = position % n
        high = low + min(stop - position, n - low)
        visited = np.arange(np.searchsorted(bounds, low, "right") - 1, np.searchsorted(bounds, high, "left"))
        first = np.maximum(bounds[visited], low) - bounds[visited]
        last = np.minimum(bounds[visited + 1], high) - bounds[visited]
        keep = last > first
        pieces.append(np.stack([order[visited][keep], first[keep], last[keep]], axis=1))
        position += high - low
    return np.concatenate(pieces).astype(np.int64)


@dataclass(frozen=True)
class WorkerPlan:
    """One worker's epoch: ``segments`` (rows ``(shard, first, stop)``, see :func:`epoch_segments`)
    whose samples, concatenated, are its read order, and how it emits them: through a shuffle buffer
    of ``buffer_size`` drawn from ``shuffle_seed`` (``None``: in read order)."""

    segments: np.ndarray
    buffer_size: int
    shuffle_seed: tuple[int, ...] | None

    def __len__(self) -> int:
        return int((self.segments[:, 2] - self.segments[:, 1]).sum())

    @property
    def segment_starts(self) -> np.ndarray:
        """Where each segment begins in the read order, and the total at the end."""
        return np.concatenate([[0], np.cumsum(self.segments[:, 2] - self.segments[:, 1])]).astype(np.int64)

    def emission(self, skip: int = 0) -> BufferShuffle:
        """The emission order from step ``skip`` on (the first ``skip`` were consumed before)."""
        if self.shuffle_seed is None:
            return BufferShuffle(len(self), 1, None, skip=skip)
        return BufferShuffle(len(self), self.buffer_size, _rng(*self.shuffle_seed), skip=skip)


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
    n = int(np.asarray(shard_sizes, dtype=np.int64).sum())
    rank_start, rank_stop = rank_span(n, world_size=world_size, rank=rank, drop_last=drop_last, pad=pad)
    start, stop = split_bounds(rank_stop - rank_start, num_workers)[worker]
    segments = epoch_segments(shard_sizes, rank_start + start, rank_start + stop, seed=seed, epoch=epoch,
                              shuffle=shuffle)
    return WorkerPlan(segments, buffer_size, (seed, epoch, 1, rank, worker) if shuffle else None)


def worker_sizes(n: int, *, world_size: int, rank: int, num_workers: int, drop_last: bool, pad: bool) -> list[int]:
    """How many samples each worker of ``rank`` yields per epoch."""
    start, stop = rank_span(n, world_size=world_size, rank=rank, drop_last=drop_last, pad=pad)
    return [part_stop - part_start for part_start, part_stop in split_bounds(stop - start, num_workers)]


class BufferShuffle:
    """The emission order of a bounded shuffle buffer fed ``0..n-1`` in order, from step ``skip`` on,
    as chunks of positions (iterate once).

    Step ``t`` emits the item in a slot drawn from ``rng`` and puts item ``t + buffer_size`` in its
    place; when the input runs out the buffer is emitted in a random order. Emitting step ``t`` never
    needs an input beyond ``t + buffer_size``, so a reader that reads in input order holds at most
    ``buffer_size`` items. The slots are drawn :data:`SHUFFLE_CHUNK` steps at a time (an even count,
    so the draws equal one draw of them all) and each chunk is resolved with array operations.

    ``pending`` (ascending) holds the positions read before step ``skip`` and not emitted by then;
    every position from ``fresh_from`` on is still unread: what a resumed reader must read is
    ``pending`` then ``fresh_from..n-1``.
    """

    def __init__(self, n: int, buffer_size: int, rng: np.random.Generator | None, *, skip: int = 0):
        if not 0 <= skip <= n:
            raise ValueError(f"cannot skip {skip} of {n} steps")
        self.n, self.skip = n, skip
        self._size = min(buffer_size, n) if rng is not None and buffer_size > 1 else 0
        self._rng = rng
        self._buffer = np.arange(self._size, dtype=np.int64)  # slot -> position held
        self._step = 0  # steps resolved so far (a multiple of SHUFFLE_CHUNK, or the end of the draws)
        self._ahead: np.ndarray | None = None  # the resolved chunk that holds step ``skip``, from ``skip``
        self._tail: np.ndarray | None = None  # the final buffer's random order, once drawn
        if self._size == 0:
            self.pending, self.fresh_from = np.zeros(0, dtype=np.int64), skip
            return
        draws = n - self._size
        while self._step + SHUFFLE_CHUNK <= min(skip, draws):  # whole chunks before ``skip``: resolve only
            self._resolve(SHUFFLE_CHUNK)
        if skip <= draws:
            count = min(SHUFFLE_CHUNK, draws - self._step)
            first = self._step
            before = self._buffer.copy()
            picks = self._draw(count)
            emitted, self._buffer = _buffer_steps(before, picks, first + self._size)
            self._step += count
            self._ahead = emitted[skip - first :]
            held = _buffer_steps(before, picks[: skip - first], first + self._size)[1]
            self.pending, self.fresh_from = np.sort(held), skip + self._size
        else:
            while self._step < draws:
                self._resolve(min(SHUFFLE_CHUNK, draws - self._step))
            self._tail = self._rng.permutation(self._buffer)
            self.pending, self.fresh_from = np.sort(self._tail[skip - draws :]), n

    def _draw(self, count: int) -> np.ndarray:
        return self._rng.integers(0, self._size, count) if count else np.zeros(0, dtype=np.int64)

    def _resolve(self, count: int) -> np.ndarray:
        emitted, self._buffer = _buffer_steps(self._buffer, self._draw(count), self._step + self._size)
        self._step += count
        return emitted

    def __iter__(self) -> Iterator[np.ndarray]:
        if self._size == 0:
            for start in range(self.skip, self.n, SHUFFLE_CHUNK):
                yield np.arange(start, min(start + SHUFFLE_CHUNK, self.n), dtype=np.int64)
            return
        draws = self.n - self._size
        if self._ahead is not None:
            if len(self._ahead):
                yield self._ahead
            while self._step < draws:
                yield self._resolve(min(SHUFFLE_CHUNK, draws - self._step))
            self._tail = self._rng.permutation(self._buffer)
            yield self._tail
        else:
            yield self._tail[self.skip - draws :]


def _buffer_steps(buffer: np.ndarray, picks: np.ndarray, first_incoming: int) -> tuple[np.ndarray, np.ndarray]:
    """Steps of the shuffle buffer ``buffer`` (slot -> position) taking slots ``picks`` in turn, step
    ``j`` putting position ``first_incoming + j`` in the slot it emptied: what they emit, and the
    buffer after them. A step emits what the last earlier step into its slot put there (found by a
    stable sort on the slot), else what the slot held before the chunk."""
    count = len(picks)
    if count == 0:
        return np.zeros(0, dtype=np.int64), buffer
    order = np.argsort(picks, kind="stable")
    slots = picks[order]
    same_slot = np.zeros(count, dtype=bool)
    same_slot[1:] = slots[1:] == slots[:-1]
    previous = np.empty(count, dtype=np.int64)
    previous[0] = 0
    previous[1:] = order[:-1]
    emitted = np.empty(count, dtype=np.int64)
    emitted[order] = np.where(same_slot, first_incoming + previous, buffer[slots])
    last_in_slot = np.ones(count, dtype=bool)
    last_in_slot[:-1] = slots[1:] != slots[:-1]
    after = buffer.copy()
    after[slots[last_in_slot]] = first_incoming + order[last_in_slot]
    return emitted, after


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
