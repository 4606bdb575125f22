"""The pure plan functions: exactly-once, equal counts, bounded buffers, the chunked shuffle and its
resume point against a step-by-step buffer, and the main process's reconstruction of what
round-robin delivery has served."""

import itertools
import math

import numpy as np
import pytest

from mmdata.stream import partition

SHARD_SIZES = {"one": [7], "uneven": [5, 0, 9, 1, 4], "many": [3] * 11 + [2], "empty": []}


def all_plans(shard_sizes, world_size, num_workers, *, seed=0, epoch=0, drop_last=False, pad=False, shuffle=True):
    return [
        [
            partition.worker_plan(
                np.array(shard_sizes), seed=seed, epoch=epoch, shuffle=shuffle, world_size=world_size, rank=rank,
                num_workers=num_workers, worker=worker, buffer_size=4, drop_last=drop_last, pad=pad,
            )
            for worker in range(num_workers)
        ]
        for rank in range(world_size)
    ]


def read_order(plan, shard_sizes):
    """The plan's samples as catalog indices (samples grouped by shard, in tar order), in read order."""
    starts = np.concatenate([[0], np.cumsum(shard_sizes)]).astype(np.int64)
    pieces = [starts[shard] + np.arange(first, stop) for shard, first, stop in plan.segments.tolist()]
    return np.concatenate(pieces) if pieces else np.zeros(0, dtype=np.int64)


def emit_order(plan):
    chunks = list(plan.emission())
    return np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)


def emitted(plan, shard_sizes):
    return read_order(plan, shard_sizes)[emit_order(plan)].tolist()


@pytest.mark.parametrize("shards", SHARD_SIZES)
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_every_sample_once_per_epoch(shards, world_size, num_workers):
    sizes = SHARD_SIZES[shards]
    n = sum(sizes)
    for epoch in (0, 1):
        plans = all_plans(sizes, world_size, num_workers, seed=3, epoch=epoch)
        served = [i for rank in plans for plan in rank for i in emitted(plan, sizes)]
        assert sorted(served) == list(range(n))
        for rank in plans:
            for plan in rank:
                assert sorted(emit_order(plan).tolist()) == list(range(len(plan)))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_drop_last_and_pad_give_equal_rank_counts(world_size):
    sizes = SHARD_SIZES["uneven"]
    n = sum(sizes)
    dropped = all_plans(sizes, world_size, 2, drop_last=True)
    counts = {sum(len(p) for p in rank) for rank in dropped}
    assert counts == {n // world_size}
    served = [i for rank in dropped for plan in rank for i in emitted(plan, sizes)]
    assert len(set(served)) == len(served)
    padded = all_plans(sizes, world_size, 2, pad=True)
    counts = {sum(len(p) for p in rank) for rank in padded}
    assert counts == {math.ceil(n / world_size)}
    served = [i for rank in padded for plan in rank for i in emitted(plan, sizes)]
    assert set(served) == set(range(n)) and len(served) == world_size * math.ceil(n / world_size)


def test_order_is_fixed_by_seed_and_epoch():
    sizes = SHARD_SIZES["many"]

    def order(seed, epoch):
        return [emitted(p, sizes) for r in all_plans(sizes, 2, 2, seed=seed, epoch=epoch) for p in r]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    unshuffled = [emitted(p, sizes) for r in all_plans(sizes, 1, 1, shuffle=False) for p in r]
    assert unshuffled == [list(range(sum(sizes)))]


def shuffled(n, buffer_size, seed=0, skip=0):
    chunks = list(partition.BufferShuffle(n, buffer_size, np.random.default_rng(seed), skip=skip))
    return np.concatenate(chunks).tolist() if chunks else []


@pytest.mark.parametrize("buffer_size", [1, 2, 5, 50])
def test_buffer_shuffle_needs_at_most_buffer_size_reads_ahead(buffer_size):
    order = shuffled(40, buffer_size)
    assert sorted(order) == list(range(40))
    assert all(item < step + buffer_size for step, item in enumerate(order))


def step_by_step(n, buffer_size, rng):
    """The shuffle buffer one step at a time: emit a random slot, refill it with the next input."""
    if n == 0 or buffer_size <= 1:
        return list(range(n))
    size = min(buffer_size, n)
    buffer, out = list(range(size)), []
    for incoming, slot in zip(range(size, n), rng.integers(0, size, n - size).tolist()):
        out.append(buffer[slot])
        buffer[slot] = incoming
    return out + rng.permutation(np.asarray(buffer, dtype=np.int64)).tolist()


@pytest.mark.parametrize("n, buffer_size", [(0, 4), (3, 8), (9, 2), (31, 4), (40, 7), (64, 3), (200, 16)])
def test_chunked_shuffle_and_its_resume_point_match_the_buffer_step_by_step(monkeypatch, n, buffer_size):
    monkeypatch.setattr(partition, "SHUFFLE_CHUNK", 6)  # many chunks, steps resolved across their edges
    expected = step_by_step(n, buffer_size, np.random.default_rng(5))
    assert shuffled(n, buffer_size, seed=5) == expected
    for skip in range(n + 1):
        resumed = partition.BufferShuffle(n, buffer_size, np.random.default_rng(5), skip=skip)
        # a resumed reader reads exactly the positions still to come: the pending ones, then the unread ones
        to_read = resumed.pending.tolist() + list(range(resumed.fresh_from, n))
        assert sorted(expected[skip:]) == to_read
        assert [p for chunk in resumed for p in chunk.tolist()] == expected[skip:]


def test_chunked_draws_equal_one_draw_of_them_all():
    """A chunk size does not change the order (so plans of earlier versions, drawn at once, hold)."""
    expected = step_by_step(300_000, 2048, np.random.default_rng(9))
    assert shuffled(300_000, 2048, seed=9) == expected


@pytest.mark.parametrize("shards", SHARD_SIZES)
def test_segments_are_slices_of_the_epoch_sequence(shards):
    """Segments list a slice of the sequence (shards in the epoch's order, each in tar order);
    positions past its end wrap around to its start (pad)."""
    sizes = np.array(SHARD_SIZES[shards], dtype=np.int64)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
    order = partition.shard_order(len(sizes), seed=2, epoch=1, shuffle=True)
    sequence = [int(starts[s]) + i for s in order.tolist() for i in range(sizes[s])]
    n = len(sequence)
    for start, stop in [(0, n), (1, n - 1), (2, 3), (n - 2, n + 5), (n + 1, 3 * n + 1)] if n else [(0, 0), (0, 3)]:
        segments = partition.epoch_segments(sizes, start, stop, seed=2, epoch=1, shuffle=True)
        got = [int(starts[s]) + i for s, first, last in segments.tolist() for i in range(first, last)]
        assert got == ([sequence[p % n] for p in range(start, stop)] if n else [])
        assert all(last > first for _, first, last in segments.tolist())


def deliver(counts, batch_size):
    """DataLoader's in-order delivery, step by step: workers in turn, exhausted ones skipped."""
    batches = [[(w, min(batch_size, c - start)) for start in range(0, c, batch_size)] for w, c in enumerate(counts)]
    served = []
    for round_batches in itertools.zip_longest(*batches):
        served.extend(batch for batch in round_batches if batch is not None)
    return served


@pytest.mark.parametrize("counts", [[5, 5], [7, 2, 4], [0, 3, 1], [9], [1, 0, 0, 6]])
@pytest.mark.parametrize("batch_size", [1, 2, 3])
def test_round_robin_take_matches_delivery(counts, batch_size):
    served = deliver(counts, batch_size)
    for batches in range(len(served) + 1):
        taken, next_worker = partition.round_robin_take(counts, batch_size, batches)
        expected = [0] * len(counts)
        for worker, size in served[:batches]:
            expected[worker] += size
        assert taken == expected
        if batches < len(served):
            # the next batch served is the next worker's, or that of the first worker after it still holding one
            following = served[batches][0]
            later = [
                w for w in list(range(next_worker, len(counts))) + list(range(next_worker)) if taken[w] < counts[w]
            ]
            assert later[0] == following
    with pytest.raises(ValueError):
        partition.round_robin_take(counts, batch_size, len(served) + 1)
