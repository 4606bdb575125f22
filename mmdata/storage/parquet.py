"""Parquet files at a :class:`~mmdata.storage.location.Location`: read only the columns asked for
(ranged reads on an object store), or one row group at a time; write whole."""

from __future__ import annotations

import io
from typing import Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from mmdata.storage.location import Location, retrying


def read_parquet(target: Location, columns: Sequence[str] | None = None) -> pa.Table:
    if target.is_local:
        return pq.read_table(target.path, columns=columns)
    return retrying(f"read {target.url}", lambda: pq.read_table(target.path, columns=columns, filesystem=target.fs))


def read_parquet_schema(target: Location) -> pa.Schema:
    if target.is_local:
        return pq.read_schema(target.path)
    return retrying(f"read {target.url}", lambda: pq.read_schema(target.path, filesystem=target.fs))


def read_parquet_rows(target: Location) -> int:
    if target.is_local:
        return pq.read_metadata(target.path).num_rows
    return retrying(f"read {target.url}", lambda: pq.read_metadata(target.path, filesystem=target.fs).num_rows)


class OpenParquet:
    """One parquet file opened once (one footer read): its schema, then its columns whole or a row group
    at a time, with the footer's per-row-group statistics at hand to skip the groups a reader does not need."""

    def __init__(self, target: Location):
        self.target = target
        if target.is_local:
            self.file = pq.ParquetFile(target.path)
        else:
            self.file = retrying(f"read {target.url}", lambda: pq.ParquetFile(target.path, filesystem=target.fs))
        self.schema = self.file.schema_arrow
        self.count = self.file.metadata.num_row_groups

    def value_range(self, group: int, column: str) -> tuple | None:
        """``(min, max)`` of ``column`` in row group ``group`` from the footer; None where it records none."""
        index = self.schema.get_field_index(column)
        statistics = self.file.metadata.row_group(group).column(index).statistics
        if statistics is None or not statistics.has_min_max:
            return None
        return statistics.min, statistics.max

    def read(self, columns: Sequence[str] | None = None) -> pa.Table:
        """The whole file, only ``columns`` (those of them it has; every column when None)."""
        present = None if columns is None else [name for name in columns if name in self.schema.names]
        return self._retrying(lambda: self.file.read(columns=present))

    def read_group(self, group: int, columns: Sequence[str]) -> pa.Table:
        return self._retrying(lambda: self.file.read_row_group(group, columns=list(columns)))

    def _retrying(self, call):
        return call() if self.target.is_local else retrying(f"read {self.target.url}", call)


def write_parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()
