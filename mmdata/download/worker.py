"""Downloading one shard: fetch, check, decode and resize every row on a thread pool, then write the
samples in input order through :class:`~mmdata.dataset.ShardOutput` (tar, parquet, stats last),
holding the shard's writer lock (:mod:`mmdata.writer_lock`) throughout.

Every input row becomes one metadata row, success or failure; only successes get tar members. The
functions here are plain Python over Arrow tables: the job runs them as Ray tasks, tests call them
directly.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.dataset import ShardOutput
from mmdata.download.config import DownloadConfig
from mmdata.download.image import process_image
from mmdata.download.net import TRANSIENT_ERROR_CLASSES, Fetcher, FetchPolicy
from mmdata.download.summary import shard_stats
from mmdata.schemas.samples import SUCCESS
from mmdata.shards import iter_samples
from mmdata.writer_lock import shard_writer

# Called with a task's cumulative counts after each row (rate-limited by the callee) and with
# ``force=True`` once at the end: :class:`mmdata.execution.ProgressReporter`.
Progress = Callable[..., None]
# Rows fetched ahead of the decoder, per fetch thread: enough that the threads never wait for it.
FETCH_AHEAD_PER_THREAD = 4
# Metadata fields that describe where a sample sits in its tar; recomputed whenever a shard is rewritten.
_SPAN_FIELDS = ("tar_offset", "tar_size")


@dataclass(frozen=True)
class RowOutcome:
    """What happened to one URL: the metadata fields it fills, and the encoded image on success."""

    fields: dict
    image: bytes | None = None


class RowDownloader:
    """Fetches URLs on ``config.threads`` threads and decodes them one at a time in the caller's
    thread: decoding is CPU-bound, so running it on every fetch thread would only oversubscribe the
    core (Pillow releases the GIL while it decodes, so fetches go on meanwhile).

    Fetches run at most ``FETCH_AHEAD_PER_THREAD * threads`` rows ahead of the decoder, so on a
    network faster than decoding the bodies waiting in memory stay bounded instead of growing to
    the whole shard.
    """

    def __init__(self, config: DownloadConfig):
        self._config = config
        self._fetcher = process_fetcher(config.network)
        self._pool = ThreadPoolExecutor(config.threads, thread_name_prefix="mmdata-download")
        self._window = FETCH_AHEAD_PER_THREAD * config.threads

    def map(self, urls: Iterable[str | None]) -> Iterator[RowOutcome]:
        """Outcomes in the order of ``urls``: fetched concurrently, processed as they come in."""
        fetching: collections.deque = collections.deque()
        for url in urls:
            if len(fetching) >= self._window:
                yield self._outcome(fetching.popleft().result())
            fetching.append(self._pool.submit(self._fetch, url))
        while fetching:
            yield self._outcome(fetching.popleft().result())

    def _outcome(self, fetched) -> RowOutcome:
        try:
            if isinstance(fetched, Exception):
                raise fetched
            return self._process(fetched)
        except Exception as error:  # a bug in one row must not sink the other rows of the shard
            return RowOutcome(_failure("failed_to_download", "internal_error", f"{type(error).__name__}: {error}"))

    def _fetch(self, url: str | None):
        try:
            return self._fetcher.fetch(url or "")
        except Exception as error:  # handed to the consumer, which records it as the row's failure
            return error

    def _process(self, fetched) -> RowOutcome:
        body = fetched.body
        fields = {
            "status": fetched.status,
            "error_class": fetched.error_class,
            "error_message": fetched.error_message,
            "http_status": fetched.http_status,
            "byte_count": len(body) if body is not None else None,
        }
        if fetched.status != SUCCESS:
            return RowOutcome(fields)
        fields["sha256"] = hashlib.sha256(body).hexdigest()
        image = process_image(body, self._config.image)
        fields.update(
            status=image.status,
            error_class=image.error_class,
            error_message=image.error_message,
            width=image.width,
            height=image.height,
            original_width=image.original_width,
            original_height=image.original_height,
        )
        if image.status != SUCCESS:
            return RowOutcome(fields)
        fields["image_format"] = image.extension
        return RowOutcome(fields, image.data)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> "RowDownloader":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


@functools.lru_cache(maxsize=4)
def process_fetcher(policy: FetchPolicy) -> Fetcher:
    """One Fetcher per worker process and policy, so per-host limits and backoff span its shards."""
    return Fetcher(policy)


def download_shard(config: DownloadConfig, shard: int, rows: pa.Table, progress: Progress | None = None) -> dict:
    """Download every row of ``rows`` (columns url, caption, and saved extras) into shard ``shard``;
    returns the shard's stats, also written as its ``_stats.json``."""
    with shard_writer(config.output_dir, shard):
        stats_file = layout.stats_path(config.output_dir, shard)
        if stats_file.exists():  # completed by another writer (a concurrent run) while we waited
            return json.loads(stats_file.read_text())
        return _download_rows(config, shard, rows, progress)


def _download_rows(config: DownloadConfig, shard: int, rows: pa.Table, progress: Progress | None) -> dict:
    records = rows.to_pylist()
    with RowDownloader(config) as downloader:
        outcomes = downloader.map(record.get("url") for record in records)
        samples = (
            _sample(config, shard, row_index, record, outcome)
            for row_index, (record, outcome) in enumerate(zip(records, outcomes))
        )
        return _write_shard(config, shard, samples, progress, rows.schema)


def retry_shard(config: DownloadConfig, shard: int, progress: Progress | None = None) -> dict | None:
    """Re-attempt the rows of a complete shard whose failure was transient and rewrite the shard,
    keeping every other row (and the stored members of its successes) as it was.

    Returns the new stats, or ``None`` when the shard has no transient failure and is left untouched.
    The old stats file is removed first: a crash mid-rewrite leaves an incomplete shard that a plain
    re-run downloads again, never a tar that disagrees with its metadata.
    """
    with shard_writer(config.output_dir, shard):
        if not layout.stats_path(config.output_dir, shard).exists():
            return None  # another writer is redoing it (its stats are gone): nothing left to retry here
        table = pq.read_table(layout.parquet_path(config.output_dir, shard))
        retried = pc.indices_nonzero(transient_failures(table)).to_pylist()
        previous = table.to_pylist()
        if not retried:
            return None
        layout.stats_path(config.output_dir, shard).unlink()
        with RowDownloader(config) as downloader:
            new_outcomes = downloader.map(previous[index]["url"] for index in retried)
            samples = _merge_retries(config, shard, previous, set(retried), new_outcomes)
            return _write_shard(config, shard, samples, progress, table.schema, extra_stats={"retried": len(retried)})


def transient_failures(table: pa.Table) -> pa.ChunkedArray:
    """Mask of the failed rows that may succeed if fetched again (timeouts, connection errors, 5xx, 429)."""
    transient = pc.is_in(table["error_class"], value_set=pa.array(sorted(TRANSIENT_ERROR_CLASSES), pa.string()))
    return pc.and_(pc.not_equal(table["status"], SUCCESS), transient)


def _merge_retries(
    config: DownloadConfig, shard: int, previous: list[dict], retried: set[int], new_outcomes: Iterator[RowOutcome]
) -> Iterator[tuple[dict, dict | None]]:
    stored = iter_samples(layout.tar_path(config.output_dir, shard))
    for row_index, record in enumerate(previous):
        record = {name: value for name, value in record.items() if name not in _SPAN_FIELDS}
        if row_index in retried:
            yield _sample(config, shard, row_index, record, next(new_outcomes))
        elif record["status"] == SUCCESS:
            key, members = next(stored)
            if key != record["key"]:
                raise ValueError(f"shard {layout.shard_name(shard)}: tar holds {key} where the metadata has {record['key']}")
            yield record, members
        else:
            yield record, None


def _sample(config: DownloadConfig, shard: int, row_index: int, record: dict, outcome: RowOutcome):
    """The metadata row and tar members of one input row."""
    row = {
        "key": layout.sample_key(shard, row_index, config.shard_size),
        "uid": layout.sample_uid(record.get("url"), record.get("caption")),
        **{name: value for name, value in record.items() if name not in _CLEARED_FIELDS},
        **_EMPTY_OUTCOME,
        **outcome.fields,
    }
    if outcome.image is None:
        return row, None
    members = {row["image_format"]: outcome.image}
    if row.get("caption") is not None:
        members["txt"] = row["caption"].encode("utf-8")
    members["json"] = json.dumps(row, ensure_ascii=False, default=str).encode("utf-8")
    return row, members


def _write_shard(
    config: DownloadConfig,
    shard: int,
    samples: Iterable[tuple[dict, dict | None]],
    progress: Progress | None,
    extra_fields: pa.Schema,
    extra_stats: dict | None = None,
) -> dict:
    start_wall, start = time.time(), time.perf_counter()
    statuses, error_classes, byte_counts = [], [], []
    successes = 0
    with ShardOutput(config.output_dir, shard, extra_fields=extra_fields) as output:
        for row, members in samples:
            output.add(row, members)
            statuses.append(row["status"])
            error_classes.append(row.get("error_class"))
            byte_counts.append(row.get("byte_count"))
            successes += row["status"] == SUCCESS
            if progress is not None:
                progress({"samples": len(statuses), "successes": successes})
        summary_rows = pa.table(
            {"status": statuses, "error_class": pa.array(error_classes, pa.string()), "byte_count": pa.array(byte_counts, pa.int64())}
        )
        stats = shard_stats(
            summary_rows,
            shard=shard,
            duration=time.perf_counter() - start,
            start_time=start_wall,
            extra={"shard_size": config.shard_size, "config_fingerprint": config.fingerprint(), **(extra_stats or {})},
        )
        output.commit(stats)
    if progress is not None:
        progress({"samples": stats["count"], "successes": stats["successes"]}, force=True)
    return stats


def _failure(status: str, error_class: str, message: str) -> dict:
    return {"status": status, "error_class": error_class, "error_message": message}


# Outcome fields a (re)download sets; cleared first so a retried row keeps nothing of its last attempt.
_EMPTY_OUTCOME = {
    name: None
    for name in (
        "error_message", "error_class", "width", "height", "original_width", "original_height",
        "sha256", "http_status", "byte_count", "image_format",
    )
}
_CLEARED_FIELDS = frozenset({"key", "uid", "status", *_EMPTY_OUTCOME, *_SPAN_FIELDS})
