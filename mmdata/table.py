"""One Arrow table per dataset: every input row's download metadata, its shard, its CLIP scores and
the annotation columns later stages added, joined on ``key`` in shard order.

Works on img2dataset's output too: missing columns (uid, tar_offset, ...) are filled with nulls.
Only ``key`` and ``clip_score`` are read from score tables; embeddings via :func:`read_embeddings`.
The dataset may be a local folder or a URL (``s3://bucket/ds``): remote files are read concurrently,
only the columns asked for.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.schemas import align_table
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.storage import Location, location, read_parquet, read_parquet_schema
from mmdata.storage.reads import each

EMBEDDING_KINDS = ("image", "text")


def read_table(root: layout.Root, columns: Sequence[str] | None = None, *,
               storage_options: dict | None = None) -> pa.Table:
    """Metadata of every complete shard + ``shard`` + ``clip_score`` (the default model) +
    ``clip_score__<model_id>`` per scored model + every ``annotations/*.parquet`` left-joined on key.

    ``columns`` picks the output columns (and reads only what they need); unknown names raise.
    """
    root = layout.dataset(root, storage_options)
    shards = layout.complete_shards(root)
    if not shards and not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    wanted = list(columns) if columns is not None else None
    metadata = _read_metadata(root, shards, wanted)
    keys = metadata.column("key")
    models = layout.scored_models(root)
    default = layout.default_model(root)
    score_columns = {f"{layout.SCORE_COLUMN_PREFIX}{model_id}": model_id for model_id in models}
    if default is not None:
        score_columns = {"clip_score": default, **score_columns}
    annotations = layout.annotations_dir(root)
    annotation_files = [annotations / name for name in annotations.names(".parquet")]
    annotation_columns = {}
    for path, schema in zip(annotation_files, each(read_parquet_schema, annotation_files, root)):
        for name in schema.names:
            if name != "key" and name not in metadata.column_names and name not in annotation_columns:
                annotation_columns[name] = path

    available = [*metadata.column_names, *score_columns, *annotation_columns]
    if wanted is not None:
        unknown = [name for name in wanted if name not in available]
        if unknown:
            raise ValueError(f"unknown columns {unknown}; this dataset has {available}")
    include = (lambda name: True) if wanted is None else (lambda name: name in wanted)

    table = metadata
    score_cache: dict[str, pa.ChunkedArray] = {}
    for name, model_id in score_columns.items():
        if include(name):
            if model_id not in score_cache:
                score_cache[model_id] = _lookup(keys, _read_scores(root, model_id, shards), "clip_score")
            table = table.append_column(pa.field(name, pa.float32()), score_cache[model_id])
    for path in annotation_files:
        names = [name for name, source in annotation_columns.items() if source == path and include(name)]
        if names:
            annotation = read_parquet(path, columns=["key", *names])
            for name in names:
                field = annotation.schema.field(name).with_nullable(True)
                table = table.append_column(field, _lookup(keys, annotation, name))
    return table.select(wanted) if wanted is not None else table


def read_embeddings(
    root: layout.Root, kind: str = "image", model: str | None = None, *, storage_options: dict | None = None
) -> tuple[list[str], np.ndarray]:
    """``(keys, float32 [n, d])`` of every sample that has an embedding, in shard order.

    ``model`` is a model id under ``DIR/scores/`` (default: the default model).
    """
    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, not {kind!r}")
    root = layout.dataset(root, storage_options)
    model_id = model or layout.default_model(root)
    if model_id is None or layout.read_model_record(root, model_id) is None:
        known = layout.scored_models(root)
        raise ValueError(
            f"{root} has no scores of model {model_id!r} (scored: {known or 'none'}); run mmdata score first"
        )
    record = layout.read_model_record(root, model_id)
    if not record.get("keep_embeddings", True):
        raise ValueError(
            f"{model_id} was scored with --no-embeddings; re-score into a copy without it to get embeddings"
        )
    column = f"{kind}_embedding"
    tables = _read_score_files(root, model_id, layout.complete_shards(root), ["key", column])
    if not tables:
        return [], np.zeros((0, int(record.get("embed_dim", 0))), np.float32)
    table = pa.concat_tables(tables)
    table = table.filter(pc.is_valid(table.column(column)))
    vectors = table.column(column).combine_chunks()
    dim = vectors.type.list_size
    values = vectors.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
    return table.column("key").to_pylist(), values.reshape(-1, dim)


def _read_metadata(root: Location, shards: list[str], wanted: list[str] | None) -> pa.Table:
    """Every complete shard's parquet, aligned to SAMPLE_SCHEMA (extra input columns kept) + ``shard``."""
    schema = SAMPLE_SCHEMA
    if wanted is not None:
        kept = [field for field in SAMPLE_SCHEMA if field.name == "key" or field.name in wanted]
        schema = pa.schema(kept, metadata=SAMPLE_SCHEMA.metadata)
    tables = each(lambda shard: _shard_metadata(root, shard, schema, wanted), shards, root)
    if not tables:
        empty = schema.empty_table()
        return empty.append_column(pa.field("shard", pa.string(), nullable=False), pa.array([], pa.string()))
    return pa.concat_tables(tables, promote_options="permissive")


def _shard_metadata(root: Location, shard: str, schema: pa.Schema, wanted: list[str] | None) -> pa.Table:
    path = layout.parquet_path(root, shard)
    if wanted is None:
        read_columns = None
    else:
        needed = {"key", *wanted} | ({"url", "caption"} if "uid" in wanted else set())
        read_columns = [name for name in read_parquet_schema(path).names if name in needed]
    table = read_parquet(path, columns=read_columns)
    if "uid" in schema.names and "uid" not in table.column_names:  # img2dataset writes no uid
        pairs = zip(_column(table, "url"), _column(table, "caption"))
        uids = [layout.sample_uid(url, caption) for url, caption in pairs]
        table = table.append_column("uid", pa.array(uids, pa.string()))
    table = align_table(table, schema, keep_extra=True)
    if wanted is not None:
        table = table.select([name for name in table.column_names if name == "key" or name in wanted])
    shard_column = pa.array([shard] * table.num_rows, pa.string())
    return table.append_column(pa.field("shard", pa.string(), nullable=False), shard_column)


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _read_score_files(root: Location, model_id: str, shards: list[str], columns: list[str]) -> list[pa.Table]:
    """The score tables present of ``shards`` (one listing, then the reads), only ``columns``."""
    folder = layout.model_dir(root, model_id)
    present = set(folder.names(".parquet"))
    paths = [layout.score_path(root, model_id, shard) for shard in shards if f"{shard}.parquet" in present]
    return each(lambda path: read_parquet(path, columns=columns), paths, root)


def _read_scores(root: Location, model_id: str, shards: list[str]) -> pa.Table:
    tables = _read_score_files(root, model_id, shards, ["key", "clip_score"])
    if not tables:
        return pa.table({"key": pa.array([], pa.string()), "clip_score": pa.array([], pa.float32())})
    return pa.concat_tables(tables)


def _lookup(keys: pa.ChunkedArray, table: pa.Table, column: str) -> pa.ChunkedArray:
    """``table[column]`` for each of ``keys`` (null where a key has no row): an order-keeping left join."""
    positions = pc.index_in(keys, value_set=table.column("key").combine_chunks())
    values = table.column(column).combine_chunks()
    return pa.chunked_array([values.take(positions)], type=values.type)


def write_table(root: layout.Root, output: layout.Root, columns: Sequence[str] | None = None, *,
                storage_options: dict | None = None) -> pa.Table:
    """:func:`read_table` written whole to one parquet file (``mmdata table``); either side may be a URL."""
    table = read_table(root, columns, storage_options=storage_options)
    write_parquet(table, location(output, storage_options), table.schema)
    return table
