"""The download job: stream the input as shards, run each missing shard as a task on the executor
(a local or joined Ray, a local process pool, or inline), then write ``manifest.json`` once every
shard is complete.

Re-running the same job resumes it: temporaries of an interrupted run are removed, complete shards
(those with a stats file) are skipped and incomplete ones are downloaded again from scratch.
``retry_failed`` also rewrites the complete shards that hold transient failures. A shard whose task
fails is run again once the others are done, up to ``max_shard_retry`` times (img2dataset's option);
the job fails with the shard's own error when it still fails.

The job also takes img2dataset's option names and values (:mod:`mmdata.download.img2dataset_options`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import re
import sys
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from mmdata import __version__, layout
from mmdata.download import img2dataset_options
from mmdata.download.config import DownloadConfig
from mmdata.download.inputs import count_rows, iter_input_shards
from mmdata.download.summary import format_summary
from mmdata.download.wandb_log import WandbLog, require_wandb
from mmdata.download.worker import ProgressFeed, download_shard, retry_shard, transient_failures
from mmdata.execution import Execution, StageProgress, using
from mmdata.execution.progress import COUNT, SUCCESSES
from mmdata.options import stage_settings
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.stats import load_shard_stats, total_stats
from mmdata.storage import Location, read_parquet
from mmdata.storage.commit import discard_unheld, finish_dataset

_INCREMENTAL_MODES = ("incremental", "overwrite")
# What only a dataset folder holds: shard files and the manifest (incremental_mode="overwrite" checks).
_DATASET_FILE = re.compile(r"^(\d+(\.tar|\.parquet|_stats\.json)|manifest\.json)$")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """How one run goes, beside what it makes (img2dataset's names): ``incremental_mode``
    "incremental" resumes the output folder, "overwrite" removes it first; a shard whose task fails
    is run again up to ``max_shard_retry`` times once the others are done (0: the first failure
    fails the job at once); ``enable_wandb`` logs the job to the W&B project ``wandb_project``."""

    incremental_mode: str = "incremental"
    max_shard_retry: int = 1
    enable_wandb: bool = False
    wandb_project: str = "mmdata"

    def __post_init__(self) -> None:
        if self.incremental_mode == "extend":
            raise ValueError("incremental_mode='extend' (a new input's shards numbered after the existing ones) is "
                             "not supported: an mmdata dataset holds one input; download it into a new folder")
        if self.incremental_mode not in _INCREMENTAL_MODES:
            raise ValueError(f"incremental_mode must be incremental or overwrite, got {self.incremental_mode!r}")
        retries = self.max_shard_retry
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError(f"max_shard_retry must be an integer >= 0, got {retries!r}")
        if not isinstance(self.enable_wandb, bool):
            raise ValueError(f"enable_wandb must be True or False, got {self.enable_wandb!r}")
        if not self.wandb_project or not isinstance(self.wandb_project, str):
            raise ValueError(f"wandb_project must name a W&B project, got {self.wandb_project!r}")
        if self.enable_wandb:
            require_wandb()

    @classmethod
    def take(cls, options: dict) -> "RunOptions":
        """The run's options, taken out of a job's flat ``options``."""
        names = [field.name for field in dataclasses.fields(cls)]
        return cls(**{name: options.pop(name) for name in names if name in options})


@dataclass(frozen=True)
class ShardFailure:
    """A shard task that raised, returned instead so the other shards go on; it runs again later."""

    shard: str
    error: str


def download(config: DownloadConfig | None = None, *, execution: Execution = None, **options) -> dict:
    """Download the URL+caption rows of ``config.input`` into WebDataset shards under
    ``config.output_dir``; returns the manifest (options, shard list, totals).

    Pass a :class:`DownloadConfig` or its options flat: ``download(input="urls.parquet",
    output_dir="data", image_size=224, allow_network=["127.0.0.1/32"], executor="processes")``, or
    img2dataset's: ``download(url_list="urls.parquet", output_folder="data", thread_count=64, ...)``.
    ``execution`` (or the flat ``executor``/``workers``/``ray_address``): where the shard tasks run.
    The :class:`RunOptions` (``incremental_mode``, ``max_shard_retry``, ``enable_wandb``) go flat too.
    """
    options, notes = img2dataset_options.translate(options)
    run = RunOptions.take(options)
    config, execution = stage_settings(DownloadConfig, "download", config, execution, options)
    for note in notes:
        print(f"mmdata download: note: {note}", file=sys.stderr)
    root = config.root
    if run.incremental_mode == "overwrite":
        _remove_dataset(root)
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
    log = WandbLog(run.wandb_project, config.to_dict()) if run.enable_wandb and first is not None else None
    with log or contextlib.nullcontext():
        if first is not None:
            with using(execution) as executor, progress:
                _run_with_retries(executor, config, itertools.chain([first], tasks), retries, run, progress, log)
            discard_unheld(root)  # left by task attempts lost with their worker or node
        last_run = {"seconds": round(time.perf_counter() - started, 3), "samples": progress.counts.get(COUNT, 0)}
        manifest = _write_manifest(config, plan.input_shards, last_run)
        if log is not None:
            log.job_done(manifest)
    return manifest


def _run_with_retries(executor, config: DownloadConfig, tasks: Iterator[tuple], retries: dict[str, int],
                      run: RunOptions, progress: StageProgress, log: WandbLog | None) -> None:
    """Run the shard tasks, then the ones that failed again, up to ``run.max_shard_retry`` times (as
    img2dataset does). Each round but the last records a failure and goes on with the other shards;
    in the last, a failure raises its own error, as it would with no retries."""
    failures: list[ShardFailure] = []

    def seen(result) -> None:
        if isinstance(result, ShardFailure):
            progress.tasks_done -= 1  # the progress counted it as done: it is not
            failures.append(result)
        elif log is not None and result is not None:
            log.shard_done(result)

    for attempt in range(run.max_shard_retry + 1):
        keep_going = attempt < run.max_shard_retry
        executor.run_tasks(_run_shard, _with_reporters(tasks, executor, keep_going), progress=progress,
                           on_result=seen)
        if not failures:
            return
        failed = sorted(failures, key=lambda failure: failure.shard)
        print(f"mmdata download: {len(failed)} shard(s) failed ({failed[0].shard}: {failed[0].error}); running them "
              f"again ({attempt + 1} of {run.max_shard_retry})", file=sys.stderr, flush=True)
        complete = set(layout.complete_shards(config.root))
        again = {failure.shard for failure in failed}
        rewrites = {name: count for name, count in retries.items() if name in again and name in complete}
        tasks = _ShardTasks(config, complete, rewrites, only=again).tasks()
        failures.clear()


def _run_shard(config: DownloadConfig, shard: int, rows: pa.Table | None, reporter: ProgressFeed,
               keep_going: bool) -> dict | ShardFailure | None:
    """One task: download a new shard (``rows`` given) or retry a complete one (``rows`` is None).
    ``keep_going``: a failure is returned (to run the shard again later) instead of raised."""
    try:
        if rows is None:
            return retry_shard(config, shard, reporter)
        return download_shard(config, shard, rows, reporter)
    except Exception as error:
        name = layout.shard_name(shard, config.shard_digits or layout.SHARD_DIGITS)
        if keep_going:
            return ShardFailure(name, f"{type(error).__name__}: {error}")
        error.add_note(f"while downloading shard {name}; re-run the same command to resume")
        raise


def _remove_dataset(root: Location) -> None:
    """``incremental_mode="overwrite"``: remove the output folder, as img2dataset does, but only one
    that holds a dataset: a mistyped output must not wipe an unrelated folder."""
    names = root.names() if root.is_dir() else []
    if not names:
        return
    if not any(_DATASET_FILE.match(name) for name in names):
        shown = ", ".join(names[:5]) + (", ..." if len(names) > 5 else "")
        raise ValueError(f"incremental_mode='overwrite' removes the output folder, but {root} holds no dataset "
                         f"(found {shown}); remove it yourself or choose another output folder")
    root.remove_tree()


def _with_reporters(tasks: Iterator[tuple], executor, keep_going: bool) -> Iterator[tuple]:
    for config, shard, rows in tasks:
        yield config, shard, rows, executor.reporter(shard), keep_going


def _final_counts(stats: dict | None) -> tuple[int, dict[str, int]] | None:
    """A finished shard's counts for the progress bar, from its committed stats."""
    if not isinstance(stats, dict):  # nothing retried, or a failed task (run again later)
        return None
    # failures by class, as the worker reports them live (a failure without a class by its status)
    failures = {f"failed:{name}": count for name, count in stats.get("error_classes", {}).items()}
    unclassed = stats["count"] - stats["successes"] - sum(stats.get("error_classes", {}).values())
    if unclassed > 0:
        failures["failed:unclassified"] = unclassed
    return int(stats["shard"]), {COUNT: stats["count"], SUCCESSES: stats["successes"], **failures}


class _ShardTasks:
    """The shard tasks of a run, generated lazily while the input is read, so a large input is never
    held in memory beyond the shards in flight. ``only``: run just these shards (a retry round; the
    input is read again rather than the failed shards' rows kept)."""

    def __init__(self, config: DownloadConfig, complete: set[str], retries: dict[str, int],
                 only: set[str] | None = None):
        self.config, self.complete, self.retries, self.only = config, complete, retries, only
        self.input_shards = 0

    def tasks(self) -> Iterator[tuple]:
        for name in sorted(self.retries):
            yield self.config, int(name), None
        wanted = None if self.only is None else self.only - set(self.retries) - self.complete
        if wanted == set():
            return
        last = None if wanted is None else max(int(name) for name in wanted)
        for shard, rows in enumerate(iter_input_shards(self.config.input, self.config.shard_size)):
            self.input_shards = shard + 1
            name = layout.shard_name(shard, self.config.shard_digits)
            if name not in self.complete and (wanted is None or name in wanted):
                yield self.config, shard, rows
            if shard == last:
                return


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
                "shard size or image options differ); re-run with the same options, use a new --output, or "
                "replace them with incremental_mode='overwrite'"
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


