"""The pure plan functions: exactly-once, equal counts, bounded buffers, and the main process's
reconstruction of what round-robin delivery has served."""

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


def emitted(plan):
    return plan.read_order[plan.emit_order].tolist()


@pytest.mark.parametrize("shards", SHARD_SIZES)
@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("num_workers", [1, 2, 3])
def test_every_sample_once_per_epoch(shards, world_size, num_workers):
    sizes = SHARD_SIZES[shards]
    n = sum(sizes)
    for epoch in (0, 1):
        plans = all_plans(sizes, world_size, num_workers, seed=3, epoch=epoch)
        served = [i for rank in plans for plan in rank for i in emitted(plan)]
        assert sorted(served) == list(range(n))
        for rank in plans:
            for plan in rank:
                assert sorted(plan.emit_order.tolist()) == list(range(len(plan.read_order)))


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_drop_last_and_pad_give_equal_rank_counts(world_size):
    sizes = SHARD_SIZES["uneven"]
    n = sum(sizes)
    dropped = all_plans(sizes, world_size, 2, drop_last=True)
    counts = {sum(len(p.read_order) for p in rank) for rank in dropped}
    assert counts == {n // world_size}
    served = [i for rank in dropped for plan in rank for i in emitted(plan)]
    assert len(set(served)) == len(served)
    padded = all_plans(sizes, world_size, 2, pad=True)
    counts = {sum(len(p.read_order) for p in rank) for rank in padded}
    assert counts == {math.ceil(n / world_size)}
    served = [i for rank in padded for plan in rank for i in emitted(plan)]
    assert set(served) == set(range(n)) and len(served) == world_size * math.ceil(n / world_size)


def test_order_is_fixed_by_seed_and_epoch():
    sizes = SHARD_SIZES["many"]

    def order(seed, epoch):
        return [emitted(p) for r in all_plans(sizes, 2, 2, seed=seed, epoch=epoch) for p in r]

    assert order(1, 0) == order(1, 0)
    assert order(1, 0) != order(1, 1)
    assert order(1, 0) != order(2, 0)
    unshuffled = [emitted(p) for r in all_plans(sizes, 1, 1, shuffle=False) for p in r]
    assert unshuffled == [list(range(sum(sizes)))]


@pytest.mark.parametrize("buffer_size", [1, 2, 5, 50])
def test_buffer_shuffle_needs_at_most_buffer_size_reads_ahead(buffer_size):
    order = partition.buffer_shuffle(40, buffer_size, np.random.default_rng(0))
    assert sorted(order.tolist()) == list(range(40))
    assert all(item < step + buffer_size for step, item in enumerate(order.tolist()))


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
