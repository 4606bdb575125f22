"""The catalog: how many samples a stream reads from each shard, how to read them, and a fingerprint
of the selection. Built once, in the process that calls :func:`mmdata.stream`; workers receive it.

It holds counts, not samples: a shard's count comes from its metadata's parquet footer (rows with a
byte range), a view file's from its ``shard`` column read a row group at a time, so building it
holds no key and costs a footer per shard whatever the dataset's size. The rows themselves
(:mod:`mmdata.stream.rows`) are read by the worker that reaches their shard. Shards are in name order,
samples in tar order inside a shard, so that adjacent samples are usually adjacent bytes.
"""

from __future__ import annotations

import collections
import hashlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable, TypeVar

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.stream.rows import (
    VIEW_COLUMNS,
    Selection,
    StoredSamples,
    ViewFile,
    ViewTable,
    joined_columns,
    stored_members,
)
from mmdata.stream.source import RangeNotSupported, Source, SourceError

FINGERPRINT_FORMAT = b"mmdata.stream.catalog/2"
IDENTITY_COLUMNS = ("key", "tar_offset", "tar_size")  # whose footer statistics stand for a shard's content
FOOTER_THREADS = 16  # footers read at once from an object store
T = TypeVar("T")


@dataclass(frozen=True)
class Catalog:
    shards: list[str]  # shards with at least one selected sample, in shard order
    shard_sizes: np.ndarray  # selected samples per shard
    fingerprint: str  # changes when the selected samples or their order change
    selection: Selection  # how a worker reads a shard's selected rows
    columns: tuple[str, ...] = ()  # metadata columns added to each item

    def __len__(self) -> int:
        return int(self.shard_sizes.sum())


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
    columns = tuple(columns)
    clash = [name for name in columns if name in (*VIEW_COLUMNS, "image", "caption")]
    if clash:
        raise ValueError(
            f"columns {clash} clash with what each item already holds (key, image, caption) or with the "
            "byte index (shard, tar_offset, tar_size); ask only for other metadata columns"
        )
    shards = list_shards(source)
    digest = hashlib.blake2b(FINGERPRINT_FORMAT, digest_size=16)
    if view is None:
        selection, counts = StoredSamples(), _stored_counts(source, shards, digest)
    elif isinstance(view, str):
        selection, counts = _view_file(source, view, shards, digest)
    else:
        selection, counts = _view_table(source, _as_table(view), shards, digest)
    chosen = [shard for shard in shards if counts.get(shard, 0) > 0]
    _check_columns(source, chosen or shards, columns)
    sizes = np.array([counts[shard] for shard in chosen], dtype=np.int64)
    for shard, size in zip(chosen, sizes.tolist()):
        digest.update(f"{shard}:{size}\n".encode())
    return Catalog(chosen, sizes, digest.hexdigest(), selection, columns)


def _stored_counts(source: Source, shards: list[str], digest) -> dict[str, int]:
    """Stored samples per shard, from the metadata footers (a tar's member index where the metadata
    lacks byte ranges or statistics); the digest gets each footer's row count and statistics."""
    counted = {}
    for shard, (count, identity) in zip(shards, _each(source, lambda shard: _stored_count(source, shard), shards)):
        counted[shard] = count
        digest.update(identity)
    return counted


def _stored_count(source: Source, shard: str) -> tuple[int, bytes]:
    try:
        footer = source.parquet_metadata(f"{shard}.parquet")
    except RangeNotSupported:
        raise
    except SourceError:
        footer = None
    count = None if footer is None else _ranged_rows(footer)
    if count is not None:
        return count, _footer_identity(footer)
    members = stored_members(source, shard)
    identity = hashlib.blake2b(digest_size=16)
    identity.update("\n".join(members.column("key").to_pylist()).encode())
    identity.update(np.asarray(members.column("tar_offset"), dtype=np.int64).tobytes())
    return members.num_rows, identity.digest()


def _ranged_rows(footer: pq.FileMetaData) -> int | None:
    """Rows with a byte range (the stored samples of a shard mmdata wrote: its successes), from the
    ``tar_offset`` null counts; ``None`` where the footer cannot tell (no such column, no statistics)."""
    names = footer.schema.names
    if "tar_offset" not in names or "status" not in names:
        return None
    column, nulls = names.index("tar_offset"), 0
    for group in range(footer.num_row_groups):
        statistics = footer.row_group(group).column(column).statistics
        if statistics is None or not statistics.has_null_count:
            return None
        nulls += statistics.null_count
    return footer.num_rows - nulls


def _footer_identity(footer: pq.FileMetaData) -> bytes:
    """What a footer says of its file's content: rows per row group, and the sizes and statistics of
    the key and byte-range columns."""
    names = footer.schema.names
    parts: list = [footer.num_rows]
    for group in range(footer.num_row_groups):
        row_group = footer.row_group(group)
        parts.append(row_group.num_rows)
        for name in IDENTITY_COLUMNS:
            if name in names:
                chunk = row_group.column(names.index(name))
                statistics = chunk.statistics
                parts.append((name, chunk.total_compressed_size))
                if statistics is not None and statistics.has_min_max:
                    parts.append((statistics.min, statistics.max, statistics.null_count))
    return repr(parts).encode()


def _view_file(source: Source, name: str, shards: list[str], digest) -> tuple[Selection, dict[str, int]]:
    """A view file's rows per shard, read a row group at a time (only its ``shard`` column)."""
    path = f"views/{name}.parquet"
    try:
        parquet = source.parquet(path)
    except RangeNotSupported:
        raise
    except SourceError as error:
        raise ValueError(f"no view named {name!r} in {source.location} (expected {path})") from error
    with parquet:
        present = parquet.schema_arrow.names
        if "key" not in present:
            raise ValueError(f"a view needs a 'key' column; this one has {present}")
        if "shard" not in present:  # a hand-made list of keys: located by reading the shards' keys
            table = parquet.read(columns=[column for column in VIEW_COLUMNS if column in present])
            return _view_table(source, table, shards, digest)
        counts: collections.Counter = collections.Counter()
        groups: dict[str, list[int]] = {}
        for group in range(parquet.num_row_groups):
            column = parquet.read_row_group(group, columns=["shard"]).column(0)
            if column.null_count:
                raise ValueError(f"view {name!r} has rows without a shard: make it again with mmdata filter")
            counted = pc.value_counts(column)
            for shard, count in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
                counts[shard] += count
                groups.setdefault(shard, []).append(group)
        _refuse_unknown_shards(counts, shards)
        digest.update(_footer_identity(parquet.metadata))
    return ViewFile(path, {shard: tuple(found) for shard, found in groups.items()}), dict(counts)


def _as_table(view: pa.Table | Iterable[str]) -> pa.Table:
    if isinstance(view, pa.Table):
        return view
    return pa.table({"key": pa.array(list(view), pa.string())})


_VIEW_TYPES = {
    "key": pa.field("key", pa.string()),
    "shard": pa.field("shard", pa.string()),
    "tar_offset": pa.field("tar_offset", pa.int64()),
    "tar_size": pa.field("tar_size", pa.int64()),
}


def _view_table(source: Source, view: pa.Table, shards: list[str], digest) -> tuple[Selection, dict[str, int]]:
    """A view in memory (the caller holds it whole already), sorted by shard; its keys are located in
    the shards (a read of every shard's keys, a shard at a time) where it has no ``shard`` column."""
    if "key" not in view.column_names:
        raise ValueError(f"a view needs a 'key' column; this one has {view.column_names}")
    if pc.count_distinct(view.column("key")).as_py() != view.num_rows:
        raise ValueError("the view lists some keys more than once; each sample may appear once")
    if "shard" in view.column_names and view.column("shard").null_count == 0:
        table = view.select([name for name in VIEW_COLUMNS if name in view.column_names])
        _refuse_unknown_shards(collections.Counter(pc.unique(table.column("shard")).to_pylist()), shards)
    else:
        table = _locate(source, view.column("key"), shards)
    schema = pa.schema([_VIEW_TYPES[name] for name in table.column_names])
    table = table.cast(schema)
    shard_rank = pc.index_in(table.column("shard"), value_set=pa.array(shards, pa.string()))
    table = table.take(pc.sort_indices(table.append_column("shard_rank", shard_rank),
                                       sort_keys=[("shard_rank", "ascending")]))
    counted = pc.value_counts(table.column("shard"))
    counts = dict(zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()))
    slices, start = {}, 0
    for shard in sorted(counts, key=layout.shard_order):
        slices[shard] = (start, start + counts[shard])
        start += counts[shard]
    digest.update("\n".join(table.column("key").to_pylist()).encode())
    if "tar_offset" in table.column_names:
        digest.update(np.asarray(table.column("tar_offset").fill_null(-1), dtype=np.int64).tobytes())
    return ViewTable(table, slices), counts


def _locate(source: Source, keys: pa.ChunkedArray, shards: list[str]) -> pa.Table:
    """``key, shard, tar_offset, tar_size`` of ``keys``, found in the shards' stored samples."""
    wanted = keys.combine_chunks() if isinstance(keys, pa.ChunkedArray) else keys

    def found_in(shard: str) -> pa.Table:
        members = stored_members(source, shard)
        found = members.filter(pc.is_in(members.column("key"), value_set=wanted))
        return found.append_column("shard", pa.array([shard] * found.num_rows, pa.string()))

    pieces = _each(source, found_in, shards)
    table = pa.concat_tables(pieces).select(list(VIEW_COLUMNS)) if pieces else None
    located = 0 if table is None else table.num_rows
    if located != len(wanted):
        known = pa.array([], pa.string()) if table is None else table.column("key")
        missing = pc.filter(wanted, pc.invert(pc.is_in(wanted, value_set=known)))
        examples = missing.to_pylist()[:5]
        raise ValueError(f"{len(missing)} keys of the view have no stored sample in the dataset, e.g. {examples}")
    return table


def _refuse_unknown_shards(counts: collections.Counter, shards: list[str]) -> None:
    unknown = set(counts) - set(shards)
    if unknown:
        raise ValueError(
            f"the view names shards that the dataset does not hold (or not complete): {sorted(unknown)[:5]}"
        )


def _check_columns(source: Source, shards: list[str], columns: tuple[str, ...]) -> None:
    """Refuse, now rather than in a worker, columns that neither the first shard's metadata nor the
    dataset's scores and annotations hold."""
    if not columns:
        return
    try:
        present = source.parquet_metadata(f"{shards[0]}.parquet").schema.names
    except RangeNotSupported:
        raise
    except SourceError:
        present = []
    if all(name in present for name in columns):
        return
    if source.dataset is None:
        raise ValueError(
            f"columns {list(columns)} are not all in the shard metadata of {source.location}; "
            "score and annotation columns are not read over http(s): stream a local folder or a store URL"
        )
    joined_columns(source, columns, shards)


def _each(source: Source, read: Callable[[str], T], shards: list[str]) -> list[T]:
    """``read`` of each shard, in order; several at once where the source reads concurrently (an
    object store: not one round trip per shard in turn)."""
    if source.read_threads <= 1 or len(shards) <= 1:
        return [read(shard) for shard in shards]
    with ThreadPoolExecutor(FOOTER_THREADS, thread_name_prefix="mmdata-stream-catalog") as pool:
        return list(pool.map(read, shards))
