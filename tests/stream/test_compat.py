"""Our shards need no conversion: webdataset 1.x reads them, and so does open_clip_train's
webdataset pipeline (which needs webdataset 0.2.86, run in a subprocess), resharded output included."""

import json
import os
import subprocess
import sys

import numpy as np
import pyarrow as pa
import webdataset as wds

import mmdata
from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.schemas.views import VIEW_SCHEMA

OPEN_CLIP_TRAIN = r"""
import json, sys, types
import open_clip, torch, webdataset
from open_clip_train.data import get_wds_dataset
assert webdataset.__version__.startswith("0.2"), webdataset.__version__
preprocess = open_clip.image_transform(224, is_train=False)
tokenizer = open_clip.get_tokenizer("RN50")
results = []
for urls, count in json.loads(sys.argv[1]):
    args = types.SimpleNamespace(train_data=urls, val_data=urls, train_num_samples=count, val_num_samples=count,
        batch_size=4, workers=0, world_size=1, seed=0, train_data_upsampling_factors=None, dataset_resampled=False)
    seen = []
    for images, texts in get_wds_dataset(args, preprocess, is_train=False, tokenizer=tokenizer).dataloader:
        seen += [t.tolist() for t in texts]
        assert images.shape[1:] == (3, 224, 224)
    images, texts = next(iter(get_wds_dataset(args, preprocess, is_train=True, tokenizer=tokenizer).dataloader))
    results.append({"eval_tokens": seen, "train_batch": list(images.shape)})
print(json.dumps(results))
"""


def shard_urls(root):
    shards = layout.complete_shards(root)
    return f"{root}/{{{shards[0]}..{shards[-1]}}}.tar"


def tar_paths(root):
    return [str(layout.tar_path(root, s)) for s in layout.complete_shards(root)]


def test_webdataset_reads_our_shards(dataset_factory):
    root, keys = dataset_factory([5, 8, 3], failures_every=4)
    samples = list(wds.WebDataset(tar_paths(root), shardshuffle=False).decode("pil"))
    assert [s["__key__"] for s in samples] == keys
    ours = list(mmdata.stream(root, shuffle=False))
    for sample, item in zip(samples, ours):
        assert sample["txt"] == item["caption"]
        assert np.array_equal(np.asarray(sample["jpg"]), np.asarray(item["image"]))


def resharded(root, keys, tmp_path):
    """A view of every other sample, resharded into shards of 4 (no Ray: one process)."""
    from mmdata.curate.reshard import reshard

    chosen = keys[::2]
    metadata = pa.concat_tables([pa.parquet.read_table(layout.parquet_path(root, s)).append_column(
        "shard", pa.array([s] * pa.parquet.read_metadata(layout.parquet_path(root, s)).num_rows))
        for s in layout.complete_shards(root)])
    view = metadata.filter(pa.compute.is_in(metadata.column("key"), pa.array(chosen)))
    write_parquet(view, layout.views_dir(root) / "half.parquet", VIEW_SCHEMA)
    output = tmp_path / "resharded"
    reshard(root, view="half", output=output, shard_size=4, executor="inline")
    return output, chosen


def test_open_clip_train_reads_our_shards_and_resharded_ones(dataset_factory, old_webdataset_path, tmp_path):
    import open_clip

    root, keys = dataset_factory([6, 5, 4], failures_every=5)
    output, chosen = resharded(root, keys, tmp_path)
    out_keys = [s["__key__"] for s in wds.WebDataset(tar_paths(output), shardshuffle=False)]
    assert sorted(item["key"] for item in mmdata.stream(output, decode=None)) == out_keys
    assert sorted(item["caption"] for item in mmdata.stream(output, decode=None)) == sorted(
        f"caption {k}" for k in chosen
    )
    datasets = [(root, [f"caption {k}" for k in keys]), (output, [f"caption {k}" for k in chosen])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(old_webdataset_path), os.environ.get("PYTHONPATH", "")])}
    jobs = json.dumps([[shard_urls(path), len(captions)] for path, captions in datasets])
    child = subprocess.run(
        [sys.executable, "-c", OPEN_CLIP_TRAIN, jobs], capture_output=True, text=True, env=env, timeout=300
    )
    assert child.returncode == 0, child.stderr[-3000:]
    results = json.loads(child.stdout.strip().splitlines()[-1])
    tokenizer = open_clip.get_tokenizer("RN50")
    for (_path, captions), result in zip(datasets, results):
        assert sorted(result["eval_tokens"]) == sorted(tokenizer(captions).tolist())
        assert result["train_batch"] == [4, 3, 224, 224]
