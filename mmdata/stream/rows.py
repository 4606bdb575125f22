"""One shard's selected samples, read when a DataLoader worker reaches the shard: ``key``,
``tar_offset``, ``tar_size`` in tar order, and the metadata columns asked for.

The catalog only counts samples per shard; these rows are read from the shard's metadata and, for a
view, from the view's rows of that shard, so a process holds the rows of the shard it reads (and one
row group of a view file), never the dataset's. A shard whose rows no longer match the count the plan
was made from is an error: the exactly-once plan would not hold.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import pyarrow as pa
import pyarrow.compute as pc

from mmdata.schemas.member_index import MEMBER_SCHEMA
from mmdata.stream.index import shard_members
from mmdata.stream.source import RangeNotSupported, Source, SourceError
from mmdata.table import JoinedShards

RANGE_COLUMNS = ("key", "tar_offset", "tar_size")
MEMBER_COLUMNS = ("key", "status", "tar_offset", "tar_size")  # what locating a shard's stored samples reads
VIEW_COLUMNS = ("key", "shard", "tar_offset", "tar_size")  # what is read of a view


@dataclass(frozen=True)
class StoredSamples:
    """Every stored sample of each shard: a stream of the whole dataset."""


@dataclass(frozen=True)
class ViewFile:
    """The rows of a view file with a ``shard`` column (``path`` in the dataset), and for each shard
    the row groups that hold its rows."""

    path: str
    groups: dict[str, tuple[int, ...]]


@dataclass(frozen=True)
class ViewTable:
    """A view given in memory, sorted by shard: each shard's rows are the slice ``slices[shard]``."""

    table: pa.Table  # key, shard, and tar_offset/tar_size where known
    slices: dict[str, tuple[int, int]]


Selection = StoredSamples | ViewFile | ViewTable


def read_metadata(source: Source, shard: str, columns: Iterable[str]) -> pa.Table | None:
    """``columns`` (those the file has) of a shard's metadata; ``None`` when the shard has none."""
    try:
        parquet = source.parquet(f"{shard}.parquet")
    except RangeNotSupported:
        raise
    except SourceError:
        return None
    with parquet:
        present = set(parquet.schema_arrow.names)
        return parquet.read(columns=[name for name in dict.fromkeys(columns) if name in present])


def stored_members(source: Source, shard: str) -> pa.Table:
    """``key, tar_offset, tar_size`` of a shard's stored samples, in tar order."""
    return shard_members(source, shard, read_metadata(source, shard, MEMBER_COLUMNS))


class ShardRows:
    """Reads catalog shards' rows for one iteration of one worker (holds open files: not pickled)."""

    def __init__(self, source: Source, selection: Selection, columns: tuple[str, ...], shards: list[str]):
        self.source, self.selection, self.columns, self.shards = source, selection, columns, shards
        self._view = None  # the view file, opened on first use
        self._group: tuple[int, pa.Table] | None = None  # the view row group read last
        self._joined: JoinedShards | None = None  # scores and annotations, when a column needs them

    def read(self, shard: str, expected: int) -> pa.Table:
        """The shard's selected rows (``RANGE_COLUMNS`` + the columns), in tar order; ``expected``:
        how many the catalog counted."""
        metadata = None
        if isinstance(self.selection, StoredSamples):
            metadata = read_metadata(self.source, shard, (*MEMBER_COLUMNS, *self.columns))
            rows = shard_members(self.source, shard, metadata)
        else:
            rows, metadata = self._view_rows(shard)
        if rows.num_rows != expected:
            raise ValueError(
                f"shard {shard} of {self.source.location} now holds {rows.num_rows} selected samples where the "
                f"stream counted {expected} when it started: the dataset or view changed under the stream (or the "
                "shard's metadata disagrees with its tar); start the stream again"
            )
        if self.columns:
            rows = self._with_columns(shard, rows, metadata)
        return rows

    def _view_rows(self, shard: str) -> tuple[pa.Table, pa.Table | None]:
        if isinstance(self.selection, ViewTable):
            start, stop = self.selection.slices[shard]
            wanted = self.selection.table.slice(start, stop - start)
        else:
            wanted = self._view_file_rows(shard)
        if pc.count_distinct(wanted.column("key")).as_py() != wanted.num_rows:
            raise ValueError(f"the view lists some keys of shard {shard} more than once; each sample may appear once")
        complete = all(name in wanted.column_names and wanted.column(name).null_count == 0 for name in RANGE_COLUMNS)
        metadata = None
        if not complete or self.columns:
            metadata = read_metadata(self.source, shard, (*MEMBER_COLUMNS, *self.columns))
        if complete:
            rows = wanted.select(list(RANGE_COLUMNS)).cast(MEMBER_SCHEMA)
        else:
            members = shard_members(self.source, shard, metadata)
            found = pc.index_in(wanted.column("key"), value_set=members.column("key"))
            if found.null_count:
                missing = wanted.filter(pc.is_null(found)).column("key").to_pylist()
                raise ValueError(
                    f"{len(missing)} keys of the view have no stored sample in shard {shard}, e.g. {missing[:5]}"
                )
            rows = members.take(found)
        return rows.sort_by("tar_offset"), metadata

    def _view_file_rows(self, shard: str) -> pa.Table:
        if self._view is None:
            self._view = self.source.parquet(self.selection.path)
        pieces = []
        for group in self.selection.groups[shard]:
            if self._group is None or self._group[0] != group:
                present = set(self._view.schema_arrow.names)
                columns = [name for name in VIEW_COLUMNS if name in present]
                self._group = (group, self._view.read_row_group(group, columns=columns))
            table = self._group[1]
            pieces.append(table.filter(pc.equal(table.column("shard"), shard)))
        return pa.concat_tables(pieces)

    def _with_columns(self, shard: str, rows: pa.Table, metadata: pa.Table | None) -> pa.Table:
        """``rows`` with the asked columns, from the shard's metadata where it has them all, else from
        the joined scores and annotations (:class:`mmdata.table.JoinedShards`, one shard's worth)."""
        values = metadata
        if values is None or not all(name in values.column_names for name in self.columns):
            values = self._joined_values(shard)
        found = pc.index_in(rows.column("key"), value_set=values.column("key"))
        for name in self.columns:
            rows = rows.append_column(name, values.column(name).take(found))
        return rows

    def _joined_values(self, shard: str) -> pa.Table:
        if self.source.dataset is None:
            raise ValueError(
                f"columns {list(self.columns)} are not all in the shard metadata of {self.source.location}; "
                "score and annotation columns are not read over http(s): stream a local folder or a store URL"
            )
        if self._joined is None:
            self._joined = joined_columns(self.source, self.columns, self.shards)
        return self._joined.read(shard)


def joined_columns(source: Source, columns: tuple[str, ...], shards: list[str]) -> JoinedShards:
    """Metadata, scores and annotations of ``shards`` joined a shard at a time, ``key`` + ``columns``;
    a ValueError naming the columns that the dataset does not have."""
    try:
        return JoinedShards(source.dataset, ["key", *columns], shards=shards)
    except ValueError as error:
        raise ValueError(f"cannot stream columns {list(columns)} from {source.location}: {error}") from error
