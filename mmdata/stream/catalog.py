"""The catalog: the samples a stream reads, with where their bytes lie and any metadata columns asked
for. Built once, in the process that calls :func:`mmdata.stream`; workers receive it.

Samples are grouped by shard (shards in name order) and kept in tar order inside a shard, so that
adjacent catalog rows are usually adjacent bytes.
"""

from __future__ import annotations

import hashlib
import io
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.stream.index import shard_members
from mmdata.stream.source import Source, SourceError
from mmdata.table import read_table

CORE_COLUMNS = ("key", "shard", "tar_offset", "tar_size")


@dataclass(frozen=True)
class Catalog:
    table: pa.Table  # CORE_COLUMNS + requested metadata columns, grouped by shard
    shards: list[str]  # shard names, in the table's order
    shard_sizes: np.ndarray  # selected samples per shard
    fingerprint: str  # changes when the selected samples or their order change

    def __len__(self) -> int:
        return self.table.num_rows


def list_shards(source: Source) -> list[str]:
    """Complete shards (``_stats.json`` present) where the source can list; else ``manifest.json``.
    Either way in shard order (by number)."""
    shards = source.shards()
    if shards is not None:
        if not shards:
            raise ValueError(
                f"{source.location} holds no complete shard (no NNNNN_stats.json): is it a dataset folder?"
            )
        return shards
    try:
        manifest = json.loads(source.read_file("manifest.json"))
    except SourceError as error:
        raise ValueError(
            f"{source.location} cannot be listed, so it needs a manifest.json naming its shards "
            "(mmdata download writes one; for a hand-made dataset write {\"shards\": [\"00000\", ...]})"
        ) from error
    shards = []
    for entry in manifest.get("shards", []):
        shards.append(entry if isinstance(entry, str) else str(entry.get("shard", entry.get("name"))))
    if not shards:
        raise ValueError(f"{source.location}/manifest.json lists no shards")
    return sorted(shards, key=layout.shard_order)


def build_catalog(
    source: Source,
    *,
    view: str | pa.Table | Iterable[str] | None = None,
    columns: Iterable[str] = (),
) -> Catalog:
    columns = list(columns)
    clash = [name for name in columns if name in (*CORE_COLUMNS, "image", "caption")]
    if clash:
        raise ValueError(
            f"columns {clash} clash with what each item already holds (key, image, caption) or with the "
            "byte index (shard, tar_offset, tar_size); ask only for other metadata columns"
        )
    shards = list_shards(source)
    metadata = _MetadataCache(source, shards, ("key", "status", "tar_offset", "tar_size", *columns))
    if view is None:
        selected = _all_samples(shards, metadata)
    else:
        selected = _view_samples(source, _view_table(source, view), shards, metadata)
    if columns:
        selected = _attach_columns(source, selected, columns, metadata)
    shard_rank = pc.index_in(selected.column("shard"), value_set=pa.array(shards, pa.string()))
    order = pc.sort_indices(
        selected.append_column("shard_rank", shard_rank),
        sort_keys=[("shard_rank", "ascending"), ("tar_offset", "ascending")],
    )
    table = selected.take(order)
    shard_names, shard_sizes = _group_sizes(table.column("shard"))
    digest = hashlib.blake2b(digest_size=16)
    for name in ("shard", "key"):
        digest.update("\n".join(table.column(name).to_pylist()).encode())
    digest.update(np.asarray(table.column("tar_offset"), dtype=np.int64).tobytes())
    return Catalog(table, shard_names, shard_sizes, digest.hexdigest())


class _MetadataCache:
    """Reads each shard's metadata parquet at most once, only when needed, and only ``columns`` (those
    it has)."""

    def __init__(self, source: Source, shards: list[str], columns: Iterable[str]):
        self.source = source
        self.shards = shards
        self.columns = list(dict.fromkeys(columns))
        self._tables: dict[str, pa.Table | None] = {}

    def get(self, shard: str) -> pa.Table | None:
        if shard not in self._tables:
            self._tables[shard] = self._read(shard)
        return self._tables[shard]

    def load(self, shards: list[str]) -> None:
        """Read the metadata of ``shards`` now, several at once where the source reads concurrently
        (an object store: not one round trip per shard in turn)."""
        wanted = [shard for shard in shards if shard not in self._tables]
        if self.source.read_threads <= 1 or len(wanted) <= 1:
            return
        with ThreadPoolExecutor(self.source.read_threads, thread_name_prefix="mmdata-stream-metadata") as pool:
            self._tables.update(zip(wanted, pool.map(self._read, wanted)))

    def _read(self, shard: str) -> pa.Table | None:
        try:
            return read_parquet(self.source.read_file(f"{shard}.parquet"), self.columns)
        except SourceError:
            return None


def read_parquet(data: bytes, columns: Iterable[str] | None = None) -> pa.Table:
    """The ``columns`` (those present; ``None``: all) of an in-memory parquet file. Not
    ``pq.read_table``, whose first call imports pyarrow.dataset and pandas (about a second)."""
    parquet = pq.ParquetFile(io.BytesIO(data))
    if columns is None:
        return parquet.read()
    present = set(parquet.schema_arrow.names)
    return parquet.read(columns=[name for name in columns if name in present])


def _all_samples(shards: list[str], metadata: _MetadataCache) -> pa.Table:
    metadata.load(shards)
    pieces = []
    for shard in shards:
        members = shard_members(metadata.source, shard, metadata.get(shard))
        pieces.append(members.append_column("shard", pa.array([shard] * members.num_rows, pa.string())))
    if not pieces:
        return _empty()
    return pa.concat_tables(pieces).select(list(CORE_COLUMNS))


def _view_table(source: Source, view: str | pa.Table | Iterable[str]) -> pa.Table:
    if isinstance(view, pa.Table):
        table = view
    elif isinstance(view, str):
        try:
            table = read_parquet(source.read_file(f"views/{view}.parquet"))
        except SourceError as error:
            raise ValueError(f"no view named {view!r} in {source.location} (expected views/{view}.parquet)") from error
    else:
        table = pa.table({"key": pa.array(list(view), pa.string())})
    if "key" not in table.column_names:
        raise ValueError(f"a view needs a 'key' column; this one has {table.column_names}")
    keys = table.column("key")
    if pc.count_distinct(keys).as_py() != table.num_rows:
        raise ValueError("the view lists some keys more than once; each sample may appear once")
    return table


def _view_samples(source: Source, view: pa.Table, shards: list[str], metadata: _MetadataCache) -> pa.Table:
    has_ranges = all(name in view.column_names for name in CORE_COLUMNS) and all(
        view.column(name).null_count == 0 for name in CORE_COLUMNS
    )
    if has_ranges:
        selected = view.select(list(CORE_COLUMNS)).cast(_empty().schema)
        unknown = set(pc.unique(selected.column("shard")).to_pylist()) - set(shards)
        if unknown:
            raise ValueError(
                f"the view names shards that the dataset does not hold (or not complete): {sorted(unknown)[:5]}"
            )
        return selected
    everything = _all_samples(shards, metadata)
    wanted = view.select(["key"]).cast(pa.schema([pa.field("key", pa.string())]))
    joined = wanted.join(everything, "key", join_type="left outer")
    missing = joined.filter(pc.is_null(joined.column("tar_offset")))
    if missing.num_rows:
        examples = missing.column("key").to_pylist()[:5]
        raise ValueError(f"{missing.num_rows} keys of the view have no stored sample in the dataset, e.g. {examples}")
    return joined.select(list(CORE_COLUMNS))


def _attach_columns(source: Source, selected: pa.Table, columns: list[str], metadata: _MetadataCache) -> pa.Table:
    shards = sorted(set(selected.column("shard").to_pylist()), key=layout.shard_order)
    metadata.load(shards)
    values = _column_values(source, shards, columns, metadata)
    joined = selected.join(values, "key", join_type="left outer")
    return joined


def _column_values(source: Source, shards: list[str], columns: list[str], metadata: _MetadataCache) -> pa.Table:
    """``key`` + ``columns`` for the given shards, from the shard metadata, or from ``read_table``
    (scores and annotations joined) when some column is not in the metadata and the dataset is not
    read over http."""
    pieces = []
    for shard in shards:
        table = metadata.get(shard)
        if table is None or not all(name in table.column_names for name in columns):
            pieces = None
            break
        pieces.append(table.select(["key", *columns]))
    if pieces is not None:
        return pa.concat_tables(pieces) if pieces else pa.table({"key": pa.array([], pa.string())})
    if source.dataset is None:
        raise ValueError(
            f"columns {columns} are not all in the shard metadata of {source.location}; "
            "score and annotation columns are not read over http(s): stream a local folder or a store URL"
        )
    try:
        table = read_table(source.dataset, columns=["key", *columns])
    except ValueError as error:
        raise ValueError(f"cannot stream columns {columns} from {source.location}: {error}") from error
    return table


def _group_sizes(shard_column: pa.ChunkedArray) -> tuple[list[str], np.ndarray]:
    if len(shard_column) == 0:
        return [], np.zeros(0, dtype=np.int64)
    encoded = pc.value_counts(shard_column)
    counts = dict(zip(encoded.field("values").to_pylist(), encoded.field("counts").to_pylist()))
    names = sorted(counts, key=layout.shard_order)
    return names, np.array([counts[name] for name in names], dtype=np.int64)


def _empty() -> pa.Table:
    return pa.table(
        {
            "key": pa.array([], pa.string()),
            "shard": pa.array([], pa.string()),
            "tar_offset": pa.array([], pa.int64()),
            "tar_size": pa.array([], pa.int64()),
        }
    )
