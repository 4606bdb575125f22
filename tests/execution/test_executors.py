import os

import numpy as np
import pytest

from mmdata.execution import EXECUTORS, ExecutionConfig, StageProgress, open_executor, using
from tests.execution.executor_tasks import Counter, square_and_report, total


@pytest.fixture(params=EXECUTORS)
def executor(request, ray_local):
    with open_executor(ExecutionConfig(executor=request.param, workers=2)) as opened:
        yield opened


def test_tasks_run_report_progress_and_return_every_result(executor):
    def final_counts(square):
        value = round(square ** 0.5)
        return value, {"samples": value, "successes": value - 1}

    progress = StageProgress("squares", tasks=5, final_counts=final_counts, show=False)
    arguments = ((executor.reporter(value), value) for value in range(1, 6))  # consumed lazily
    results = executor.run_tasks(square_and_report, arguments, progress=progress)
    assert sorted(results) == [1, 4, 9, 16, 25]
    assert progress.tasks_done == 5
    # each finished task's final counts replace what it reported live
    assert progress.counts == {"samples": 15, "successes": 10}
    # a task's forced report is stored (Ray) or queued (processes) before its result
    assert executor.reports() == {value: {"samples": value, "successes": value} for value in range(1, 6)}


def test_the_first_failure_is_raised(executor):
    with pytest.raises(Exception, match="negative -2"):
        executor.run_tasks(square_and_report, [(executor.reporter(value), value) for value in (1, -2, 3)])


def test_a_shared_array_reaches_every_task(executor):
    values = np.arange(1000, dtype=np.float64)
    shared = executor.share(values)
    results = executor.run_tasks(total, [(shared, start, start + 250) for start in range(0, 1000, 250)])
    assert sorted(results) == sorted(float(values[start:start + 250].sum()) for start in range(0, 1000, 250))


def test_actors_are_set_up_once_each_and_keep_their_state(executor):
    reports = []
    results = executor.run_on_actors(
        Counter, (100,), "add", [(value,) for value in range(6)], actors=2, num_cpus=1,
        env_vars={"MMDATA_TEST_MARKER": "set"}, setup_method="setup", on_setup=reports.append,
    )
    assert sorted(results) == [100 + value for value in range(6)]
    if executor.name == "inline":
        assert reports == [{"pid": os.getpid(), "marker": None}]  # one instance here; no environment applied
    else:
        assert len(reports) == 2 and len({report["pid"] for report in reports}) == 2
        assert all(report["marker"] == "set" for report in reports) and os.getpid() not in {r["pid"] for r in reports}


def test_using_keeps_an_open_executor_open():
    with open_executor(ExecutionConfig(executor="inline")) as opened:
        with using(opened) as inner:
            assert inner is opened
        assert opened.run_tasks(total, [(np.ones(4), 0, 4)]) == [4.0]


@pytest.mark.parametrize("options, message", [
    ({"executor": "spark"}, "executor must be one of"),
    ({"executor": "processes", "ray_address": "auto"}, "--ray-address needs --executor ray"),
    ({"workers": -1}, "workers must be a positive integer"),
])
def test_bad_execution_options_are_refused(options, message):
    with pytest.raises(ValueError, match=message):
        ExecutionConfig(**options)
