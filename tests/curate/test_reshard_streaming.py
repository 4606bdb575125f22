"""Reshard out of core: the plan comes from a streamed read of the view, each task reads its own row
range of it, and the output is byte for byte what materialising the whole view in memory wrote."""

import hashlib
import json
import pickle

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from curate_corpus import build_corpus, scene_embeddings, write_dataset

from mmdata import layout
from mmdata.curate import reshard as resharding
from mmdata.curate.reshard import PLAN_FILE, plan_reshard, reshard, write_shard, write_view_shard
from mmdata.curate.view import filter_view, read_view, read_view_rows, view_path
from mmdata.storage import location

SHARD_SIZE = 7
TIMING_FIELDS = ("duration", "start_time", "end_time")


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    root = tmp_path_factory.mktemp("source")
    corpus = build_corpus(4, seed=3)
    rng = np.random.default_rng(2)
    scores = [float(v) for v in rng.uniform(0.0, 0.4, len(corpus))]
    write_dataset(root, corpus, shard_size=16, scores=scores, embeddings=scene_embeddings(corpus), failures_every=6)
    view = filter_view(root, view="best", top_fraction=0.7)
    assert view.num_rows > 3 * SHARD_SIZE  # several output shards, the last one short
    return root, view


@pytest.fixture(scope="module")
def resharded(source, tmp_path_factory):
    root, _ = source
    output = tmp_path_factory.mktemp("resharded") / "out"
    manifest = reshard(root, view="best", output=output, shard_size=SHARD_SIZE, executor="inline")
    return output, manifest


def shard_files(root) -> dict[str, bytes]:
    """Every tar, metadata and score file of a dataset by relative path; stats without their timings."""
    found = {}
    for path in sorted(root.rglob("*")):
        name = str(path.relative_to(root))
        if path.suffix in (".tar", ".parquet"):
            found[name] = path.read_bytes()
        elif path.name.endswith("_stats.json"):
            stats = json.loads(path.read_text())
            found[name] = {key: value for key, value in stats.items() if key not in TIMING_FIELDS}
    return found


def old_digest(keys: list[str]) -> str:
    """The keys digest as reshard.json has always held it."""
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode() + b"\n")
    return digest.hexdigest()


def test_the_output_is_what_the_in_memory_reshard_wrote(source, resharded, tmp_path):
    root, _ = source
    output, manifest = resharded
    reference = tmp_path / "in-memory"
    view = read_view(root, "best")  # the previous implementation: the view whole, a slice per task
    shards = -(-view.num_rows // SHARD_SIZE)
    digits = layout.shard_digits_for(shards)
    for shard in range(shards):
        write_shard(location(root), location(reference), shard, view.slice(shard * SHARD_SIZE, SHARD_SIZE),
                    SHARD_SIZE, digits)
    written = shard_files(output)
    assert written == shard_files(reference)
    assert len([name for name in written if name.endswith(".tar")]) == shards
    assert any(name.startswith("scores/") for name in written)
    assert manifest["samples"] == view.num_rows
    assert manifest["keys_sha256"] == old_digest(view.column("key").to_pylist())


def test_tiny_row_groups_and_batches_give_the_same_dataset(source, resharded, tmp_path, monkeypatch):
    root, view = source
    output, manifest = resharded
    stored = pq.read_table(view_path(root, "best").local_path())
    pq.write_table(stored, view_path(root, "best-tiny").local_path(), row_group_size=3)
    assert pq.ParquetFile(view_path(root, "best-tiny").local_path()).num_row_groups > 5
    monkeypatch.setattr("mmdata.curate.view.VIEW_BATCH_ROWS", 4)  # the digest reads 4 keys at a time
    other = reshard(root, view="best-tiny", output=tmp_path / "tiny", shard_size=SHARD_SIZE, executor="inline")
    assert other["keys_sha256"] == manifest["keys_sha256"] and other["samples"] == manifest["samples"]
    assert shard_files(tmp_path / "tiny") == shard_files(output)


def test_row_ranges_across_row_groups(source, tmp_path):
    root, view = source
    path = tmp_path / "groups.parquet"
    pq.write_table(view, path, row_group_size=5)
    columns = ["key", "shard", "tar_offset"]
    for start, count in [(0, 5), (3, 9), (10, 1), (view.num_rows - 2, 7), (view.num_rows, 3)]:
        rows = read_view_rows(location(path), start, count, columns)
        assert rows.to_pylist() == view.select(columns).slice(start, count).to_pylist()


def test_tasks_carry_a_row_range_not_rows(source, tmp_path, monkeypatch):
    root, view = source
    calls = []

    def recording(*arguments):
        calls.append(arguments)
        return write_view_shard(*arguments)

    monkeypatch.setattr(resharding, "write_view_shard", recording)
    reshard(root, view="best", output=tmp_path / "out", shard_size=SHARD_SIZE, executor="inline")
    assert len(calls) == -(-view.num_rows // SHARD_SIZE)
    for arguments in calls:
        assert not any(isinstance(argument, (pa.Table, pa.Array, list)) for argument in arguments)
        assert len(pickle.dumps(arguments)) < 2_000


def test_a_plan_written_by_the_previous_version_resumes(source, resharded, tmp_path):
    root, view = source
    output = tmp_path / "out"
    output.mkdir()
    plan = plan_reshard(root, view="best", output=output, shard_size=SHARD_SIZE)
    old_plan = {"source": str(root.resolve()), "view": "best", "shard_size": SHARD_SIZE,
                "samples": view.num_rows, "keys_sha256": old_digest(view.column("key").to_pylist())}
    assert plan.record == old_plan
    (output / PLAN_FILE).write_text(json.dumps(old_plan))
    reshard(root, view="best", output=output, shard_size=SHARD_SIZE, executor="inline")
    assert shard_files(output) == shard_files(resharded[0])

    stale = tmp_path / "stale"
    stale.mkdir()
    (stale / PLAN_FILE).write_text(json.dumps({**old_plan, "keys_sha256": old_digest(["other"])}))
    with pytest.raises(ValueError, match=r"another plan \(differs in \['keys_sha256'\]\)"):
        reshard(root, view="best", output=stale, shard_size=SHARD_SIZE, executor="inline")


def test_a_view_that_shrank_after_planning_is_refused(source, tmp_path):
    root, view = source
    with pytest.raises(RuntimeError, match="changed during the reshard"):
        write_view_shard(location(root), location(tmp_path / "out"), 0, view_path(root, "best"),
                         view.num_rows + 5 * SHARD_SIZE, view.num_rows + SHARD_SIZE, 5)
