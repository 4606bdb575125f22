"""The inline executor: every task and actor call in this process, one after the other.

For tests, debugging and profiling: a breakpoint or a profiler sees the stage's own code, and a
failure's traceback is the stage's. No retries; ``env_vars`` of actors are not applied.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from mmdata.execution.base import ActorPool, Backend, Executor
from mmdata.execution.progress import Throttle


class InlineExecutor(Executor):
    name = "inline"

    def __init__(self, config):
        super().__init__(config)
        self._reports: dict[Any, dict[str, int]] = {}

    @property
    def concurrency(self) -> int:
        return 1

    def resources(self) -> dict[str, float]:
        """The machine's CPUs: one task at a time, but an actor in this process may use them all."""
        return {"CPU": float(self.config.concurrency), "GPU": 0.0}

    def reporter(self, key: Any) -> Callable[..., None]:
        return _DictReporter(self._reports, key)

    def reports(self) -> dict[Any, dict[str, int]]:
        return dict(self._reports)

    @contextlib.contextmanager
    def _tasks(self, function: Callable[..., Any], num_cpus: float) -> Iterator[Backend]:
        yield _Calls(function)

    def _actor_pool(self, actor_class, init_arguments, actors, num_cpus, num_gpus, env_vars) -> ActorPool:
        return _InlineActor(actor_class(*init_arguments))


class _Done:
    __slots__ = ("result",)

    def __init__(self, result: Any):
        self.result = result


class _Calls(Backend):
    """Runs each call as it is submitted, one at a time (so the stage's input is still consumed
    lazily); its error is raised straight from the stage's code."""

    def __init__(self, function: Callable[..., Any]):
        self._function = function
        self._busy = False

    def submit(self, arguments: tuple) -> _Done | None:
        if self._busy:
            return None
        self._busy = True
        return _Done(self._function(*arguments))

    def wait(self, handles: list, timeout: float | None) -> list:
        return handles

    def collect(self, handle: _Done) -> Any:
        self._busy = False
        return handle.result


class _InlineActor(ActorPool):
    """One instance, whatever number of actors was asked for: copies of a model in one process
    would only cost memory."""

    def __init__(self, instance: Any):
        self._instance = instance

    def call_each(self, method: str) -> list[Any]:
        return [getattr(self._instance, method)()]

    def backend(self, method: str) -> Backend:
        return _Calls(getattr(self._instance, method))

    def close(self) -> None:
        self._instance = None


class _DictReporter:
    def __init__(self, reports: dict, key: Any, interval: float = 0.5):
        self._reports, self._key = reports, key
        self._throttle = Throttle(interval)

    def __call__(self, counts: dict[str, int], *, force: bool = False) -> None:
        if self._throttle.due(force):
            self._reports[self._key] = dict(counts)
