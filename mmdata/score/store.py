"""Where score tables live and which model is the default, read without importing torch.

``DIR/scores/<model_id>/<shard>.parquet`` (present = complete), ``DIR/scores/<model_id>/model.json``
(the provenance dict, plus keep_embeddings, precision, device, scored_at and the last run's counts) and ``DIR/scores/default.json`` (the model
chosen with ``default=True``). Without a chosen default, the most recently scored model is it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mmdata import layout
from mmdata.atomic import write_json

MODEL_RECORD = "model.json"
DEFAULT_MARKER = "default.json"
SCORE_COLUMN_PREFIX = "clip_score__"


def model_dir(root: str | os.PathLike, model_id: str) -> Path:
    return layout.scores_dir(root) / model_id


def score_path(root: str | os.PathLike, model_id: str, shard: str) -> Path:
    return model_dir(root, model_id) / f"{shard}.parquet"


def read_model_record(root: str | os.PathLike, model_id: str) -> dict | None:
    path = model_dir(root, model_id) / MODEL_RECORD
    return json.loads(path.read_text()) if path.is_file() else None


def write_model_record(root: str | os.PathLike, model_id: str, record: dict) -> None:
    write_json(model_dir(root, model_id) / MODEL_RECORD, record)


def set_default_model(root: str | os.PathLike, model_id: str) -> None:
    write_json(layout.scores_dir(root) / DEFAULT_MARKER, {"model_id": model_id})


def scored_models(root: str | os.PathLike) -> list[str]:
    """Ids of the models with a record, most recently scored first."""
    folder = layout.scores_dir(root)
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
    marker = layout.scores_dir(root) / DEFAULT_MARKER
    if marker.is_file():
        chosen = json.loads(marker.read_text()).get("model_id")
        if chosen in models:
            return chosen
    return models[0] if models else None
