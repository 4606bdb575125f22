"""The one place that talks to Ray: start or join a cluster, run tasks, show progress.

Stages stay plain functions over Arrow data; this module fans them out. Ray's task retries cover
worker and node death; a task that still fails ends the job with its error.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

from tqdm import tqdm


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Join ``address`` (a running cluster) or start a local Ray for this job; shut down what we started.

    An already initialised Ray (a notebook, a test fixture) is used as it is and left running.
    """
    import ray

    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False}
    if address:
        options["address"] = address
    else:
        # "local": start our own, even when another Ray on this machine would otherwise be joined
        options.update(address="local", num_cpus=num_cpus or os.cpu_count())
    ray.init(**options)
    try:
        yield
    finally:
        if not address:
            _stop_autoscaler_monitor()
        ray.shutdown()


def _stop_autoscaler_monitor() -> None:
    """Kill the autoscaler monitor of the local Ray this job started, before ``ray.shutdown``.

    ``ray.shutdown`` stops the GCS before the monitor, whose exit handler then waits its full second
    on the gone GCS: a second of every job's wall time. A local cluster of fixed size has nothing for
    the monitor to do or save. Ray keeps its process table private; where it differs, Ray's own
    shutdown does the job, a second slower.
    """
    import ray

    node = getattr(getattr(ray._private, "worker", None), "_global_node", None)
    for info in getattr(node, "all_processes", {}).get("monitor", []):
        with contextlib.suppress(Exception):
            info.process.kill()
            info.process.wait(timeout=5)


class RayTasks:
    """:func:`run_tasks` at a fixed concurrency with a :class:`ProgressBoard`, the interface of
    :class:`mmdata.processes.ProcessPool`, so a job runs its tasks on either. Use inside a
    :func:`ray_session`."""

    def __init__(self, concurrency: int):
        self.concurrency = concurrency
        self.board = ProgressBoard()

    def run_tasks(self, function: Callable[..., Any], argument_lists: Iterable[tuple], **callbacks) -> list[Any]:
        return run_tasks(function, argument_lists, description="tasks", concurrency=self.concurrency,
                         show_progress=False, **callbacks)


def cluster_resources() -> dict[str, float]:
    """The joined cluster's total resources (``CPU``, ``GPU``, ...), to size actors before starting them."""
    import ray

    return dict(ray.cluster_resources())


def run_tasks(
    function: Callable[..., Any],
    argument_lists: Iterable[tuple],
    *,
    description: str,
    concurrency: int | None = None,
    num_cpus: float = 1,
    max_retries: int = 3,
    on_result: Callable[[Any], None] | None = None,
    unit: str = "task",
    total: int | None = None,
    show_progress: bool = True,
    on_tick: Callable[[], None] | None = None,
    tick_seconds: float = 1.0,
) -> list[Any]:
    """Run ``function(*args)`` as Ray tasks, at most ``concurrency`` at once, results in completion order.

    ``argument_lists`` is consumed lazily, so a generator over a large input keeps only the tasks in
    flight in memory. ``on_result`` sees each result as it arrives (to update a progress line or commit
    a manifest); ``on_tick`` is called every ``tick_seconds`` while tasks run (to read live counters).
    """
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False)(function)
    if total is None and hasattr(argument_lists, "__len__"):
        total = len(argument_lists)
    pending_arguments = iter(argument_lists)
    limit = concurrency or max(1, int(ray.available_resources().get("CPU", 1) // max(num_cpus, 1e-6)))
    results, in_flight = [], []
    exhausted = False
    with tqdm(total=total, desc=description, unit=unit, mininterval=1.0, disable=not show_progress) as progress:
        try:
            while True:
                while not exhausted and len(in_flight) < limit:
                    arguments = next(pending_arguments, None)
                    if arguments is None:
                        exhausted = True
                    else:
                        in_flight.append(remote.remote(*arguments))
                if not in_flight:
                    break
                done, in_flight = ray.wait(in_flight, num_returns=1, timeout=tick_seconds if on_tick else None)
                if on_tick is not None:
                    on_tick()
                if not done:
                    continue
                result = ray.get(done[0])
                results.append(result)
                if on_result is not None:
                    on_result(result)
                progress.update(1)
        except BaseException:
            _cancel(in_flight)
            raise
    return results


def _cancel(refs: list) -> None:
    """Stop the tasks still running when the job fails, and wait for them: none writes after the job
    has returned its error (a cancelled task is interrupted and runs its cleanup)."""
    import ray

    for ref in refs:
        ray.cancel(ref)
    if refs:
        ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_SECONDS)


# How long a failing job waits for its cancelled tasks to stop.
_CANCEL_SECONDS = 60.0
# Times one call of run_on_actors is attempted when its actor dies under it (node or worker lost);
# how often an unavailable (restarting) actor is probed, and how long the job waits for one to return.
_ACTOR_CALL_ATTEMPTS = 4
_PROBE_SECONDS = 0.5
_ACTOR_RECOVERY_SECONDS = 300.0


class ProgressBoard:
    """Live counters that running tasks update from inside (e.g. samples done), read by the driver.

    Each task reports its own cumulative counts under its key, so a task that Ray retries overwrites
    its counts instead of adding to them. A :meth:`reporter` is picklable and sends at most one update
    per ``interval`` seconds.

    The board is a named actor made on the first :meth:`read`, which a job does after submitting its
    first tasks: made before them, its worker process would start ahead of theirs and hold back the
    job's first results by about half a second. Reports sent before it exists are dropped (progress
    is advisory; the next report carries the cumulative counts).
    """

    def __init__(self) -> None:
        self._name = f"mmdata-progress-{uuid.uuid4().hex}"
        self._actor: Any = None
        self._last: dict[Any, dict[str, int]] = {}

    def reporter(self, key: Any, interval: float = 0.5) -> "ProgressReporter":
        return ProgressReporter(self._name, key, interval)

    def read(self) -> dict[Any, dict[str, int]]:
        """The latest counts; the last ones read if the board is unreachable (progress is advisory)."""
        import ray

        if self._actor is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            # On the driver's node: a worker node lost mid-job must not take the job's progress with it.
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            self._actor = ray.remote(num_cpus=0)(_Board).options(name=self._name, scheduling_strategy=here).remote()
            return self._last
        try:
            self._last = ray.get(self._actor.read.remote())
        except ray.exceptions.RayActorError:
            pass
        return self._last


class Throttle:
    """At most one ``due`` per ``interval`` seconds, or whenever forced: a task's progress reports."""

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._last = 0.0

    def due(self, force: bool = False) -> bool:
        now = time.monotonic()
        if force or now - self._last >= self._interval:
            self._last = now
            return True
        return False


class ProgressReporter:
    """Called inside a task with the task's cumulative counts; forwards them to the board, rate-limited."""

    def __init__(self, board_name: str, key: Any, interval: float) -> None:
        self._board_name, self._key = board_name, key
        self._throttle = Throttle(interval)
        self._actor: Any = None

    def __call__(self, counts: dict[str, int], *, force: bool = False) -> None:
        if not self._throttle.due(force):
            return
        if self._actor is None:
            import ray

            try:
                self._actor = ray.get_actor(self._board_name)
            except ValueError:  # not made yet
                return
        self._actor.report.remote(self._key, dict(counts))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_actor": None}  # each process looks the board up itself


class _Board:
    def __init__(self) -> None:
        self._counts: dict[Any, dict[str, int]] = {}

    def report(self, key: Any, counts: dict[str, int]) -> None:
        self._counts[key] = counts

    def read(self) -> dict[Any, dict[str, int]]:
        return dict(self._counts)


def run_on_actors(
    actor_class: type,
    init_arguments: tuple,
    method: str,
    argument_lists: Iterable[tuple],
    *,
    actors: int,
    description: str,
    num_cpus: float = 1,
    num_gpus: float = 0,
    env_vars: dict[str, str] | None = None,
    setup_method: str | None = None,
    on_setup: Callable[[Any], None] | None = None,
    on_result: Callable[[Any], None] | None = None,
    on_tick: Callable[[], None] | None = None,
    tick_seconds: float = 1.0,
    total: int | None = None,
    unit: str = "task",
    show_progress: bool = True,
    max_restarts: int = 1,
) -> list[Any]:
    """Start ``actors`` instances of ``actor_class`` (state such as a model is built once per actor,
    in the actor) and call ``method(*args)`` on whichever is idle; results in completion order.

    ``env_vars`` are set in the actors' processes before they import anything (e.g. OpenMP settings).
    ``setup_method`` runs on every actor first, so that a failure to build the state (a missing
    checkpoint, no GPU) ends the job before any work is handed out; ``on_setup`` sees each result.
    ``on_tick`` is called every ``tick_seconds`` while work runs (to read live counters).
    Actors are killed when the work is done or fails, which frees their CPUs and GPUs. A call whose
    actor dies (its worker or node lost) is redone on a live actor, so calls must be idempotent.
    """
    import ray

    options = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
    remote_class = ray.remote(
        num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=max_restarts, max_task_retries=max_restarts, **options
    )(actor_class)
    handles = [remote_class.remote(*init_arguments) for _ in range(actors)]
    try:
        if setup_method is not None:
            for ready in ray.get([getattr(handle, setup_method).remote() for handle in handles]):
                if on_setup is not None:
                    on_setup(ready)
        pending_arguments = iter(argument_lists)
        exhausted = False
        lost: list[tuple[tuple, int]] = []  # calls whose actor died mid-call, with their attempt count
        recovering: list[tuple[Any, float]] = []  # actors that were unavailable, and when to probe them
        # ref -> (actor, call arguments or None for a readiness probe, attempt)
        in_flight: dict[Any, tuple[Any, tuple | None, int]] = {}
        idle, results = list(handles), []
        last_progress = time.monotonic()
        with tqdm(total=total, desc=description, unit=unit, mininterval=1.0, disable=not show_progress) as progress:
            while True:
                while idle and (lost or not exhausted):
                    if lost:
                        arguments, attempt = lost.pop()
                    elif (arguments := next(pending_arguments, None)) is not None:
                        attempt = 1
                    else:
                        exhausted = True
                        break
                    handle = idle.pop()
                    in_flight[getattr(handle, method).remote(*arguments)] = (handle, arguments, attempt)
                now = time.monotonic()
                for entry in [entry for entry in recovering if entry[1] <= now]:
                    recovering.remove(entry)
                    in_flight[entry[0].__ray_ready__.remote()] = (entry[0], None, 0)
                calls = sum(1 for _, arguments, _ in in_flight.values() if arguments is not None)
                if calls == 0 and exhausted and not lost:
                    return results
                stalled = now - last_progress > _ACTOR_RECOVERY_SECONDS
                if calls == 0 and not idle and (stalled or not (in_flight or recovering)):
                    raise RuntimeError(f"{description}: no live actor left; {len(lost)} calls left undone")
                if not in_flight:
                    time.sleep(max(0.0, min(when for _, when in recovering) - now))  # pacing the next probe
                    continue
                timeout = tick_seconds if on_tick else None
                if recovering:
                    timeout = min(timeout or _PROBE_SECONDS, _PROBE_SECONDS)
                done, _ = ray.wait(list(in_flight), num_returns=1, timeout=timeout)
                if on_tick is not None:
                    on_tick()
                if not done:
                    continue
                handle, arguments, attempt = in_flight.pop(done[0])
                try:
                    result = ray.get(done[0])
                except ray.exceptions.RayActorError as error:
                    if not isinstance(error, ray.exceptions.ActorDiedError):
                        recovering.append((handle, time.monotonic() + _PROBE_SECONDS))  # restarting: probe it
                    if arguments is None:
                        continue
                    # The actor's worker or node died mid-call: the call is redone on a live actor
                    # (calls must be idempotent), a bounded number of times, then the job fails.
                    if attempt >= _ACTOR_CALL_ATTEMPTS:
                        raise RuntimeError(
                            f"{description}: call {arguments[:1]!r} lost its actor {attempt} times: {error}"
                        ) from error
                    lost.append((arguments, attempt + 1))
                    continue
                last_progress = time.monotonic()
                idle.append(handle)
                if arguments is None:  # a probe: the actor is back
                    continue
                results.append(result)
                if on_result is not None:
                    on_result(result)
                progress.update(1)
    finally:
        for handle in handles:
            ray.kill(handle)
