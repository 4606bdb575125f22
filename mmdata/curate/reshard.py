"""Reshard: materialise a view as a new dataset in the same layout, with evenly sized shards.

Output shard ``i`` holds view rows ``[i*shard_size, (i+1)*shard_size)`` in view order, under new
keys (the old one kept in ``source_key``; ``uid`` unchanged). Each output shard carries its samples'
tar members, metadata rows and every model's score rows (embeddings included, re-keyed), and is
committed last-file-last (scores, then tar → parquet → stats), so an interrupted run resumes by
skipping the shards whose stats exist. ``reshard.json`` (the plan, written first) makes sure a
re-run continues the same plan; ``manifest.json`` is written last.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.atomic import remove_temporaries, write_json, write_parquet
from mmdata.curate.view import read_view
from mmdata.execution import Execution, StageProgress, sized, using
from mmdata.execution.progress import COUNT
from mmdata.options import stage_settings
from mmdata.shard_output import ShardOutput
from mmdata.shards import SampleSpan, read_sample
from mmdata.stats import load_shard_stats, total_stats

PLAN_FILE = "reshard.json"


@dataclass(frozen=True, kw_only=True)
class ReshardConfig:
    view: str
    output: str
    shard_size: int = 10_000

    def __post_init__(self) -> None:
        if not self.view:
            raise ValueError("view is required: the name of a view under DIR/views/ (mmdata filter --view NAME)")
        if not self.output:
            raise ValueError("output is required: the new dataset's folder")
        object.__setattr__(self, "output", str(layout.local_path(self.output)))
        if isinstance(self.shard_size, bool) or not isinstance(self.shard_size, int) or self.shard_size < 1:
            raise ValueError(f"shard_size must be >= 1, got {self.shard_size}")


def reshard(root: str | os.PathLike, config: ReshardConfig | None = None, *, execution: Execution = None,
            **options) -> dict:
    """Write the samples of view ``config.view`` of dataset ``root`` as a new dataset at ``config.output``.

    Returns the manifest. Output shards run as tasks on ``execution`` (or the flat ``executor``/
    ``workers``/``ray_address``). Re-running after an interruption finishes the missing shards.
    """
    config, execution = stage_settings(ReshardConfig, "reshard", config, execution, options)
    view, output, shard_size = config.view, config.output, config.shard_size
    root, output = layout.local_path(root), layout.local_path(output)
    if output.resolve() == root.resolve():
        raise ValueError("output must be a new folder, not the source dataset")
    view_table = read_view(root, view)
    plan = {
        "source": str(root.resolve()),
        "view": view,
        "shard_size": shard_size,
        "samples": view_table.num_rows,
        "keys_sha256": _keys_digest(view_table.column("key").to_pylist()),
    }
    _start_or_resume(output, plan)

    shard_count = -(-view_table.num_rows // shard_size)
    complete = set(layout.complete_shards(output))
    pending = [shard for shard in range(shard_count) if layout.shard_name(shard) not in complete]
    tasks = [
        (str(root), str(output), shard, view_table.slice(shard * shard_size, shard_size), shard_size)
        for shard in pending
    ]
    started = time.perf_counter()
    if tasks:
        progress = StageProgress("reshard", total=view_table.num_rows - len(complete) * shard_size, tasks=shard_count,
                                 tasks_done=len(complete), final_counts=_final_counts)
        with using(sized(execution, len(tasks))) as executor, progress:
            executor.run_tasks(write_shard, tasks, progress=progress)
    _copy_model_files(root, output)

    names = [layout.shard_name(shard) for shard in range(shard_count)]
    total = total_stats(load_shard_stats(output))
    manifest = {
        **plan, "kind": "reshard", "shards": names, "stats": total,
        "last_run_seconds": round(time.perf_counter() - started, 3),
    }
    write_json(layout.manifest_path(output), manifest)
    return manifest


def _final_counts(stats: dict) -> tuple[str, dict[str, int]]:
    return stats["shard"], {COUNT: stats["count"]}


def write_shard(root: str, output: str, shard: int, rows: pa.Table, shard_size: int) -> dict:
    """One output shard: read its samples from the source tars, re-key, write scores then the shard.

    Its stats JSON has the download's shape (``count``, ``successes``, ``status_dict``, ...), so
    ``mmdata stats`` and the report read a resharded dataset like a downloaded one.
    """
    new_keys = [layout.sample_key(shard, row, shard_size) for row in range(rows.num_rows)]
    old_keys = rows.column("key").to_pylist()
    source_shards = rows.column("shard").to_pylist()
    offsets, sizes = rows.column("tar_offset").to_pylist(), rows.column("tar_size").to_pylist()
    # Opened first, so the duration in the shard's stats covers reading the metadata and the scores too.
    with ShardOutput(output, shard) as out, contextlib.ExitStack() as stack:
        metadata = _source_metadata(root, rows)
        _write_scores(root, output, shard, rows, dict(zip(old_keys, new_keys)))
        handles: dict[str, BinaryIO] = {}
        for old_key, new_key, source_shard, offset, size in zip(old_keys, new_keys, source_shards, offsets, sizes):
            if source_shard not in handles:
                handles[source_shard] = stack.enter_context(open(layout.tar_path(root, source_shard), "rb"))
            try:
                stored_key, members = read_sample(handles[source_shard], SampleSpan(offset, size))
            except Exception as error:
                raise RuntimeError(f"reading {old_key} from shard {source_shard} of {root}: {error}") from error
            if stored_key != old_key:
                raise RuntimeError(f"view row {old_key} points at sample {stored_key} in shard {source_shard}: "
                                   "the view is stale, filter again")
            row = dict(metadata[old_key], key=new_key, source_key=old_key)
            out.add(row, _rekey_members(members, new_key, old_key))
        return out.commit({"source_shards": sorted(set(source_shards))})


def _source_metadata(root: str, rows: pa.Table) -> dict[str, dict]:
    """Full metadata rows (extra input columns included) of the view rows, by old key."""
    found: dict[str, dict] = {}
    for source_shard in pc.unique(rows.column("shard")).to_pylist():
        wanted = rows.filter(pc.equal(rows.column("shard"), source_shard)).column("key")
        table = pq.read_table(layout.parquet_path(root, source_shard))
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


def _write_scores(root: str, output: str, shard: int, rows: pa.Table, renamed: dict[str, str]) -> None:
    """Each model's score rows for this shard's samples, re-keyed, in view order."""
    scores_root = layout.scores_dir(root)
    if not scores_root.is_dir():
        return
    source_shards = pc.unique(rows.column("shard")).to_pylist()
    wanted = pa.array(list(renamed), pa.string())
    for model_dir in sorted(p for p in scores_root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        parts = []
        schema = None
        for source_shard in source_shards:
            path = model_dir / f"{source_shard}.parquet"
            if not path.exists():
                continue
            table = pq.read_table(path)
            schema = schema or table.schema
            parts.append(table.filter(pc.is_in(table.column("key"), value_set=wanted)))
        if schema is None:
            continue
        table = pa.concat_tables([part.cast(schema) for part in parts])
        order = {key: position for position, key in enumerate(renamed)}
        present = table.column("key").to_pylist()
        table = table.take(pa.array(sorted(range(table.num_rows), key=lambda row: order[present[row]]), pa.int64()))
        new_keys = pa.array([renamed[key] for key in table.column("key").to_pylist()], pa.string())
        table = table.set_column(table.schema.get_field_index("key"), schema.field("key"), new_keys)
        write_parquet(table, layout.scores_dir(output) / model_dir.name / f"{layout.shard_name(shard)}.parquet", schema)


def _copy_model_files(root: Path, output: Path) -> None:
    """Each model's record (``model.json``: provenance) and the default-model marker, so the output's
    scores explain themselves and ``read_table`` picks the same default."""
    scores_root = layout.scores_dir(root)
    if not scores_root.is_dir():
        return
    for record in [*scores_root.glob("*/model.json"), scores_root / "default.json"]:
        if record.is_file():
            write_json(layout.scores_dir(output) / record.relative_to(scores_root), json.loads(record.read_text()))


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


def _start_or_resume(output: Path, plan: dict) -> None:
    plan_path = output / PLAN_FILE
    if plan_path.exists():
        previous = json.loads(plan_path.read_text())
        if previous != plan:
            changed = sorted(name for name in plan if previous.get(name) != plan[name])
            raise ValueError(
                f"{output} holds a reshard of another plan (differs in {changed}): use a new --output folder"
            )
        for folder in [output, *layout.scores_dir(output).glob("*/")]:
            remove_temporaries(folder)
        return
    if output.exists() and any(output.iterdir()):
        raise ValueError(
            f"{output} exists and is not empty: reshard writes a new dataset, choose a new --output folder"
        )
    output.mkdir(parents=True, exist_ok=True)
    write_json(plan_path, plan)


def _keys_digest(keys: list[str]) -> str:
    digest = hashlib.sha256()
    for key in keys:
        digest.update(key.encode())
        digest.update(b"\n")
    return digest.hexdigest()
