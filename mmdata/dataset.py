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
    then ``commit`` with the shard's stats.

    Columns outside ``schema`` (input columns a user asked to keep) take their type from
    ``extra_fields`` where given, so a column that is all null in one shard keeps the type it has in
    the input instead of becoming type null there.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        shard: int | str,
        *,
        schema: pa.Schema = SAMPLE_SCHEMA,
        extra_fields: pa.Schema | None = None,
    ):
        self.root = Path(root)
        self.shard = shard
        self.schema = schema
        self._types = {field.name: field.type for field in (extra_fields or [])}
        self._types.update({field.name: field.type for field in schema})
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
        # Every column any row has (a shard that starts with a failure, without tar_offset, keeps the
        # later rows' columns), typed from the schema or the extra fields, inferred only otherwise.
        names = list(dict.fromkeys(name for row in self._rows for name in row))
        columns = {name: pa.array([row.get(name) for row in self._rows], type=self._types.get(name)) for name in names}
        table = pa.table(columns) if self._rows else self.schema.empty_table()
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
