"""Views: a filter's result as ``DIR/views/NAME.parquet``, the selected keys and where they live.

Nothing is copied: a view holds key, uid, shard and the tar byte range (what the loader needs),
plus the rules and the per-rule funnel as JSON in the schema metadata. ``reshard`` materialises one.
The filter works a shard at a time (:class:`~mmdata.table.JoinedShards`, only the columns its rules
read) and streams the selected rows into the view, which appears whole when the last shard is done;
top_fraction's global threshold is found first, in passes over the status and score columns alone.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.atomic import parquet_writer
from mmdata.curate.presets import check_score_model, preset_named, with_preset
from mmdata.curate.rules import FilterConfig, Funnel, RuleCounter, build_rules
from mmdata.options import config_from_options
from mmdata.schemas.views import FUNNEL_KEY, RULES_KEY, VIEW_SCHEMA
from mmdata.storage import Location, read_parquet
from mmdata.storage.parquet import OpenParquet

VIEW_BATCH_ROWS = 65_536  # rows of one batch when a view is read in pieces
_VIEW_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def view_path(root: layout.Root, name: str) -> Location:
    if not _VIEW_NAME.match(name or "") or name.endswith(".parquet"):
        raise ValueError(f"view name {name!r}: use letters, digits, '_', '-', '.' (no path, no .parquet suffix)")
    return layout.views_dir(root) / f"{name}.parquet"


@dataclass
class WrittenView:
    """What :func:`write_view` wrote: where, how many rows, and the rules and funnel it recorded."""

    path: Location
    rows: int
    rules: dict
    funnel: dict


def write_view(root: layout.Root, config: FilterConfig | None = None, *, view: str, preset: str | None = None,
               preset_any_model: bool = False, storage_options: dict | None = None, **options) -> WrittenView:
    """Select samples of dataset ``root`` by AND-ed rules and write them as view ``view``, a shard at a
    time: memory holds one shard's columns, whatever the dataset's size. :func:`filter_view` does the same
    and reads the view back.

    Pass a :class:`FilterConfig` or its rules flat (``write_view(root, view="train",
    min_clip_score=0.28)``), and/or a ``preset`` (:mod:`mmdata.curate.presets`: ``datacomp-basic``,
    ``laion2b``, ``datacomp-clip-top30``) whose rules yours add to; where both set an option, yours
    wins (``None`` removes the preset's rule). ``preset_any_model`` applies a preset's own CLIP-score
    threshold to scores of another model than it was calibrated for (a threshold you set is yours).
    Only successful samples are selectable (the funnel's first step). The view's schema metadata holds
    the rules (``RULES_KEY``, with the preset's record) and the funnel (``FUNNEL_KEY``), see
    :func:`view_funnel`. ``root`` may be a URL; ``storage_options`` go to its filesystem.
    """
    from mmdata.table import JoinedShards

    if config is not None and options:
        raise ValueError("pass either a FilterConfig or keyword rules, not both")
    if preset_any_model and preset is None:
        raise ValueError("preset_any_model applies to a preset's CLIP-score threshold: pass preset= too")
    root = layout.dataset(root, storage_options)
    preset_record = None
    if preset is not None:
        chosen = preset_named(preset)
        config, preset_record = with_preset(chosen, options if config is None else config.to_dict())
        if "min_clip_score" not in preset_record["overridden"]:
            model_id = config.score_model or layout.default_model(root)
            record = layout.read_model_record(root, model_id) if model_id else None
            check_score_model(chosen, record, model_id, any_model=preset_any_model)
    elif config is None:
        config = config_from_options(FilterConfig, "filter", options)
    path = view_path(root, view)
    shards = layout.complete_shards(root)
    if not shards:
        raise ValueError(f"{root} holds no complete shard: nothing to filter")
    columns = JoinedShards(root, shards=shards).columns
    counter = RuleCounter(build_rules(config, columns, lambda names: JoinedShards(root, names, shards=shards)))
    selected = [name for name in VIEW_SCHEMA.names if name in columns]
    joined = JoinedShards(root, list(dict.fromkeys([*counter.columns, *selected])), shards=shards)
    with parquet_writer(path, VIEW_SCHEMA) as writer:
        for table in joined:
            writer.write(table.filter(pa.array(counter.keep(table))).select(selected))
        funnel = counter.funnel()
        rules = _rules_record(config, funnel, preset_record)
        writer.set_metadata({
            RULES_KEY: json.dumps(rules, sort_keys=True, default=_json_number).encode(),
            FUNNEL_KEY: json.dumps(funnel.to_dict(), sort_keys=True, default=_json_number).encode(),
        })
    return WrittenView(path=path, rows=writer.rows, rules=rules, funnel=funnel.to_dict())


def filter_view(root: layout.Root, config: FilterConfig | None = None, *, view: str, preset: str | None = None,
                preset_any_model: bool = False, storage_options: dict | None = None, **options) -> pa.Table:
    """:func:`write_view`, then the view read back as a table (VIEW_SCHEMA, rules and funnel in its
    metadata). The view is in memory whole: for a very large one, call :func:`write_view`."""
    written = write_view(root, config, view=view, preset=preset, preset_any_model=preset_any_model,
                         storage_options=storage_options, **options)
    return read_parquet(written.path)


def _rules_record(config: FilterConfig, funnel: Funnel, preset: dict | None) -> dict:
    """The view's rules: the config, each rule as resolved (its funnel step's details) and the preset's record;
    the steps of the rules a preset set carry its name."""
    for step in funnel.steps:
        if preset is not None and step["rule"] in preset["rules"]:
            step["preset"] = preset["name"]
    resolved = [
        {"rule": step["rule"], **{k: v for k, v in step.items() if k not in ("rule", "dropped")}}
        for step in funnel.steps
    ]
    record = {"config": config.to_dict(), "rules": resolved}
    if preset is not None:
        record["preset"] = preset
    return record


def read_view(root: layout.Root, name: str, *, storage_options: dict | None = None) -> pa.Table:
    """The view's table (VIEW_SCHEMA, with rules and funnel in its metadata), whole: to read a large view
    in pieces, :func:`existing_view` then :func:`view_batches` or :func:`read_view_rows`."""
    return read_parquet(existing_view(root, name, storage_options=storage_options))


def existing_view(root: layout.Root, name: str, *, storage_options: dict | None = None) -> Location:
    """The file of view ``name`` of dataset ``root``; FileNotFoundError, naming the views there, when it has none."""
    root = layout.dataset(root, storage_options)
    path = view_path(root, name)
    if not path.exists():
        existing = [file[: -len(".parquet")] for file in layout.views_dir(root).names(".parquet")]
        raise FileNotFoundError(
            f"no view {name!r} in {root} (views: {existing or 'none'}); make one with `mmdata filter`"
        )
    return path


def view_batches(path: Location, columns: list[str], batch_rows: int | None = None) -> Iterator[pa.RecordBatch]:
    """The view file at ``path``, only ``columns``, in order, as batches of at most ``batch_rows`` rows
    (:data:`VIEW_BATCH_ROWS` by default)."""
    with path.open("rb") as handle:
        yield from pq.ParquetFile(handle).iter_batches(batch_size=batch_rows or VIEW_BATCH_ROWS, columns=columns)


def read_view_rows(path: Location, start: int, count: int, columns: list[str]) -> pa.Table:
    """Rows ``[start, start + count)`` of the view file at ``path`` (fewer past its end), only ``columns``:
    reads just the row groups that hold them, so memory holds a row group or two, whatever the view's size."""
    opened = OpenParquet(path)
    pieces, group_start = [], 0
    for group in range(opened.count):
        group_rows = opened.file.metadata.row_group(group).num_rows
        low, high = max(start, group_start), min(start + count, group_start + group_rows)
        if low < high:
            pieces.append(opened.read_group(group, columns).slice(low - group_start, high - low))
        group_start += group_rows
        if group_start >= start + count:
            break
    if not pieces:
        return opened.schema.empty_table().select(columns)
    return pa.concat_tables(pieces)


def view_funnel(view_table: pa.Table) -> dict:
    return json.loads((view_table.schema.metadata or {}).get(FUNNEL_KEY, b"{}"))


def view_rules(view_table: pa.Table) -> dict:
    return json.loads((view_table.schema.metadata or {}).get(RULES_KEY, b"{}"))


def format_funnel(funnel: dict) -> str:
    """The funnel as aligned text lines: rows in, each rule's drop, rows out."""
    lines = [f"{'rows in':<30}{funnel['rows_in']:>12,}"]
    for step in funnel["steps"]:
        extra = f"  (threshold {step['threshold']:.4f})" if step.get("threshold") is not None else ""
        if step.get("preset"):
            extra += f"  [preset {step['preset']}]"
        lines.append(f"{'- ' + step['rule']:<30}{-step['dropped']:>12,}{extra}")
    lines.append(f"{'rows out':<30}{funnel['rows_out']:>12,}")
    return "\n".join(lines)


def _json_number(value):
    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
