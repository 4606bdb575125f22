"""Balance out of core: sampling tasks write their kept rows to part files and the driver streams them
into the view in shard order, so the view is the one the in-memory balance wrote (the kept rows of every
shard concatenated), with tiny row groups and batches too, and no part is left behind."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_balance import entry_file, single_match_corpus, write_captions

import mmdata
from mmdata import layout
from mmdata.curate.balance import balance, balance_shard, read_entries, sample_shard
from mmdata.curate.view import read_view, view_path
from mmdata.schemas.balance import BALANCE_KEY
from mmdata.schemas.views import FUNNEL_KEY, RULES_KEY, VIEW_SCHEMA
from mmdata.storage import location

T = 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("streaming")
    counts = {"red car": 200, "car": 150, "blue sky": 90, "cloud": 30, "tree": 6}
    captions = single_match_corpus(counts, seed=9) + [f"a car under a blue sky, tree {i}" for i in range(40)]
    captions += ["nothing to see"] * 10
    write_captions(folder / "data", captions, shard_size=60, failed_every=11)
    mmdata.filter_view(folder / "data", view="no-clouds", exclude_caption_regex="cloud")
    return folder / "data", entry_file(folder, list(counts))


def in_memory_view(root, entries_file, probability: np.ndarray, seed: int, from_view: str | None) -> pa.Table:
    """What the previous implementation wrote: each shard's kept rows, in shard order, in one table."""
    entries = read_entries(location(entries_file))
    encoded = np.frombuffer(json.dumps(entries).encode(), dtype=np.uint8)
    fingerprint = hashlib.sha256(encoded).hexdigest()
    selected = None if from_view is None else read_view(root, from_view)
    tables = []
    for shard in layout.complete_shards(root):
        keys = None
        if selected is not None:
            keys = selected.filter(pa.compute.equal(selected.column("shard"), shard)).column("key").combine_chunks()
        result = balance_shard(location(root), shard, keys, encoded, fingerprint, probability, seed)
        tables.append(result.kept_rows)
    return pa.concat_tables(tables)


@pytest.mark.parametrize("from_view", [None, "no-clouds"])
def test_the_view_is_what_the_in_memory_balance_wrote(corpus, from_view):
    root, entries = corpus
    name = f"streamed-{from_view}"
    result = balance(root, metadata=str(entries), t=T, seed=3, view=name, from_view=from_view, executor="inline")
    stored = read_view(root, name)
    probability = result.entry_counts.column("probability").to_numpy()
    expected = in_memory_view(root, entries, probability, 3, from_view)
    assert stored.num_rows == result.rows == expected.num_rows > 0
    assert stored.to_pylist() == expected.to_pylist()
    assert stored.column("shard").to_pylist() == sorted(stored.column("shard").to_pylist())
    metadata = stored.schema.metadata
    assert {RULES_KEY, FUNNEL_KEY, BALANCE_KEY} <= set(metadata)
    assert json.loads(metadata[FUNNEL_KEY]) == result.funnel
    assert stored.schema.remove_metadata() == VIEW_SCHEMA.remove_metadata()
    assert not (root / "balance" / f".{name}.parts").exists()


def test_tiny_row_groups_and_batches_write_the_same_view(corpus, monkeypatch):
    root, entries = corpus
    balance(root, metadata=str(entries), t=T, view="default-groups", from_view="no-clouds", executor="inline")
    monkeypatch.setattr("mmdata.atomic.GROUP_ROWS", 7)  # the view's row groups
    monkeypatch.setattr("mmdata.curate.balance._VIEW_BATCH_ROWS", 5)  # from_view's keys, 5 at a time
    balance(root, metadata=str(entries), t=T, view="tiny-groups", from_view="no-clouds", executor="processes",
            workers=2)
    tiny = pq.ParquetFile(view_path(root, "tiny-groups").local_path())
    assert tiny.num_row_groups > 5
    assert tiny.read().to_pylist() == read_view(root, "default-groups").to_pylist()


def test_a_sampling_task_returns_counts_and_writes_its_rows(corpus, tmp_path):
    root, entries_file = corpus
    entries = read_entries(location(entries_file))
    encoded = np.frombuffer(json.dumps(entries).encode(), dtype=np.uint8)
    fingerprint = hashlib.sha256(encoded).hexdigest()
    probability = np.full(len(entries), 0.5)
    shard = layout.complete_shards(root)[0]
    parts = location(tmp_path / "parts")
    result = sample_shard(location(root), shard, None, encoded, fingerprint, probability, 1, parts)
    assert result.kept_rows is None and result.kept > 0
    written = pq.read_table(tmp_path / "parts" / f"{shard}.parquet")
    expected = balance_shard(location(root), shard, None, encoded, fingerprint, probability, 1).kept_rows
    assert written.num_rows == result.kept and written.to_pylist() == expected.to_pylist()


def test_parts_an_interrupted_run_left_are_replaced(corpus):
    root, entries = corpus
    first = balance(root, metadata=str(entries), t=T, view="rerun", executor="inline")
    reference = read_view(root, "rerun").to_pylist()
    leftover = root / "balance" / ".rerun.parts"
    leftover.mkdir(parents=True)
    shard = layout.complete_shards(root)[0]
    pq.write_table(pa.Table.from_pylist(reference[:1] * 3, schema=VIEW_SCHEMA), leftover / f"{shard}.parquet")
    again = balance(root, metadata=str(entries), t=T, view="rerun", executor="inline")
    assert read_view(root, "rerun").to_pylist() == reference and again.rows == first.rows
    assert not leftover.exists()
