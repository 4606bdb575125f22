"""Commit-last file writes: every output appears under its final name complete, or not at all, on a
local disk (temporary + fsync + rename) and on an object store (one whole upload) alike."""

from __future__ import annotations

import contextlib
import os
from typing import IO, Iterator

import pyarrow as pa

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
