"""The Ray executor, and the only module of mmdata that imports ``ray``: a local Ray started for the
job (or the cluster at ``ray_address``), tasks with Ray's retries, actors that Ray restarts, and a
progress board that running tasks report to.

Ray's task retries cover worker and node death; a task that still fails ends the job with its
error. A call whose actor dies is redone on a live actor, a bounded number of times.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import time
import uuid
from typing import Any, Callable, Iterator

import ray
from ray.experimental import internal_kv

from mmdata.execution import signals
from mmdata.execution.base import ActorPool, Backend, Executor, Resubmit
from mmdata.execution.progress import Throttle

# How long a failing job waits for its cancelled tasks to stop.
_CANCEL_SECONDS = 60.0
# Ray's re-runs of a task whose worker or node died.
_TASK_RETRIES = 3
# Times one actor call is attempted when its actor dies under it (node or worker lost); how often an
# unavailable (restarting) actor is probed, and how long the job waits for one to come back.
_ACTOR_CALL_ATTEMPTS = 4
_ACTOR_RESTARTS = 1
_PROBE_SECONDS = 0.5
_ACTOR_RECOVERY_SECONDS = 300.0


@contextlib.contextmanager
def ray_session(address: str | None = None, *, num_cpus: int | None = None) -> Iterator[None]:
    """Join ``address`` (a running cluster) or start a local Ray for this job; shut down what we started.

    An already initialised Ray (a notebook, a test fixture) is used as it is and left running.
    """
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
    signals.reinstall()  # ray.init replaced the driver's SIGTERM handler
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
    node = getattr(getattr(ray._private, "worker", None), "_global_node", None)
    for info in getattr(node, "all_processes", {}).get("monitor", []):
        with contextlib.suppress(Exception):
            info.process.kill()
            info.process.wait(timeout=5)


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, config):
        super().__init__(config)
        self._session = ray_session(config.ray_address, num_cpus=config.workers or None)
        self._session.__enter__()
        self._board = ProgressBoard()

    @property
    def concurrency(self) -> int:
        return self.config.workers or max(1, int(ray.cluster_resources().get("CPU", 1)))

    def reporter(self, key: Any) -> Callable[..., None]:
        return self._board.reporter(key)

    def reports(self) -> dict[Any, dict[str, int]]:
        return self._board.read()

    def resources(self) -> dict[str, float]:
        return dict(ray.cluster_resources())

    def share(self, value: Any) -> Any:
        return ray.put(value)  # a task's top-level ObjectRef argument arrives as the value

    def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            self._board.clear()
            session.__exit__(None, None, None)

    @contextlib.contextmanager
    def _tasks(self, function: Callable[..., Any], num_cpus: float) -> Iterator[Backend]:
        remote = ray.remote(num_cpus=num_cpus, max_retries=_TASK_RETRIES, retry_exceptions=False)(function)
        yield _RayTasks(remote, max(1, int(self.concurrency // max(num_cpus, 1e-6))))

    def _actor_pool(self, actor_class, init_arguments, actors, num_cpus, num_gpus, env_vars) -> ActorPool:
        return _RayActors(actor_class, init_arguments, actors, num_cpus, num_gpus, env_vars)


class _RayTasks(Backend):
    def __init__(self, remote: Any, limit: int):
        self._remote, self._limit = remote, limit
        self._running = 0

    def submit(self, arguments: tuple) -> Any | None:
        if self._running >= self._limit:
            return None
        self._running += 1
        return self._remote.remote(*arguments)

    def wait(self, handles: list, timeout: float | None) -> list:
        done, _ = ray.wait(handles, num_returns=1, timeout=timeout)
        return done

    def collect(self, ref: Any) -> Any:
        self._running -= 1
        return ray.get(ref)

    def cancel(self, refs: list, *, interrupted: bool) -> None:
        """Stop the tasks still running. After a failure, wait for them: none writes after the job has
        returned its error (a cancelled task is interrupted and runs its cleanup). After an interrupt,
        kill them: the executor's shutdown follows at once."""
        for ref in refs:
            ray.cancel(ref, force=interrupted)
        if refs and not interrupted:
            ray.wait(refs, num_returns=len(refs), timeout=_CANCEL_SECONDS)


class _RayActors(ActorPool):
    def __init__(self, actor_class, init_arguments, actors, num_cpus, num_gpus, env_vars):
        options = {"runtime_env": {"env_vars": env_vars}} if env_vars else {}
        remote_class = ray.remote(num_cpus=num_cpus, num_gpus=num_gpus, max_restarts=_ACTOR_RESTARTS,
                                  max_task_retries=_ACTOR_RESTARTS, **options)(actor_class)
        self._handles = [remote_class.remote(*init_arguments) for _ in range(actors)]

    def call_each(self, method: str) -> list[Any]:
        return ray.get([getattr(handle, method).remote() for handle in self._handles])

    def backend(self, method: str) -> Backend:
        return _RayActorCalls(self._handles, method)

    def close(self) -> None:
        for handle in self._handles:  # frees their CPUs and GPUs
            ray.kill(handle)


class _RayActorCalls(Backend):
    """Calls on idle actors. An actor that is unavailable (restarting) is probed until it answers;
    a call lost with its actor is resubmitted, at most ``_ACTOR_CALL_ATTEMPTS`` times."""

    def __init__(self, handles: list, method: str):
        self._idle, self._method = list(handles), method
        self._calls: dict[Any, tuple[Any, tuple]] = {}  # ref -> (actor, arguments)
        self._attempts: dict[int, int] = {}  # id(arguments) -> attempts so far
        self._recovering: list[tuple[Any, float]] = []  # (actor, when to probe it)
        self._probes: dict[Any, Any] = {}  # readiness probe ref -> actor
        self._last_progress = time.monotonic()

    def submit(self, arguments: tuple) -> Any | None:
        if not self._idle:
            return None
        actor = self._idle.pop()
        ref = getattr(actor, self._method).remote(*arguments)
        self._calls[ref] = (actor, arguments)
        return ref

    def wait(self, handles: list, timeout: float | None) -> list:
        self._start_due_probes()
        if self._recovering or self._probes:
            timeout = min(timeout or _PROBE_SECONDS, _PROBE_SECONDS)
        done, _ = ray.wait(handles + list(self._probes), num_returns=1, timeout=timeout)
        calls = []
        for ref in done:
            if ref in self._probes:
                self._probe_answered(ref)
            else:
                calls.append(ref)
        return calls

    def collect(self, ref: Any) -> Any:
        actor, arguments = self._calls.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as error:
            if not isinstance(error, ray.exceptions.ActorDiedError):
                self._recovering.append((actor, time.monotonic() + _PROBE_SECONDS))  # restarting: probe it
            attempt = self._attempts.get(id(arguments), 1)
            if attempt >= _ACTOR_CALL_ATTEMPTS:
                raise RuntimeError(f"call {arguments[:1]!r} lost its actor {attempt} times: {error}") from error
            self._attempts[id(arguments)] = attempt + 1
            raise Resubmit from error
        self._last_progress = time.monotonic()
        self._idle.append(actor)
        return result

    def stalled(self) -> None:
        stalled = time.monotonic() - self._last_progress > _ACTOR_RECOVERY_SECONDS
        if stalled or not (self._recovering or self._probes):
            raise RuntimeError("no live actor left; the remaining calls were not done")
        self._start_due_probes()
        if not self._probes:
            time.sleep(max(0.0, min(when for _, when in self._recovering) - time.monotonic()))  # probe pacing
            return
        done, _ = ray.wait(list(self._probes), num_returns=1, timeout=_PROBE_SECONDS)
        for ref in done:
            self._probe_answered(ref)

    def _start_due_probes(self) -> None:
        now = time.monotonic()
        for entry in [entry for entry in self._recovering if entry[1] <= now]:
            self._recovering.remove(entry)
            self._probes[entry[0].__ray_ready__.remote()] = entry[0]

    def _probe_answered(self, ref: Any) -> None:
        actor = self._probes.pop(ref)
        try:
            ray.get(ref)
        except ray.exceptions.RayActorError as error:
            if not isinstance(error, ray.exceptions.ActorDiedError):
                self._recovering.append((actor, time.monotonic() + _PROBE_SECONDS))
            return
        self._last_progress = time.monotonic()
        self._idle.append(actor)


class ProgressBoard:
    """Live counters that running tasks update from inside (e.g. samples done), read by the driver.

    The counters live in the cluster's key-value store (the GCS's, which every worker and the
    driver already talk to), one key per task in a namespace of the job's own, so the board costs
    no process of its own: a board actor would be a Ray worker process, started (~1 core-second)
    while the job's first tasks start. A worker node lost mid-job takes nothing of the board with it.
    """

    def __init__(self) -> None:
        self._namespace = f"mmdata-progress-{uuid.uuid4().hex}"
        self._last: dict[Any, dict[str, int]] = {}

    def reporter(self, key: Any, interval: float = 0.5) -> "ProgressReporter":
        return ProgressReporter(self._namespace, key, interval)

    def read(self) -> dict[Any, dict[str, int]]:
        """The latest counts; the last ones read if the store does not answer (progress is advisory)."""
        namespace = self._namespace.encode()
        try:  # two calls however many tasks have reported
            store = internal_kv.internal_kv_get_gcs_client()
            values = store.internal_kv_multi_get(store.internal_kv_keys(b"", namespace=namespace), namespace=namespace)
        except Exception:  # noqa: BLE001 - an unreachable GCS must not fail the job; its tasks will
            return self._last
        self._last = {ast.literal_eval(name.decode()): json.loads(value) for name, value in values.items()}
        return self._last

    def clear(self) -> None:
        """Remove the board's keys (a joined cluster's store outlives the job)."""
        with contextlib.suppress(Exception):
            internal_kv._internal_kv_del(b"", del_by_prefix=True, namespace=self._namespace)


class ProgressReporter:
    """Called inside a task with the task's cumulative counts; stores them on the board, rate-limited."""

    def __init__(self, namespace: str, key: Any, interval: float) -> None:
        # a key is a literal (a shard name, a number, a tuple of them): read back by literal_eval, never unpickled
        self._namespace, self._name = namespace, repr(key)
        self._throttle = Throttle(interval)

    def __call__(self, counts: dict[str, int], *, force: bool = False) -> None:
        if not self._throttle.due(force):
            return
        with contextlib.suppress(Exception):  # progress is advisory: a store hiccup must not fail the task
            internal_kv._internal_kv_put(self._name, json.dumps(counts), namespace=self._namespace)
