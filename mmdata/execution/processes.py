"""The local-process executor: tasks on a pool of worker processes of this machine.

Starting a local Ray costs a few seconds and about 5 core-seconds (its helper processes), which a
job of a few thousand rows on a small machine feels; a pool of forked workers starts in a fraction
of a second. The pool gives up what only a cluster has: more than one machine, and retries of a
task whose worker died (here that fails the job; re-running it resumes).

Workers are forked from a forkserver that has imported the task's module, not from the driver,
whose pyarrow and tqdm threads' locks could be copied mid-use. Each actor is a pool of one worker
that builds its instance when it starts.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import tempfile
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterator

import numpy as np

from mmdata.execution.base import ActorPool, Backend, Executor
from mmdata.execution.progress import Throttle
from mmdata.execution.signals import ignore_interrupts

# Set in each worker process when it starts: where reporters put their counts, and an actor's instance.
_progress_queue: Any = None
_actor: Any = None


class ProcessExecutor(Executor):
    name = "processes"

    def __init__(self, config):
        super().__init__(config)
        self._context = multiprocessing.get_context("forkserver")
        self._queue = self._context.SimpleQueue()
        self._reports: dict[Any, dict[str, int]] = {}
        self._shared = tempfile.TemporaryDirectory(prefix="mmdata-shared-")

    def reporter(self, key: Any) -> Callable[..., None]:
        return _QueueReporter(key)

    def reports(self) -> dict[Any, dict[str, int]]:
        while not self._queue.empty():  # a worker blocks on a full pipe until the driver reads it
            key, counts = self._queue.get()
            self._reports[key] = counts
        return dict(self._reports)

    def share(self, value: Any) -> Any:
        """Arrays go to a file the tasks memory-map, instead of being pickled into every task."""
        if not isinstance(value, np.ndarray):
            return value
        path = os.path.join(self._shared.name, f"{len(os.listdir(self._shared.name))}.npy")
        np.save(path, value)
        return _SharedArray(path)

    def close(self) -> None:
        self._shared.cleanup()

    @contextlib.contextmanager
    def _tasks(self, function: Callable[..., Any], num_cpus: float) -> Iterator[Backend]:
        self._context.set_forkserver_preload([function.__module__])  # only before the server's first start
        limit = max(1, int(self.concurrency // max(num_cpus, 1)))
        pool = ProcessPoolExecutor(
            limit, mp_context=self._context, initializer=_start_worker, initargs=(self._queue, None)
        )
        try:
            yield _PoolCalls([pool] * limit, lambda pool, arguments: pool.submit(function, *arguments), self.reports)
        finally:
            _stop([pool])

    def _actor_pool(self, actor_class, init_arguments, actors, num_cpus, num_gpus, env_vars) -> ActorPool:
        pools = [
            ProcessPoolExecutor(1, mp_context=self._context, initializer=_start_actor,
                                initargs=(self._queue, env_vars, actor_class, init_arguments))
            for _ in range(actors)
        ]
        return _ProcessActors(pools, self.reports)


class _PoolCalls(Backend):
    """Calls on worker pools: ``slots`` holds one entry per call that may run at once."""

    def __init__(self, slots: list[ProcessPoolExecutor], start: Callable, drain: Callable[[], Any]):
        self._idle = list(slots)
        self._start, self._drain = start, drain
        self._slot_of: dict[Future, ProcessPoolExecutor] = {}

    def submit(self, arguments: tuple) -> Future | None:
        if not self._idle:
            return None
        slot = self._idle.pop()
        future = self._start(slot, arguments)
        self._slot_of[future] = slot
        return future

    def wait(self, handles: list, timeout: float | None) -> list:
        done, _ = wait(handles, timeout=timeout, return_when=FIRST_COMPLETED)
        self._drain()
        return list(done)

    def collect(self, future: Future) -> Any:
        self._idle.append(self._slot_of.pop(future))
        return future.result()

    def cancel(self, handles: list, *, interrupted: bool) -> None:
        _stop(set(self._slot_of.values()))  # none writes after the job has failed or was interrupted


class _ProcessActors(ActorPool):
    def __init__(self, pools: list[ProcessPoolExecutor], drain: Callable[[], Any]):
        self._pools, self._drain = pools, drain

    def call_each(self, method: str) -> list[Any]:
        futures = [pool.submit(_call_actor, method, ()) for pool in self._pools]
        return [future.result() for future in futures]

    def backend(self, method: str) -> Backend:
        return _PoolCalls(self._pools, lambda pool, arguments: pool.submit(_call_actor, method, arguments), self._drain)

    def close(self) -> None:
        _stop(self._pools)


def _stop(pools) -> None:
    """Stop the pools' workers now (a running task is killed: its shard's temporaries are cleaned
    up by the next run), then reap them."""
    for pool in pools:
        for process in list((getattr(pool, "_processes", None) or {}).values()):
            with contextlib.suppress(Exception):
                process.terminate()
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker(queue: Any, env_vars: dict[str, str] | None) -> None:
    global _progress_queue
    ignore_interrupts()
    os.environ.update(env_vars or {})
    _progress_queue = queue


def _start_actor(queue: Any, env_vars: dict[str, str] | None, actor_class: type, init_arguments: tuple) -> None:
    global _actor
    _start_worker(queue, env_vars)
    _actor = actor_class(*init_arguments)


def _call_actor(method: str, arguments: tuple) -> Any:
    return getattr(_actor, method)(*arguments)


class _QueueReporter:
    """Called inside a task with the task's cumulative counts; forwards them, rate-limited."""

    def __init__(self, key: Any, interval: float = 0.5):
        self._key = key
        self._throttle = Throttle(interval)

    def __call__(self, counts: dict[str, int], *, force: bool = False) -> None:
        if _progress_queue is not None and self._throttle.due(force):
            _progress_queue.put((self._key, dict(counts)))


class _SharedArray:
    """A shared array's file; unpickled in a task as the memory-mapped array itself."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return np.load, (self.path, "r")
