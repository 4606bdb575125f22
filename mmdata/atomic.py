"""Commit-last file writes: every output appears under its final name complete, or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from pathlib import Path
from typing import IO, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

from mmdata.layout import TEMP_SUFFIX
from mmdata.schemas import align_table


def temp_path_for(path: str | os.PathLike) -> Path:
    """A hidden sibling name that no reader globbing ``*.tar`` / ``*.parquet`` will pick up."""
    path = Path(path)
    return path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}{TEMP_SUFFIX}")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary sibling, fsync, then rename over ``path``; remove it on error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path_for(path)
    try:
        with open(temp, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            temp.unlink()
        raise


def write_json(path: str | os.PathLike, payload: dict) -> None:
    with atomic_file(path, "w") as handle:
        json.dump(payload, handle, indent=2, sort_keys=True, default=str)
        handle.write("\n")


def write_parquet(table: pa.Table, path: str | os.PathLike, schema: pa.Schema, *, keep_extra: bool = False) -> pa.Table:
    """Validate ``table`` against ``schema`` and write it atomically; returns the aligned table."""
    aligned = align_table(table, schema, keep_extra=keep_extra)
    with atomic_file(path) as handle:
        pq.write_table(aligned, handle, compression="zstd")
    return aligned


def temporaries(folder: str | os.PathLike) -> list[Path]:
    """The temporaries (``temp_path_for`` names) directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [path for path in folder.iterdir()
            if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file()]


def remove_temporaries(folder: str | os.PathLike) -> int:
    """Delete temporaries left by an interrupted run; returns how many were removed."""
    found = temporaries(folder)
    for path in found:
        path.unlink(missing_ok=True)
    return len(found)
