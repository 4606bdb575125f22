"""Writing the score store: each model's record and the default-model marker. Where things live, and
reading them, is :mod:`mmdata.layout`, so readers of scores need not import the scoring stage."""

from __future__ import annotations

from mmdata import layout
from mmdata.atomic import write_json


def write_model_record(root: layout.Root, model_id: str, record: dict) -> None:
    write_json(layout.model_record_path(root, model_id), record)


def set_default_model(root: layout.Root, model_id: str) -> None:
    write_json(layout.default_marker_path(root), {"model_id": model_id})
