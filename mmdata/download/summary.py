"""Per-shard download stats, derived from the shard's metadata rows so that they always add up, and
the job summary printed at the end of a download and by ``mmdata stats``.

The stats file keeps img2dataset's fields (``count``, ``successes``, ``failed_to_download``,
``failed_to_resize``, ``duration``, ``status_dict``) so tools written for its output keep working;
``status_dict`` counts our closed set of statuses, ``error_classes`` the finer error classes.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from mmdata import __version__, layout
from mmdata.schemas.samples import SUCCESS

# img2dataset splits failures into these two counters; every status falls in exactly one.
RESIZE_FAILURES = frozenset({"failed_to_decode", "filtered"})


def shard_stats(rows: pa.Table, *, shard: int, duration: float, start_time: float, extra: dict | None = None) -> dict:
    """The stats JSON of one shard, computed from its metadata table."""
    status_dict = _value_counts(rows.column("status"))
    error_classes = _value_counts(rows.column("error_class"))
    successes = status_dict.get(SUCCESS, 0)
    failed_to_resize = sum(n for status, n in status_dict.items() if status in RESIZE_FAILURES)
    return {
        "shard": layout.shard_name(shard),
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
        **(extra or {}),
    }


def load_shard_stats(root: str | os.PathLike) -> list[dict]:
    """The stats of every complete shard under ``root``, in shard order."""
    return [json.loads(layout.stats_path(root, name).read_text()) for name in layout.complete_shards(root)]


def total_stats(shard_stats_list: list[dict]) -> dict:
    """Sum of per-shard stats (counts, durations, and both breakdowns)."""
    total = {"shards": len(shard_stats_list), "count": 0, "successes": 0, "failed_to_download": 0,
             "failed_to_resize": 0, "bytes_downloaded": 0}
    status_dict, error_classes = Counter(), Counter()
    for stats in shard_stats_list:
        for name in ("count", "successes", "failed_to_download", "failed_to_resize", "bytes_downloaded"):
            total[name] += stats.get(name, 0)
        status_dict.update(stats.get("status_dict", {}))
        error_classes.update(stats.get("error_classes", {}))
    total["status_dict"] = dict(status_dict.most_common())
    total["error_classes"] = dict(error_classes.most_common())
    return total


def format_summary(total: dict, *, last_run: dict | None = None) -> str:
    """A few lines for people: counts by status and by error class, with shares."""
    count = total["count"] or 1
    lines = [f"{total['count']} samples in {total['shards']} shards: {total['successes']} stored "
             f"({100 * total['successes'] / count:.1f}%), {total['bytes_downloaded'] / 1e6:.1f} MB downloaded"]
    if last_run and last_run.get("seconds"):
        lines.append(f"this run: {last_run['samples']} samples in {last_run['seconds']:.1f} s "
                     f"({last_run['samples'] / last_run['seconds']:.1f} samples/s)")
    lines.append("by status:")
    lines += [f"  {status:<20} {n:>10}  {100 * n / count:5.1f}%" for status, n in total["status_dict"].items()]
    if total["error_classes"]:
        lines.append("by error class:")
        lines += [f"  {name:<20} {n:>10}  {100 * n / count:5.1f}%" for name, n in total["error_classes"].items()]
    return "\n".join(lines)


def summarize_folder(root: str | os.PathLike) -> str:
    """The summary of a dataset folder, from its stats files alone (``mmdata stats DIR``)."""
    if not Path(root).is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    stats = load_shard_stats(root)
    if not stats:
        raise ValueError(f"{root} holds no complete shard (no NNNNN_stats.json): is it a dataset folder?")
    complete = layout.manifest_path(root).exists()
    state = "job complete (manifest.json written)" if complete else "job incomplete: no manifest.json yet (re-run to resume)"
    return format_summary(total_stats(stats)) + "\n" + state


def _value_counts(column: pa.ChunkedArray) -> dict[str, int]:
    counts = pc.value_counts(column.drop_null())
    pairs = [(entry["values"].as_py(), entry["counts"].as_py()) for entry in counts]
    return dict(sorted(pairs, key=lambda pair: (-pair[1], pair[0])))
