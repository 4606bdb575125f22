"""Parquet files at a :class:`~mmdata.storage.location.Location`: read only the columns asked for
(ranged reads on an object store), write whole."""

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


def write_parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    return buffer.getvalue()
