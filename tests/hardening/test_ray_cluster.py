"""Scale-out faults on a multi-node Ray cluster on this machine (``ray.cluster_utils.Cluster``: a
head and worker raylets): a worker node dies during a download and during scoring, a task's node
dies more often than Ray retries, and the object store spills. Each scenario runs in its own
process (cluster_child.py) with a timeout, so a hang fails the test instead of blocking it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from download_checks import check_dataset, read_metadata, tar_samples, write_input
from hostile_files import good_sample, write_shard
from processes import ENVIRONMENT

from mmdata import layout
from mmdata.score.model import tiny_model_config, write_model_config

CHILD = Path(__file__).resolve().parent / "cluster_child.py"
NETWORK = dict(allow_network=["127.0.0.1/32"], timeout=5.0, retries=0, image_size=32)


def run_scenario(scenario: str, spec: dict, tmp_path: Path, timeout: float = 420) -> dict:
    spec_path = tmp_path / f"{scenario}.json"
    spec_path.write_text(json.dumps(spec))
    environment = {
        **ENVIRONMENT, "PYTHONPATH": os.pathsep.join(filter(None, [str(CHILD.parent), os.environ.get("PYTHONPATH")]))
    }
    try:
        done = subprocess.run([sys.executable, str(CHILD), scenario, str(spec_path)], env=environment,
                              capture_output=True, text=True, timeout=timeout, start_new_session=True)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"{scenario} hung for {timeout} s: {(expired.stderr or b'')[-2000:]!r}")
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, f"{scenario} exited {done.returncode}: {done.stderr[-3000:]}"
    return json.loads(lines[-1][len("RESULT "):])


def slow_rows(server, count: int, delay: float) -> list[dict]:
    run = uuid.uuid4().hex[:8]
    return [{"url": server.url(f"/img/cluster-{run}-{index}.jpg?w=40&h=40&delay={delay:g}"), "caption": f"c{index}"}
            for index in range(count)]


@pytest.mark.slow
def test_a_worker_node_killed_during_download_loses_and_duplicates_nothing(hardening_server, tmp_path):
    rows = slow_rows(hardening_server, 80, delay=0.2)
    source = write_input(rows, tmp_path, "parquet")
    output = tmp_path / "out"
    report = run_scenario("download-node-death", {"options": {
        "input": str(source), "output_dir": str(output), "shard_size": 5, "workers": 4, "threads": 2, **NETWORK,
    }}, tmp_path)
    assert report["killed_mid_run"] and report["complete_at_kill"] < 16, report
    assert "error" not in report and not report["alive"], report
    by_key, samples = check_dataset(output, rows, 5)
    assert len(samples) == 80 and all(row["status"] == "success" for row in by_key.values())
    assert report["result"]["totals"]["successes"] == 80


@pytest.mark.slow
def test_a_worker_node_killed_during_scoring_scores_every_sample_once(tmp_path):
    root = tmp_path / "data"
    keys = []
    for shard in range(16):
        keys += write_shard(
            root, shard, [good_sample(layout.sample_key(shard, row, 40), row) for row in range(40)], shard_size=40
        )
    config = write_model_config(tmp_path / "models" / "tiny.json", tiny_model_config())
    report = run_scenario("score-node-death", {"options": {
        "dataset": str(root), "model": str(config), "actors": 2, "cpus_per_actor": 1, "batch_size": 8,
        "show_progress": False}}, tmp_path)
    assert report["killed_mid_run"] and report["scored_at_kill"] < 16, report
    assert report["error"] is None and not report["alive"], report
    tables = sorted((root / "scores" / report["model_id"]).glob("*.parquet"))
    assert len(tables) == 16
    scored = [key for path in tables for key in pq.read_table(path, columns=["key"]).column("key").to_pylist()]
    assert sorted(scored) == sorted(keys), "every stored sample scored exactly once"
    assert report["counts"]["samples"] >= len(keys)


@pytest.mark.slow
def test_a_task_whose_node_dies_more_often_than_ray_retries_fails_the_job_loudly(hardening_server, tmp_path):
    rows = slow_rows(hardening_server, 20, delay=1.0)
    source = write_input(rows, tmp_path, "parquet")
    output = tmp_path / "out"
    report = run_scenario("retries-exhausted", {"options": {
        "input": str(source), "output_dir": str(output), "shard_size": 10, "workers": 1, "threads": 1, **NETWORK,
    }}, tmp_path)
    assert not report["alive"], f"the job still runs after its task's node died {report['kills']} times: {report}"
    assert "error" in report, report
    assert report["kills"] == 4, report  # the first run and Ray's 3 retries, then the job fails
    assert any(word in report["error"] for word in ("NodeDied", "WorkerCrashed", "died", "crashed")), report["error"]
    assert not layout.complete_shards(output) and not layout.manifest_path(output).exists()


@pytest.mark.slow
def test_scoring_fails_loudly_once_its_actors_are_dead_for_good(tmp_path):
    root = tmp_path / "data"
    for shard in range(40):
        write_shard(
            root, shard, [good_sample(layout.sample_key(shard, row, 40), row) for row in range(40)], shard_size=40
        )
    config = write_model_config(tmp_path / "models" / "tiny.json", tiny_model_config())
    report = run_scenario("score-actors-exhausted", {"options": {
        "dataset": str(root), "model": str(config), "actors": 1, "cpus_per_actor": 1, "batch_size": 8,
        "show_progress": False}}, tmp_path)
    assert not report["alive"], f"scoring still runs with no actor left: {report}"
    assert report["kills"] == 2, report  # the actor restarts once (max_restarts=1), then it is gone
    assert report["error"] and "RuntimeError" in report["error"] and "actor" in report["error"], report
    assert report["scored"] < 40


@pytest.mark.slow
def test_object_store_spilling_gives_identical_output(hardening_server, tmp_path):
    run = uuid.uuid4().hex[:8]
    # 240 KB a row: task arguments live in the store
    rows = [{"url": hardening_server.url(f"/img/spill-{run}-{index}.jpg?w=40&h=40"), "caption": f"c{index}",
             "padding": f"{index:06d}" * 40_000} for index in range(60)]
    source = write_input(rows, tmp_path, "parquet")
    options = {"input": str(source), "shard_size": 10, "workers": 2, "threads": 4,
               "save_additional_columns": ["padding"], **NETWORK}
    spilled = run_scenario("spill", {"store_bytes": 80 * 2**20, "ballast_bytes": 64 * 2**20,
                                     "spill_dir": str(tmp_path / "spill-a"),
                                     "options": {**options, "output_dir": str(tmp_path / "spilled")}}, tmp_path)
    plain = run_scenario("spill", {"store_bytes": 1024 * 2**20, "ballast_bytes": 4 * 2**20,
                                   "spill_dir": str(tmp_path / "spill-b"),
                                   "options": {**options, "output_dir": str(tmp_path / "plain")}}, tmp_path)
    print("spill:", spilled, "no spill:", plain)
    assert spilled["spilled_after"] > spilled["spilled_before"], spilled
    assert plain["spilled_after"] == 0, plain
    check_dataset(tmp_path / "spilled", rows, 10)
    assert read_metadata(tmp_path / "spilled").equals(read_metadata(tmp_path / "plain"))
    assert tar_samples(tmp_path / "spilled") == tar_samples(tmp_path / "plain")
    for name in layout.complete_shards(tmp_path / "plain"):
        assert (
            layout.tar_path(tmp_path / "spilled", name).read_bytes()
            == layout.tar_path(tmp_path / "plain", name).read_bytes()
        )
