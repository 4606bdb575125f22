"""The download job: stream the input as shards, run each missing shard as a task on the executor
(a local or joined Ray, a local process pool, or inline), then write ``manifest.json`` once every
shard is complete.

Re-running the same job resumes it: temporaries of an interrupted run are removed, complete shards
(those with a stats file) are skipped and incomplete ones are downloaded again from scratch.
``retry_failed`` also rewrites the complete shards that hold transient failures.
"""

from __future__ import annotations

import dataclasses
import itertools
import time
from datetime import datetime, timezone
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from mmdata import __version__, layout
from mmdata.download.config import DownloadConfig
from mmdata.download.inputs import count_rows, iter_input_shards
from mmdata.download.summary import format_summary
from mmdata.download.worker import ProgressFeed, download_shard, retry_shard, transient_failures
from mmdata.execution import Execution, StageProgress, using
from mmdata.execution.progress import COUNT, SUCCESSES
from mmdata.options import stage_settings
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.stats import load_shard_stats, total_stats
from mmdata.storage import read_parquet
from mmdata.storage.commit import discard_unheld, finish_dataset


def download(config: DownloadConfig | None = None, *, execution: Execution = None, **options) -> dict:
    """Download the URL+caption rows of ``config.input`` into WebDataset shards under
    ``config.output_dir``; returns the manifest (options, shard list, totals).

    Pass a :class:`DownloadConfig` or its options flat: ``download(input="urls.parquet",
    output_dir="data", image_size=224, allow_network=["127.0.0.1/32"], executor="processes")``.
    ``execution`` (or the flat ``executor``/``workers``/``ray_address``): where the shard tasks run.
    """
    config, execution = stage_settings(DownloadConfig, "download", config, execution, options)
    root = config.root
    manifest_file = layout.manifest_path(root)
    if manifest_file.exists() and not config.retry_failed:
        return manifest_file.read_json()
    input_rows = count_rows(config.input)  # None when only a full read would tell
    if config.shard_digits is None:
        shards = None if input_rows is None else -(-input_rows // config.shard_size)
        config = dataclasses.replace(config, shard_digits=layout.shard_digits_for(shards))
    _check_same_settings(config)

    started = time.perf_counter()
    complete = set(layout.complete_shards(root))
    retries = _shards_to_retry(config, complete) if config.retry_failed else {}
    plan = _ShardTasks(config, complete, retries)
    tasks = plan.tasks()
    first = next(tasks, None)  # reads the input's first rows: a bad path or column fails before any executor starts
    root.make_dirs()
    manifest_file.remove()  # the job is incomplete again until every rewritten shard is committed
    # Temporaries of shards no one is writing; a worker of a killed earlier run that is still writing
    # holds its shard's lock, and the re-run of that shard waits for it to finish or die.
    discard_unheld(root)
    if input_rows is not None:
        input_rows += sum(retries.values()) - sum(_shard_count(config, name) for name in complete)
    input_shards = None if input_rows is None else len(complete) + -(-input_rows // config.shard_size)
    progress = StageProgress("download", total=input_rows, tasks=input_shards, tasks_done=len(complete),
                             final_counts=_final_counts)
    if first is not None:
        with using(execution) as executor, progress:
            executor.run_tasks(_run_shard, _with_reporters(itertools.chain([first], tasks), executor),
                               progress=progress)
        discard_unheld(root)  # left by task attempts lost with their worker or node
    last_run = {"seconds": round(time.perf_counter() - started, 3), "samples": progress.counts.get(COUNT, 0)}
    return _write_manifest(config, plan.input_shards, last_run)


def _run_shard(config: DownloadConfig, shard: int, rows: pa.Table | None, reporter: ProgressFeed) -> dict | None:
    """One task: download a new shard (``rows`` given) or retry a complete one (``rows`` is None)."""
    if rows is None:
        return retry_shard(config, shard, reporter)
    return download_shard(config, shard, rows, reporter)


def _with_reporters(tasks: Iterator[tuple], executor) -> Iterator[tuple]:
    for config, shard, rows in tasks:
        yield config, shard, rows, executor.reporter(shard)


def _final_counts(stats: dict | None) -> tuple[int, dict[str, int]] | None:
    """A finished shard's counts for the progress bar, from its committed stats."""
    if stats is None:
        return None
    # failures by class, as the worker reports them live (a failure without a class by its status)
    failures = {f"failed:{name}": count for name, count in stats.get("error_classes", {}).items()}
    unclassed = stats["count"] - stats["successes"] - sum(stats.get("error_classes", {}).values())
    if unclassed > 0:
        failures["failed:unclassified"] = unclassed
    return int(stats["shard"]), {COUNT: stats["count"], SUCCESSES: stats["successes"], **failures}


class _ShardTasks:
    """The shard tasks of a run, generated lazily while the input is read, so a large input is never
    held in memory beyond the shards in flight."""

    def __init__(self, config: DownloadConfig, complete: set[str], retries: dict[str, int]):
        self.config, self.complete, self.retries = config, complete, retries
        self.input_shards = 0

    def tasks(self) -> Iterator[tuple]:
        for name in sorted(self.retries):
            yield self.config, int(name), None
        for shard, rows in enumerate(iter_input_shards(self.config.input, self.config.shard_size)):
            self.input_shards = shard + 1
            if layout.shard_name(shard, self.config.shard_digits) not in self.complete:
                yield self.config, shard, rows


def _shards_to_retry(config: DownloadConfig, complete: set[str]) -> dict[str, int]:
    """Complete shards holding at least one transient failure, with their row counts."""
    retries = {}
    for name in sorted(complete):
        table = read_parquet(layout.parquet_path(config.root, name), columns=["status", "error_class"])
        if pc.any(transient_failures(table)).as_py():
            retries[name] = table.num_rows
    return retries


def _shard_count(config: DownloadConfig, name: str) -> int:
    return layout.stats_path(config.root, name).read_json()["count"]


def _check_same_settings(config: DownloadConfig) -> None:
    """Refuse to resume into a folder whose shards were made with other input, shard size or image
    options: mixing them would give keys and images that disagree."""
    expected = config.fingerprint()
    for stats in load_shard_stats(config.root):
        if stats.get("config_fingerprint", expected) != expected:
            raise ValueError(
                f"{config.output_dir} holds shards made with other settings (shard {stats['shard']}: input, "
                "shard size or image options differ); re-run with the same options or use a new --output"
            )


def _write_manifest(config: DownloadConfig, input_shards: int, last_run: dict) -> dict:
    """Check that every input shard is complete, remove what only writers needed (locks, attempts),
    then write ``manifest.json`` (the job's last write)."""
    shard_stats = load_shard_stats(config.root)
    names = [stats["shard"] for stats in shard_stats]
    expected = [layout.shard_name(shard, config.shard_digits) for shard in range(input_shards)]
    if names != expected:
        missing = sorted(set(expected) - set(names))
        raise RuntimeError(
            f"download incomplete: shards {missing[:10]} have no stats; re-run the same command to resume"
        )
    manifest = {
        "mmdata_version": __version__,
        "schema": {"samples": SAMPLE_SCHEMA.metadata[b"mmdata.schema"].decode(), "fields": SAMPLE_SCHEMA.names},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "shards": [
            {"shard": stats["shard"], "tar": f"{stats['shard']}.tar", "count": stats["count"],
             "successes": stats["successes"]}
            for stats in shard_stats
        ],
        "totals": total_stats(shard_stats),
        "last_run": last_run,
    }
    finish_dataset(config.root)
    layout.manifest_path(config.root).write_json(manifest)
    return manifest


def summary_text(manifest: dict) -> str:
    """The closing summary of a finished job: counts by status and error class."""
    return format_summary(manifest["totals"], last_run=manifest.get("last_run"))


