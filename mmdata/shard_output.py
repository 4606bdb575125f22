"""Writing one shard of a dataset: tar members, metadata rows and stats, committed in that order.

A shard is visible to readers only once its stats file exists, and the stats file is written last
(:mod:`mmdata.storage.commit`, locally and on object stores), so an interrupted writer leaves either a
complete shard or one that a re-run redoes. The stats are computed from the metadata table as
written, so the two cannot disagree.
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator

import pyarrow as pa

from mmdata import layout
from mmdata.schemas import align_table
from mmdata.schemas.samples import SAMPLE_SCHEMA, SPAN_FIELDS
from mmdata.shards import ShardWriter
from mmdata.stats import shard_stats
from mmdata.storage import write_parquet_bytes
from mmdata.storage.commit import ShardSlot, shard_writer


class ShardOutput:
    """Collects one shard into the ``slot`` its writer holds (:func:`mmdata.storage.commit.shard_writer`):
    ``add`` each input row (with its members, or ``None`` for a failure), then ``commit``.

    Columns outside SAMPLE_SCHEMA (input columns a user asked to keep) take their type from
    ``extra_fields`` where given, so a column that is all null in one shard keeps the type it has in
    the input instead of becoming type null there.
    """

    def __init__(self, slot: ShardSlot, *, extra_fields: pa.Schema | None = None):
        self.slot = slot
        self.shard = slot.shard
        self._types = {field.name: field.type for field in (extra_fields or [])}
        self._types.update({field.name: field.type for field in SAMPLE_SCHEMA})
        self._tar = ShardWriter(slot.staging_path())
        self._rows: list[dict] = []
        self._start_time, self._started = time.time(), time.perf_counter()

    def add(self, row: dict, members: dict[str, bytes] | None = None) -> None:
        row = dict(row)
        if members:
            span = self._tar.add(row["key"], members)
            row.update(zip(SPAN_FIELDS, (span.offset, span.size)))
        self._rows.append(row)

    def commit(self, extra_stats: dict | None = None) -> dict:
        """Publish the tar, the metadata parquet, then the stats file (the completion marker); returns
        the committed stats: those of the metadata table, plus ``extra_stats`` (or, where another
        writer of the same shard committed first, that writer's).

        A field of ``extra_stats`` that the table determines (``count``, ``successes``, ...) must
        agree with it: a hand count that does not add up is a bug in the caller.
        """
        # Every column any row has (a shard that starts with a failure, without tar_offset, keeps the
        # later rows' columns), typed from the schema or the extra fields, inferred only otherwise.
        names = list(dict.fromkeys(name for row in self._rows for name in row))
        columns = {name: pa.array([row.get(name) for row in self._rows], type=self._types.get(name)) for name in names}
        table = pa.table(columns) if self._rows else SAMPLE_SCHEMA.empty_table()
        tar_file = self._tar.finish()
        aligned = align_table(table, SAMPLE_SCHEMA, keep_extra=True)
        stats = shard_stats(aligned, shard=self.shard, duration=time.perf_counter() - self._started,
                            start_time=self._start_time)
        disagreeing = {name: (value, stats[name]) for name, value in (extra_stats or {}).items()
                       if name in stats and stats[name] != value}
        if disagreeing:
            raise ValueError(f"shard {self.shard}: extra stats disagree with the metadata table "
                             f"(given, computed): {disagreeing}")
        stats.update(extra_stats or {})
        try:
            return self.slot.commit(str(tar_file), write_parquet_bytes(aligned), stats)
        finally:
            self._tar.abort()  # the staging file, if the commit did not move it

    def abort(self) -> None:
        self._tar.abort()

    def __enter__(self) -> "ShardOutput":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()


@contextlib.contextmanager
def shard_output(root: layout.Root, shard: int | str, *, digits: int = layout.SHARD_DIGITS,
                 extra_fields: pa.Schema | None = None) -> Iterator[ShardOutput]:
    """A :class:`ShardOutput` for shard ``shard`` of ``root`` (a folder, URL or Location), in the slot
    its writer holds for the whole write: how every stage that writes shards opens one."""
    name = shard if isinstance(shard, str) else layout.shard_name(shard, digits)
    with shard_writer(layout.dataset(root), name) as slot, ShardOutput(slot, extra_fields=extra_fields) as output:
        yield output
