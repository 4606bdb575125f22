"""Where things live in a dataset folder, and how keys and uids are made.

The layout is img2dataset's flat one, so existing tools read it::

    DIR/00000.tar  DIR/00000.parquet  DIR/00000_stats.json  ...  DIR/manifest.json

A shard is complete when its ``_stats.json`` exists: the stats file is renamed into place last.
Later stages add folders beside the shards: ``scores/<model>/``, ``views/``, ``annotations/``,
``index/``.

Scores: ``DIR/scores/<model_id>/<shard>.parquet`` (present = complete), ``DIR/scores/<model_id>/model.json``
(the provenance dict, plus keep_embeddings, precision, device, scored_at and the last run's counts) and
``DIR/scores/default.json`` (the model chosen with ``default=True``). Without a chosen default, the most
recently scored model is it. Readers (``read_table``, search) find scores here without importing the
scoring stage; :mod:`mmdata.score.store` writes them.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
from pathlib import Path

SHARD_DIGITS = 5
_SHARD_STATS = re.compile(r"^(\d{5,})_stats\.json$")
TEMP_SUFFIX = ".tmp"
MODEL_RECORD = "model.json"
DEFAULT_MARKER = "default.json"
SCORE_COLUMN_PREFIX = "clip_score__"  # read_table's column of each scored model: clip_score__<model_id>
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path(path: str | os.PathLike) -> Path:
    """``path`` as a local path (a ``file://`` URL gives its path). Any other URL (``s3://``, ``gs://``,
    ``https://``) is refused: the stages read and write local folders only (the loader alone reads
    URLs), and a URL taken as a relative path would silently write a folder named ``s3:`` here."""
    text = os.fspath(path)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if _URL.match(text):
        raise ValueError(f"{text!r} is a URL: this command reads and writes local folders and files only "
                         "(object storage is not supported yet; mmdata.stream alone reads URLs); pass a local path")
    return Path(text)


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
    return local_path(root) / f"{_name(shard)}.tar"


def parquet_path(root: str | os.PathLike, shard: int | str) -> Path:
    return local_path(root) / f"{_name(shard)}.parquet"


def stats_path(root: str | os.PathLike, shard: int | str) -> Path:
    return local_path(root) / f"{_name(shard)}_stats.json"


def manifest_path(root: str | os.PathLike) -> Path:
    return local_path(root) / "manifest.json"


def views_dir(root: str | os.PathLike) -> Path:
    return local_path(root) / "views"


def annotations_dir(root: str | os.PathLike) -> Path:
    """Per-sample columns added by later stages (dedup, contamination), one parquet per stage, keyed by ``key``."""
    return local_path(root) / "annotations"


def scores_dir(root: str | os.PathLike) -> Path:
    return local_path(root) / "scores"


def model_dir(root: str | os.PathLike, model_id: str) -> Path:
    return scores_dir(root) / model_id


def score_path(root: str | os.PathLike, model_id: str, shard: str) -> Path:
    return model_dir(root, model_id) / f"{shard}.parquet"


def model_record_path(root: str | os.PathLike, model_id: str) -> Path:
    return model_dir(root, model_id) / MODEL_RECORD


def default_marker_path(root: str | os.PathLike) -> Path:
    return scores_dir(root) / DEFAULT_MARKER


def read_model_record(root: str | os.PathLike, model_id: str) -> dict | None:
    path = model_record_path(root, model_id)
    return json.loads(path.read_text()) if path.is_file() else None


def scored_models(root: str | os.PathLike) -> list[str]:
    """Ids of the models with a record, most recently scored first."""
    folder = scores_dir(root)
    if not folder.is_dir():
        return []
    records = {}
    for path in folder.iterdir():
        record = read_model_record(root, path.name) if path.is_dir() else None
        if record is not None:
            records[path.name] = record
    return sorted(records, key=lambda model_id: (records[model_id].get("scored_at", ""), model_id), reverse=True)


def default_model(root: str | os.PathLike) -> str | None:
    """The model chosen as default if it is still scored, else the most recently scored one."""
    models = scored_models(root)
    marker = default_marker_path(root)
    if marker.is_file():
        chosen = json.loads(marker.read_text()).get("model_id")
        if chosen in models:
            return chosen
    return models[0] if models else None


def complete_shards(root: str | os.PathLike) -> list[str]:
    """Names of the shards whose stats file exists, in shard order (00000 ... 99999, 100000, ...)."""
    root = local_path(root)
    if not root.is_dir():
        return []
    names = [m.group(1) for p in root.iterdir() if (m := _SHARD_STATS.match(p.name))]
    return sorted(names, key=int)


def _name(shard: int | str) -> str:
    return shard_name(shard) if isinstance(shard, int) else shard
