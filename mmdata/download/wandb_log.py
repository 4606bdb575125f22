"""Weights & Biases logging of a download job (img2dataset's ``enable_wandb``): the job's options as
the run's config, each committed shard's counts and the running totals as it completes, and the
job's totals as the run's summary. Only the driver logs; wandb is imported only when asked for."""

from __future__ import annotations

import collections
import time


def require_wandb() -> None:
    """Refuse ``enable_wandb`` at once when wandb cannot be imported, rather than log nothing."""
    try:
        import wandb  # noqa: F401
    except ImportError as error:
        raise ValueError("enable_wandb needs the wandb package, which cannot be imported here: pip install wandb "
                         f"(or leave enable_wandb off) ({error})") from error


class WandbLog:
    """One W&B run for one download job; a context manager that finishes the run (failed when the
    job raised)."""

    def __init__(self, project: str, options: dict):
        import wandb

        self._run = wandb.init(project=project, config=options, job_type="download")
        self._totals: collections.Counter = collections.Counter()
        self._started = time.perf_counter()

    def shard_done(self, stats: dict) -> None:
        """Log a committed shard's counts, and the job's totals so far."""
        self._totals.update(shards=1, count=stats["count"], successes=stats["successes"])
        seconds = time.perf_counter() - self._started
        counts = self._totals
        self._run.log({
            "shard": int(stats["shard"]),
            "shard_count": stats["count"],
            "shard_successes": stats["successes"],
            **{f"shard_status/{status}": count for status, count in stats.get("status_dict", {}).items()},
            "shards_done": counts["shards"],
            "samples": counts["count"],
            "successes": counts["successes"],
            "success_rate": counts["successes"] / counts["count"] if counts["count"] else 0.0,
            "samples_per_second": counts["count"] / seconds if seconds > 0 else 0.0,
        })

    def job_done(self, manifest: dict) -> None:
        """The finished job's totals (counts by status and error class) as the run's summary."""
        totals = manifest["totals"]
        summary = {name: value for name, value in totals.items() if isinstance(value, (int, float))}
        summary.update({f"status/{name}": count for name, count in totals.get("status_dict", {}).items()})
        summary.update({f"error_class/{name}": count for name, count in totals.get("error_classes", {}).items()})
        self._run.summary.update(summary)

    def __enter__(self) -> "WandbLog":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self._run.finish(exit_code=0 if exc_type is None else 1)
