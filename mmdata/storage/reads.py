"""Reading many files of one dataset: one after the other on a local disk, concurrently from an
object store (where each read is a round trip, and a shard's worth of them adds up to minutes)."""

from __future__ import annotations

from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterable, Iterator, TypeVar

from mmdata.storage import Location

REMOTE_READS = 16  # reads of an object store in flight at once
_Item = TypeVar("_Item")
_Result = TypeVar("_Result")


def each(read: Callable[[_Item], _Result], items: list[_Item], root: Location) -> list[_Result]:
    """``read`` of every item, in order: concurrently when ``root`` is on an object store."""
    if len(items) < 2 or root.is_local:
        return [read(item) for item in items]
    with ThreadPoolExecutor(min(REMOTE_READS, len(items))) as pool:
        return list(pool.map(read, items))


def prefetched(read: Callable[[_Item], _Result], items: Iterable[_Item], root: Location,
               ahead: int = 8) -> Iterator[_Result]:
    """``read`` of each item, yielded in order; from an object store up to ``ahead`` reads run ahead
    of the consumer, so memory stays bounded while the round trips overlap."""
    if root.is_local:
        yield from map(read, items)
        return
    with ThreadPoolExecutor(ahead) as pool:
        pending = deque()
        for item in items:
            pending.append(pool.submit(read, item))
            if len(pending) > ahead:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
