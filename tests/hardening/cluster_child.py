"""One multi-node Ray scenario, run as its own process by test_ray_cluster.py (a fresh Ray per
scenario, apart from the test session's local Ray). Prints one JSON line with what happened.

    python cluster_child.py SCENARIO SPEC.json

Scenarios: download-node-death, score-node-death, retries-exhausted, score-actors-exhausted, spill.
"""

from __future__ import annotations

import atexit
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

import mmdata
from mmdata import layout
from mmdata.storage.location import TEMP_SUFFIX

NODE_OPTIONS = dict(include_dashboard=False)


def in_background(function, **options):
    """Run a job on a thread; the returned dict fills with its result or its error."""
    outcome: dict = {}

    def target():
        try:
            outcome["result"] = function(**options)
        except BaseException as error:  # noqa: BLE001 - reported to the test
            outcome["error"] = f"{type(error).__name__}: {error}"[-2000:]

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, outcome


def poll(condition, thread: threading.Thread, timeout: float = 300.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if not thread.is_alive() or time.monotonic() > deadline:
            return False
        thread.join(0.02)
    return True


def temporaries(root: Path) -> set[str]:
    return {path.name for path in root.iterdir() if path.name.endswith(TEMP_SUFFIX)} if root.is_dir() else set()


def cluster_with_workers(count: int, cpus: int) -> tuple[Cluster, list]:
    """A head that runs no tasks (0 CPUs) and ``count`` worker nodes of ``cpus`` CPUs each."""
    cluster = Cluster(initialize_head=True, head_node_args=dict(num_cpus=0, **NODE_OPTIONS))
    atexit.register(forget_cluster, cluster.address)
    workers = [cluster.add_node(num_cpus=cpus, **NODE_OPTIONS) for _ in range(count)]
    cluster.wait_for_nodes()
    ray.init(address=cluster.address, log_to_driver=False)
    return cluster, workers


def forget_cluster(address: str) -> None:
    """A head node records its address in /tmp/ray/ray_current_cluster and leaves it there after
    shutting down; a bare ``ray.init()`` elsewhere on the machine would then try to join the dead
    cluster. Remove the pointer if it is still ours."""
    pointer = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"
    try:
        if pointer.read_text().strip() == address:
            pointer.unlink()
    except OSError:
        pass


def download_node_death(spec: dict) -> dict:
    cluster, workers = cluster_with_workers(2, 2)
    output = Path(spec["options"]["output_dir"])
    thread, outcome = in_background(mmdata.download, **spec["options"])
    # Kill a node once a shard is complete and others are being written.
    reached = poll(lambda: len(layout.complete_shards(output)) >= 1 and len(temporaries(output)) >= 2, thread)
    complete_at_kill = len(layout.complete_shards(output))
    cluster.remove_node(workers[0], allow_graceful=False)
    thread.join(600)
    return {"killed_mid_run": reached, "complete_at_kill": complete_at_kill, "alive": thread.is_alive(), **outcome}


def score_node_death(spec: dict) -> dict:
    cluster, workers = cluster_with_workers(2, 1)
    root = Path(spec["options"]["dataset"])
    thread, outcome = in_background(mmdata.score, **spec["options"])
    scores = lambda: list(root.glob("scores/*/*.parquet"))  # noqa: E731
    reached = poll(lambda: len(scores()) >= 1, thread)
    scored_at_kill = len(scores())
    cluster.remove_node(workers[0], allow_graceful=False)
    thread.join(600)
    result = outcome.get("result")
    return {"killed_mid_run": reached, "scored_at_kill": scored_at_kill, "alive": thread.is_alive(),
            "error": outcome.get("error"), "counts": result and result["counts"],
            "model_id": result and result["model_id"]}


def retries_exhausted(spec: dict) -> dict:
    """One worker node at a time; each time a new shard attempt starts writing, its node is killed
    and a fresh node added. Ray retries the task 3 times; the 4th death must end the job."""
    cluster, workers = cluster_with_workers(1, 1)
    output = Path(spec["options"]["output_dir"])
    started = time.monotonic()
    thread, outcome = in_background(mmdata.download, **spec["options"])
    seen: set[str] = set()
    kills = 0
    node = workers[0]
    while thread.is_alive() and kills < 8:
        if not poll(lambda seen=seen: bool(temporaries(output) - seen), thread):
            break
        seen |= temporaries(output)
        cluster.remove_node(node, allow_graceful=False)
        kills += 1
        node = cluster.add_node(num_cpus=1, **NODE_OPTIONS)
    thread.join(120)
    return {"kills": kills, "alive": thread.is_alive(), "seconds": round(time.monotonic() - started, 1), **outcome}


def score_actors_exhausted(spec: dict) -> dict:
    """One worker node of 1 CPU for the one scoring actor; its node is killed (and a fresh one
    added) each time another shard gets scored. The actor restarts once (max_restarts=1); after the
    second death no actor is left and the job must fail, not wait."""
    cluster, workers = cluster_with_workers(1, 1)
    root = Path(spec["options"]["dataset"])
    started = time.monotonic()
    thread, outcome = in_background(mmdata.score, **spec["options"])
    scores = lambda: len(list(root.glob("scores/*/*.parquet")))  # noqa: E731
    node, kills = workers[0], 0
    while thread.is_alive() and kills < 4:
        target = scores() + 1
        if not poll(lambda target=target: scores() >= target, thread):
            break
        cluster.remove_node(node, allow_graceful=False)
        kills += 1
        node = cluster.add_node(num_cpus=1, **NODE_OPTIONS)
    thread.join(400)
    return {"kills": kills, "alive": thread.is_alive(), "scored": scores(),
            "seconds": round(time.monotonic() - started, 1), "error": outcome.get("error")}


def spill(spec: dict) -> dict:
    """A store of the minimum size, mostly taken by pinned ballast: the job's task arguments push
    objects out to the spill folder while it runs."""
    spill_dir = Path(spec["spill_dir"])
    spill_dir.mkdir(parents=True, exist_ok=True)
    spilling = {"type": "filesystem", "params": {"directory_path": str(spill_dir)}}
    ray.init(address="local", num_cpus=2, object_store_memory=spec["store_bytes"], include_dashboard=False,
             log_to_driver=False,
             _system_config={"object_spilling_config": json.dumps(spilling), "min_spilling_size": 0})
    ballast = [ray.put(bytes(spec["ballast_bytes"] // 4)) for _ in range(4)]  # noqa: F841 - held on purpose
    before = spilled_bytes(spill_dir)
    manifest = mmdata.download(**spec["options"])
    return {
        "spilled_before": before,
        "spilled_after": spilled_bytes(spill_dir),
        "successes": manifest["totals"]["successes"],
    }


def spilled_bytes(folder: Path) -> int:
    """Bytes in Ray's spill files under ``folder`` now (objects freed later are deleted from it)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


if __name__ == "__main__":
    scenario, spec_path = sys.argv[1], sys.argv[2]
    spec = json.loads(Path(spec_path).read_text())
    report = {"download-node-death": download_node_death, "score-node-death": score_node_death,
              "retries-exhausted": retries_exhausted, "score-actors-exhausted": score_actors_exhausted,
              "spill": spill}[scenario](spec)
    print("RESULT " + json.dumps(report, default=str), flush=True)
    ray.shutdown()
