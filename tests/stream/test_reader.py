"""How samples' bytes are read: ranges a small gap apart become one read whose gaps are dropped, and
an object store's reads run several at once while results keep their order."""

import threading

import numpy as np
import pyarrow.parquet as pq
import pytest

from mmdata import layout
from mmdata.stream.reader import StreamError, fetch_run, parse_run, plan_runs, read_ahead
from mmdata.stream.source import LocalSource


def runs_of(offsets, sizes, shard_ids=None, **options):
    offsets, sizes = np.array(offsets), np.array(sizes)
    shard_ids = np.zeros(len(offsets), dtype=np.int64) if shard_ids is None else np.array(shard_ids)
    return list(plan_runs(np.arange(len(offsets)), shard_ids, offsets, sizes, ["a", "b"], **options))


def test_runs_span_small_gaps_but_not_large_ones_nor_shards():
    offsets, sizes = [0, 100, 300, 1000, 1100], [100, 100, 100, 100, 100]
    assert [(run.offset, run.size, run.starts) for run in runs_of(offsets, sizes)] == [
        (0, 200, [0, 100]), (300, 100, [0]), (1000, 200, [0, 100])]
    spanned = runs_of(offsets, sizes, max_gap=100)
    assert [(run.offset, run.size, run.positions, run.starts) for run in spanned] == [
        (0, 400, [0, 1, 2], [0, 100, 300]), (1000, 200, [3, 4], [0, 100])]
    assert len(runs_of(offsets, sizes, max_gap=10_000)) == 1
    assert len(runs_of(offsets, sizes, max_gap=10_000, max_bytes=500)) == 2, "the span, gaps included, is bounded"
    assert [run.shard for run in runs_of(offsets, sizes, [0, 0, 1, 1, 1], max_gap=10_000)] == ["a", "b"]


def test_a_run_with_gaps_yields_exactly_its_samples(dataset_factory):
    root, keys = dataset_factory([9])
    table = pq.read_table(layout.parquet_path(root, 0))
    offsets, sizes = np.array(table.column("tar_offset")), np.array(table.column("tar_size"))
    chosen = np.array([1, 2, 5, 8])
    [run] = plan_runs(np.arange(len(chosen)), np.zeros(len(chosen), dtype=np.int64), offsets[chosen], sizes[chosen],
                      ["00000"], max_gap=1 << 20)
    assert run.size > sizes[chosen].sum(), "the read spans unselected samples"
    members = parse_run(run, fetch_run(LocalSource(root), run), [keys[i] for i in chosen], sizes[chosen].tolist())
    assert [sample["txt"].decode() for sample in members] == [f"caption {keys[i]}" for i in chosen]


def test_reads_run_concurrently_and_come_back_in_order():
    threads = 4
    everyone_reading = threading.Barrier(threads, timeout=30)  # broken (an error) unless 4 reads overlap

    def read(run):
        if run < threads:
            everyone_reading.wait()
        return run * 10

    results = list(read_ahead(iter(range(10)), read, depth=threads, threads=threads))
    assert results == [(run, run * 10) for run in range(10)]


def test_a_failed_read_surfaces_in_order_and_leaving_early_stops():
    def read(run):
        if run == 3:
            raise OSError("store gone")
        return run

    reads = read_ahead(iter(range(100)), read, depth=4, threads=2)
    assert [next(reads) for _ in range(3)] == [(0, 0), (1, 1), (2, 2)]
    with pytest.raises(OSError, match="store gone"):
        next(reads)
    started = []
    early = read_ahead(iter(range(100)), lambda run: started.append(run) or run, depth=4, threads=2)
    assert next(early) == (0, 0)
    early.close()  # cancels what was queued; returns once running reads finish
    assert len(started) <= 4, "no run past the read-ahead window was read"


@pytest.mark.parametrize("samples", [2, 12])  # 6 headers (tested one by one) and 36 (tested together)
def test_a_header_with_a_stale_checksum_costs_only_its_sample(dataset_factory, samples):
    root, keys = dataset_factory([samples])
    table = pq.read_table(layout.parquet_path(root, 0))
    offsets, sizes = np.array(table.column("tar_offset")), np.array(table.column("tar_size"))
    intact = read_shard(root, offsets, sizes, keys)
    assert [sample["txt"].decode() for sample in intact] == [f"caption {key}" for key in keys]
    path = layout.tar_path(root, 0)
    data = bytearray(path.read_bytes())
    damaged = samples - 1
    data[offsets[damaged] + 265] ^= 0x20  # the owner name field: only the checksum notices
    path.write_bytes(bytes(data))
    members = read_shard(root, offsets, sizes, keys)
    assert isinstance(members[damaged], StreamError) and "corrupt tar data" in str(members[damaged])
    assert members[:damaged] == intact[:damaged]


def read_shard(root, offsets, sizes, keys):
    """Every sample of shard 0, read as one run."""
    [run] = plan_runs(np.arange(len(offsets)), np.zeros(len(offsets), dtype=np.int64), offsets, sizes, ["00000"])
    return parse_run(run, fetch_run(LocalSource(root), run), keys, sizes.tolist())
