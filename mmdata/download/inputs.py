"""Read URL+caption tables (parquet, csv, tsv, jsonl, json, txt; optionally .gz) as fixed-size shards.

Every input row becomes exactly one output row, in file order, files in sorted name order, so
the same input always yields the same shards: resuming a download relies on it. Readers stream
Arrow batches (a 3.3M-row TSV is never held as Python objects; a JSON array is read one element
at a time).

Besides url and caption, a shard carries the columns the download needs per row and stores: the
saved additional columns, the boxes to blur (``bbox_col``, under its own name) and the hash to
verify (``verify_hash``'s column, renamed to :func:`expected_hash_column`: a retry of the row needs
it again, and img2dataset's name for it, the algorithm's, is the computed hash's column).
"""

from __future__ import annotations

import gzip
import io
import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Iterator

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq

from mmdata.schemas.samples import HASH_FIELDS, SAMPLE_SCHEMA
from mmdata.storage import Location, location

INPUT_FORMATS = ("parquet", "csv", "tsv", "jsonl", "json", "txt")
_EXTENSIONS = {
    ".parquet": "parquet", ".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json",
    ".txt": "txt",
}
_BLOCK_BYTES = 1 << 20  # the streaming CSV reader reads ~32 blocks ahead: keep that bounded
_TXT_BATCH_ROWS = 65_536
# Sample fields an input column may fill when saved: DataComp's uid replaces the one mmdata computes.
_SAVABLE_SAMPLE_FIELDS = ("uid",)


def expected_hash_column(algorithm: str) -> str:
    """The column holding the hash a row's body must have (``verify_hash``), e.g. ``expected_sha256``."""
    return f"expected_{algorithm}"


@dataclass(frozen=True, kw_only=True)
class InputSpec:
    """Where the URL table is (a local path or any fsspec URL) and which of its columns to use."""

    path: str
    input_format: str | None = None  # default: from each file's extension (.gz stripped)
    url_col: str = "url"
    caption_col: str | None = "caption"  # a file without this column gets null captions
    no_header: bool = False  # csv/tsv whose first line is data (CC3M)
    columns: tuple[str, ...] | None = None  # names for a headerless file's columns
    save_additional_columns: tuple[str, ...] = ()
    # Boxes to blur: a list of [x_min, y_min, x_max, y_max] fractions of the image per row (DataComp's
    # face_bboxes); stored under the same name.
    bbox_col: str | None = None
    # (column, algorithm): a body whose hash is not the column's value fails (img2dataset's verify_hash).
    verify_hash: tuple[str, str] | None = None
    storage_options: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", location(self.path, self.storage_options).url)
        for name in ("columns", "save_additional_columns"):
            if isinstance(getattr(self, name), str):
                raise ValueError(f"{name} takes a sequence of names, e.g. ('caption', 'url'), not a string")
        if self.columns is not None:
            object.__setattr__(self, "columns", tuple(self.columns))
        object.__setattr__(self, "save_additional_columns", tuple(self.save_additional_columns))
        if self.input_format is not None and self.input_format.endswith(".gz"):
            # img2dataset's "csv.gz": compression is told from each file's name here
            object.__setattr__(self, "input_format", self.input_format[: -len(".gz")])
        if self.input_format is not None and self.input_format not in INPUT_FORMATS:
            raise ValueError(f"input_format must be one of {', '.join(INPUT_FORMATS)}, got {self.input_format!r}")
        if not self.url_col:
            raise ValueError("url_col must name the column holding the image URLs")
        if self.caption_col == "":
            object.__setattr__(self, "caption_col", None)
        if self.columns is not None:
            if not self.no_header:
                raise ValueError("columns= names a headerless file's columns: pass no_header=True with it")
            if len(set(self.columns)) != len(self.columns) or not all(self.columns):
                raise ValueError(f"columns must be distinct non-empty names, got {self.columns!r}")
            if self.url_col not in self.columns:
                raise ValueError(f"columns {self.columns!r} must include url_col {self.url_col!r}")
        elif self.no_header and self.input_format in ("csv", "tsv"):
            raise ValueError("a headerless csv/tsv needs columns=, e.g. ('caption', 'url') for CC3M")
        extra = self.save_additional_columns
        if len(set(extra)) != len(extra):
            raise ValueError(f"save_additional_columns has duplicates: {extra!r}")
        for name in extra:
            if name in (self.url_col, self.caption_col):
                raise ValueError(f"{name!r} is already saved as url/caption; drop it from save_additional_columns")
            if name in SAMPLE_SCHEMA.names and name not in _SAVABLE_SAMPLE_FIELDS:
                raise ValueError(
                    f"additional column {name!r} would overwrite the sample field of the same name; "
                    "rename it in the input first"
                )
        self._check_row_columns()

    def _check_row_columns(self) -> None:
        if self.bbox_col is not None:
            if not isinstance(self.bbox_col, str) or not self.bbox_col:
                raise ValueError(f"bbox_col must name the column holding the boxes, got {self.bbox_col!r}")
            if self.bbox_col in (self.url_col, self.caption_col) or self.bbox_col in SAMPLE_SCHEMA.names:
                raise ValueError(f"bbox_col {self.bbox_col!r} is the name of another column; rename it in the input")
        if self.verify_hash is None:
            return
        if isinstance(self.verify_hash, str) or len(self.verify_hash) != 2:
            raise ValueError(
                f"verify_hash takes [column, algorithm], e.g. ['sha256', 'sha256'], got {self.verify_hash!r}"
            )
        column, algorithm = self.verify_hash
        object.__setattr__(self, "verify_hash", (column, algorithm))
        if algorithm not in HASH_FIELDS:
            raise ValueError(f"verify_hash's algorithm must be one of {', '.join(HASH_FIELDS)}, got {algorithm!r}")
        if not isinstance(column, str) or not column or column in (self.url_col, self.caption_col, self.bbox_col):
            raise ValueError(f"verify_hash's column must name the column of expected hashes, got {column!r}")
        if expected_hash_column(algorithm) in (*self.save_additional_columns, self.bbox_col):
            raise ValueError(f"verify_hash stores the expected hash as {expected_hash_column(algorithm)!r}, "
                             "a column the input also saves: rename it in the input")

    @property
    def row_columns(self) -> tuple[str, ...]:
        """The columns after url and caption in every shard, in order: the saved additional columns,
        then the boxes (when not saved already) and the expected hash."""
        names = list(self.save_additional_columns)
        if self.bbox_col is not None and self.bbox_col not in names:
            names.append(self.bbox_col)
        if self.verify_hash is not None:
            names.append(expected_hash_column(self.verify_hash[1]))
        return tuple(names)

    def _source_columns(self) -> tuple[str, ...]:
        """The input's names of :attr:`row_columns`."""
        renamed = {} if self.verify_hash is None else {expected_hash_column(self.verify_hash[1]): self.verify_hash[0]}
        return tuple(renamed.get(name, name) for name in self.row_columns)


def input_files(spec: InputSpec) -> list[tuple[Location, str]]:
    """The files to read with their formats: the file itself, or a folder's files of known
    formats in sorted name order (hidden files skipped)."""
    path = location(spec.path, spec.storage_options)
    if path.is_file():
        found = [(path, spec.input_format or _format_from_name(path, strict=True))]
    elif path.is_dir():
        found = _folder_files(path, spec.input_format)
    else:
        raise ValueError(f"input {spec.path!r} does not exist")
    for file_path, file_format in found:
        if file_format == "parquet" and file_path.name.lower().endswith(".gz"):
            raise ValueError(f"{str(file_path)!r}: parquet is compressed inside; decompress the .gz file first")
    return found


def _folder_files(path: Location, input_format: str | None) -> list[tuple[Location, str]]:
    found = []
    for name in path.names():
        if name.startswith((".", "_")):
            continue
        child = path / name
        file_format = _format_from_name(child, strict=False)
        if file_format is not None and input_format in (None, file_format):
            found.append((child, file_format))
    if not found:
        wanted = input_format or "/".join(INPUT_FORMATS)
        raise ValueError(f"no {wanted} files (optionally .gz) in folder {str(path)!r}")
    return found


def iter_input_shards(spec: InputSpec, shard_size: int) -> Iterator[pa.Table]:
    """Consecutive tables of exactly ``shard_size`` rows (the last may be shorter) with columns
    url, caption, then :attr:`InputSpec.row_columns` in order."""
    if shard_size < 1:
        raise ValueError(f"shard_size must be positive, got {shard_size!r}")
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    schema = None
    for batch in _iter_batches(spec):
        if schema is None:
            schema = batch.schema
        elif batch.schema != schema:
            batch = _cast_like(batch, schema)
        pending.append(batch)
        pending_rows += batch.num_rows
        while pending_rows >= shard_size:
            table = pa.Table.from_batches(pending, schema=schema)
            yield table.slice(0, shard_size).combine_chunks()
            rest = table.slice(shard_size)
            pending = rest.to_batches()
            pending_rows = rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending, schema=schema).combine_chunks()


def count_rows(spec: InputSpec) -> int | None:
    """The number of input rows when it is cheap to know (parquet footers), else None."""
    files = input_files(spec)
    if any(file_format != "parquet" for _, file_format in files):
        return None
    total = 0
    for path, _ in files:
        with path.open("rb") as handle:
            total += pq.ParquetFile(handle).metadata.num_rows
    return total


def _format_from_name(path: Location, *, strict: bool) -> str | None:
    name = path.name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    file_format = _EXTENSIONS.get(PurePosixPath(name).suffix)
    if file_format is None and strict:
        raise ValueError(
            f"cannot tell the format of {str(path)!r} from its extension; pass input_format "
            f"(one of {', '.join(INPUT_FORMATS)})"
        )
    return file_format


def _iter_batches(spec: InputSpec) -> Iterator[pa.RecordBatch]:
    readers = {
        "parquet": _read_parquet, "csv": _read_delimited, "tsv": _read_delimited, "jsonl": _read_jsonl,
        "json": _read_json_array, "txt": _read_txt,
    }
    for path, file_format in input_files(spec):
        try:
            for batch in readers[file_format](path, file_format, spec):
                yield _select(batch, spec, path)
        except (pa.ArrowInvalid, UnicodeDecodeError, OSError, EOFError) as error:
            raise ValueError(f"cannot read {file_format} input {str(path)!r}: {error}") from error


def _select(batch: pa.RecordBatch, spec: InputSpec, path: Location) -> pa.RecordBatch:
    """url, caption, the row columns; url, caption and the expected hash as (nullable) strings."""
    names = batch.schema.names
    sources = spec._source_columns()
    missing = [name for name in dict.fromkeys((spec.url_col, *sources)) if name not in names]
    if missing:
        raise ValueError(f"{str(path)!r} has no column(s) {missing}; columns found: {names}")
    url = _as_string(batch.column(spec.url_col))
    if spec.caption_col is not None and spec.caption_col in names:
        caption = _as_string(batch.column(spec.caption_col))
    else:
        caption = pa.nulls(batch.num_rows, pa.string())
    arrays = [url, caption, *(batch.column(name) for name in sources)]
    if spec.verify_hash is not None:
        arrays[-1] = _as_string(arrays[-1])
    return pa.RecordBatch.from_arrays(arrays, names=["url", "caption", *spec.row_columns])


def _as_string(array: pa.Array) -> pa.Array:
    return array if array.type == pa.string() else array.cast(pa.string())


def _cast_like(batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
    """Files of one input may type an additional column differently: use the first file's type."""
    try:
        return batch.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as error:
        raise ValueError(f"input files disagree on column types ({batch.schema} vs {schema}): {error}") from error


def _wanted_columns(spec: InputSpec, available: list[str]) -> list[str]:
    """The columns to parse, in file order; missing ones are reported by _select."""
    wanted = {spec.url_col, spec.caption_col, *spec._source_columns()}
    return [name for name in available if name in wanted]


def _read_parquet(path: Location, _format: str, spec: InputSpec) -> Iterator[pa.RecordBatch]:
    with path.open("rb") as handle:
        parquet = pq.ParquetFile(handle)
        names = parquet.schema_arrow.names
        columns = _wanted_columns(spec, names)
        if spec.url_col not in columns:
            raise ValueError(f"{str(path)!r} has no column {spec.url_col!r}; columns found: {names}")
        yield from parquet.iter_batches(batch_size=65_536, columns=columns)


def _read_delimited(path: Location, file_format: str, spec: InputSpec) -> Iterator[pa.RecordBatch]:
    if file_format == "tsv":
        # CC3M-style TSV has no quoting: captions contain bare quotes.
        parse = pa_csv.ParseOptions(delimiter="\t", quote_char=False, escape_char=False)
    else:
        parse = pa_csv.ParseOptions(delimiter=",", newlines_in_values=True)
    if spec.no_header:
        if spec.columns is None:
            raise ValueError(f"{str(path)!r} is read without a header: pass columns=, e.g. ('caption', 'url')")
        names = list(spec.columns)
        read = pa_csv.ReadOptions(column_names=names, block_size=_BLOCK_BYTES)
    else:
        with pa_csv.open_csv(
            _stream(path), parse_options=parse, read_options=pa_csv.ReadOptions(block_size=_BLOCK_BYTES)
        ) as peek:
            names = peek.schema.names
        read = pa_csv.ReadOptions(block_size=_BLOCK_BYTES)
    columns = _wanted_columns(spec, names)
    if spec.url_col not in columns:
        raise ValueError(f"{str(path)!r} has no column {spec.url_col!r}; columns found: {names}")
    # Everything is text: per-block type inference would make shards depend on block size.
    convert = pa_csv.ConvertOptions(include_columns=columns, column_types={name: pa.string() for name in columns})
    with pa_csv.open_csv(_stream(path), read_options=read, parse_options=parse, convert_options=convert) as reader:
        yield from reader


def _read_jsonl(path: Location, _format: str, spec: InputSpec) -> Iterator[pa.RecordBatch]:
    with pa_json.open_json(_stream(path), read_options=pa_json.ReadOptions(block_size=_BLOCK_BYTES)) as peek:
        names = peek.schema.names
    if spec.url_col not in names:
        raise ValueError(f"{str(path)!r} has no field {spec.url_col!r}; fields found: {names}")
    parse = _json_parse_options(spec, names)
    read = pa_json.ReadOptions(block_size=_BLOCK_BYTES)
    with pa_json.open_json(_stream(path), read_options=read, parse_options=parse) as reader:
        yield from reader


def _json_parse_options(spec: InputSpec, names: list[str]) -> pa_json.ParseOptions:
    """url, caption and the expected hash as text, whatever JSON type they hold; the rest inferred."""
    text = [spec.url_col, spec.caption_col] + ([spec.verify_hash[0]] if spec.verify_hash else [])
    text_fields = [pa.field(name, pa.string()) for name in dict.fromkeys(text) if name in names]
    return pa_json.ParseOptions(explicit_schema=pa.schema(text_fields), unexpected_field_behavior="infer")


def _read_json_array(path: Location, _format: str, spec: InputSpec) -> Iterator[pa.RecordBatch]:
    """img2dataset's json: one array of objects, parsed an element at a time and handed to Arrow's
    JSON reader as JSON Lines about a block at a time (from memory: Arrow's threads never call into
    Python). As Arrow's own streaming reader does, the first block's types hold for the rest."""
    lines: list[bytes] = []
    names: dict[str, None] = {}
    first: pa.Schema | None = None
    size = 0
    for element in _json_array_elements(path):
        lines.append(json.dumps(element, ensure_ascii=False).encode("utf-8"))
        size += len(lines[-1]) + 1
        if first is None:
            names.update(dict.fromkeys(element))
        if size >= _BLOCK_BYTES:
            table = _json_lines_table(lines, spec, first, list(names))
            first = first or table.schema
            yield from table.to_batches()
            lines, size = [], 0
    if lines:
        yield from _json_lines_table(lines, spec, first, list(names)).to_batches()


def _json_lines_table(lines: list[bytes], spec: InputSpec, first: pa.Schema | None, names: list[str]) -> pa.Table:
    """``lines`` parsed: the first block with url, caption and expected hash as text (of the fields
    its ``names`` hold), later ones with the first block's types."""
    if first is None:
        parse = _json_parse_options(spec, names)
    else:
        typed = pa.schema([field for field in first if field.type != pa.null()])
        parse = pa_json.ParseOptions(explicit_schema=typed, unexpected_field_behavior="infer")
    return pa_json.read_json(pa.BufferReader(b"\n".join(lines)), parse_options=parse)


def _json_array_elements(path: Location) -> Iterator[dict]:
    """The objects of a file holding one JSON array, decoded one at a time (the array is never
    held whole); a ValueError names the file and what was expected where the file differs."""
    decoder = json.JSONDecoder()
    with path.open("rb") as raw:
        binary = gzip.open(raw) if path.name.lower().endswith(".gz") else raw
        text = _Text(io.TextIOWrapper(binary, encoding="utf-8"), str(path))
        text.expect(text.peek() == "[", "a JSON array of objects (for one object a line use .jsonl)")
        text.position += 1
        if text.peek() != "]":
            while True:
                element = text.decode(decoder)
                text.expect(isinstance(element, dict), "an object for each array element", at=text.start)
                yield element
                token = text.peek()
                text.expect(token in (",", "]"), "',' or ']' after an array element")
                if token == "]":
                    break
                text.position += 1
        text.position += 1
        text.expect(text.peek() == "", "nothing after the array")


class _Text:
    """A text stream read a chunk at a time, with a position in the chunks not yet consumed."""

    _CHUNK = 1 << 20

    def __init__(self, stream: io.TextIOBase, where: str):
        self._stream, self._where = stream, where
        self.buffer, self.position, self.start, self._eof = "", 0, 0, False

    def peek(self) -> str:
        """The next non-blank character ("" at the end), moving past the blanks before it."""
        while True:
            while self.position < len(self.buffer) and self.buffer[self.position] in " \t\r\n":
                self.position += 1
            if self.position < len(self.buffer) or not self._fill():
                return self.buffer[self.position:self.position + 1]

    def decode(self, decoder: json.JSONDecoder):
        """The JSON value at the position, reading on while it is cut off at the chunk's end."""
        self.peek()
        while True:
            try:
                value, end = decoder.raw_decode(self.buffer, self.position)
                self.start, self.position = self.position, end
                return value
            except json.JSONDecodeError:
                if not self._fill():
                    raise ValueError(f"{self._where}: malformed JSON array element") from None

    def expect(self, condition: bool, wanted: str, *, at: int | None = None) -> None:
        if not condition:
            at = self.position if at is None else at
            found = self.buffer[at:at + 20] or "the end of the file"
            raise ValueError(f"{self._where}: expected {wanted}, found {found!r}")

    def _fill(self) -> bool:
        """Read more text, dropping what was consumed; False at the end of the stream."""
        if self._eof:
            return False
        chunk = self._stream.read(self._CHUNK)
        self.buffer = self.buffer[self.position:] + chunk
        self.start, self.position = max(0, self.start - self.position), 0
        self._eof = not chunk
        return bool(chunk)


def _read_txt(path: Location, _format: str, spec: InputSpec) -> Iterator[pa.RecordBatch]:
    """One URL a line. A blank line is kept as an empty URL (it becomes an invalid_url row);
    surrounding whitespace is stripped."""
    with path.open("rb") as raw:
        binary = gzip.open(raw) if path.name.lower().endswith(".gz") else raw
        yield from _txt_batches(io.TextIOWrapper(binary, encoding="utf-8"), spec)


def _txt_batches(handle, spec: InputSpec) -> Iterator[pa.RecordBatch]:
    lines: list[str] = []
    for line in handle:
        lines.append(line.strip())
        if len(lines) == _TXT_BATCH_ROWS:
            yield pa.record_batch([pa.array(lines, pa.string())], names=[spec.url_col])
            lines = []
    if lines:
        yield pa.record_batch([pa.array(lines, pa.string())], names=[spec.url_col])


def _stream(path: Location) -> pa.NativeFile:
    compression = "gzip" if path.name.lower().endswith(".gz") else None
    if path.is_local:
        return pa.input_stream(path.path, compression=compression)
    return pa.input_stream(path.open("rb"), compression=compression)
