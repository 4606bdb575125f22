"""Writing one shard of a dataset: tar members, metadata rows and stats, committed in that order.

A shard is visible to readers only once its stats file exists, and the stats file is renamed into
place last, so an interrupted writer leaves either a complete shard or one that a re-run redoes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa

from mmdata import layout
from mmdata.atomic import write_json, write_parquet
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.shards import ShardWriter


class ShardOutput:
    """Collects one shard: ``add`` each input row (with its members, or ``None`` for a failure),
    then ``commit`` with the shard's stats."""

    def __init__(self, root: str | os.PathLike, shard: int | str, *, schema: pa.Schema = SAMPLE_SCHEMA):
        self.root = Path(root)
        self.shard = shard
        self.schema = schema
        self._tar = ShardWriter(layout.tar_path(root, shard))
        self._rows: list[dict] = []

    def add(self, row: dict, members: dict[str, bytes] | None = None) -> None:
        row = dict(row)
        if members:
            span = self._tar.add(row["key"], members)
            row["tar_offset"], row["tar_size"] = span.offset, span.size
        self._rows.append(row)

    def commit(self, stats: dict) -> pa.Table:
        """Rename the tar, write the metadata parquet, then the stats file (the completion marker)."""
        # from_pylist takes its columns from the first row: give every row every column, so a shard
        # that starts with a failure (no tar_offset) keeps the later rows' columns
        names = list(dict.fromkeys(name for row in self._rows for name in row))
        rows = [{name: row.get(name) for name in names} for row in self._rows]
        table = pa.Table.from_pylist(rows) if rows else self.schema.empty_table()
        self._tar.commit()
        aligned = write_parquet(table, layout.parquet_path(self.root, self.shard), self.schema, keep_extra=True)
        write_json(layout.stats_path(self.root, self.shard), stats)
        return aligned

    def abort(self) -> None:
        self._tar.abort()

    def __enter__(self) -> "ShardOutput":
        return self

    def __exit__(self, exc_type, exc, traceback) -> None:
        if exc_type is not None:
            self.abort()
