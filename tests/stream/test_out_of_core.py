"""The loader at scale, on small datasets: the catalog holds per-shard counts only, a rank reads the
metadata rows of the shards it streams and no other, and the result is exactly what the in-memory
plan (the whole selection as one table, the whole epoch as one permutation) gives."""

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import mmdata
from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.schemas.views import VIEW_SCHEMA
from mmdata.stream import partition
from mmdata.stream.catalog import build_catalog
from mmdata.stream.dataset import StreamingDataset
from mmdata.stream.options import StreamOptions
from mmdata.stream.resume import STATE_FORMAT
from mmdata.stream.source import LocalSource
from tests.stream.test_partition import step_by_step


class LoggingSource(LocalSource):
    """A local source that logs the parquet files it opens to read rows (footers are not logged)."""

    def __init__(self, location):
        super().__init__(location)
        self.opened = []

    def parquet(self, name):
        self.opened.append(name)
        return super().parquet(name)


def in_memory_order(root, *, view=None, world_size, rank, seed, epoch, buffer, drop_last=False, pad=False):
    """The keys a rank (one worker) yields, planned the in-memory way: every selected sample in one
    table grouped by shard in tar order, the epoch as one array of positions, one shuffle buffer
    stepped item by item."""
    shards = layout.complete_shards(root)
    table = pa.concat_tables([
        pq.read_table(layout.parquet_path(root, shard), columns=["key", "status", "tar_offset"]).append_column(
            "shard", pa.array([shard] * pq.read_metadata(layout.parquet_path(root, shard)).num_rows))
        for shard in shards
    ])
    table = table.filter(pc.equal(table.column("status"), "success"))
    if view is not None:
        table = table.filter(pc.is_in(table.column("key"), pa.array(view)))
    table = table.append_column("shard_rank", pc.index_in(table.column("shard"), pa.array(shards)))
    table = table.sort_by([("shard_rank", "ascending"), ("tar_offset", "ascending")])
    keys = table.column("key").to_pylist()
    counts = pc.value_counts(table.column("shard_rank"))
    by_rank = dict(zip(counts.field("values").to_pylist(), counts.field("counts").to_pylist()))
    sizes = [by_rank[index] for index in sorted(by_rank)]
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(int)
    sequence = np.concatenate([np.arange(starts[s], starts[s] + sizes[s])
                               for s in partition.shard_order(len(sizes), seed=seed, epoch=epoch, shuffle=True)])
    n = len(sequence)
    if drop_last:
        per = n // world_size
        positions = np.arange(rank * per, (rank + 1) * per)
    elif pad:
        per = -(-n // world_size)
        positions = np.arange(rank * per, (rank + 1) * per) % n
    else:
        start, stop = partition.split_bounds(n, world_size)[rank]
        positions = np.arange(start, stop)
    mine = sequence[positions]
    order = step_by_step(len(mine), buffer, np.random.default_rng([seed, epoch, 1, rank, 0]))
    return [keys[mine[p]] for p in order]


@pytest.mark.parametrize("world_size, equalise", [(1, None), (3, None), (8, None), (3, "drop_last"), (8, "pad")])
def test_every_rank_yields_exactly_the_in_memory_plan(dataset_factory, world_size, equalise):
    root, keys = dataset_factory([7, 3, 9, 1, 6, 8, 2, 5], failures_every=4)
    view = keys[1::3]
    options = {equalise: True} if equalise else {}
    for selection in (None, view):
        for rank in range(world_size):
            dataset = mmdata.stream(root, view=selection, rank=rank, world_size=world_size, seed=11,
                                    shuffle_buffer=4, decode=None, **options)
            dataset.set_epoch(2)
            expected = in_memory_order(root, view=selection, world_size=world_size, rank=rank, seed=11, epoch=2,
                                       buffer=4, **options)
            assert [item["key"] for item in dataset] == expected


@pytest.mark.parametrize("with_view", [False, True])
def test_a_rank_of_eight_reads_only_its_shards_metadata(dataset_factory, with_view):
    root, keys = dataset_factory([5] * 24, failures_every=6)
    view, selected = None, set(keys)
    if with_view:
        view = "some"
        selected = set(mmdata.filter_view(root, view=view, where="quality >= 2").column("key").to_pylist())
    for rank in (0, 3, 7):
        source = LoggingSource(root)
        catalog = build_catalog(source, view=view, columns=("quality",))
        opened_by_catalog = list(source.opened)
        # counts come from footers (and a view's shard column): no shard's rows are read to plan
        assert opened_by_catalog == (["views/some.parquet"] if with_view else [])
        options = StreamOptions(rank=rank, world_size=8, seed=5, decode=None, columns=("quality",))
        items = list(StreamingDataset(catalog, source, options))
        assert items and {item["key"] for item in items} <= selected and all("quality" in item for item in items)
        read_rows_of = {name.removesuffix(".parquet") for name in source.opened[len(opened_by_catalog):]
                        if not name.startswith("views/")}
        yielded_from = {item["key"][:5] for item in items}  # a key starts with its shard's name
        assert read_rows_of == yielded_from, "the metadata of the shards it streams, and of no other"
        assert len(read_rows_of) <= 5


def test_a_view_file_in_many_row_groups_streams_as_the_same_view_in_memory(dataset_factory):
    """Shards spread over row groups and row groups holding several shards (a tight row-group size)."""
    root, keys = dataset_factory([6, 9, 4, 7], failures_every=5)
    metadata = pa.concat_tables([
        pq.read_table(layout.parquet_path(root, shard)).append_column(
            "shard", pa.array([shard] * pq.read_metadata(layout.parquet_path(root, shard)).num_rows))
        for shard in layout.complete_shards(root)
    ])
    rows = metadata.filter(pc.equal(metadata.column("status"), "success")).take(list(range(0, len(keys), 2)))
    aligned = write_parquet(rows, layout.views_dir(root) / "whole.parquet", VIEW_SCHEMA)
    pq.write_table(aligned, layout.views_dir(root) / "grouped.parquet", row_group_size=2)
    assert pq.read_metadata(layout.views_dir(root) / "grouped.parquet").num_row_groups > 4
    in_memory = aligned.select(["key", "shard"])  # no byte ranges: looked up in each shard's metadata
    for world_size in (1, 3):
        for rank in range(world_size):
            from_file = mmdata.stream(root, view="grouped", rank=rank, world_size=world_size, decode=None, seed=1)
            from_table = mmdata.stream(root, view=in_memory, rank=rank, world_size=world_size, decode=None, seed=1)
            assert [item["key"] for item in from_file] == [item["key"] for item in from_table]
            assert len(from_file) == len(from_table)


def test_a_shard_changed_under_the_stream_is_an_error(dataset_factory):
    root, keys = dataset_factory([4, 4])
    dataset = mmdata.stream(root, shuffle=False, decode=None)
    table = pq.read_table(layout.parquet_path(root, 1))
    pq.write_table(table.slice(0, 3), layout.parquet_path(root, 1))  # a sample fewer than counted
    with pytest.raises(ValueError, match="shard 00001 .* now holds 3 selected samples where the stream counted 4"):
        list(dataset)


def test_fingerprint_follows_the_samples_not_the_file_name(dataset_factory):
    root, keys = dataset_factory([6, 6])
    metadata = pa.concat_tables([
        pq.read_table(layout.parquet_path(root, shard)).append_column("shard", pa.array([shard] * 6))
        for shard in layout.complete_shards(root)
    ])
    views = layout.views_dir(root)
    for name, picked in (("even", [0, 2, 4, 6, 8, 10]), ("odd", [1, 3, 5, 7, 9, 11]), ("copy", [0, 2, 4, 6, 8, 10])):
        write_parquet(metadata.take(picked), views / f"{name}.parquet", VIEW_SCHEMA)
    fingerprint = {name: mmdata.stream(root, view=name).catalog.fingerprint for name in ("even", "odd", "copy")}
    assert fingerprint["even"] == fingerprint["copy"]
    assert fingerprint["even"] != fingerprint["odd"], "the same counts per shard, other samples"
    whole = mmdata.stream(root).catalog.fingerprint
    pq.write_table(pq.read_table(layout.parquet_path(root, 0)).slice(0, 5), layout.parquet_path(root, 0))
    assert mmdata.stream(root).catalog.fingerprint != whole


def test_a_state_of_the_earlier_format_is_refused_with_what_to_do(dataset_factory):
    root, keys = dataset_factory([3])
    dataset = mmdata.stream(root, decode=None)
    state = dataset.state_dict()
    assert state["format"] == STATE_FORMAT
    with pytest.raises(ValueError, match="earlier mmdata .* start the epoch afresh"):
        dataset.load_state_dict({**state, "format": "mmdata.stream/1"})
