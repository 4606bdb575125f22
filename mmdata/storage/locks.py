"""One writer per shard at a time in a local (or NFS) folder, across processes and machines sharing it.

A shard's writer holds an exclusive ``flock`` on ``DIR/.locks/<shard>.lock`` while it writes. The
kernel (or the NFS server) drops the lock when the holder exits however it exits, so a worker left
running by a killed job delays the re-run of its shard instead of racing it, and two runs of the
same command on one folder share the work instead of corrupting it. Lock files are deleted only when
the whole dataset is complete (:func:`mmdata.storage.commit.finish_dataset`): by then every writer
that got past its shard's completeness check has released the lock, because the completing run had
to take each lock itself.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from typing import Iterator

from mmdata.storage.location import TEMP_SUFFIX

LOCK_FOLDER = ".locks"


@contextlib.contextmanager
def hold_shard(root: Path, shard: str) -> Iterator[None]:
    """Hold the shard's writer lock, waiting for a current holder to finish or die; then remove the
    temporaries an earlier holder left, so the caller starts clean."""
    with _locked(root, shard, blocking=True):
        _unlink([path for path in temporaries(root) if _shard_of(path.name) == shard])
        yield


def temporaries(folder: str | os.PathLike) -> list[Path]:
    """The temporaries (hidden ``.<name>.<id>.tmp`` files) directly in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return [path for path in folder.iterdir()
            if path.name.startswith(".") and path.name.endswith(TEMP_SUFFIX) and path.is_file()]


def remove_temporaries(folder: str | os.PathLike) -> int:
    """Delete every temporary in ``folder`` (one writer owns it, as a score stage owns its model's folder)."""
    return _unlink(temporaries(folder))


def remove_unheld_temporaries(root: str | os.PathLike) -> int:
    """Remove the temporaries of every shard no live writer holds (and of files outside shards);
    returns how many were removed. Safe while other writers run."""
    by_shard: dict[str, list[Path]] = {}
    for path in temporaries(root):
        by_shard.setdefault(_shard_of(path.name), []).append(path)
    removed = 0
    for shard, paths in by_shard.items():
        with (_locked(Path(root), shard, blocking=False) if shard else contextlib.nullcontext(True)) as free:
            if free:
                removed += _unlink(paths)
    return removed


def _unlink(paths: list[Path]) -> int:
    for path in paths:
        path.unlink(missing_ok=True)
    return len(paths)


@contextlib.contextmanager
def _locked(root: Path, shard: str, *, blocking: bool) -> Iterator[bool]:
    folder = Path(root) / LOCK_FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    descriptor = os.open(folder / f"{shard}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            yield False
            return
        yield True
    finally:
        os.close(descriptor)  # releases the lock


def _shard_of(temporary_name: str) -> str:
    """``.00012.tar.<id>.tmp`` and ``.00012_stats.json.<id>.tmp`` -> ``00012``; '' for other files."""
    stem = temporary_name[1:]
    digits = len(stem) - len(stem.lstrip("0123456789"))
    return stem[:digits] if digits and stem[digits:digits + 1] in (".", "_") else ""
