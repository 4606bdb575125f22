"""Reshard: materialise a view as a new dataset in the same layout, with evenly sized shards.

Output shard ``i`` holds view rows ``[i*shard_size, (i+1)*shard_size)`` in view order, under new
keys (the old one kept in ``source_key``; ``uid`` unchanged). Each output shard carries its samples'
tar members, metadata rows and every model's score rows (embeddings included, re-keyed), and is
committed last-file-last (scores, then tar → parquet → stats), so an interrupted run resumes by
skipping the shards whose stats exist. ``reshard.json`` (the plan, written first) makes sure a
re-run continues the same plan; ``manifest.json`` is written last.
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import remove_temporaries, write_json, write_parquet
from mmdata.curate.view import read_view
from mmdata.execution import Execution, StageProgress, sized, using
from mmdata.execution.progress import COUNT
from mmdata.options import stage_settings
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


def reshard(root: layout.Root, config: ReshardConfig | None = None, *, execution: Execution = None,
            **options) -> dict:
    """Write the samples of view ``config.view`` of dataset ``root`` as a new dataset at ``config.output``.

    Returns the manifest. Output shards run as tasks on ``execution`` (or the flat ``executor``/
    ``workers``/``ray_address``). Re-running after an interruption finishes the missing shards.
    Either side may be a URL; ``storage_options`` (a config field) go to both filesystems.
    """
    config, execution = stage_settings(ReshardConfig, "reshard", config, execution, options)
    view, shard_size = config.view, config.shard_size
    root, output = layout.dataset(root, config.storage_options), config.output_root
    if _place(output) == _place(root):
        raise ValueError("output must be a new folder, not the source dataset")
    view_table = read_view(root, view)
    plan = {
        "source": _place(root),
        "view": view,
        "shard_size": shard_size,
        "samples": view_table.num_rows,
        "keys_sha256": _keys_digest(view_table.column("key").to_pylist()),
    }
    _start_or_resume(output, plan)

    shard_count = -(-view_table.num_rows // shard_size)
    digits = layout.shard_digits_for(shard_count)
    names = [layout.shard_name(shard, digits) for shard in range(shard_count)]
    complete = set(layout.complete_shards(output))
    pending = [shard for shard, name in enumerate(names) if name not in complete]
    tasks = [
        (root, output, shard, view_table.slice(shard * shard_size, shard_size), shard_size, digits)
        for shard in pending
    ]
    started = time.perf_counter()
    if tasks:
        progress = StageProgress("reshard", total=view_table.num_rows - len(complete) * shard_size, tasks=shard_count,
                                 tasks_done=len(complete), final_counts=_final_counts)
        with using(sized(execution, len(tasks))) as executor, progress:
            executor.run_tasks(write_shard, tasks, progress=progress)
    _copy_model_files(root, output)
    finish_dataset(output)

    total = total_stats(load_shard_stats(output))
    manifest = {
        **plan, "kind": "reshard", "shards": names, "stats": total,
        "last_run_seconds": round(time.perf_counter() - started, 3),
    }
    write_json(layout.manifest_path(output), manifest)
    return manifest


def _place(root: Location) -> str:
    """Where ``root`` is, comparable across spellings: the resolved path locally, else the URL."""
    return str(Path(root.path).resolve()) if root.is_local else root.url


def _final_counts(stats: dict) -> tuple[str, dict[str, int]]:
    return stats["shard"], {COUNT: stats["count"]}


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


def _keys_digest(keys: list[str]) -> str:
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()
