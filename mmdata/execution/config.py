"""Where a stage's work runs, chosen once (CLI flags, a pipeline file or a Python caller) and handed
to every stage: ``--executor ray|processes|inline``, ``--workers N``, ``--ray-address ADDR``."""

from __future__ import annotations

import os
from dataclasses import dataclass

# ray: a local Ray started for the job, or the cluster at ray_address (retries, many machines);
# processes: a pool of local worker processes (fast start, one machine, no retries);
# inline: this process, one task after the other (tests, debugging, profiling).
EXECUTORS = ("ray", "processes", "inline")
EXECUTION_OPTIONS = ("executor", "workers", "ray_address")


@dataclass(frozen=True, kw_only=True)
class ExecutionConfig:
    """``workers``: tasks run at once (default: the CPU count; the cluster's CPUs on a joined Ray)."""

    executor: str = "ray"
    workers: int = 0
    ray_address: str | None = None

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"executor must be one of {', '.join(EXECUTORS)}, got {self.executor!r}")
        if self.ray_address and self.executor != "ray":
            raise ValueError(f"--ray-address needs --executor ray (the {self.executor} executor runs on this machine)")
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 0:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")

    @property
    def concurrency(self) -> int:
        """Tasks at once: ``workers``, or the machine's CPU count when unset."""
        return self.workers or os.cpu_count() or 1

    @classmethod
    def from_options(cls, options: dict) -> "ExecutionConfig | None":
        """Take ``executor``/``workers``/``ray_address`` out of a stage's flat ``options`` (removing them);
        None when none was given."""
        given = {name: options.pop(name) for name in EXECUTION_OPTIONS if options.get(name) is not None}
        return cls(**given) if given else None
