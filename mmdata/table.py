"""One Arrow table per dataset: every input row's download metadata, its shard, its CLIP scores and
the annotation columns later stages added, joined on ``key`` in shard order.

:class:`JoinedShards` makes that join one shard at a time (the stages that work on a whole dataset use
it: ``filter``, ``mmdata table``, the report), so a reader holds one shard's rows, not the dataset's;
:func:`read_table` concatenates its shards into one table, for datasets that fit in memory.
Works on img2dataset's output too: missing columns (uid, tar_offset, ...) are filled with nulls.
Only ``key`` and ``clip_score`` are read from score tables; embeddings via :func:`iter_embeddings` (a shard at
a time) or :func:`read_embeddings`.
The dataset may be a local folder or a URL (``s3://bucket/ds``): remote files are read concurrently,
only the columns asked for.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import parquet_writer
from mmdata.schemas import align_table
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.storage import Location, location, read_parquet, read_parquet_schema
from mmdata.storage.parquet import OpenParquet
from mmdata.storage.reads import each, prefetched

EMBEDDING_KINDS = ("image", "text")
SHARD_FIELD = pa.field("shard", pa.string(), nullable=False)


def read_table(root: layout.Root, columns: Sequence[str] | None = None, *,
               storage_options: dict | None = None) -> pa.Table:
    """Metadata of every complete shard + ``shard`` + ``clip_score`` (the default model) +
    ``clip_score__<model_id>`` per scored model + every ``annotations/*.parquet`` left-joined on key.

    ``columns`` picks the output columns (and reads only what they need); unknown names raise.
    The whole table is in memory: stages over a whole dataset iterate :class:`JoinedShards` instead.
    """
    joined = JoinedShards(layout.dataset(root, storage_options), columns)
    tables = list(joined)
    return pa.concat_tables(tables) if tables else joined.schema.empty_table()


class JoinedShards:
    """:func:`read_table`'s rows one shard at a time, in shard order, each table with :attr:`schema`.

    Metadata and score tables are per shard already. An annotation table is one file for the dataset:
    a shard's rows come from the row groups whose footer statistics say their keys can meet the shard's
    key range (every mmdata stage writes annotations in shard order, so a row group is read once; in any
    other order the result is the same, read more often). Iterating holds a shard's rows and at most
    :data:`CACHED_GROUPS` row groups per annotation table (and a few shards read ahead from an object store).
    """

    def __init__(self, root: Location, columns: Sequence[str] | None = None, *, shards: list[str] | None = None):
        self.root = root
        self.shards = layout.complete_shards(root) if shards is None else shards
        if not self.shards and not root.is_dir():
            raise FileNotFoundError(f"dataset folder {root} does not exist")
        wanted = list(columns) if columns is not None else None
        self.scores = _score_columns(root)  # column -> model id
        self.annotations = _annotation_fields(root)  # column -> (path, field)
        static = {*SAMPLE_SCHEMA.names, SHARD_FIELD.name, *self.scores, *self.annotations}
        scan = wanted is None or any(name not in static for name in wanted)
        metadata = _metadata_schema(root, self.shards if scan else [])
        self.annotations = {name: value for name, value in self.annotations.items() if name not in metadata.names}
        fields = {field.name: field for field in metadata}
        fields.update({name: pa.field(name, pa.float32()) for name in self.scores})
        fields.update({name: field for name, (_, field) in self.annotations.items()})
        # every column of the dataset; its extra input columns only when looked for (no columns given, or
        # a name that is not otherwise a column), as that reads every shard's footer
        self.columns = list(fields)
        if wanted is not None:
            unknown = [name for name in wanted if name not in fields]
            if unknown:
                raise ValueError(f"unknown columns {unknown}; this dataset has {self.columns}")
        chosen = wanted if wanted is not None else self.columns
        self.schema = pa.schema([fields[name] for name in chosen], metadata=metadata.metadata)
        self._metadata = pa.schema([field for field in metadata if field.name == "key" or field.name in chosen],
                                   metadata=metadata.metadata)
        self._score_files = {model_id: set(layout.model_dir(root, model_id).names(".parquet"))
                             for name, model_id in self.scores.items() if name in chosen}
        paths = dict.fromkeys(path for name, (path, _) in self.annotations.items() if name in chosen)
        self._annotation_files = [
            _AnnotationFile(path, [name for name, (source, _) in self.annotations.items()
                                   if source == path and name in chosen])
            for path in paths
        ]

    def __iter__(self) -> Iterator[pa.Table]:
        for table in prefetched(self._with_scores, self.shards, self.root):
            yield self._with_annotations(table)

    def read(self, shard: str) -> pa.Table:
        """One shard's joined rows."""
        return self._with_annotations(self._with_scores(shard))

    def _with_scores(self, shard: str) -> pa.Table:
        """Metadata and scores: the per-shard files, which can be read concurrently."""
        table = _shard_metadata(self.root, shard, self._metadata)
        keys = table.column("key")
        scores = {}
        for model_id, present in self._score_files.items():
            if f"{shard}.parquet" in present:
                read = read_parquet(layout.score_path(self.root, model_id, shard), columns=["key", "clip_score"])
            else:
                read = pa.table({"key": pa.array([], pa.string()), "clip_score": pa.array([], pa.float32())})
            scores[model_id] = _lookup(keys, read, "clip_score").cast(pa.float32())
        for name, model_id in self.scores.items():
            if name in self.schema.names:
                table = table.append_column(pa.field(name, pa.float32()), scores[model_id])
        return table

    def _with_annotations(self, table: pa.Table) -> pa.Table:
        keys = table.column("key")
        for annotation in self._annotation_files:
            for name, values in annotation.lookup(keys).items():
                table = table.append_column(self.annotations[name][1], values)
        return table.select(self.schema.names).cast(self.schema)


CACHED_GROUPS = 2  # decoded row groups kept per annotation table


class _AnnotationFile:
    """One ``annotations/*.parquet``, looked up by a shard's keys through the row groups that can hold them."""

    def __init__(self, path: Location, names: list[str]):
        self.names = names
        self.groups = OpenParquet(path)
        self.ranges = [self.groups.value_range(group, "key") for group in range(self.groups.count)]
        self._cache: OrderedDict[int, tuple[pa.Table, bool]] = OrderedDict()

    def lookup(self, keys: pa.ChunkedArray) -> dict[str, pa.ChunkedArray]:
        """Each column's value for each of ``keys`` (null where the table has no row), first row per key."""
        bounds = pc.min_max(keys).as_py() if len(keys) else {"min": None}
        pieces = []
        if bounds["min"] is not None:
            low, high = bounds["min"], bounds["max"]
            for group, extent in enumerate(self.ranges):
                if extent is None or (extent[0] <= high and extent[1] >= low):
                    pieces.append(self._rows_between(group, low, high))
        columns = ["key", *self.names]
        rows = pa.concat_tables(pieces) if pieces else self.groups.schema.empty_table().select(columns)
        return {name: _lookup(keys, rows, name) for name in self.names}

    def _rows_between(self, group: int, low: str, high: str) -> pa.Table:
        table, ordered = self._group(group)
        keys = table.column("key")
        if ordered:  # a binary search: a shard's keys are a small slice of a large sorted group
            start = bisect.bisect_left(keys, low, key=_text)
            stop = bisect.bisect_right(keys, high, key=_text)
            return table.slice(start, stop - start)
        inside = pc.and_(pc.greater_equal(keys, low), pc.less_equal(keys, high))
        return table.filter(pc.fill_null(inside, False))

    def _group(self, group: int) -> tuple[pa.Table, bool]:
        if group in self._cache:
            self._cache.move_to_end(group)
            return self._cache[group]
        table = self.groups.read_group(group, ["key", *self.names])
        keys = table.column("key").combine_chunks()
        table = table.set_column(0, "key", keys)
        ordered = keys.null_count == 0 and (len(keys) < 2 or pc.all(pc.less_equal(keys[:-1], keys[1:])).as_py())
        self._cache[group] = (table, ordered)
        while len(self._cache) > CACHED_GROUPS:
            self._cache.popitem(last=False)
        return table, ordered


def _text(scalar: pa.Scalar):
    return scalar.as_py()


def _score_columns(root: Location) -> dict[str, str]:
    """``clip_score`` (the default model) and ``clip_score__<model_id>`` per scored model -> model id."""
    models = layout.scored_models(root)
    default = layout.default_model(root)
    columns = {f"{layout.SCORE_COLUMN_PREFIX}{model_id}": model_id for model_id in models}
    return {"clip_score": default, **columns} if default is not None else columns


def _annotation_fields(root: Location) -> dict[str, tuple[Location, pa.Field]]:
    """Each annotation column -> (its file, its field); the first file (by name) holding a name wins."""
    annotations = layout.annotations_dir(root)
    files = [annotations / name for name in annotations.names(".parquet")]
    fields: dict[str, tuple[Location, pa.Field]] = {}
    for path, schema in zip(files, each(read_parquet_schema, files, root)):
        for field in schema:
            if field.name != "key" and field.name not in fields:
                fields[field.name] = (path, field.with_nullable(True))
    return fields


def _metadata_schema(root: Location, shards: list[str]) -> pa.Schema:
    """The metadata columns: SAMPLE_SCHEMA's, then the extra input columns of ``shards`` (unified across
    them as a concatenation would unify them), then ``shard``."""
    extras: list[pa.Schema] = []
    for schema in each(read_parquet_schema, [layout.parquet_path(root, shard) for shard in shards], root):
        extras.append(pa.schema([field for field in schema if SAMPLE_SCHEMA.get_field_index(field.name) == -1]))
    extra = pa.unify_schemas(extras, promote_options="permissive") if extras else pa.schema([])
    return pa.schema([*SAMPLE_SCHEMA, *extra, SHARD_FIELD], metadata=SAMPLE_SCHEMA.metadata)


def read_embeddings(
    root: layout.Root, kind: str = "image", model: str | None = None, *, storage_options: dict | None = None
) -> tuple[list[str], np.ndarray]:
    """``(keys, [n, d])`` of every sample that has an embedding, in shard order, in the stored dtype
    (float16 from ``mmdata score``).

    ``model`` is a model id under ``DIR/scores/`` (default: the default model). Everything is in memory:
    stages over a whole dataset iterate :func:`iter_embeddings` instead.
    """
    root = layout.dataset(root, storage_options)
    dim = _embedding_record(root, kind, model)[1]
    keys: list[str] = []
    parts: list[np.ndarray] = []
    for shard_keys, vectors in iter_embeddings(root, kind, model):
        keys += shard_keys.to_pylist()
        parts.append(vectors)
    if not parts:
        return [], np.zeros((0, dim), np.float16)
    return keys, np.concatenate(parts)


def iter_embeddings(
    root: layout.Root, kind: str = "image", model: str | None = None, *, shards: list[str] | None = None,
    storage_options: dict | None = None,
) -> Iterator[tuple[pa.Array, np.ndarray]]:
    """``(keys, vectors [n, d])`` per shard with a score table, in shard order, rows without an embedding
    left out; ``vectors`` keeps the stored dtype (float16 from ``mmdata score``) and is a read-only view of
    the column read, so a reader holds one shard's embeddings, never the dataset's.

    ``shards`` picks complete shards (default: all of them); ``model`` as in :func:`read_embeddings`.
    """
    root = layout.dataset(root, storage_options)
    model_id = _embedding_record(root, kind, model)[0]  # raises here, not at the first shard
    present = set(layout.model_dir(root, model_id).names(".parquet"))
    chosen = layout.complete_shards(root) if shards is None else shards
    paths = [layout.score_path(root, model_id, shard) for shard in chosen if f"{shard}.parquet" in present]
    return _shard_embeddings(root, paths, f"{kind}_embedding")


def _shard_embeddings(root: Location, paths: list[Location], column: str) -> Iterator[tuple[pa.Array, np.ndarray]]:
    for table in prefetched(lambda path: read_parquet(path, columns=["key", column]), paths, root, ahead=2):
        yield _embedding_rows(table, column)


def _embedding_record(root: Location, kind: str, model: str | None) -> tuple[str, int]:
    """The model id embeddings are read from and their dimension; a clear error when there are none."""
    if kind not in EMBEDDING_KINDS:
        raise ValueError(f"kind must be one of {EMBEDDING_KINDS}, not {kind!r}")
    model_id = model or layout.default_model(root)
    record = None if model_id is None else layout.read_model_record(root, model_id)
    if record is None:
        known = layout.scored_models(root)
        raise ValueError(
            f"{root} has no scores of model {model_id!r} (scored: {known or 'none'}); run mmdata score first"
        )
    if not record.get("keep_embeddings", True):
        raise ValueError(
            f"{model_id} was scored with --no-embeddings; re-score into a copy without it to get embeddings"
        )
    return model_id, int(record.get("embed_dim", 0))


def _embedding_rows(table: pa.Table, column: str) -> tuple[pa.Array, np.ndarray]:
    """One score table's keys and vectors where the embedding is not null; where the column has no nulls
    the values buffer is used as is (no copy, no cast)."""
    vectors = table.column(column).combine_chunks()
    keys = table.column("key").combine_chunks()
    if vectors.null_count:
        valid = vectors.is_valid()
        vectors, keys = vectors.filter(valid), keys.filter(valid)
    values = vectors.flatten().to_numpy(zero_copy_only=False)
    return keys, values.reshape(-1, vectors.type.list_size)


def _shard_metadata(root: Location, shard: str, schema: pa.Schema) -> pa.Table:
    """One shard's metadata as ``schema`` (``shard`` included): only its columns are read, those the
    file lacks are nulls, and a file without uids (img2dataset's) gets them made from url and caption."""
    source = OpenParquet(layout.parquet_path(root, shard))
    names = schema.names
    make_uid = "uid" in names and "uid" not in source.schema.names
    table = source.read([*names, *(("url", "caption") if make_uid else ())])
    if make_uid:
        pairs = zip(_column(table, "url"), _column(table, "caption"))
        table = table.append_column("uid", pa.array([layout.sample_uid(url, caption) for url, caption in pairs],
                                                    pa.string()))
    table = table.append_column(SHARD_FIELD, pa.array([shard] * table.num_rows, pa.string()))
    return align_table(table, schema)


def _column(table: pa.Table, name: str) -> list:
    return table.column(name).to_pylist() if name in table.column_names else [None] * table.num_rows


def _lookup(keys: pa.ChunkedArray, table: pa.Table, column: str) -> pa.ChunkedArray:
    """``table[column]`` for each of ``keys`` (null where a key has no row): an order-keeping left join."""
    positions = pc.index_in(keys, value_set=table.column("key").combine_chunks())
    taken = table.column(column).combine_chunks().take(positions)
    return taken if isinstance(taken, pa.ChunkedArray) else pa.chunked_array([taken])


@dataclass
class WrittenTable:
    path: Location
    rows: int
    columns: list[str]


def write_table(root: layout.Root, output: layout.Root, columns: Sequence[str] | None = None, *,
                storage_options: dict | None = None) -> WrittenTable:
    """:func:`read_table` written to one parquet file (``mmdata table``), a shard at a time, so the table
    never needs to fit in memory; either side may be a URL."""
    joined = JoinedShards(layout.dataset(root, storage_options), columns)
    target = location(output, storage_options)
    with parquet_writer(target, joined.schema) as writer:
        for table in joined:
            writer.write(table)
    return WrittenTable(path=target, rows=writer.rows, columns=joined.schema.names)
