"""The one place that talks to Ray: start or join a cluster, run tasks, show progress.

Stages stay plain functions over Arrow data; this module fans them out. Ray's task retries cover
worker and node death; a task that still fails ends the job with its error.
"""

from __future__ import annotations

import contextlib
import os
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
        options["num_cpus"] = num_cpus or os.cpu_count()
    ray.init(**options)
    try:
        yield
    finally:
        ray.shutdown()


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
) -> list[Any]:
    """Run ``function(*args)`` as Ray tasks, at most ``concurrency`` at once, results in completion order.

    ``on_result`` sees each result as it arrives (to update a progress line or commit a manifest).
    """
    import ray

    remote = ray.remote(num_cpus=num_cpus, max_retries=max_retries, retry_exceptions=False)(function)
    pending_arguments = list(argument_lists)
    limit = concurrency or max(1, int(ray.available_resources().get("CPU", 1) // max(num_cpus, 1e-6)))
    results, in_flight = [], []
    with tqdm(total=len(pending_arguments), desc=description, unit=unit, mininterval=1.0) as progress:
        while pending_arguments or in_flight:
            while pending_arguments and len(in_flight) < limit:
                in_flight.append(remote.remote(*pending_arguments.pop(0)))
            done, in_flight = ray.wait(in_flight, num_returns=1)
            result = ray.get(done[0])
            results.append(result)
            if on_result is not None:
                on_result(result)
            progress.update(1)
    return results
