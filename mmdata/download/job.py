"""The download job: stream the input as shards, run each missing shard as a task (on Ray, or on a
local process pool), then write ``manifest.json`` once every shard is complete.

Re-running the same job resumes it: temporaries of an interrupted run are removed, complete shards
(those with a stats file) are skipped and incomplete ones are downloaded again from scratch.
``retry_failed`` also rewrites the complete shards that hold transient failures.
"""

from __future__ import annotations

import contextlib
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from mmdata import __version__, layout
from mmdata.atomic import write_json
from mmdata.download.config import DownloadConfig
from mmdata.download.inputs import count_rows, iter_input_shards
from mmdata.download.summary import format_summary, load_shard_stats, total_stats
from mmdata.download.worker import Progress, download_shard, retry_shard, transient_failures
from mmdata.execution import ProgressBoard, RayTasks, ray_session
from mmdata.processes import LocalProgressBoard, ProcessPool
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.writer_lock import remove_unheld_temporaries


def download(config: DownloadConfig | None = None, **options) -> dict:
    """Download the URL+caption rows of ``config.input`` into WebDataset shards under
    ``config.output_dir``; returns the manifest (options, shard list, totals).

    Pass a :class:`DownloadConfig` or its options flat: ``download(input="urls.parquet",
    output_dir="data", image_size=224, allow_network=["127.0.0.1/32"])``.
    """
    if config is None:
        config = DownloadConfig.from_options(**options)
    elif options:
        raise ValueError("pass either a DownloadConfig or keyword options, not both")
    root = Path(config.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    _check_same_settings(config)
    manifest_file = layout.manifest_path(root)
    if manifest_file.exists():
        if not config.retry_failed:
            return json.loads(manifest_file.read_text())
        manifest_file.unlink()  # the job is incomplete again until every rewritten shard is committed

    started = time.perf_counter()
    # Temporaries of shards no one is writing; a worker of a killed earlier run that is still writing
    # holds its shard's lock, and the re-run of that shard waits for it to finish or die.
    remove_unheld_temporaries(root)
    with _executor(config) as executor:
        complete = set(layout.complete_shards(root))
        retries = _shards_to_retry(config, complete) if config.retry_failed else {}
        input_rows = count_rows(config.input)  # None when only a full read would tell
        if input_rows is not None:
            input_rows += sum(retries.values()) - sum(_shard_count(config, name) for name in complete)
        plan = _Plan(config, complete, retries)
        progress = _SampleProgress(executor.board, total=input_rows)
        with progress:
            executor.run_tasks(
                _run_shard,
                plan.tasks(progress.board),
                on_result=progress.finished,
                on_tick=progress.tick,
                tick_seconds=0.5,
            )
        remove_unheld_temporaries(root)  # left by task attempts lost with their worker or node
        last_run = {"seconds": round(time.perf_counter() - started, 3), "samples": progress.samples_finished}
    return _write_manifest(config, plan.input_shards, last_run)


@contextlib.contextmanager
def _executor(config: DownloadConfig) -> Iterator[RayTasks | ProcessPool]:
    """Where the shard tasks run: Ray (local, or the cluster at ``ray_address``) or a local pool."""
    if config.executor == "processes":
        with ProcessPool(config.workers, preload=["mmdata.download.worker"]) as pool:
            yield pool
        return
    with ray_session(config.ray_address, num_cpus=config.workers):
        yield RayTasks(config.workers)


def _run_shard(config: DownloadConfig, shard: int, rows: pa.Table | None, reporter: Progress) -> dict | None:
    """One task: download a new shard (``rows`` given) or retry a complete one (``rows`` is None)."""
    if rows is None:
        return retry_shard(config, shard, reporter)
    return download_shard(config, shard, rows, reporter)


class _Plan:
    """The tasks of a run, generated lazily while the input is read, so a large input is never held
    in memory beyond the shards in flight."""

    def __init__(self, config: DownloadConfig, complete: set[str], retries: dict[str, int]):
        self.config, self.complete, self.retries = config, complete, retries
        self.input_shards = 0

    def tasks(self, board: ProgressBoard | LocalProgressBoard) -> Iterator[tuple]:
        for name in sorted(self.retries):
            yield self.config, int(name), None, board.reporter(int(name))
        for shard, rows in enumerate(iter_input_shards(self.config.input, self.config.shard_size)):
            self.input_shards = shard + 1
            if layout.shard_name(shard) not in self.complete:
                yield self.config, shard, rows, board.reporter(shard)


class _SampleProgress:
    """A progress bar over samples (not shards), with the success rate, fed by the tasks' live
    counters and replaced by each shard's final stats when it finishes."""

    def __init__(self, board: ProgressBoard | LocalProgressBoard, total: int | None):
        self.board = board
        self._final: dict[int, dict] = {}
        self._bar = tqdm(total=total, unit="sample", desc="download", mininterval=1.0, smoothing=0.1)

    def tick(self) -> None:
        counts = {**self.board.read(), **self._final}
        samples = sum(entry["samples"] for entry in counts.values())
        successes = sum(entry["successes"] for entry in counts.values())
        self._bar.set_postfix_str(f"success {100 * successes / max(samples, 1):.1f}%, shards {len(self._final)}", refresh=False)
        self._bar.update(samples - self._bar.n)

    def finished(self, stats: dict | None) -> None:
        if stats is not None:
            self._final[int(stats["shard"])] = {"samples": stats["count"], "successes": stats["successes"]}

    @property
    def samples_finished(self) -> int:
        return sum(entry["samples"] for entry in self._final.values())

    def __enter__(self) -> "_SampleProgress":
        return self

    def __exit__(self, *exc_info) -> None:
        self.tick()
        self._bar.close()


def _shards_to_retry(config: DownloadConfig, complete: set[str]) -> dict[str, int]:
    """Complete shards holding at least one transient failure, with their row counts."""
    retries = {}
    for name in sorted(complete):
        table = pq.read_table(layout.parquet_path(config.output_dir, name), columns=["status", "error_class"])
        if pc.any(transient_failures(table)).as_py():
            retries[name] = table.num_rows
    return retries


def _shard_count(config: DownloadConfig, name: str) -> int:
    return json.loads(layout.stats_path(config.output_dir, name).read_text())["count"]


def _check_same_settings(config: DownloadConfig) -> None:
    """Refuse to resume into a folder whose shards were made with other input, shard size or image
    options: mixing them would give keys and images that disagree."""
    expected = config.fingerprint()
    for stats in load_shard_stats(config.output_dir):
        if stats.get("config_fingerprint", expected) != expected:
            raise ValueError(
                f"{config.output_dir} holds shards made with other settings (shard {stats['shard']}: input, "
                "shard size or image options differ); re-run with the same options or use a new --output"
            )


def _write_manifest(config: DownloadConfig, input_shards: int, last_run: dict) -> dict:
    """Check that every input shard is complete, then write ``manifest.json`` (the job's last write)."""
    shard_stats = load_shard_stats(config.output_dir)
    names = [stats["shard"] for stats in shard_stats]
    expected = [layout.shard_name(shard) for shard in range(input_shards)]
    if names != expected:
        missing = sorted(set(expected) - set(names))
        raise RuntimeError(f"download incomplete: shards {missing[:10]} have no stats; re-run the same command to resume")
    manifest = {
        "mmdata_version": __version__,
        "schema": {"samples": SAMPLE_SCHEMA.metadata[b"mmdata.schema"].decode(), "fields": SAMPLE_SCHEMA.names},
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "options": config.to_dict(),
        "config_fingerprint": config.fingerprint(),
        "shards": [
            {"shard": stats["shard"], "tar": layout.tar_path(".", stats["shard"]).name, "count": stats["count"],
             "successes": stats["successes"]}
            for stats in shard_stats
        ],
        "totals": total_stats(shard_stats),
        "last_run": last_run,
    }
    write_json(layout.manifest_path(config.output_dir), manifest)
    return manifest


def summary_text(manifest: dict) -> str:
    """The closing summary of a finished job: counts by status and error class."""
    return format_summary(manifest["totals"], last_run=manifest.get("last_run"))


