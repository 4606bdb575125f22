"""``mmdata index``: a vector index over one model's stored embeddings, kept under the dataset.

Layout, one folder per model and embedding kind::

    DIR/index/<model_id>/<kind>/index.json        commit marker: version, fingerprint, provenance, plan
    DIR/index/<model_id>/<kind>/<version>/        index.faiss, vectors.npy, plan.json, rows.parquet

A build writes a new version folder, then puts ``index.json`` over the old one (the commit), then
removes older versions; readers follow ``index.json``, so they never see half an index. The
fingerprint covers the score tables and metadata files the index was built from (names, sizes, and
mtimes locally or ETags on an object store): a build whose fingerprint and settings match the
committed ones does nothing.

faiss reads and writes local files only: on a remote dataset (``s3://...``) the index is built in a
local temporary folder and each file uploaded whole, and a search downloads a version once into
``$MMDATA_CACHE/index/`` (default ``~/.cache/mmdata``), keyed by its URL and its files' sizes and ETags.

Reading each shard's embeddings and metadata rows is one task on the executor (``execution``, or the
flat ``executor``/``workers``/``ray_address``), a few shards in flight at a time; the driver appends
their rows to ``rows.parquet`` and their vectors to ``vectors.npy`` as they arrive, in shard order,
then builds the faiss index in this process from that file, a batch at a time (``batch_size``). So
neither the rows nor the vectors of the dataset are ever held in memory: only the index itself grows
with the dataset (bounded by ``max_index_memory``).
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
import uuid
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import parquet_writer, write_json
from mmdata.execution import Execution, StageProgress, sized, using
from mmdata.options import stage_execution
from mmdata.schemas import align_table
from mmdata.schemas.index import ROWS_SCHEMA
from mmdata.search.ann import BATCH_VECTORS, VECTORS_FILE, AnnIndex, IndexConfig, VectorFile, parse_memory
from mmdata.storage import Location, location, read_parquet, read_parquet_schema
from mmdata.storage.parquet import OpenParquet

INDEX_DIR = "index"
MARKER = "index.json"
ROWS_FILE = "rows.parquet"
KINDS = ("image", "text")
ROUND_SHARDS = 16  # shards read per round of tasks, at most: only they are held at once


@dataclass(frozen=True)
class IndexInfo:
    """The committed index of one model and kind: where it is and what it was built from."""

    folder: Location  # DIR/index/<model_id>/<kind>
    version: str
    model_id: str
    kind: str
    count: int
    fingerprint: str
    provenance: dict
    report: dict  # AnnIndex's BuildReport: plan, search parameters, tuned recall, build time, size
    rebuilt: bool  # False when build_index found the committed index current

    @property
    def version_dir(self) -> Location:
        return self.folder / self.version


def index_dir(root: layout.Root, model_id: str, kind: str) -> Location:
    return layout.dataset(root) / INDEX_DIR / model_id / kind


def resolve_model_id(root: layout.Root, model: str | None) -> str:
    """The scored model an index is for: ``model`` (a model id under DIR/scores/) or the default one."""
    models = layout.scored_models(root)
    model_id = model or layout.default_model(root)
    if model_id is None:
        raise ValueError(f"{root} has no scores: run `mmdata score {root} --model M` first")
    if model_id not in models:
        raise ValueError(f"{root} has no scores of model {model_id!r} (scored: {models or 'none'})")
    return model_id


def build_index(
    root: layout.Root,
    *,
    kind: str = "image",
    model: str | None = None,
    max_index_memory: str | int | None = None,
    force: bool = False,
    config: IndexConfig | None = None,
    batch_size: int = BATCH_VECTORS,
    execution: Execution = None,
    executor: str | None = None,
    workers: int | None = None,
    ray_address: str | None = None,
    storage_options: dict | None = None,
) -> IndexInfo:
    """Build (or keep, when current) the index of ``kind`` embeddings of ``model`` (default: the
    default scored model). ``max_index_memory`` ("2GB") bounds the index's RAM and so picks its kind;
    without it a rebuild keeps the committed index's settings. Changed settings also rebuild.
    ``batch_size`` vectors are normalised and added to the index at a time (smaller: less memory).
    ``execution`` (or ``executor``/``workers``/``ray_address``) runs the per-shard reads; none is
    started when the committed index is current. ``root`` may be a URL (``storage_options`` for its
    filesystem)."""
    execution = stage_execution(execution, {"executor": executor, "workers": workers, "ray_address": ray_address})
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1 vector, not {batch_size}")
    root = layout.dataset(root, storage_options)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder {root} does not exist")
    model_id = resolve_model_id(root, model)
    folder = index_dir(root, model_id, kind)
    fingerprint = embeddings_fingerprint(root, model_id, kind)
    current = read_index_info(root, model_id, kind)
    asked = config is not None or max_index_memory is not None
    if config is None:  # keep the settings the committed index was built with (e.g. its budget)
        config = IndexConfig(**current.report["config"]) if current is not None else IndexConfig()
    if max_index_memory is not None:
        config = IndexConfig(**{**asdict(config), "max_index_memory": parse_memory(max_index_memory)})
    same_settings = current is not None and current.report.get("config") == asdict(config)
    if current is not None and not force and current.fingerprint == fingerprint and (same_settings or not asked):
        return current

    shards = _embedded_shards(root, model_id)
    version = f"{datetime.now(timezone.utc):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    with _building(folder / version) as staging:
        count = _stage_embeddings(root, model_id, kind, shards, staging, execution)
        if not count:
            raise ValueError(f"{root} has no {kind} embeddings of {model_id}: score it without --no-embeddings first")
        ann = AnnIndex.build_from_file(staging / VECTORS_FILE, config, batch_size=batch_size)
        ann.save(staging)
    provenance = layout.read_model_record(root, model_id) or {}
    marker = {
        "version": version,
        "model_id": model_id,
        "kind": kind,
        "count": count,
        "fingerprint": fingerprint,
        "provenance": provenance,
        "report": asdict(ann.report),
        "built_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    write_json(folder / MARKER, marker)  # the commit
    for name, entry in folder.list().items():
        if entry["type"] == "directory" and name != version:
            (folder / name).remove_tree()
    return _info(folder, marker, rebuilt=True)


@contextlib.contextmanager
def _building(version_dir: Location) -> Iterator[Path]:
    """A local folder to build a version in: the version folder itself on a local disk (removed if the
    build fails), else a temporary one whose files are uploaded whole when the build succeeds."""
    if version_dir.is_local:
        path = version_dir.local_path()
        path.mkdir(parents=True, exist_ok=True)
        try:
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        return
    with tempfile.TemporaryDirectory(prefix="mmdata-index-") as staging:
        yield Path(staging)
        for name in sorted(os.listdir(staging)):
            (version_dir / name).put_file(os.path.join(staging, name))


def read_index_info(root: layout.Root, model_id: str, kind: str) -> IndexInfo | None:
    """The committed index, or None when there is none (or its version folder is gone)."""
    folder = index_dir(root, model_id, kind)
    try:
        marker = (folder / MARKER).read_json()
    except FileNotFoundError:
        return None
    if not (folder / marker["version"]).is_dir():
        return None
    return _info(folder, marker, rebuilt=False)


def embeddings_fingerprint(root: layout.Root, model_id: str, kind: str) -> str:
    """A hash of the names, sizes and mtimes (ETags remotely) of the files an index reads: the
    model's score tables and model record, and the metadata parquet of every complete shard."""
    root = layout.dataset(root)
    digest = hashlib.sha256(f"{model_id}\0{kind}".encode())
    model_dir = layout.model_dir(root, model_id)
    scores, metadata = model_dir.list(), root.list()
    named = [(f"scores/{model_id}/{layout.MODEL_RECORD}", model_dir / layout.MODEL_RECORD, scores)]
    for shard in layout.complete_shards(root):
        named += [(f"scores/{model_id}/{shard}.parquet", layout.score_path(root, model_id, shard), scores),
                  (f"{shard}.parquet", layout.parquet_path(root, shard), metadata)]
    for relative, path, listing in named:
        entry = listing.get(path.name)
        if entry is None:
            continue
        version = os.stat(path.local_path()).st_mtime_ns if path.is_local else entry.get("etag")
        digest.update(f"{relative}\0{entry['size']}\0{version}\n".encode())
    return digest.hexdigest()


@dataclass
class ShardEmbeddings:
    """One shard's stored embeddings of one kind, as stored (float16), and the index rows of their samples."""

    shard: str
    rows: pa.Table  # ROWS_SCHEMA, one row per vector
    vectors: np.ndarray  # [rows, dim]


def read_shard_embeddings(root: Location, model_id: str, kind: str, shard: str) -> ShardEmbeddings:
    """The task of one shard: its samples that have a ``kind`` embedding, with their metadata rows."""
    column = f"{kind}_embedding"
    scores = read_parquet(layout.score_path(root, model_id, shard), columns=["key", column])
    scores = scores.filter(pc.is_valid(scores.column(column)))
    embeddings = scores.column(column).combine_chunks()
    vectors = embeddings.flatten().to_numpy(zero_copy_only=False).reshape(-1, embeddings.type.list_size)
    metadata_path = layout.parquet_path(root, shard)
    present = set(read_parquet_schema(metadata_path).names)
    metadata = read_parquet(metadata_path, columns=[name for name in ROWS_SCHEMA.names if name in present - {"shard"}])
    metadata = metadata.append_column("shard", pa.array([shard] * metadata.num_rows, pa.string()))
    rows = _rows_for(align_table(metadata, ROWS_SCHEMA), scores.column("key").to_pylist(), shard)
    return ShardEmbeddings(shard, rows, vectors)


def _embedded_shards(root: Location, model_id: str) -> list[str]:
    """The complete shards that have a score table of ``model_id`` (which must have kept embeddings)."""
    record = layout.read_model_record(root, model_id) or {}
    if not record.get("keep_embeddings", True):
        raise ValueError(f"{model_id} was scored with --no-embeddings; "
                         "re-score into a copy without it to get embeddings")
    present = set(layout.model_dir(root, model_id).names(".parquet"))
    return [shard for shard in layout.complete_shards(root) if f"{shard}.parquet" in present]


def _stage_embeddings(root: Location, model_id: str, kind: str, shards: list[str], staging: Path,
                      execution: Execution) -> int:
    """Every shard's ``kind`` embeddings into ``staging/vectors.npy`` and its index rows into
    ``staging/rows.parquet``, in shard order (ids follow the shards, whichever task finished first);
    returns the number of vectors. Shards are read as tasks a few at a time, so only those are held."""
    if not shards:
        return 0
    column = read_parquet_schema(layout.score_path(root, model_id, shards[0])).field(f"{kind}_embedding")
    progress = StageProgress(f"index {kind}", tasks=len(shards), final_counts=_vector_counts)
    with (using(sized(execution, len(shards))) as executor, progress,
          parquet_writer(location(staging / ROWS_FILE), ROWS_SCHEMA) as rows,
          VectorFile(staging / VECTORS_FILE, column.type.list_size) as vectors):
        step = min(ROUND_SHARDS, 2 * max(1, executor.concurrency))
        for start in range(0, len(shards), step):
            arguments = [(root, model_id, kind, shard) for shard in shards[start : start + step]]
            parts = executor.run_tasks(read_shard_embeddings, arguments, progress=progress)
            for part in sorted(parts, key=lambda part: part.shard):
                if part.vectors.shape[1] != vectors.dim:
                    raise ValueError(f"shard {part.shard}: {part.vectors.shape[1]}-d {kind} embeddings where "
                                     f"shard {shards[0]} has {vectors.dim}-d: re-score the shard")
                rows.write(part.rows)
                vectors.append(part.vectors)
        return vectors.count


def _vector_counts(part: ShardEmbeddings) -> tuple[str, dict[str, int]]:
    return part.shard, {"samples": part.rows.num_rows}


def _rows_for(metadata: pa.Table, keys: list[str], shard: str) -> pa.Table:
    """The metadata rows of ``keys``, in that order; a key without one is an error."""
    key_array = pa.array(keys, pa.string())
    positions = pc.index_in(key_array, value_set=metadata.column("key").combine_chunks())
    if positions.null_count:
        missing = pc.filter(key_array, pc.is_null(positions)).to_pylist()[:5]
        raise ValueError(f"shard {shard}: embeddings without a metadata row (e.g. {missing}): is its parquet stale?")
    return metadata.take(positions)


def _info(folder: Location, marker: dict, *, rebuilt: bool) -> IndexInfo:
    return IndexInfo(
        folder=folder,
        version=marker["version"],
        model_id=marker["model_id"],
        kind=marker["kind"],
        count=marker["count"],
        fingerprint=marker["fingerprint"],
        provenance=marker["provenance"],
        report=marker["report"],
        rebuilt=rebuilt,
    )


class IndexRows:
    """``rows.parquet`` of a loaded index, read a row group at a time: a search reads the groups its hits
    and keys fall in (the footer's key ranges skip the others), never the whole table."""

    def __init__(self, path: Location):
        self.file = OpenParquet(path)
        sizes = [self.file.file.metadata.row_group(group).num_rows for group in range(self.file.count)]
        self.starts = np.concatenate([[0], np.cumsum(sizes, dtype=np.int64)])
        self.num_rows = int(self.starts[-1])
        self.key_ranges = [self.file.value_range(group, "key") for group in range(self.file.count)]

    def read(self) -> pa.Table:
        """Every row (for indexes that fit in memory)."""
        return self.file.read()

    def take(self, ids: np.ndarray) -> pa.Table:
        """The rows of index ids ``ids``, in that order."""
        ids = np.asarray(ids, dtype=np.int64)
        groups = np.searchsorted(self.starts, ids, side="right") - 1
        pieces, order = [], []
        for group in np.unique(groups):
            chosen = np.flatnonzero(groups == group)
            table = self.file.read_group(int(group), ROWS_SCHEMA.names)
            pieces.append(table.take(pa.array(ids[chosen] - self.starts[group])))
            order.append(chosen)
        if not pieces:
            return ROWS_SCHEMA.empty_table()
        gathered = pa.concat_tables(pieces)
        return gathered.take(pa.array(np.argsort(np.concatenate(order), kind="stable")))

    def ids_of(self, keys: list[str]) -> pa.Array:
        """Index ids of ``keys`` (null where a key is not indexed); reads only the groups whose key range
        can hold one of them."""
        asked = pa.array(keys, pa.string())
        found = np.full(len(asked), -1, dtype=np.int64)
        bounds = pc.min_max(asked).as_py() if len(asked) else {"min": None}
        for group, extent in enumerate(self.key_ranges):
            if bounds["min"] is None:
                break
            if extent is not None and (extent[1] < bounds["min"] or extent[0] > bounds["max"]):
                continue
            group_keys = self.file.read_group(group, ["key"]).column("key").combine_chunks()
            positions = pc.index_in(asked, value_set=group_keys).to_numpy(zero_copy_only=False)
            hit = ~np.isnan(positions) & (found < 0)
            found[hit] = positions[hit].astype(np.int64) + self.starts[group]
        return pa.array(found, pa.int64(), mask=found < 0)


@dataclass
class LoadedIndex:
    """An index loaded for querying: the ANN index and the row table its ids point into."""

    info: IndexInfo
    ann: AnnIndex
    rows: IndexRows

    def ids_of(self, keys: list[str]) -> "pa.Array":
        """Index ids of ``keys`` (null where a key is not indexed)."""
        return self.rows.ids_of(keys)


_LOADED: dict[Location, LoadedIndex] = {}


def load_index(info: IndexInfo) -> LoadedIndex:
    """The index of ``info``, loaded once per process and version (a rebuilt index is reloaded)."""
    cached = _LOADED.get(info.folder)
    if cached is not None and cached.info.version == info.version:
        return cached
    folder = info.version_dir.local_path() if info.version_dir.is_local else local_copy(info.version_dir)
    loaded = LoadedIndex(info, AnnIndex.load(folder), IndexRows(location(folder / ROWS_FILE)))
    _LOADED[info.folder] = loaded
    return loaded


def cache_root() -> Path:
    return Path(os.environ.get("MMDATA_CACHE", Path.home() / ".cache" / "mmdata")) / INDEX_DIR


def local_copy(version_dir: Location) -> Path:
    """A local folder holding the files of a remote index version, downloaded once: the cache entry is
    named by the version's URL and its files' sizes and ETags, and appears whole (renamed into place)."""
    files = {name: entry for name, entry in version_dir.list().items() if entry["type"] == "file"}
    identity = version_dir.url + "".join(f"\0{name}\0{entry['size']}\0{entry.get('etag')}"
                                         for name, entry in sorted(files.items()))
    cached = cache_root() / hashlib.sha256(identity.encode()).hexdigest()[:32]
    if cached.is_dir():
        return cached
    cached.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{cached.name}.", dir=cached.parent))
    try:
        for name in files:
            with (version_dir / name).open("rb") as source, open(staging / name, "wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
        os.replace(staging, cached)
    except OSError:
        if not cached.is_dir():  # another process that put the same entry in place first is fine
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return cached
