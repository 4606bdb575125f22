"""``mmdata.search``: the samples nearest a text, an image or a stored sample, by CLIP similarity.

Text queries search image embeddings (text → image), image queries image embeddings (image → image),
and ``kind="text"`` searches caption embeddings instead (e.g. image → caption). A key query uses that
sample's stored embedding of the searched kind (its neighbours; the sample itself comes first). The
index is built on first use and rebuilt when the embeddings changed (:func:`build_index`), in this
process: a query starts no executor (``mmdata index`` reads the shards in parallel). The dataset may
be a URL (``s3://bucket/ds``): its index is downloaded once into a local cache
(:func:`mmdata.search.index.local_copy`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow.compute as pc

from mmdata import layout
from mmdata.search.encode import QueryEncoder, match_query_model, stored_spec
from mmdata.search.index import KINDS, build_index, load_index, resolve_model_id
from mmdata.storage import Location


@dataclass(frozen=True)
class Hit:
    """One search result; ``tar_offset``/``tar_size`` locate the sample in its shard's tar."""

    key: str
    similarity: float
    caption: str | None
    shard: str
    url: str | None
    tar_offset: int | None = None
    tar_size: int | None = None


def search(
    root: layout.Root,
    *,
    text: str | None = None,
    image: str | os.PathLike | bytes | None = None,
    key: str | None = None,
    k: int = 10,
    view: str | None = None,
    kind: str | None = None,
    model: str | None = None,
    pretrained: str | None = None,
    max_index_memory: str | int | None = None,
    storage_options: dict | None = None,
) -> list[Hit]:
    """The ``k`` samples most similar to exactly one of ``text``, ``image`` (a file or bytes) or ``key``.

    ``model`` is a scored model id under ``DIR/scores/`` (default: the default model), or an open_clip
    model name / config to check against the stored one: a query model that differs from the one that
    made the embeddings is refused. ``pretrained`` points at the stored checkpoint if it moved.
    ``view`` keeps only the samples of ``DIR/views/<view>.parquet``. ``root`` may be a URL
    (``storage_options`` for its filesystem).
    """
    root = layout.dataset(root, storage_options)
    given = [name for name, value in (("text", text), ("image", image), ("key", key)) if value is not None]
    if len(given) != 1:
        raise ValueError(f"give exactly one query: text, image or key (got {given or 'none'})")
    if k < 1:
        raise ValueError(f"k must be at least 1, not {k}")
    kind = kind or "image"
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")

    model_id, spec_override = _choose_model(root, model, pretrained)
    info = build_index(root, kind=kind, model=model_id, max_index_memory=max_index_memory, executor="inline")
    loaded = load_index(info)

    if key is not None:
        position = loaded.ids_of([key])[0]
        if not position.is_valid:
            raise ValueError(f"key {key!r} has no {kind} embedding in {root} (not stored, or its scoring failed)")
        query = np.asarray(loaded.ann.vectors[position.as_py()], dtype=np.float32)
    else:
        spec = spec_override or stored_spec(info.provenance, pretrained)
        encoder = QueryEncoder.for_provenance(info.provenance, spec)
        query = encoder.encode_text(text) if text is not None else encoder.encode_image(image)

    allowed = None
    if view is not None:
        from mmdata.curate.view import read_view

        positions = loaded.ids_of(read_view(root, view).column("key").to_pylist())
        allowed = pc.drop_null(positions).to_numpy().astype(np.int64)
        if not len(allowed):
            return []
    similarities, ids = loaded.ann.search(query[None, :], k, allowed=allowed)
    found = ids[0] >= 0
    ids, similarities = ids[0][found], similarities[0][found]
    rows = loaded.rows.take(ids).to_pylist()  # only the row groups the hits fall in
    return [Hit(similarity=float(similarity), **row) for similarity, row in zip(similarities, rows)]


def _choose_model(root: Location, model: str | None, pretrained: str | None):
    """(model id whose index to search, the query model's spec when the user named one)."""
    if model is None or model in layout.scored_models(root):
        return resolve_model_id(root, model), None
    default_id = resolve_model_id(root, None)
    records = {model_id: layout.read_model_record(root, model_id) or {} for model_id in layout.scored_models(root)}
    return match_query_model(model, pretrained, records, default_id)
