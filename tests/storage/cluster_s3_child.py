"""A download to s3:// on a multi-node Ray cluster of this machine whose worker node is killed
mid-run; run as its own process by test_ray_cluster_s3.py (a fresh Ray, apart from the session's).

    python cluster_s3_child.py SPEC.json

The image server runs here, so the kill can wait until shards are being downloaded. The AWS_*
variables of the environment point the driver and every node at the test's S3 server. Prints one
``RESULT {...}`` line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "hardening"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pyarrow as pa  # noqa: E402
import pyarrow.parquet as pq  # noqa: E402
import ray  # noqa: E402
from cluster_child import cluster_with_workers, in_background, poll  # noqa: E402
from http_server import TestHTTPServer  # noqa: E402

import mmdata  # noqa: E402
from mmdata import layout  # noqa: E402


def in_flight(server: TestHTTPServer, prefix: str) -> int:
    with server._lock:
        return server._in_flight.get(prefix, 0)


def main(spec: dict) -> dict:
    server = TestHTTPServer().start()
    rows = [{"url": server.url(f"/img/{spec['run']}/{index}.jpg?w=40&h=40&delay={spec['delay']:g}"),
             "caption": f"c{index}"} for index in range(spec["rows"])]
    source = Path(spec["folder"]) / "urls.parquet"
    pq.write_table(pa.Table.from_pylist(rows), source)
    cluster, workers = cluster_with_workers(2, 2)
    options = {**spec["options"], "input": str(source)}
    root = layout.dataset(options["output_dir"])
    started = time.monotonic()
    thread, outcome = in_background(mmdata.download, **options)
    prefix = f"/img/{spec['run']}/"
    # Kill a node once a shard is committed and others are mid-download.
    reached = poll(lambda: len(layout.complete_shards(root)) >= 1 and in_flight(server, prefix) >= 2, thread)
    complete_at_kill = len(layout.complete_shards(root))
    cluster.remove_node(workers[0], allow_graceful=False)
    thread.join(600)
    server.stop()
    return {"rows": rows, "killed_mid_run": reached, "complete_at_kill": complete_at_kill, "alive": thread.is_alive(),
            "seconds": round(time.monotonic() - started, 1), **outcome}


if __name__ == "__main__":
    report = main(json.loads(Path(sys.argv[1]).read_text()))
    print("RESULT " + json.dumps(report, default=str), flush=True)
    ray.shutdown()
