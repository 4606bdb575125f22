"""pipelines/train_clip.py: train a tiny open_clip model from a view, stop mid-epoch, resume in a new
process, and see exactly the batches an uninterrupted run would have seen."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

import mmdata

SCRIPT = Path(__file__).resolve().parents[2] / "pipelines" / "train_clip.py"


def run(*args):
    # One intra-op thread: spinning thread pools on a busy 2-core machine make each step seconds long.
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    child = subprocess.run(
        [sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True, timeout=300, env=env
    )
    assert child.returncode == 0, child.stderr[-3000:]
    return json.loads(child.stdout.strip().splitlines()[-1])


def test_train_stop_and_resume_exactly(dataset_factory, tmp_path):
    root, keys = dataset_factory([9, 12, 7], image_size=16)
    view = keys[::4] + keys[1::4] + keys[2::4]  # 21 of 28
    from mmdata.atomic import write_parquet
    from mmdata.schemas.views import VIEW_SCHEMA

    write_parquet(pa.table({"key": view, "shard": [k[:5] for k in view]}), root / "views" / "most.parquet", VIEW_SCHEMA)
    checkpoint, log = tmp_path / "clip.pt", tmp_path / "steps.jsonl"
    common = [root, "--view", "most", "--batch-size", "4", "--workers", "2", "--checkpoint", checkpoint, "--log", log]
    first = run(*common, "--steps", "9", "--stop-after", "4")
    assert first["step"] == 4 and checkpoint.exists()
    second = run(*common, "--steps", "9", "--resume")
    assert second["step"] == 9 and second["epoch"] == 1
    steps = [json.loads(line) for line in log.read_text().splitlines()]
    assert [s["step"] for s in steps] == list(range(1, 10))
    # the batches an uninterrupted loader gives for epochs 0 and 1 (6 batches each with 2 workers)
    dataset = mmdata.stream(root, view="most", seed=0, decode=None)
    loader = dataset.loader(batch_size=4, num_workers=2, collate_fn=lambda items: [i["key"] for i in items])
    expected = []
    for epoch in (0, 1):
        loader.set_epoch(epoch)
        expected += list(loader)
    assert [s["keys"] for s in steps] == expected[:9]
    assert sorted(k for s in steps[:6] for k in s["keys"]) == sorted(view)
    assert all(s["loss"] == s["loss"] and s["loss"] > 0 for s in steps)
