"""Downloading one shard: fetch, check, decode and resize every row on a thread pool, then write the
samples in input order through :class:`~mmdata.shard_output.ShardOutput` (tar, parquet, stats last),
in the shard's writer slot (:mod:`mmdata.storage.commit`: a lock locally, an attempt on object stores).

Every input row becomes one metadata row, success or failure; only successes get tar members. The
functions here are plain Python over Arrow tables: the job runs them as tasks on its executor, tests call them
directly.

Per row, as img2dataset: the boxes of ``bbox_col`` are blurred; a body whose hash is not the row's
``verify_hash`` value fails (``hash_mismatch``: no image, no hash stored); a row whose expected hash
is null fails without being fetched (``hash_missing``: img2dataset fails it too, as a mismatch); the
``compute_hash`` of the body goes to the column of that name. A saved ``uid`` column gives the row's
uid (a null or empty one keeps the uid mmdata computes from url and caption).
"""

from __future__ import annotations

import collections
import functools
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable, Iterator, Protocol, Sequence

import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.download.blur import Box, parse_boxes
from mmdata.download.config import DownloadConfig
from mmdata.download.image import process_image
from mmdata.download.inputs import expected_hash_column
from mmdata.download.net import TRANSIENT_ERROR_CLASSES, Fetcher, FetchPolicy, FetchResult
from mmdata.schemas.members import CAPTION_EXTENSION, METADATA_EXTENSION
from mmdata.schemas.samples import (
    FAILED_TO_DECODE,
    FAILED_TO_DOWNLOAD,
    IDENTITY_FIELDS,
    OUTCOME_FIELDS,
    SPAN_FIELDS,
    SUCCESS,
    Outcome,
)
from mmdata.shard_output import ShardOutput
from mmdata.shards import iter_samples
from mmdata.storage import read_parquet
from mmdata.storage.commit import ShardSlot, shard_writer

# Rows fetched ahead of the decoder, per fetch thread: enough that the threads never wait for it.
FETCH_AHEAD_PER_THREAD = 4


class ProgressFeed(Protocol):
    """Takes a shard's cumulative counts after each row (rate-limiting itself) and once more with
    ``force=True`` at the end: the executors' progress reporters.

    The counts are ``samples``, ``successes`` and one ``failed:<class>`` per failure class seen so
    far (the row's error class, or its status when it has none)."""

    def __call__(self, counts: dict[str, int], *, force: bool = False) -> None: ...


@dataclass(frozen=True)
class RowRequest:
    """One row to download: its URL, the boxes to blur and the hash its body must have; ``refusal``
    is set when the row's own values make it fail before anything is fetched."""

    url: str | None
    boxes: Sequence[Box] = ()
    expected_hash: str | None = None
    refusal: Outcome | None = None


@dataclass(frozen=True)
class RowOutcome:
    """What happened to one URL: the OUTCOME_FIELDS it fills, and the encoded image on success."""

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

    def map(self, requests: Iterable[RowRequest | str | None]) -> Iterator[RowOutcome]:
        """Outcomes in the order of ``requests`` (a plain URL asks for no blur and no hash check):
        fetched concurrently, processed as they come in."""
        fetching: collections.deque = collections.deque()
        for request in requests:
            if not isinstance(request, RowRequest):
                request = RowRequest(request)
            if len(fetching) >= self._window:
                yield self._outcome(*fetching.popleft())
            fetching.append((request, self._pool.submit(self._fetch, request)))
        while fetching:
            yield self._outcome(*fetching.popleft())

    def _outcome(self, request: RowRequest, fetching) -> RowOutcome:
        try:
            fetched = fetching.result()
            if isinstance(fetched, Exception):
                raise fetched
            return self._process(request, fetched)
        except Exception as error:  # a bug in one row must not sink the other rows of the shard
            failure = Outcome(FAILED_TO_DOWNLOAD, "internal_error", f"{type(error).__name__}: {error}")
            return RowOutcome(failure.fields())

    def _fetch(self, request: RowRequest):
        if request.refusal is not None:
            return None
        try:
            return self._fetcher.fetch(request.url or "")
        except Exception as error:  # handed to the consumer, which records it as the row's failure
            return error

    def _process(self, request: RowRequest, fetched: FetchResult | None) -> RowOutcome:
        if fetched is None:
            return RowOutcome(request.refusal.fields())
        body = fetched.body
        fields = {
            **fetched.outcome.fields(),
            "http_status": fetched.http_status,
            "byte_count": len(body) if body is not None else None,
        }
        if not fetched.outcome.ok:
            return RowOutcome(fields)
        digests = _Digests(body)
        if request.expected_hash is not None:
            algorithm = self._config.input.verify_hash[1]
            actual = digests[algorithm]
            if actual != request.expected_hash:
                message = f"hash mismatch: {algorithm} of the body is {actual}, expected {request.expected_hash}"
                fields.update(Outcome(FAILED_TO_DOWNLOAD, "hash_mismatch", message).fields())
                return RowOutcome(fields)
        options = self._config.image
        image = process_image(body, options, request.boxes)
        fields.update(
            image.outcome.fields(),
            width=image.width,
            height=image.height,
            original_width=image.original_width,
            original_height=image.original_height,
            exif=image.exif,
        )
        if options.compute_hash is not None:
            fields[options.compute_hash] = digests[options.compute_hash]
        if not image.outcome.ok:
            return RowOutcome(fields)
        fields["image_format"] = image.extension
        return RowOutcome(fields, image.data)

    def close(self, *, wait: bool = True) -> None:
        self._pool.shutdown(wait=wait, cancel_futures=True)

    def __enter__(self) -> "RowDownloader":
        return self

    def __exit__(self, exc_type, *_) -> None:
        # Interrupted (not failed): fetches blocked on a slow server must not hold the stop up.
        self.close(wait=exc_type is None or issubclass(exc_type, Exception))


@functools.lru_cache(maxsize=4)
def process_fetcher(policy: FetchPolicy) -> Fetcher:
    """One Fetcher per worker process and policy, so per-host limits and backoff span its shards."""
    return Fetcher(policy)


class _Digests(dict):
    """Hex digests of one body, each computed once when first asked for."""

    def __init__(self, body: bytes):
        super().__init__()
        self._body = body

    def __missing__(self, algorithm: str) -> str:
        self[algorithm] = hashlib.new(algorithm, self._body).hexdigest()
        return self[algorithm]


def row_request(config: DownloadConfig, record: dict) -> RowRequest:
    """What ``record`` (an input row, or a stored one being retried) asks of the download."""
    url = record.get("url")
    spec = config.input
    try:
        boxes = parse_boxes(record.get(spec.bbox_col)) if spec.bbox_col is not None else ()
    except ValueError as error:
        return RowRequest(url, refusal=Outcome(FAILED_TO_DECODE, "invalid_bbox", f"{spec.bbox_col}: {error}"))
    if spec.verify_hash is None:
        return RowRequest(url, boxes)
    column, algorithm = spec.verify_hash
    expected = record.get(expected_hash_column(algorithm))
    if expected is None or not expected.strip():
        message = f"no expected {algorithm} to verify the body against (column {column!r} is null or empty)"
        return RowRequest(url, boxes, refusal=Outcome(FAILED_TO_DOWNLOAD, "hash_missing", message))
    return RowRequest(url, boxes, expected.strip().lower())


def download_shard(config: DownloadConfig, shard: int, rows: pa.Table, progress: ProgressFeed | None = None) -> dict:
    """Download every row of ``rows`` (columns url, caption, and saved extras) into shard ``shard``;
    returns the shard's stats, also written as its ``_stats.json``."""
    with shard_writer(config.root, _name(config, shard)) as slot:
        committed = slot.committed_stats()
        if committed is not None:  # completed by another writer (a concurrent run) while we waited
            return committed
        return _download_rows(config, slot, shard, rows, progress)


def _download_rows(config: DownloadConfig, slot: ShardSlot, shard: int, rows: pa.Table,
                   progress: ProgressFeed | None) -> dict:
    records = rows.to_pylist()
    with RowDownloader(config) as downloader:
        outcomes = downloader.map(row_request(config, record) for record in records)
        samples = (
            _sample(config, shard, row_index, record, outcome)
            for row_index, (record, outcome) in enumerate(zip(records, outcomes))
        )
        return _write_shard(config, slot, samples, progress, rows.schema)


def retry_shard(config: DownloadConfig, shard: int, progress: ProgressFeed | None = None) -> dict | None:
    """Re-attempt the rows of a complete shard whose failure was transient and rewrite the shard,
    keeping every other row (and the stored members of its successes) as it was.

    Returns the new stats, or ``None`` when the shard has no transient failure and is left untouched.
    The old stats file is removed first: a crash mid-rewrite leaves an incomplete shard that a plain
    re-run downloads again, never a tar that disagrees with its metadata.
    """
    with shard_writer(config.root, _name(config, shard)) as slot:
        if slot.committed_stats() is None:
            return None  # another writer is redoing it (its stats are gone): nothing left to retry here
        table = read_parquet(layout.parquet_path(config.root, slot.shard))
        retried = pc.indices_nonzero(transient_failures(table)).to_pylist()
        previous = table.to_pylist()
        if not retried:
            return None
        slot.uncommit()
        with RowDownloader(config) as downloader:
            new_outcomes = downloader.map(row_request(config, previous[index]) for index in retried)
            samples = _merge_retries(config, shard, previous, set(retried), new_outcomes)
            return _write_shard(config, slot, samples, progress, table.schema,
                                extra_stats={"retried": len(retried)})


def transient_failures(table: pa.Table) -> pa.ChunkedArray:
    """Mask of the failed rows that may succeed if fetched again (timeouts, connection errors, 5xx, 429)."""
    transient = pc.is_in(table["error_class"], value_set=pa.array(sorted(TRANSIENT_ERROR_CLASSES), pa.string()))
    return pc.and_(pc.not_equal(table["status"], SUCCESS), transient)


def _merge_retries(
    config: DownloadConfig, shard: int, previous: list[dict], retried: set[int], new_outcomes: Iterator[RowOutcome]
) -> Iterator[tuple[dict, dict | None]]:
    stored = iter_samples(layout.tar_path(config.root, _name(config, shard)))
    for row_index, record in enumerate(previous):
        record = {name: value for name, value in record.items() if name not in SPAN_FIELDS}
        if row_index in retried:
            yield _sample(config, shard, row_index, record, next(new_outcomes))
        elif record["status"] == SUCCESS:
            key, members = next(stored)
            if key != record["key"]:
                raise ValueError(f"shard {_name(config, shard)}: tar holds {key} "
                                 f"where the metadata has {record['key']}")
            yield record, members
        else:
            yield record, None


def _sample(config: DownloadConfig, shard: int, row_index: int, record: dict, outcome: RowOutcome):
    """The metadata row and tar members of one input row."""
    row = {
        "key": layout.sample_key(shard, row_index, config.shard_size, config.shard_digits or layout.SHARD_DIGITS),
        "uid": _uid(config, record),
        **{name: value for name, value in record.items() if name not in _CLEARED_FIELDS},
        **_EMPTY_OUTCOME,
        **outcome.fields,
    }
    if outcome.image is None:
        return row, None
    members = {row["image_format"]: outcome.image}
    if row.get("caption") is not None:
        members[CAPTION_EXTENSION] = row["caption"].encode("utf-8")
    members[METADATA_EXTENSION] = json.dumps(row, ensure_ascii=False, default=str).encode("utf-8")
    return row, members


def _uid(config: DownloadConfig, record: dict) -> str:
    """The input's uid where the user saves one (DataComp's), else mmdata's own from url and caption."""
    if "uid" in config.input.save_additional_columns:
        saved = record.get("uid")
        if saved is not None and str(saved).strip():
            return str(saved)
    return layout.sample_uid(record.get("url"), record.get("caption"))


def _write_shard(
    config: DownloadConfig,
    slot: ShardSlot,
    samples: Iterable[tuple[dict, dict | None]],
    progress: ProgressFeed | None,
    extra_fields: pa.Schema,
    extra_stats: dict | None = None,
) -> dict:
    counts = {"samples": 0, "successes": 0}
    with ShardOutput(slot, extra_fields=extra_fields) as output:
        for row, members in samples:
            output.add(row, members)
            _count(counts, Outcome.of_row(row))
            if progress is not None:
                progress(dict(counts))
        stats = output.commit(
            {"shard_size": config.shard_size, "config_fingerprint": config.fingerprint(), **(extra_stats or {})}
        )
    if progress is not None:
        progress(dict(counts), force=True)
    return stats


def _name(config: DownloadConfig, shard: int) -> str:
    return layout.shard_name(shard, config.shard_digits or layout.SHARD_DIGITS)


def _count(counts: dict[str, int], outcome: Outcome) -> None:
    counts["samples"] += 1
    if outcome.ok:
        counts["successes"] += 1
    else:
        name = f"failed:{outcome.failure_class}"
        counts[name] = counts.get(name, 0) + 1


# Outcome fields a (re)download sets: cleared first, so a retried row keeps nothing of its last attempt.
_EMPTY_OUTCOME = dict.fromkeys(OUTCOME_FIELDS)
_CLEARED_FIELDS = frozenset({*IDENTITY_FIELDS, *OUTCOME_FIELDS, *SPAN_FIELDS})
