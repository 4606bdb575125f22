"""open_clip's own trainer (``python -m open_clip_train.main``) trains on shards written by the download
job: the drop-in promise for img2dataset's webdataset output."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

import mmdata
from mmdata.score.model import tiny_model_config


def test_open_clip_train_runs_on_downloaded_shards(http_server, ray_local, tmp_path, old_webdataset_path):
    run = uuid.uuid4().hex[:8]
    rows = [
        {"url": http_server.url(f"/img/train-{run}-{index}.jpg?w={80 + index}&h={60 + 2 * index}"),
         "caption": f"a picture number {index}"}
        for index in range(24)
    ]
    rows.insert(5, {"url": http_server.url("/status/404"), "caption": "a failed row has no members"})
    source = tmp_path / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    output = tmp_path / "data"
    manifest = mmdata.download(
        input=source, output_dir=output, shard_size=9, image_size=64, allow_network=["127.0.0.1/32"],
        retries=0, workers=2, threads=8,
    )
    assert [entry["shard"] for entry in manifest["shards"]] == ["00000", "00001", "00002"]
    assert manifest["totals"]["successes"] == 24

    model_dir = tmp_path / "model"
    model_dir.mkdir()
    (model_dir / "open_clip_config.json").write_text(json.dumps({"model_cfg": tiny_model_config()}))
    logs = tmp_path / "logs"
    command = [
        sys.executable, "-m", "open_clip_train.main", "--dataset-type", "webdataset",
        "--train-data", f"{output}/{{00000..00002}}.tar", "--train-num-samples", "24",
        "--model", f"local-dir:{model_dir}", "--epochs", "1", "--batch-size", "8", "--workers", "0",
        "--device", "cpu", "--precision", "fp32", "--lr", "1e-4", "--warmup", "1", "--log-every-n-steps", "1",
        "--logs", str(logs), "--name", "tiny", "--save-frequency", "1", "--seed", "0",
    ]
    environment = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(old_webdataset_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "HF_HUB_OFFLINE": "1",
        "CUDA_VISIBLE_DEVICES": "",
    }
    finished = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300, cwd=tmp_path)

    assert finished.returncode == 0, finished.stderr[-4000:]
    log = (logs / "tiny" / "out.log").read_text()
    steps = [line for line in log.splitlines() if "Train Epoch: 0 [" in line and "Loss:" in line]
    assert len(steps) == 3, log[-3000:]  # 24 samples / batch 8
    assert (logs / "tiny" / "checkpoints" / "epoch_1.pt").stat().st_size > 0
