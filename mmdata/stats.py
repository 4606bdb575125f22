"""Counters that add up: one JSON per shard or task, summed by the driver.

A shard's stats file (``NNNNN_stats.json``) is computed from its committed metadata table, so its
counts always agree with the rows. It keeps img2dataset's fields (``count``, ``successes``,
``failed_to_download``, ``failed_to_resize``, ``duration``, ``status_dict``) so tools written for its
output keep working; ``status_dict`` counts our closed set of statuses, ``error_classes`` the finer
error classes.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc

from mmdata import __version__, layout
from mmdata.schemas.samples import FAILED_TO_DECODE, FILTERED, SUCCESS
from mmdata.storage.location import read_all

# img2dataset splits failures into these two counters; every status falls in exactly one.
RESIZE_FAILURES = frozenset({FAILED_TO_DECODE, FILTERED})
_SUMMED = ("count", "successes", "failed_to_download", "failed_to_resize", "bytes_downloaded")


@dataclass
class Stats:
    """Named counts plus wall time; ``a + b`` adds both, so per-shard stats sum to the job's."""

    counts: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    def add(self, name: str, amount: int = 1) -> None:
        self.counts[name] += amount

    def __add__(self, other: "Stats") -> "Stats":
        return Stats(self.counts + other.counts, self.seconds + other.seconds)

    def __getitem__(self, name: str) -> int:
        return self.counts.get(name, 0)

    def to_dict(self) -> dict:
        return {"counts": dict(sorted(self.counts.items())), "seconds": round(self.seconds, 3)}

    @classmethod
    def from_dict(cls, payload: dict) -> "Stats":
        return cls(Counter(payload.get("counts", {})), float(payload.get("seconds", 0.0)))


def shard_stats(rows: pa.Table, *, shard: int | str, duration: float, start_time: float) -> dict:
    """The stats of one shard, computed from its metadata table (SAMPLE_SCHEMA columns)."""
    status_dict = _value_counts(rows.column("status"))
    error_classes = _value_counts(rows.column("error_class"))
    successes = status_dict.get(SUCCESS, 0)
    failed_to_resize = sum(n for status, n in status_dict.items() if status in RESIZE_FAILURES)
    return {
        "shard": layout.shard_name(shard) if isinstance(shard, int) else shard,
        "count": rows.num_rows,
        "successes": successes,
        "failed_to_download": rows.num_rows - successes - failed_to_resize,
        "failed_to_resize": failed_to_resize,
        "duration": round(duration, 3),
        "start_time": start_time,
        "end_time": start_time + duration,
        "status_dict": status_dict,
        "error_classes": error_classes,
        "bytes_downloaded": int(pc.sum(rows.column("byte_count")).as_py() or 0),
        "mmdata_version": __version__,
    }


def load_shard_stats(root: layout.Root) -> list[dict]:
    """The stats of every complete shard under ``root``, in shard order (fetched concurrently from object stores)."""
    root = layout.dataset(root)
    files = [layout.stats_path(root, name) for name in layout.complete_shards(root)]
    return [json.loads(data) for data in read_all(files)]


def total_stats(shard_stats_list: list[dict]) -> dict:
    """Sum of per-shard stats: the counts, the bytes and both breakdowns."""
    total = {"shards": len(shard_stats_list), **{name: 0 for name in _SUMMED}}
    status_dict, error_classes = Counter(), Counter()
    for stats in shard_stats_list:
        for name in _SUMMED:
            total[name] += stats.get(name, 0)
        status_dict.update(stats.get("status_dict", {}))
        error_classes.update(stats.get("error_classes", {}))
    total["status_dict"] = dict(status_dict.most_common())
    total["error_classes"] = dict(error_classes.most_common())
    return total


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null())
    pairs = [(entry["values"].as_py(), entry["counts"].as_py()) for entry in counts]
    return dict(sorted(pairs, key=lambda pair: (-pair[1], pair[0])))
