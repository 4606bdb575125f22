import json
import subprocess
import sys

from mmdata.execution import ExecutionConfig
from mmdata.execution.ray import ProgressBoard, RayExecutor

_SESSION_CHILD = """
import json, psutil
from mmdata.execution.ray import ray_session

with ray_session(num_cpus=1):
    started = psutil.Process().children(recursive=True)
    monitors = [p.pid for p in started if any("autoscaler" in part and "monitor" in part for part in p.cmdline())]
    pids = [p.pid for p in started]
# ray_session has returned: the monitor must already be gone (killed before ray.shutdown, not left
# to time out); everything else Ray started must exit on its own shortly after.
def alive(pid):
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
monitor_alive = [pid for pid in monitors if alive(pid)]
_, left = psutil.wait_procs([psutil.Process(pid) for pid in pids if alive(pid)], timeout=20)
print(json.dumps({"monitors": monitors, "monitor_alive": monitor_alive, "children": len(pids), \
"left": [p.pid for p in left]}))
"""


def test_local_session_stops_everything_it_started():
    completed = subprocess.run([sys.executable, "-c", _SESSION_CHILD], capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["children"] >= 3  # gcs, raylet, monitor, ... were started for the job
    assert len(result["monitors"]) == 1
    assert result["monitor_alive"] == []
    assert result["left"] == []


def test_progress_board_collects_each_tasks_latest_counts(ray_local):
    def _report(reporter, samples):  # nested: pickled by value, the workers cannot import this module
        reporter({"samples": samples}, force=True)
        return samples

    executor = RayExecutor(ExecutionConfig(executor="ray"))  # the session's Ray, used as it is
    board = ProgressBoard()
    assert board.read() == {}
    assert sorted(executor.run_tasks(_report, [(board.reporter(key), key * 10) for key in (1, 2, 3)])) == [10, 20, 30]
    # a report is stored before its task returns, so the board holds all three once the tasks are done
    assert board.read() == {1: {"samples": 10}, 2: {"samples": 20}, 3: {"samples": 30}}
    board.reporter(2)({"samples": 21}, force=True)  # a later report replaces the task's counts
    assert board.read()[2] == {"samples": 21}
    assert board.reporter((7, "x"))({"samples": 1}, force=True) is None and board.read()[(7, "x")] == {"samples": 1}
    board.clear()
    assert board.read() == {}
