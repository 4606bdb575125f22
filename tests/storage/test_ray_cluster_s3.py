"""A download to s3:// on a Ray cluster of this machine (``ray.cluster_utils.Cluster``: a head and two
worker nodes) whose worker node is killed mid-run: Ray reruns the lost tasks on the other node, and
the shard commit keeps every row exactly once with nothing left beside the data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from download_checks import check_dataset
from s3_checks import assert_committed_shards_whole, assert_only_data, mirror, run_result

from mmdata import layout

pytestmark = pytest.mark.slow

CHILD = Path(__file__).resolve().parent / "cluster_s3_child.py"


def test_a_worker_node_killed_during_an_s3_download_loses_and_duplicates_nothing(s3, s3_bucket, tmp_path):
    output = f"{s3_bucket}/ds"
    spec = {"run": f"cluster-s3-{uuid.uuid4().hex[:8]}", "rows": 80, "delay": 0.2, "folder": str(tmp_path),
            "options": {"output_dir": output, "shard_size": 5, "workers": 4, "threads": 2, "timeout": 5.0,
                        "retries": 0, "image_size": 32, "allow_network": ["127.0.0.1/32"]}}
    spec_path = tmp_path / "spec.json"
    spec_path.write_text(json.dumps(spec))
    environment = {**os.environ, "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0", "HF_HUB_OFFLINE": "1"}  # AWS_* from s3
    assert environment["AWS_ENDPOINT_URL"] == s3.endpoint
    try:
        done = subprocess.run([sys.executable, str(CHILD), str(spec_path)], env=environment, capture_output=True,
                              text=True, timeout=480, start_new_session=True)
    except subprocess.TimeoutExpired as expired:
        pytest.fail(f"the cluster run hung: {(expired.stderr or b'')[-2000:]!r}")
    assert "RESULT " in done.stdout, f"child exited {done.returncode}: {done.stderr[-3000:]}"
    report = run_result(done.stdout)
    summary = {key: value for key, value in report.items() if key not in ("rows", "result")}
    assert report["killed_mid_run"] and report["complete_at_kill"] < 16, summary
    assert "error" not in report and not report["alive"], summary
    assert report["result"]["totals"]["successes"] == 80, summary
    shards = [layout.shard_name(shard) for shard in range(16)]
    assert assert_only_data(output) == shards
    assert assert_committed_shards_whole(output) == shards
    by_key, samples = check_dataset(mirror(output, tmp_path / "mirror"), report["rows"], 5)
    assert len(samples) == 80 and all(row["status"] == "success" for row in by_key.values())
