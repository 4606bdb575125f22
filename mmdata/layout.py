"""Where things live in a dataset folder, and how keys and uids are made.

The layout is img2dataset's flat one, so existing tools read it::

    DIR/00000.tar  DIR/00000.parquet  DIR/00000_stats.json  ...  DIR/manifest.json

A shard is complete when its ``_stats.json`` exists: the stats file is renamed into place last.
Later stages add folders beside the shards: ``scores/<model>/``, ``views/``, ``annotations/``,
``index/``.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
from pathlib import Path

SHARD_DIGITS = 5
_SHARD_STATS = re.compile(r"^(\d{5,})_stats\.json$")
TEMP_SUFFIX = ".tmp"


def shard_name(shard: int) -> str:
    return f"{shard:0{SHARD_DIGITS}d}"


def row_digits(shard_size: int) -> int:
    """Digits of the row part of a key: img2dataset's ``ceil(log10(samples per shard))``."""
    return max(1, math.ceil(math.log10(shard_size))) if shard_size > 1 else 1


def sample_key(shard: int, row: int, shard_size: int) -> str:
    return f"{shard_name(shard)}{row:0{row_digits(shard_size)}d}"


def sample_uid(url: str | None, caption: str | None) -> str:
    """A stable id for a (url, caption) pair, independent of sharding."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update((url or "").encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update((caption or "").encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def tar_path(root: str | os.PathLike, shard: int | str) -> Path:
    return Path(root) / f"{_name(shard)}.tar"


def parquet_path(root: str | os.PathLike, shard: int | str) -> Path:
    return Path(root) / f"{_name(shard)}.parquet"


def stats_path(root: str | os.PathLike, shard: int | str) -> Path:
    return Path(root) / f"{_name(shard)}_stats.json"


def manifest_path(root: str | os.PathLike) -> Path:
    return Path(root) / "manifest.json"


def views_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "views"


def annotations_dir(root: str | os.PathLike) -> Path:
    """Per-sample columns added by later stages (dedup, contamination), one parquet per stage, keyed by ``key``."""
    return Path(root) / "annotations"


def scores_dir(root: str | os.PathLike) -> Path:
    return Path(root) / "scores"


def complete_shards(root: str | os.PathLike) -> list[str]:
    """Names of the shards whose stats file exists, in order."""
    root = Path(root)
    if not root.is_dir():
        return []
    names = [m.group(1) for p in root.iterdir() if (m := _SHARD_STATS.match(p.name))]
    return sorted(names)


def _name(shard: int | str) -> str:
    return shard_name(shard) if isinstance(shard, int) else shard
