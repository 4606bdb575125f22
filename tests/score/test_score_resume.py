"""A scoring job killed mid-way and re-run scores every stored sample exactly once."""

import os
import signal
import subprocess
import sys
import time

import psutil
import pyarrow.parquet as pq
from score_data import build_dataset

from mmdata.score.job import score
from mmdata.score.model import tiny_model_config, write_model_config

SHARDS = 6


def _score_actor_processes() -> list[psutil.Process]:
    """The ScoreActor worker processes of this test session's Ray (descendants of this process)."""
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if "ScoreActor" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.NoSuchProcess:
            continue
    return found


def test_killed_job_resumes_scoring_each_sample_once(ray_local, tmp_path):
    import ray

    # The driver hands a shard to the actor only when the previous one is back, so once it is killed
    # at most the shard in flight completes; shards of some tens of milliseconds keep the detection
    # delay below that.
    config = write_model_config(tmp_path / "models" / "slower.json", tiny_model_config(image_size=160, patch_size=16))
    root = tmp_path / "data"
    stored = build_dataset(root, shards=SHARDS, per_shard=16)
    scores_dir = root / "scores"
    job = (
        "import mmdata; mmdata.score(dataset={root!r}, model={model!r}, batch_size=4, ray_address={address!r}, "
        "show_progress=False)"
    ).format(root=str(root), model=str(config), address=ray.get_runtime_context().gcs_address)
    driver = subprocess.Popen([sys.executable, "-c", job], start_new_session=True, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not list(scores_dir.glob("*/0*.parquet")):  # wait for the first shard's table
        assert driver.poll() is None, driver.stderr.read().decode()[-3000:]
        assert time.monotonic() < deadline, "no shard was scored in time"
        time.sleep(0.005)
    os.killpg(driver.pid, signal.SIGKILL)
    driver.wait()
    driver.stderr.close()
    # Ray ends the dead driver's actor; wait for that rather than guessing a delay
    _, alive = psutil.wait_procs(_score_actor_processes(), timeout=60)
    assert not alive

    done_before = len(list(scores_dir.glob("*/0*.parquet")))
    summary = score(dataset=str(root), model=str(config), batch_size=4, show_progress=False)
    assert summary["shards_skipped"] == done_before >= 1
    assert summary["counts"]["shards_scored"] == SHARDS - done_before >= 1  # the kill did land mid-way

    tables = [pq.read_table(path, columns=["key", "clip_score"]) for path in sorted(scores_dir.glob("*/0*.parquet"))]
    keys = [key for table in tables for key in table.column("key").to_pylist()]
    assert sorted(keys) == sorted(stored) and len(keys) == len(set(keys))
    assert all(table.column("clip_score").null_count == 0 for table in tables)
    assert not [path for path in scores_dir.rglob("*") if path.name.startswith(".")]  # no temporaries left
    assert (scores_dir / summary["model_id"] / "model.json").is_file()
