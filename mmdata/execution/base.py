"""The executor interface every stage runs its work through, and the one submit loop behind it.

A stage hands an :class:`Executor` tasks (a function and an iterable of argument tuples) or actor
calls (a class whose instances hold state such as a model, built once per actor). The executor runs
them with bounded concurrency, in completion order, feeding a :class:`~mmdata.execution.progress.
StageProgress`. Each backend (Ray, local processes, inline) supplies only the primitives of
:class:`Backend`; :func:`drive` is the one loop that fills the free slots lazily, waits, collects
and, on any failure or interrupt, cancels what is still running.
"""

from __future__ import annotations

import collections
import contextlib
from typing import Any, Callable, Iterable

from mmdata.execution import signals
from mmdata.execution.config import ExecutionConfig
from mmdata.execution.progress import StageProgress
from mmdata.execution.signals import Interrupted


class Resubmit(Exception):
    """Raised by :meth:`Backend.collect` when a call was lost with its worker and should run again."""


class Backend:
    """What a backend does for :func:`drive`; handles are whatever the backend tracks work by."""

    def submit(self, arguments: tuple) -> Any | None:
        """Start one call; None when no slot is free now."""
        raise NotImplementedError

    def wait(self, handles: list, timeout: float | None) -> list:
        """The handles among ``handles`` that are done (may be empty after ``timeout``)."""
        raise NotImplementedError

    def collect(self, handle: Any) -> Any:
        """The call's result; raises its error, or :class:`Resubmit`."""
        raise NotImplementedError

    def stalled(self) -> None:
        """Nothing is in flight and no slot is free, but calls are waiting: wait for a slot or raise."""
        raise RuntimeError("no worker left to run the remaining calls")

    def cancel(self, handles: list, *, interrupted: bool) -> None:
        """Stop the calls still running: the job failed, or was interrupted (then at once, without
        waiting for them to clean up: the user asked to stop, and a re-run cleans up)."""


_END = object()


def drive(
    backend: Backend,
    argument_lists: Iterable[tuple],
    *,
    on_result: Callable[[Any], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_seconds: float = 0.5,
) -> list[Any]:
    """Run every argument tuple through ``backend``; results in completion order.

    ``argument_lists`` is consumed lazily, so a generator over a large input holds only the calls
    in flight. ``on_tick`` runs at least every ``tick_seconds`` while calls run (live progress).
    """
    pending = iter(argument_lists)
    waiting: collections.deque = collections.deque()  # pulled (or resubmitted) but not yet started
    in_flight: dict[Any, tuple] = {}
    results: list[Any] = []
    exhausted = False
    try:
        while True:
            while waiting or not exhausted:
                if not waiting:
                    arguments = next(pending, _END)
                    if arguments is _END:
                        exhausted = True
                        break
                    waiting.append(arguments)
                handle = backend.submit(waiting[0])
                if handle is None:
                    break
                in_flight[handle] = waiting.popleft()
            if not in_flight:
                if exhausted and not waiting:
                    return results
                backend.stalled()
                continue
            done = backend.wait(list(in_flight), tick_seconds if on_tick else None)
            if on_tick is not None:
                on_tick()
            for handle in done:
                arguments = in_flight.pop(handle)
                try:
                    result = backend.collect(handle)
                except Resubmit:
                    waiting.append(arguments)
                    continue
                results.append(result)
                if on_result is not None:
                    on_result(result)
    except BaseException as error:
        interrupted = isinstance(error, (Interrupted, KeyboardInterrupt)) or signals.received() is not None
        backend.cancel(list(in_flight), interrupted=interrupted)
        raise


class Executor:
    """Runs a stage's tasks and actor calls; one implementation per backend (see :data:`EXECUTORS`).

    Use it as a context manager: leaving it stops everything it started.
    """

    name = "executor"

    def __init__(self, config: ExecutionConfig):
        self.config = config

    @property
    def concurrency(self) -> int:
        return self.config.concurrency

    def run_tasks(
        self,
        function: Callable[..., Any],
        argument_lists: Iterable[tuple],
        *,
        progress: StageProgress | None = None,
        on_result: Callable[[Any], None] | None = None,
        num_cpus: float = 1,
    ) -> list[Any]:
        """``function(*arguments)`` for each tuple, at most ``concurrency`` at once (fewer when each task
        asks for more than ``num_cpus=1``), results in completion order. A task whose worker died is
        retried where the backend can (Ray); any other failure cancels the rest and is raised."""
        with self._tasks(function, num_cpus) as backend:
            return self._drive(backend, argument_lists, progress, on_result)

    def run_on_actors(
        self,
        actor_class: type,
        init_arguments: tuple,
        method: str,
        argument_lists: Iterable[tuple],
        *,
        actors: int,
        num_cpus: float = 1,
        num_gpus: float = 0,
        env_vars: dict[str, str] | None = None,
        setup_method: str | None = None,
        on_setup: Callable[[Any], None] | None = None,
        progress: StageProgress | None = None,
        on_result: Callable[[Any], None] | None = None,
    ) -> list[Any]:
        """Start ``actors`` instances of ``actor_class(*init_arguments)`` and call ``method(*arguments)``
        on whichever is idle; results in completion order.

        ``env_vars`` are set in each actor's process before it imports anything (not for inline).
        ``setup_method`` runs on every actor first, so a failure to build the state (a missing
        checkpoint, no GPU) ends the job before any work is handed out; ``on_setup`` sees each result.
        Calls must be idempotent: one whose actor died is redone on a live actor where the backend
        restarts actors (Ray). The actors are stopped when the work is done or fails.
        """
        with self._actor_pool(actor_class, init_arguments, actors, num_cpus, num_gpus, env_vars) as pool:
            if setup_method is not None:
                for report in pool.call_each(setup_method):
                    if on_setup is not None:
                        on_setup(report)
            return self._drive(pool.backend(method), argument_lists, progress, on_result)

    def reporter(self, key: Any) -> Callable[..., None]:
        """A picklable callable a task calls with its cumulative counts (rate-limited), for progress."""
        raise NotImplementedError

    def reports(self) -> dict[Any, dict[str, int]]:
        """The latest counts each task reported (advisory: may lag)."""
        raise NotImplementedError

    def resources(self) -> dict[str, float]:
        """CPUs and GPUs the work may use (a joined cluster's totals on Ray)."""
        return {"CPU": float(self.concurrency), "GPU": 0.0}

    def share(self, value: Any) -> Any:
        """A handle for a large read-only value that many tasks take as an argument, sent once."""
        return value

    def close(self) -> None:
        """Stop what this executor started."""

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _drive(self, backend: Backend, argument_lists, progress: StageProgress | None, on_result) -> list[Any]:
        def result_seen(result: Any) -> None:
            if progress is not None:
                progress.task_done(result)
            if on_result is not None:
                on_result(result)

        # Live counts only feed a bar someone sees: reading them costs a Ray actor (a process) otherwise.
        live = progress is not None and progress.show
        tick = (lambda: progress.live(self.reports())) if live else None
        results = drive(backend, argument_lists, on_result=result_seen, on_tick=tick)
        if live:
            progress.live(self.reports())
        return results

    def _tasks(self, function: Callable[..., Any], num_cpus: float) -> contextlib.AbstractContextManager[Backend]:
        raise NotImplementedError

    def _actor_pool(self, actor_class, init_arguments, actors, num_cpus, num_gpus, env_vars) -> "ActorPool":
        raise NotImplementedError


class ActorPool:
    """A backend's live actors: ``call_each`` runs a method once on every actor, ``backend`` hands
    calls to idle ones; a context manager that stops them."""

    def call_each(self, method: str) -> list[Any]:
        raise NotImplementedError

    def backend(self, method: str) -> Backend:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> "ActorPool":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()
