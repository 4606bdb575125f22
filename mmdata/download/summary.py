"""The download summary printed at the end of a download and by ``mmdata stats``, from the shards'
stats files (:func:`mmdata.stats.shard_stats`)."""

from __future__ import annotations

from mmdata import layout
from mmdata.stats import load_shard_stats, total_stats


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


def summarize_folder(root: layout.Root, storage_options: dict | None = None) -> str:
    """The summary of a dataset folder, from its stats files alone (``mmdata stats DIR``)."""
    root = layout.dataset(root, storage_options)
    if not root.is_dir():
        raise FileNotFoundError(f"{root} is not a folder")
    stats = load_shard_stats(root)
    if not stats:
        raise ValueError(f"{root} holds no complete shard (no NNNNN_stats.json): is it a dataset folder?")
    complete = layout.manifest_path(root).exists()
    if complete:
        state = "job complete (manifest.json written)"
    else:
        state = "job incomplete: no manifest.json yet (re-run to resume)"
    return format_summary(total_stats(stats)) + "\n" + state
