"""One progress system for every stage and executor: a tqdm bar over the stage's unit (samples)
with rate and ETA, the stage's own counters beside it, and a closing summary line.

Tasks report their cumulative counts under their own key (a retried task overwrites its counts
instead of adding to them) through :meth:`Executor.reporter`; the executor's loop hands the latest
reports to :meth:`StageProgress.live` and each finished task's result to :meth:`task_done`, whose
final counts replace the live ones.
"""

from __future__ import annotations

import collections
import sys
import time
from typing import Any, Callable

from tqdm import tqdm

# The count the bar advances on; "successes" is shown as a rate; every other counter by name.
COUNT = "samples"
SUCCESSES = "successes"
_SHOWN_COUNTERS = 4

_last_stage: "StageProgress | None" = None


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


class StageProgress:
    """The bar of one stage. ``total``: the unit count when known; ``tasks``: the stage's tasks
    (shards) in all, ``tasks_done`` of them already complete before this run (for the interrupt
    line). ``final_counts`` maps a task's result to ``(key, counts)`` (None: nothing to count)."""

    def __init__(
        self,
        description: str,
        *,
        total: int | None = None,
        unit: str = "sample",
        tasks: int | None = None,
        tasks_done: int = 0,
        task_unit: str = "shard",
        final_counts: Callable[[Any], tuple[Any, dict[str, int]] | None] | None = None,
        show: bool = True,
    ):
        global _last_stage
        _last_stage = self
        self.description = description
        self.tasks, self.tasks_done, self.task_unit = tasks, tasks_done, task_unit
        self._final_counts = final_counts
        self._live: dict[Any, dict[str, int]] = {}
        self._final: dict[Any, dict[str, int]] = {}
        self._started = time.perf_counter()
        self.show = show
        self._bar = tqdm(total=total, desc=description, unit=unit, mininterval=1.0, smoothing=0.1, disable=not show,
                         file=sys.stderr)

    def live(self, reports: dict[Any, dict[str, int]]) -> None:
        self._live.update(reports)
        self._refresh()

    def task_done(self, result: Any) -> None:
        self.tasks_done += 1
        final = self._final_counts(result) if self._final_counts is not None else None
        if final is not None:
            key, counts = final
            self._final[key] = dict(counts)
        self._refresh()

    @property
    def counts(self) -> collections.Counter:
        """The stage's counters summed over its tasks: final counts where a task finished."""
        total: collections.Counter = collections.Counter()
        for counts in {**self._live, **self._final}.values():
            total.update({name: value for name, value in counts.items() if isinstance(value, int)})
        return total

    def summary(self) -> str:
        counts = self.counts
        seconds = time.perf_counter() - self._started
        parts = [f"{counts.get(COUNT, 0):,} {self._bar.unit}s in {seconds:.1f} s"]
        if counts.get(COUNT) and seconds > 0:
            parts[0] += f" ({counts[COUNT] / seconds:,.1f}/s)"
        parts += self._counter_texts(counts, limit=None)
        return f"{self.description}: " + "; ".join(parts)

    def close(self) -> None:
        self._refresh()
        self._bar.close()
        if self.show:
            print(self.summary(), file=sys.stderr, flush=True)

    def __enter__(self) -> "StageProgress":
        return self

    def __exit__(self, exc_type, *_) -> None:
        if exc_type is None:
            self.close()
        else:
            self._bar.close()

    def _refresh(self) -> None:
        counts = self.counts
        texts = self._counter_texts(counts, limit=_SHOWN_COUNTERS)
        if self.tasks is not None:
            texts.append(f"{self.task_unit}s {self.tasks_done}/{self.tasks}")
        self._bar.set_postfix_str(", ".join(texts), refresh=False)
        self._bar.update(max(0, counts.get(COUNT, 0) - self._bar.n))

    @staticmethod
    def _counter_texts(counts: collections.Counter, limit: int | None) -> list[str]:
        texts = []
        if SUCCESSES in counts and counts.get(COUNT):
            texts.append(f"success {100 * counts[SUCCESSES] / counts[COUNT]:.1f}%")
        others = sorted(((name, value) for name, value in counts.items() if name not in (COUNT, SUCCESSES) and value),
                        key=lambda item: -item[1])
        texts += [f"{name} {value:,}" for name, value in others[:limit]]
        return texts


def interrupted_line() -> str:
    """What a user sees after Ctrl-C or SIGTERM: how far the last stage got, and how to go on."""
    stage = _last_stage
    if stage is None:
        return "interrupted; re-run the same command to resume"
    of_total = "" if stage.tasks is None else f" of {stage.tasks}"
    return f"interrupted: {stage.tasks_done}{of_total} {stage.task_unit}s complete; re-run the same command to resume"
