"""Reading samples' bytes: adjacent byte ranges are coalesced into one read (a whole shard becomes
one sequential pass; on an object store, ranges a small gap apart too, and several reads are in
flight at once), each run is parsed with the safe tar reader, and a failure is pinned to the
exact samples it cost."""

from __future__ import annotations

import collections
import queue
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterator, TypeVar

import numpy as np

from mmdata.shards import ShardFormatError, check_member, is_pickle_like, samples_in_range
from mmdata.stream.source import RangeNotSupported, Source

MAX_RUN_BYTES = 4 * 1024 * 1024
S = TypeVar("S")
T = TypeVar("T")


class StreamError(RuntimeError):
    """A sample could not be read or decoded; says which shard and key."""

    def __init__(self, shard: str, key: str, reason: str):
        super().__init__(f"shard {shard}, sample {key}: {reason}")
        self.shard, self.key, self.reason = shard, key, reason


@dataclass(frozen=True)
class Run:
    """Positions (into a worker's read order) whose bytes lie in one range of one shard, read at once;
    ``starts`` are where each position's bytes begin in the range (any gaps are read and dropped)."""

    shard: str
    offset: int
    size: int
    positions: list[int]
    starts: list[int]


def plan_runs(
    positions: np.ndarray,
    shard_ids: np.ndarray,
    offsets: np.ndarray,
    sizes: np.ndarray,
    shard_names: list[str],
    *,
    max_bytes: int = MAX_RUN_BYTES,
    max_gap: int = 0,
) -> Iterator[Run]:
    """Group ``positions`` (ascending) into runs of one shard whose samples follow each other with at
    most ``max_gap`` unselected bytes between them, each run spanning at most ``max_bytes`` (a single
    larger sample is its own run)."""
    if len(positions) == 0:
        return
    shard_ids, offsets, sizes = shard_ids[positions], offsets[positions], sizes[positions]
    gaps = offsets[1:] - (offsets[:-1] + sizes[:-1])
    breaks = np.flatnonzero((shard_ids[1:] != shard_ids[:-1]) | (gaps < 0) | (gaps > max_gap)) + 1
    starts = np.concatenate([[0], breaks])
    stops = np.concatenate([breaks, [len(positions)]])
    ends = offsets + sizes
    for start, stop in zip(starts.tolist(), stops.tolist()):
        while start < stop:
            end = start + 1
            while end < stop and ends[end] - offsets[start] <= max_bytes:
                end += 1
            first = int(offsets[start])
            yield Run(shard_names[shard_ids[start]], first, int(ends[end - 1]) - first,
                      positions[start:end].tolist(), (offsets[start:end] - first).tolist())
            start = end


def fetch_run(source: Source, run: Run) -> bytes | OSError:
    """The run's bytes in one read, or the error that read hit (a server that ignores ``Range`` is
    raised: a setup problem, not a lost sample). Pure I/O, so it can run in a reader thread without
    holding the GIL for long."""
    try:
        return source.read_range(f"{run.shard}.tar", run.offset, run.size)
    except RangeNotSupported:
        raise
    except OSError as error:
        return error


def parse_run(
    run: Run, blob: bytes | OSError, keys: list[str], sizes: list[int]
) -> list[dict[str, bytes] | StreamError]:
    """The members of each sample of ``run`` (``keys``/``sizes`` per position) from the run's bytes
    (:func:`fetch_run`), or the error that sample hit; on any trouble each sample is parsed alone so
    the loss is counted exactly."""
    if isinstance(blob, OSError):
        return [StreamError(run.shard, key, f"read failed: {blob}") for key in keys]
    if len(blob) == run.size:
        selected = blob if sum(sizes) == run.size else b"".join(
            blob[start : start + size] for start, size in zip(run.starts, sizes)
        )
        parsed = parse_plain_ustar(selected, keys)
        if parsed is not None:
            return parsed
    return [
        _parse_one(run.shard, key, blob[start : start + size], size)
        for key, start, size in zip(keys, run.starts, sizes)
    ]


def _parse_one(shard: str, key: str, piece: bytes, size: int) -> dict[str, bytes] | StreamError:
    if len(piece) < size:
        return StreamError(shard, key, f"truncated shard: {len(piece)} of {size} bytes present")
    try:
        samples = samples_in_range(piece)
    except Exception as error:  # noqa: BLE001 - reported per sample, raised or counted by the caller
        return StreamError(shard, key, f"corrupt tar data: {error}")
    if len(samples) != 1 or samples[0][0] != key:
        found = [found_key for found_key, _ in samples]
        return StreamError(shard, key, f"byte range holds {found} (stale member index or corrupt shard)")
    return samples[0][1]


def parse_plain_ustar(blob: bytes, keys: list[str]) -> list[dict[str, bytes]] | None:
    """Fast path for the common case: plain ustar regular-file members (what ShardWriter writes),
    grouped as ``keys``. Anything else (long names, pax headers, links, bad checksums, another
    grouping) returns ``None`` and is left to the general safe reader, which accepts or refuses it.
    A member :func:`mmdata.shards.check_member` refuses is left to it too; pickle-like members are dropped.

    The loop reads only the fields it needs and tests the header checksums together after it: the
    parse runs beside decoding and holds the GIL, so it must stay short."""
    samples: list[dict[str, bytes]] = []
    current_key = None
    headers: list[int] = []  # where each header starts (a multiple of 512)
    checksums: list[int] = []
    pickle_like: dict[str, bool] = {}
    position, end = 0, len(blob)
    try:
        while position + 512 <= end:
            if blob[position] == 0:
                break
            if blob[position + 156] not in (0x30, 0):
                return None  # not a regular file
            size = int(blob[position + 124 : position + 136].replace(b"\0", b" "), 8)
            checksums.append(int(blob[position + 148 : position + 156].replace(b"\0", b" "), 8))
            headers.append(position)
            name = blob[position : position + 100].split(b"\0", 1)[0]
            if blob[position + 257 : position + 262] == b"ustar" and blob[position + 345]:
                name = blob[position + 345 : position + 500].split(b"\0", 1)[0] + b"/" + name
            key, extension = check_member(name.decode("utf-8"), size)
            start = position + 512
            position = start + -(-size // 512) * 512
            if start + size > end:
                return None
            unsafe = pickle_like.get(extension)
            if unsafe is None:
                unsafe = pickle_like[extension] = is_pickle_like(extension)
            if unsafe:
                continue
            if key != current_key:
                if len(samples) == len(keys) or keys[len(samples)] != key:
                    return None
                samples.append({})
                current_key = key
            samples[-1][extension] = blob[start : start + size]
    except (ValueError, UnicodeDecodeError, ShardFormatError):
        return None
    if len(samples) != len(keys) or not _checksums_match(blob, headers, checksums):
        return None
    return samples


def _checksums_match(blob: bytes, headers: list[int], checksums: list[int]) -> bool:
    """Whether each header's stored checksum is the sum of its bytes, its checksum field counted as spaces."""
    if len(headers) < 8:  # numpy's fixed cost outweighs a few Python sums
        return all(
            sum(blob[at : at + 512]) - sum(blob[at + 148 : at + 156]) + 8 * 32 == checksum
            for at, checksum in zip(headers, checksums)
        )
    blocks = np.frombuffer(blob, np.uint8, count=len(blob) // 512 * 512).reshape(-1, 512)
    picked = blocks[np.asarray(headers, dtype=np.int64) // 512]
    sums = picked.sum(axis=1, dtype=np.int64) - picked[:, 148:156].sum(axis=1, dtype=np.int64) + 8 * 32
    return bool(np.array_equal(sums, np.asarray(checksums, dtype=np.int64)))


def read_ahead(
    items: Iterator[S], work: Callable[[S], T], *, depth: int, threads: int = 1
) -> Iterator[tuple[S, T]]:
    """``(item, work(item))`` in the order of ``items`` (the loader's reads, and its decodes), up to ``depth``
    items worked on ahead by ``threads`` threads at once (one: :func:`prefetched`). ``items`` is drawn
    in the caller's thread. Errors surface in order; leaving early cancels the rest."""
    if threads <= 1:
        yield from prefetched(((item, work(item)) for item in items), depth)
        return
    pending: collections.deque[tuple[S, Future]] = collections.deque()
    with ThreadPoolExecutor(threads, thread_name_prefix="mmdata-stream-read") as pool:
        try:
            for item in items:
                pending.append((item, pool.submit(work, item)))
                if len(pending) >= max(depth, 1):
                    oldest, future = pending.popleft()
                    yield oldest, future.result()
            while pending:
                oldest, future = pending.popleft()
                yield oldest, future.result()
        finally:
            for _, future in pending:
                future.cancel()


def prefetched(produce: Iterator[T], depth: int) -> Iterator[T]:
    """Run ``produce`` in a background thread up to ``depth`` items ahead, so reads (and, over HTTP,
    their latency) overlap with decoding, which releases the GIL. Errors surface in order."""
    if depth <= 0:
        yield from produce
        return
    items: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    done = object()

    def offer(entry) -> bool:
        while not stop.is_set():
            try:
                items.put(entry, timeout=0.1)  # wake up now and then to notice a consumer that left
                return True
            except queue.Full:
                continue
        return False

    def work() -> None:
        try:
            for item in produce:
                if not offer((True, item)):
                    return
            offer((True, done))
        except BaseException as error:  # noqa: BLE001 - handed to the consumer, raised there
            offer((False, error))

    thread = threading.Thread(target=work, name="mmdata-stream-prefetch", daemon=True)
    thread.start()
    try:
        while True:
            ok, item = items.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        thread.join()
