"""Tasks on a pool of local worker processes: :func:`mmdata.execution.run_tasks` without a cluster.

Starting a local Ray costs a few seconds and about 5 core-seconds (its helper processes), which a
job of a few thousand rows on a small machine feels; a pool of forked workers starts in a fraction
of a second. The pool gives up what only a cluster has: more than one machine, and retries of a
task whose worker died (here that fails the job; re-running it resumes).
"""

from __future__ import annotations

import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Callable, Iterable

from mmdata.execution import Throttle

# Set in each worker by the pool's initializer: where reporters put their counts.
_progress_queue: Any = None


class ProcessPool:
    """``processes`` worker processes forked from a clean server that has imported ``preload``
    (forking the driver itself would copy its pyarrow and tqdm threads' locks mid-use)."""

    def __init__(self, processes: int, *, preload: Iterable[str] = ()):
        self._context = multiprocessing.get_context("forkserver")
        self._context.set_forkserver_preload(list(preload))
        self.board = LocalProgressBoard(self._context.SimpleQueue())
        self._pool = ProcessPoolExecutor(
            processes, mp_context=self._context, initializer=_set_progress_queue, initargs=(self.board.queue,)
        )
        self.processes = processes

    def run_tasks(
        self,
        function: Callable[..., Any],
        argument_lists: Iterable[tuple],
        *,
        on_result: Callable[[Any], None] | None = None,
        on_tick: Callable[[], None] | None = None,
        tick_seconds: float = 1.0,
    ) -> list[Any]:
        """``function(*args)`` for each argument tuple, at most ``processes`` at once, results in
        completion order; ``argument_lists`` is consumed lazily. The first failure cancels the rest
        and is raised."""
        pending_arguments = iter(argument_lists)
        in_flight: set[Future] = set()
        results: list[Any] = []
        exhausted = False
        try:
            while True:
                while not exhausted and len(in_flight) < self.processes:
                    arguments = next(pending_arguments, None)
                    if arguments is None:
                        exhausted = True
                    else:
                        in_flight.add(self._pool.submit(function, *arguments))
                if not in_flight:
                    return results
                done, in_flight = wait(in_flight, timeout=tick_seconds, return_when=FIRST_COMPLETED)
                self.board.read()  # drain: a worker blocks on a full progress pipe until the driver reads it
                if on_tick is not None:
                    on_tick()
                for future in done:
                    result = future.result()
                    results.append(result)
                    if on_result is not None:
                        on_result(result)
        except BaseException:
            for future in in_flight:
                future.cancel()
            self._pool.shutdown(wait=True, cancel_futures=True)  # none writes after the job has failed
            raise

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "ProcessPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


class LocalProgressBoard:
    """:class:`mmdata.execution.ProgressBoard` for a :class:`ProcessPool`: workers put their
    cumulative counts on a queue that the driver drains when it reads."""

    def __init__(self, queue: Any):
        self.queue = queue
        self._counts: dict[Any, dict[str, int]] = {}

    def reporter(self, key: Any, interval: float = 0.5) -> "QueueReporter":
        return QueueReporter(key, interval)

    def read(self) -> dict[Any, dict[str, int]]:
        while not self.queue.empty():
            key, counts = self.queue.get()
            self._counts[key] = counts
        return dict(self._counts)


class QueueReporter:
    """Called inside a task with the task's cumulative counts; forwards them, rate-limited."""

    def __init__(self, key: Any, interval: float):
        self._key = key
        self._throttle = Throttle(interval)

    def __call__(self, counts: dict[str, int], *, force: bool = False) -> None:
        if _progress_queue is not None and self._throttle.due(force):
            _progress_queue.put((self._key, dict(counts)))


def _set_progress_queue(queue: Any) -> None:
    global _progress_queue
    _progress_queue = queue
