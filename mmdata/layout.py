"""Where things live in a dataset folder, and how keys and uids are made.

The layout is img2dataset's flat one, so existing tools read it::

    DIR/00000.tar  DIR/00000.parquet  DIR/00000_stats.json  ...  DIR/manifest.json

``DIR`` is a local folder or any fsspec URL (``s3://bucket/ds``); every path here is a
:class:`~mmdata.storage.Location`. A shard is complete when its ``_stats.json`` exists: it is written
last (:mod:`mmdata.storage.commit`). Shard names have ``shard_digits`` digits (5 unless a dataset
needs more, like img2dataset's ``oom_shard_count``) and are always ordered by number. Later stages
add folders beside the shards: ``scores/<model>/``, ``views/``, ``annotations/``, ``index/``.

Scores: ``DIR/scores/<model_id>/<shard>.parquet`` (present = complete), ``DIR/scores/<model_id>/model.json``
(the provenance dict, plus keep_embeddings, precision, device, scored_at and the last run's counts) and
``DIR/scores/default.json`` (the model chosen with ``default=True``). Without a chosen default, the most
recently scored model is it. Readers (``read_table``, search) find scores here without importing the
scoring stage; :mod:`mmdata.score.store` writes them.
"""

from __future__ import annotations

import hashlib
import math
import os
import re

from mmdata.storage import Location, location

SHARD_DIGITS = 5
_SHARD_STATS = re.compile(r"^(\d+)_stats\.json$")
MODEL_RECORD = "model.json"
DEFAULT_MARKER = "default.json"
SCORE_COLUMN_PREFIX = "clip_score__"  # read_table's column of each scored model: clip_score__<model_id>
Root = str | os.PathLike | Location


def dataset(root: Root, storage_options: dict | None = None) -> Location:
    """The dataset folder ``root`` (a path, a ``file://`` or fsspec URL, or a Location) as a Location."""
    return location(root, storage_options)


def shard_name(shard: int, digits: int = SHARD_DIGITS) -> str:
    return f"{shard:0{digits}d}"


def shard_digits_for(shards: int | None, digits: int | None = None) -> int:
    """The shard-name width: ``digits`` if given (it must fit ``shards``), else 5 or as many as ``shards`` needs."""
    needed = len(str(max(shards - 1, 0))) if shards else 1
    if digits is None:
        return max(SHARD_DIGITS, needed)
    if digits < needed:
        raise ValueError(f"shard_digits={digits} cannot name {shards} shards (needs {needed} digits)")
    return digits


def row_digits(shard_size: int) -> int:
    """Digits of the row part of a key: img2dataset's ``ceil(log10(samples per shard))``."""
    return max(1, math.ceil(math.log10(shard_size))) if shard_size > 1 else 1


def sample_key(shard: int, row: int, shard_size: int, digits: int = SHARD_DIGITS) -> str:
    return f"{shard_name(shard, digits)}{row:0{row_digits(shard_size)}d}"


def sample_uid(url: str | None, caption: str | None) -> str:
    """A stable id for a (url, caption) pair, independent of sharding."""
    digest = hashlib.blake2b(digest_size=16)
    digest.update((url or "").encode("utf-8", "surrogatepass"))
    digest.update(b"\x00")
    digest.update((caption or "").encode("utf-8", "surrogatepass"))
    return digest.hexdigest()


def tar_path(root: Root, shard: int | str) -> Location:
    return dataset(root) / f"{_name(shard)}.tar"


def parquet_path(root: Root, shard: int | str) -> Location:
    return dataset(root) / f"{_name(shard)}.parquet"


def stats_path(root: Root, shard: int | str) -> Location:
    return dataset(root) / f"{_name(shard)}_stats.json"


def manifest_path(root: Root) -> Location:
    return dataset(root) / "manifest.json"


def views_dir(root: Root) -> Location:
    return dataset(root) / "views"


def annotations_dir(root: Root) -> Location:
    """Per-sample columns added by later stages (dedup, contamination), one parquet per stage, keyed by ``key``."""
    return dataset(root) / "annotations"


def scores_dir(root: Root) -> Location:
    return dataset(root) / "scores"


def model_dir(root: Root, model_id: str) -> Location:
    return scores_dir(root) / model_id


def score_path(root: Root, model_id: str, shard: str) -> Location:
    return model_dir(root, model_id) / f"{shard}.parquet"


def model_record_path(root: Root, model_id: str) -> Location:
    return model_dir(root, model_id) / MODEL_RECORD


def default_marker_path(root: Root) -> Location:
    return scores_dir(root) / DEFAULT_MARKER


def read_model_record(root: Root, model_id: str) -> dict | None:
    try:
        return model_record_path(root, model_id).read_json()
    except FileNotFoundError:
        return None


def scored_models(root: Root) -> list[str]:
    """Ids of the models with a record, most recently scored first."""
    records = {}
    for name, entry in scores_dir(root).list().items():
        record = read_model_record(root, name) if entry["type"] == "directory" else None
        if record is not None:
            records[name] = record
    return sorted(records, key=lambda model_id: (records[model_id].get("scored_at", ""), model_id), reverse=True)


def default_model(root: Root) -> str | None:
    """The model chosen as default if it is still scored, else the most recently scored one."""
    models = scored_models(root)
    try:
        chosen = default_marker_path(root).read_json().get("model_id")
    except FileNotFoundError:
        chosen = None
    if chosen in models:
        return chosen
    return models[0] if models else None


def complete_shards(root: Root) -> list[str]:
    """Names of the shards whose stats file exists, in shard order (00000 ... 99999, 100000, ...)."""
    names = [m.group(1) for name in dataset(root).names("_stats.json") if (m := _SHARD_STATS.match(name))]
    return sorted(names, key=shard_order)


def shard_order(name: str) -> tuple[int, str]:
    """Sort key of shard names: by number (so 100000 follows 99999), then by name."""
    return (int(name), name) if name.isdigit() else (-1, name)


def _name(shard: int | str) -> str:
    return shard_name(shard) if isinstance(shard, int) else shard
