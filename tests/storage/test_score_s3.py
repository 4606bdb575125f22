"""Scoring on s3:// (moto on 127.0.0.1): a job SIGKILLed mid-way and re-run scores every stored
sample exactly once, and leaves only score tables and the model record on the store."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from s3_checks import wait_for
from session_kill import kill_session

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "score"))
from score_data import build_dataset  # noqa: E402

import mmdata  # noqa: E402
from mmdata import layout  # noqa: E402
from mmdata.score.model import tiny_model_config, write_model_config  # noqa: E402
from mmdata.storage import location, read_parquet  # noqa: E402

pytestmark = pytest.mark.slow
SHARDS = 6


def _scored(root) -> list[str]:
    return [name for folder in layout.scores_dir(root).list() for name in
            (layout.scores_dir(root) / folder).names(".parquet")]


def test_a_score_job_killed_mid_way_resumes_to_every_sample_once(s3_bucket, tmp_path):
    # A model slow enough (160 px, patch 16) that the kill lands while shards remain.
    model = write_model_config(tmp_path / "models" / "slower.json", tiny_model_config(image_size=160, patch_size=16))
    data = f"{s3_bucket}/data"
    root = location(data)
    stored = build_dataset(data, shards=SHARDS, per_shard=16)
    command = [sys.executable, "-m", "mmdata", "score", data, "--model", str(model), "--batch-size", "4",
               "--quiet", "--executor", "processes", "--workers", "1"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: len(_scored(root)) >= 1, timeout=240, what="a scored shard", process=process)
    finally:
        kill_session(process)
    done_before = len(_scored(root))

    summary = mmdata.score(dataset=data, model=str(model), batch_size=4, show_progress=False, executor="inline")
    assert summary["shards_skipped"] == done_before >= 1
    assert summary["counts"]["shards_scored"] == SHARDS - done_before >= 1, "the kill landed mid-way"

    folder = layout.model_dir(root, summary["model_id"])
    tables = [read_parquet(folder / name, columns=["key", "clip_score"]) for name in folder.names(".parquet")]
    keys = [key for table in tables for key in table.column("key").to_pylist()]
    assert sorted(keys) == sorted(stored) and len(keys) == len(set(keys)), "every stored sample once"
    assert all(table.column("clip_score").null_count == 0 for table in tables)
    assert sorted(folder.list()) == sorted([*(f"{layout.shard_name(shard)}.parquet" for shard in range(SHARDS)),
                                            "model.json"]), "nothing but score tables and the record"
