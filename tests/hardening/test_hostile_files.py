"""Hostile dataset files through the public readers: the stream loader, scoring, dedup hashing and
``read_table``. Nothing is executed, nothing is written outside the output, memory stays bounded."""

from __future__ import annotations

import os
import pickle
import tarfile
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hostile_files import (
    HOSTILE_KINDS,
    REFUSED_KINDS,
    Detonator,
    good_sample,
    gzip_bomb,
    gzipped_tar_bomb,
    hostile_dataset,
    write_shard,
)

import mmdata
from mmdata import layout
from mmdata.curate.hashes import dataset_hashes
from mmdata.execution import ExecutionConfig
from mmdata.shards import ShardFormatError, iter_samples
from mmdata.stream.reader import StreamError


def snapshot(folder: Path) -> set[str]:
    """Every path under ``folder`` (links included, not followed)."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


@pytest.fixture
def hostile(tmp_path):
    """A dataset folder with one hostile sample per kind, and ``outside``: where an extracting or
    unpickling reader would write (it must stay absent)."""
    root = tmp_path / "data"
    outside = tmp_path / "outside"
    keys = hostile_dataset(root, outside)
    return root, outside, keys


@pytest.mark.parametrize("kind", HOSTILE_KINDS)
def test_safe_reader_refuses_or_drops_each_hostile_member(tmp_path, kind):
    root, outside = tmp_path / "data", tmp_path / "outside"
    keys = hostile_dataset(root, outside)
    shard = HOSTILE_KINDS.index(kind) + 1
    before = snapshot(tmp_path)
    if kind in REFUSED_KINDS:
        with pytest.raises(ShardFormatError):
            list(iter_samples(layout.tar_path(root, shard)))
    else:
        samples = dict(iter_samples(layout.tar_path(root, shard)))
        hostile_key = next(key for key, found in keys.items() if found == kind)
        assert set(samples[hostile_key]) == {"jpg", "txt"}, "pickle members are dropped"
    assert snapshot(tmp_path) == before and not outside.exists()


def test_stream_skip_loses_exactly_the_hostile_samples_and_writes_nothing(hostile, tmp_path):
    root, outside, keys = hostile
    before = snapshot(tmp_path)
    dataset = mmdata.stream(root, shuffle=False, decode="pil", on_error="skip")
    with pytest.warns(RuntimeWarning, match="skipped"):
        items = {item["key"]: item for item in dataset}
    refused = {key for key, kind in keys.items() if kind in REFUSED_KINDS}
    assert dataset.skipped == len(refused) == len(REFUSED_KINDS)
    assert {error.key for error in dataset.errors} == refused
    assert not refused & set(items)
    pickle_key = next(key for key, kind in keys.items() if kind == "pickle")
    assert set(items[pickle_key]) == {"key", "image", "caption"}  # the sample survives, its pickles do not
    assert len(items) == 3 + 2 * len(HOSTILE_KINDS) + 1  # clean shard + clean neighbours + the pickle sample
    assert snapshot(tmp_path) == before and not outside.exists()


@pytest.mark.parametrize("kind", REFUSED_KINDS)
def test_stream_raise_names_the_shard_and_key(tmp_path, kind):
    root, outside = tmp_path / "data", tmp_path / "outside"
    keys = hostile_dataset(root, outside)
    hostile_key = next(key for key, found in keys.items() if found == kind)
    shard = layout.shard_name(HOSTILE_KINDS.index(kind) + 1)
    with pytest.raises(StreamError) as caught:
        for _ in mmdata.stream(root, view=[hostile_key], shuffle=False, on_error="raise"):
            pass
    assert caught.value.shard == shard and caught.value.key == hostile_key
    assert shard in str(caught.value) and not outside.exists()


def test_dedup_hashing_refuses_a_hostile_shard_by_name(hostile, tmp_path):
    root, outside, keys = hostile
    before = snapshot(tmp_path)
    with pytest.raises(RuntimeError, match=r"hashing shard .*00001\.tar"):
        dataset_hashes(root, execution=ExecutionConfig(executor="inline"))
    assert not outside.exists()
    assert {path for path in snapshot(tmp_path) - before if "annotations" not in path} == set()


def test_dedup_hashing_drops_pickle_members_without_unpickling(tmp_path):
    root, outside = tmp_path / "data", tmp_path / "outside"
    hostile_dataset(root, outside)
    pickle_shard = HOSTILE_KINDS.index("pickle") + 1
    for shard in range(1, len(HOSTILE_KINDS) + 1):  # keep the clean shard and the pickle shard only
        if shard != pickle_shard:
            for path in (
                layout.stats_path(root, shard), layout.tar_path(root, shard), layout.parquet_path(root, shard)
            ):
                path.remove()
    hashes = dataset_hashes(root, execution=ExecutionConfig(executor="inline"))
    assert hashes.num_rows == 3 + 3 and not outside.exists()


def test_scoring_fails_hostile_shards_by_name_and_scores_the_rest(hostile, ray_local, tmp_path):
    from mmdata.score.model import tiny_model_config, write_model_config

    root, outside, keys = hostile
    config = write_model_config(tmp_path / "models" / "tiny.json", tiny_model_config())
    before = snapshot(tmp_path)
    summary = mmdata.score(dataset=str(root), model=str(config), actors=1, batch_size=8, show_progress=False)
    assert summary["counts"]["shards_failed"] == len(REFUSED_KINDS)
    failed = " ".join(map(str, summary["failures"]))
    for kind in REFUSED_KINDS:
        assert layout.tar_path(root, HOSTILE_KINDS.index(kind) + 1).name in failed, kind
    scored = {name.removesuffix(".parquet") for name in layout.model_dir(root, summary["model_id"]).names(".parquet")}
    pickle_shard = layout.shard_name(HOSTILE_KINDS.index("pickle") + 1)
    assert scored == {"00000", pickle_shard}
    assert pq.read_table(layout.score_path(root, summary["model_id"], pickle_shard)).num_rows == 3
    assert not outside.exists()
    assert all(path.startswith(("data/scores", "models")) for path in snapshot(tmp_path) - before)


def test_gzip_bomb_posing_as_a_tar_is_refused_without_inflating(tmp_path):
    root = tmp_path / "data"
    write_shard(root, 0, [good_sample(layout.sample_key(0, row, 10), row) for row in range(2)])
    gzip_bomb(layout.tar_path(root, 0), mib=128)  # 128 MiB of zeros in ~128 KiB, replacing the tar
    bundled = gzipped_tar_bomb(tmp_path / "bundle.tar.gz", mib=128)
    tracemalloc.start()
    try:
        for source in (layout.tar_path(root, 0), bundled):
            with pytest.raises((ShardFormatError, tarfile.ReadError)):
                list(iter_samples(source))
        dataset = mmdata.stream(root, shuffle=False, on_error="skip")
        with pytest.warns(RuntimeWarning):
            assert list(dataset) == []
        assert dataset.skipped == 2
        with pytest.raises(RuntimeError, match="00000.tar"):
            dataset_hashes(root, execution=ExecutionConfig(executor="inline"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 32 * 2**20, f"traced memory peaked at {peak / 2**20:.0f} MiB"


def test_parquet_extension_type_payloads_are_never_unpickled(tmp_path):
    """pyarrow >= 14 no longer unpickles ``arrow.py_extension_type`` (pyarrow 26 has no
    PyExtensionType at all); our readers keep it so: the column reads as its storage type."""
    outside = tmp_path / "outside"
    payload = pickle.dumps(Detonator(outside))
    root = tmp_path / "data"
    write_shard(root, 0, [good_sample(layout.sample_key(0, row, 10), row) for row in range(2)])
    evil = pa.field("payload", pa.int64(), metadata={b"ARROW:extension:name": b"arrow.py_extension_type",
                                                      b"ARROW:extension:metadata": payload})
    metadata = pq.read_table(layout.parquet_path(root, 0))
    poisoned = metadata.append_column(evil, pa.array([1, 2], pa.int64()))
    pq.write_table(poisoned, layout.parquet_path(root, 0))
    annotations = layout.annotations_dir(root)
    annotations.make_dirs()
    annotation = pa.table({"key": metadata.column("key"), "flag": pa.array([3, 4], pa.int64())})
    annotation = annotation.cast(pa.schema([pa.field("key", pa.string()), evil.with_name("flag")]))
    pq.write_table(annotation, annotations / "evil.parquet")

    table = mmdata.read_table(root)
    items = list(mmdata.stream(root, shuffle=False, columns=["payload", "flag"]))
    assert table.column("payload").to_pylist() == [1, 2] and table.column("flag").to_pylist() == [3, 4]
    assert table.schema.field("payload").type == pa.int64()
    assert [item["payload"] for item in items] == [1, 2]
    assert not outside.exists()
    assert not hasattr(pa, "PyExtensionType") or not getattr(pa.PyExtensionType, "_auto_load", False)


def test_no_module_registers_extension_types_or_unpickles():
    """Source check that stays true only if nobody adds an unpickling path to the readers."""
    package = Path(mmdata.__file__).parent
    offenders = []
    for path in package.rglob("*.py"):
        text = path.read_text()
        for needle in (
            "register_extension_type", "set_auto_load", "pickle.load", "weights_only=False", "allow_pickle=True"
        ):
            if needle in text:
                offenders.append(f"{path.relative_to(package)}: {needle}")
    assert offenders == []


def test_a_malicious_pickle_checkpoint_is_refused_and_safetensors_loads(tmp_path):
    import torch
    from safetensors.torch import save_file

    from mmdata.score.model import ModelLoadError, load_clip, tiny_model_config, write_model_config

    config = write_model_config(tmp_path / "models" / "tiny.json", tiny_model_config())
    outside = tmp_path / "outside"
    reference = load_clip(str(config), None)
    state = {name: tensor + 1.0 if tensor.is_floating_point() else tensor
             for name, tensor in reference.model.state_dict().items()}

    poisoned = tmp_path / "models" / "poisoned.pt"
    torch.save({"state_dict": state, "extra": Detonator(outside)}, poisoned)
    with pytest.raises(ModelLoadError, match="weights_only"):
        load_clip(str(config), str(poisoned))
    assert not outside.exists(), "the checkpoint's pickle ran"

    safe = tmp_path / "models" / "tiny.safetensors"
    save_file({name: tensor.contiguous() for name, tensor in state.items()}, str(safe))
    loaded = load_clip(str(config), str(safe))
    for name, tensor in loaded.model.state_dict().items():
        assert torch.equal(tensor, state[name]), name
    assert not outside.exists() and os.path.exists(safe)


def test_a_truncated_tar_in_a_training_view_raises_by_shard_or_counts_the_exact_loss(tmp_path):
    root = tmp_path / "data"
    for shard in range(2):
        write_shard(root, shard, [good_sample(layout.sample_key(shard, row, 10), row) for row in range(8)])
    view = mmdata.filter_view(root, view="even", caption_regex=r"[02468]$")  # rows 0, 2, 4, 6 of each shard
    view_keys = view.column("key").to_pylist()
    assert len(view_keys) == 8
    metadata = pq.read_table(layout.parquet_path(root, 1)).to_pylist()
    cut = metadata[3]["tar_offset"] + 700  # inside row 3: rows 3..7 are gone, of which 4 and 6 are in the view
    tar = layout.tar_path(root, 1)
    tar.write_bytes(tar.read_bytes()[:cut])
    lost = {metadata[4]["key"], metadata[6]["key"]}

    with pytest.raises(StreamError) as caught:
        list(mmdata.stream(root, view="even", shuffle=False, on_error="raise"))
    assert caught.value.shard == "00001" and caught.value.key == metadata[4]["key"]
    assert "shard 00001" in str(caught.value)

    dataset = mmdata.stream(root, view="even", shuffle=False, on_error="skip")
    with pytest.warns(RuntimeWarning, match="skipped 2 unreadable samples"):
        got = [item["key"] for item in dataset]
    assert sorted(got) == sorted(set(view_keys) - lost)
    assert dataset.skipped == 2 and {error.key for error in dataset.errors} == lost
