"""Reshard: materialise a view as a new dataset in the same layout, with evenly sized shards.

Output shard ``i`` holds view rows ``[i*shard_size, (i+1)*shard_size)`` in view order, under new
keys (the old one kept in ``source_key``; ``uid`` unchanged). Each output shard carries its samples'
tar members, metadata rows and every model's score rows (embeddings included, re-keyed), and is
committed last-file-last (scores, then tar → parquet → stats), so an interrupted run resumes by
skipping the shards whose stats exist. ``reshard.json`` (the plan, written first) makes sure a
re-run continues the same plan; ``manifest.json`` is written last.

Memory is bounded whatever the view's size: the plan (row count and keys digest) comes from one
streamed read of the view's key column, and each task gets a row range of the view file, reading
only the row groups that hold its rows; the driver never holds the view.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import remove_temporaries, write_json, write_parquet
from mmdata.curate.view import existing_view, read_view_rows, view_batches
from mmdata.execution import Execution, StageProgress, sized, using
from mmdata.execution.progress import COUNT
from mmdata.options import config_from_options, stage_settings
from mmdata.shard_output import shard_output
from mmdata.shards import ShardFormatError, samples_in_range
from mmdata.stats import load_shard_stats, total_stats
from mmdata.storage import Location, location, read_parquet
from mmdata.storage.commit import discard_unheld, finish_dataset
from mmdata.storage.reads import each, prefetched

PLAN_FILE = "reshard.json"
# A remote read covers consecutive samples of a source tar when the bytes between them are few, up to
# this many bytes per read: fewer round trips, bounded memory.
_READ_GAP_BYTES = 1 << 20
_READ_MAX_BYTES = 16 << 20
_ROW_COLUMNS = ("key", "shard", "tar_offset", "tar_size")  # what an output shard needs of its view rows


@dataclass(frozen=True, kw_only=True)
class ReshardConfig:
    """``output`` (and the source dataset) may be URLs; ``storage_options`` go to their filesystem."""

    view: str
    output: str
    shard_size: int = 10_000
    storage_options: dict | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:
        if not self.view:
            raise ValueError("view is required: the name of a view under DIR/views/ (mmdata filter --view NAME)")
        if not self.output:
            raise ValueError("output is required: the new dataset's folder")
        object.__setattr__(self, "output", self.output_root.url)
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")

    @property
    def output_root(self) -> Location:
        """The new dataset's folder, on its filesystem."""
        return location(self.output, self.storage_options)


@dataclass(frozen=True)
class ReshardPlan:
    """What a reshard copies: the view file and its size, the output shard names, and ``record``, the
    plan as ``reshard.json`` holds it (a re-run must find the same one)."""

    view_file: Location
    samples: int
    shard_size: int
    record: dict

    @property
    def digits(self) -> int:
        return layout.shard_digits_for(-(-self.samples // self.shard_size))

    @property
    def names(self) -> list[str]:
        return [layout.shard_name(shard, self.digits) for shard in range(-(-self.samples // self.shard_size))]


def plan_reshard(root: layout.Root, config: ReshardConfig | None = None, **options) -> ReshardPlan:
    """The plan of :func:`reshard`, from one streamed read of the view's key column: its row count and
    the SHA-256 of its keys. Memory holds one batch of keys, whatever the view's size."""
    if config is None:
        config = config_from_options(ReshardConfig, "reshard", options)
    elif options:
        raise ValueError("pass either a ReshardConfig or keyword options, not both")
    root = layout.dataset(root, config.storage_options)
    if _place(config.output_root) == _place(root):
        raise ValueError("output must be a new folder, not the source dataset")
    view_file = existing_view(root, config.view)
    samples, keys_sha256 = _count_and_digest(view_file)
    record = {
        "source": _place(root),
        "view": config.view,
        "shard_size": config.shard_size,
        "samples": samples,
        "keys_sha256": keys_sha256,
    }
    return ReshardPlan(view_file=view_file, samples=samples, shard_size=config.shard_size, record=record)


def reshard(root: layout.Root, config: ReshardConfig | None = None, *, execution: Execution = None,
            **options) -> dict:
    """Write the samples of view ``config.view`` of dataset ``root`` as a new dataset at ``config.output``.

    Returns the manifest. Output shards run as tasks on ``execution`` (or the flat ``executor``/
    ``workers``/``ray_address``); each task reads its own rows of the view (a row range), so neither
    the driver nor a task holds the view whole. Re-running after an interruption finishes the missing
    shards. Either side may be a URL; ``storage_options`` (a config field) go to both filesystems.
    """
    config, execution = stage_settings(ReshardConfig, "reshard", config, execution, options)
    root, output = layout.dataset(root, config.storage_options), config.output_root
    plan = plan_reshard(root, config)
    _start_or_resume(output, plan.record)

    names, digits, shard_size = plan.names, plan.digits, plan.shard_size
    complete = set(layout.complete_shards(output))
    pending = [shard for shard, name in enumerate(names) if name not in complete]
    tasks = ((root, output, shard, plan.view_file, plan.samples, shard_size, digits) for shard in pending)
    started = time.perf_counter()
    if pending:
        progress = StageProgress("reshard", total=plan.samples - len(complete) * shard_size, tasks=len(names),
                                 tasks_done=len(complete), final_counts=_final_counts)
        with using(sized(execution, len(pending))) as executor, progress:
            executor.run_tasks(write_view_shard, tasks, progress=progress)
    _copy_model_files(root, output)
    finish_dataset(output)

    total = total_stats(load_shard_stats(output))
    manifest = {
        **plan.record, "kind": "reshard", "shards": names, "stats": total,
        "last_run_seconds": round(time.perf_counter() - started, 3),
    }
    write_json(layout.manifest_path(output), manifest)
    return manifest


def _count_and_digest(view_file: Location) -> tuple[int, str]:
    """The view's row count and the SHA-256 of its keys, each followed by a line break (the digest
    ``reshard.json`` has always held, so a resume across versions matches), a batch at a time."""
    digest, rows = hashlib.sha256(), 0
    for batch in view_batches(view_file, ["key"]):
        keys = batch.column(0)
        if keys.null_count:
            raise ValueError(f"view {view_file} has rows without a key: re-make it with mmdata filter")
        lines = pc.binary_join_element_wise(keys, "", "\n")  # key + "\n" + "": one buffer of "key\n" lines
        offsets = np.frombuffer(lines.buffers()[1], dtype=np.int32)[lines.offset: lines.offset + len(lines) + 1]
        digest.update(memoryview(lines.buffers()[2])[offsets[0]: offsets[-1]])
        rows += len(keys)
    return rows, digest.hexdigest()


def _place(root: Location) -> str:
    """Where ``root`` is, comparable across spellings: the resolved path locally, else the URL."""
    return str(Path(root.path).resolve()) if root.is_local else root.url


def _final_counts(stats: dict) -> tuple[str, dict[str, int]]:
    return stats["shard"], {COUNT: stats["count"]}


def write_view_shard(root: Location, output: Location, shard: int, view_file: Location, samples: int,
                     shard_size: int, digits: int = layout.SHARD_DIGITS) -> dict:
    """Output shard ``shard``: its rows of the view (read here, by row range), then :func:`write_shard`."""
    start = shard * shard_size
    wanted = min(shard_size, samples - start)
    rows = read_view_rows(view_file, start, wanted, list(_ROW_COLUMNS))
    if rows.num_rows != wanted:
        raise RuntimeError(f"view {view_file} holds {start + rows.num_rows} rows, the plan {samples}: "
                           "it changed during the reshard; re-run into a new --output folder")
    return write_shard(root, output, shard, rows, shard_size, digits)


def write_shard(root: Location, output: Location, shard: int, rows: pa.Table, shard_size: int,
                digits: int = layout.SHARD_DIGITS) -> dict:
    """One output shard: read its samples from the source tars, re-key, write scores then the shard.

    Its stats JSON has the download's shape (``count``, ``successes``, ``status_dict``, ...), so
    ``mmdata stats`` and the report read a resharded dataset like a downloaded one.
    """
    new_keys = [layout.sample_key(shard, row, shard_size, digits) for row in range(rows.num_rows)]
    old_keys = rows.column("key").to_pylist()
    source_shards = rows.column("shard").to_pylist()
    # Opened first, so the duration in the shard's stats covers reading the metadata and the scores too.
    with shard_output(output, shard, digits=digits) as out:
        metadata = _source_metadata(root, rows)
        _write_scores(root, output, out.shard, rows, dict(zip(old_keys, new_keys)))
        samples = _source_samples(root, rows)
        for old_key, new_key, source_shard in zip(old_keys, new_keys, source_shards):
            stored_key, members = next(samples)
            if stored_key != old_key:
                raise RuntimeError(f"view row {old_key} points at sample {stored_key} in shard {source_shard}: "
                                   "the view is stale, filter again")
            row = dict(metadata[old_key], key=new_key, source_key=old_key)
            out.add(row, _rekey_members(members, new_key, old_key))
        return out.commit({"source_shards": sorted(set(source_shards))})


def _source_samples(root: Location, rows: pa.Table) -> Iterator[tuple[str, dict[str, bytes]]]:
    """``(stored key, members)`` of each view row, in order, read by byte range from the source tars.

    Consecutive rows of one source tar lying close together are read in one request (the next ones
    fetched while these are written, on an object store)."""
    spans = list(zip(rows.column("key").to_pylist(), rows.column("shard").to_pylist(),
                     rows.column("tar_offset").to_pylist(), rows.column("tar_size").to_pylist()))
    for run in prefetched(lambda run: _read_run(root, run), _runs(spans), root):
        yield from run


def _runs(spans: list[tuple]) -> Iterator[list[tuple]]:
    """The spans ``(key, shard, offset, size)`` grouped into runs, each one read of one tar."""
    run: list[tuple] = []
    for span in spans:
        if run:
            _, shard, start, _ = run[0]
            _, _, last_offset, last_size = run[-1]
            end = last_offset + last_size
            if (span[1] != shard or not end <= span[2] <= end + _READ_GAP_BYTES
                    or span[2] + span[3] - start > _READ_MAX_BYTES):
                yield run
                run = []
        run.append(span)
    if run:
        yield run


def _read_run(root: Location, run: list[tuple]) -> list[tuple[str, dict[str, bytes]]]:
    _, shard, start, _ = run[0]
    _, _, last_offset, last_size = run[-1]
    try:
        blob = layout.tar_path(root, shard).read_range(start, last_offset + last_size - start)
    except Exception as error:
        raise RuntimeError(f"reading {run[0][0]} from shard {shard} of {root}: {error}") from error
    samples = []
    for key, _, offset, size in run:
        piece = blob[offset - start: offset - start + size]
        try:
            if len(piece) != size:
                raise ShardFormatError(f"short read at offset {offset}: {len(piece)} of {size} bytes")
            found = samples_in_range(piece)
            if len(found) != 1:
                raise ShardFormatError(f"byte range at offset {offset} holds {len(found)} samples, not 1")
        except Exception as error:
            raise RuntimeError(f"reading {key} from shard {shard} of {root}: {error}") from error
        samples.append(found[0])
    return samples


def _source_metadata(root: Location, rows: pa.Table) -> dict[str, dict]:
    """Full metadata rows (extra input columns included) of the view rows, by old key."""
    found: dict[str, dict] = {}
    source_shards = pc.unique(rows.column("shard")).to_pylist()
    tables = each(lambda source_shard: read_parquet(layout.parquet_path(root, source_shard)), source_shards, root)
    for source_shard, table in zip(source_shards, tables):
        wanted = rows.filter(pc.equal(rows.column("shard"), source_shard)).column("key")
        table = table.filter(pc.is_in(table.column("key"), value_set=wanted.combine_chunks()))
        table = table.drop_columns([name for name in ("tar_offset", "tar_size") if name in table.column_names])
        for row in table.to_pylist():
            found[row["key"]] = row
    missing = [key for key in rows.column("key").to_pylist() if key not in found]
    if missing:
        raise RuntimeError(
            f"view keys missing from the metadata of {root}: {missing[:5]}: the view is stale, filter again"
        )
    return found


def _write_scores(root: Location, output: Location, shard: str, rows: pa.Table, renamed: dict[str, str]) -> None:
    """Each model's score rows for this shard's samples, re-keyed, in view order."""
    source_shards = pc.unique(rows.column("shard")).to_pylist()
    wanted = pa.array(list(renamed), pa.string())
    for model_id in _model_ids(root):
        model_dir = layout.model_dir(root, model_id)
        present = set(model_dir.names(".parquet"))
        files = [model_dir / f"{source_shard}.parquet" for source_shard in source_shards
                 if f"{source_shard}.parquet" in present]
        if not files:
            continue
        parts = each(read_parquet, files, root)
        schema = parts[0].schema
        table = pa.concat_tables([part.filter(pc.is_in(part.column("key"), value_set=wanted)).cast(schema)
                                  for part in parts])
        order = {key: position for position, key in enumerate(renamed)}
        present_keys = table.column("key").to_pylist()
        in_view_order = sorted(range(table.num_rows), key=lambda row: order[present_keys[row]])
        table = table.take(pa.array(in_view_order, pa.int64()))
        new_keys = pa.array([renamed[key] for key in table.column("key").to_pylist()], pa.string())
        table = table.set_column(table.schema.get_field_index("key"), schema.field("key"), new_keys)
        write_parquet(table, layout.score_path(output, model_id, shard), schema)


def _model_ids(root: Location) -> list[str]:
    """The model folders under ``DIR/scores/`` (hidden ones are no model's)."""
    return sorted(name for name, entry in layout.scores_dir(root).list().items()
                  if entry["type"] == "directory" and not name.startswith("."))


def _copy_model_files(root: Location, output: Location) -> None:
    """Each model's record (``model.json``: provenance) and the default-model marker, so the output's
    scores explain themselves and ``read_table`` picks the same default."""
    records = [(model_id, layout.MODEL_RECORD) for model_id in _model_ids(root)]
    for folder, name in [*records, (None, layout.DEFAULT_MARKER)]:
        source = layout.scores_dir(root) / name if folder is None else layout.model_dir(root, folder) / name
        try:
            record = source.read_json()
        except FileNotFoundError:
            continue
        target = layout.scores_dir(output) / name if folder is None else layout.model_dir(output, folder) / name
        write_json(target, record)


def _rekey_members(members: dict[str, bytes], new_key: str, old_key: str) -> dict[str, bytes]:
    """Members under the new key; the ``json`` member's key fields follow."""
    if "json" not in members:
        return members
    try:
        payload = json.loads(members["json"])
    except ValueError:
        return members
    if isinstance(payload, dict):
        payload["key"], payload["source_key"] = new_key, old_key
        payload.pop("tar_offset", None)
        payload.pop("tar_size", None)
        members = dict(members, json=json.dumps(payload, sort_keys=True, default=str).encode())
    return members


def _start_or_resume(output: Location, plan: dict) -> None:
    plan_path = output / PLAN_FILE
    try:
        previous = plan_path.read_json()
    except FileNotFoundError:
        previous = None
    if previous is not None:
        if previous != plan:
            changed = sorted(name for name in plan if previous.get(name) != plan[name])
            raise ValueError(
                f"{output} holds a reshard of another plan (differs in {changed}): use a new --output folder"
            )
        discard_unheld(output)
        for model_id in _model_ids(output):
            remove_temporaries(layout.model_dir(output, model_id))
        return
    if output.list():
        raise ValueError(
            f"{output} exists and is not empty: reshard writes a new dataset, choose a new --output folder"
        )
    output.make_dirs()
    write_json(plan_path, plan)
