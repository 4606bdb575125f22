"""Commit-last file writes: every output appears under its final name complete, or not at all, on a
local disk (temporary + fsync + rename) and on an object store (one whole upload) alike."""

from __future__ import annotations

import base64
import contextlib
import os
from typing import IO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mmdata.schemas import align_table
from mmdata.storage import Location, location, locks, write_parquet_bytes


def remove_temporaries(folder: str | os.PathLike | Location) -> int:
    """Delete the temporaries an interrupted writer left in ``folder`` (object stores leave none)."""
    folder = location(folder)
    return locks.remove_temporaries(folder.path) if folder.is_local else 0


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike | Location, mode: str = "wb") -> Iterator[IO]:
    """Write through a temporary; the file appears under ``path`` whole when the block ends, never on error."""
    with location(path).writer(mode) as handle:
        yield handle


def write_json(path: str | os.PathLike | Location, payload: dict) -> None:
    location(path).write_json(payload)


def write_parquet(table: pa.Table, path: str | os.PathLike | Location, schema: pa.Schema, *,
                  keep_extra: bool = False) -> pa.Table:
    """Validate ``table`` against ``schema`` and write it atomically; returns the aligned table."""
    aligned = align_table(table, schema, keep_extra=keep_extra)
    location(path).write_bytes(write_parquet_bytes(aligned))
    return aligned


GROUP_ROWS = 1 << 20  # rows of one row group of a streamed parquet file, at most
GROUP_BYTES = 64 << 20  # Arrow bytes buffered before a row group is written, at most


class ParquetPieces:
    """The open end of :func:`parquet_writer`: ``write`` pieces in order, ``set_metadata`` at any time."""

    def __init__(self, writer: pq.ParquetWriter, schema: pa.Schema, group_rows: int, group_bytes: int):
        self._writer, self.schema = writer, schema
        self._group_rows, self._group_bytes = group_rows, group_bytes
        self._pending: list[pa.Table] = []
        self._pending_rows = self._pending_bytes = 0
        self.rows = 0  # rows written so far

    def write(self, table: pa.Table) -> None:
        """Append ``table`` (validated against the schema); buffered into row groups of bounded size."""
        aligned = align_table(table, self.schema)
        if not aligned.num_rows:
            return
        self._pending.append(aligned)
        self._pending_rows += aligned.num_rows
        self._pending_bytes += aligned.nbytes
        self.rows += aligned.num_rows
        if self._pending_rows >= self._group_rows or self._pending_bytes >= self._group_bytes:
            self.flush()

    def set_metadata(self, metadata: dict) -> None:
        """Schema metadata known only at the end (a funnel, counts): merged over the schema's, written at close."""
        encoded = {_bytes(name): _bytes(value) for name, value in metadata.items()}
        self.schema = self.schema.with_metadata({**(self.schema.metadata or {}), **encoded})

    def flush(self) -> None:
        if self._pending:
            self._writer.write_table(pa.concat_tables(self._pending), row_group_size=self._group_rows)
        self._pending, self._pending_rows, self._pending_bytes = [], 0, 0

    def close(self) -> None:
        self.flush()
        # The Arrow schema (types and metadata) goes in the footer as pyarrow itself stores it: written here,
        # at the end, so that metadata set after the first row can still be part of it.
        serialized = base64.b64encode(self.schema.serialize().to_pybytes())
        self._writer.add_key_value_metadata({**(self.schema.metadata or {}), b"ARROW:schema": serialized})
        self._writer.close()


@contextlib.contextmanager
def parquet_writer(path: str | os.PathLike | Location, schema: pa.Schema, *, group_rows: int | None = None,
                   group_bytes: int | None = None) -> Iterator[ParquetPieces]:
    """Write one parquet file piece by piece, holding at most one row group in memory (``group_rows`` rows,
    ``group_bytes`` of Arrow data: :data:`GROUP_ROWS`, :data:`GROUP_BYTES` by default): the streaming form
    of :func:`write_parquet`. The file appears under ``path`` whole when the block ends (a local temporary
    renamed, or one upload), never on error."""
    with location(path).writer() as handle:
        writer = pq.ParquetWriter(handle, schema, compression="zstd", store_schema=False)
        pieces = ParquetPieces(writer, schema, group_rows or GROUP_ROWS, group_bytes or GROUP_BYTES)
        try:
            yield pieces
        except BaseException:
            writer.close()
            raise
        pieces.close()


def _bytes(text: str | bytes) -> bytes:
    return text.encode() if isinstance(text, str) else text
