"""Writing the score store: each model's record and the default-model marker. Where things live, and
reading them, is :mod:`mmdata.layout` (re-exported here for the scoring code), so readers of scores
need not import the scoring stage."""

from __future__ import annotations

import os

from mmdata import layout
from mmdata.atomic import write_json
from mmdata.layout import (  # noqa: F401 - the store's read side, used as store.<name> by score code
    DEFAULT_MARKER,
    MODEL_RECORD,
    SCORE_COLUMN_PREFIX,
    default_model,
    model_dir,
    read_model_record,
    score_path,
    scored_models,
)


def write_model_record(root: str | os.PathLike, model_id: str, record: dict) -> None:
    write_json(layout.model_record_path(root, model_id), record)


def set_default_model(root: str | os.PathLike, model_id: str) -> None:
    write_json(layout.default_marker_path(root), {"model_id": model_id})
