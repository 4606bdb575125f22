"""What a report says, gathered from a dataset folder: whichever stages ran, and nothing else.

Each stage leaves its own trace (``manifest.json`` and shard stats, ``scores/<model>/``,
``annotations/dedup.parquet``, ``views/<name>.parquet``, and for a balanced view
``balance/<name>.entry_counts.parquet``); a stage that left none is reported as not run.
The rows themselves are read as aggregates, a shard at a time (:mod:`mmdata.report.aggregates`).
The folder may be a URL (``s3://bucket/ds``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from mmdata import layout
from mmdata.report.aggregates import MEMORY_LIMIT, RowFacts, summarise
from mmdata.schemas.annotations import DEDUP_METADATA_KEY
from mmdata.schemas.balance import BALANCE_KEY
from mmdata.schemas.views import FUNNEL_KEY, RULES_KEY
from mmdata.storage import Location, read_parquet, read_parquet_schema
from mmdata.storage.parquet import read_parquet_rows

THRESHOLD_RULES = ("min_clip_score", "top_fraction")


@dataclass
class ViewFacts:
    name: str
    rows: int
    rules: dict
    funnel: object  # the view's own per-rule funnel, as the filter stage wrote it
    threshold: float | None  # the clip_score cut-off its rules imply, if any
    balance: dict | None = None  # a balanced view's settings and totals (mmdata balance), else None


@dataclass
class BalanceFacts:
    """A balanced view's per-entry counts (``mmdata balance``): before (``count``) and after (``kept``)."""

    view: str
    summary: dict  # t, seed, entries, pool, matched, kept, from_view, ... (BALANCE_KEY)
    entry_counts: pa.Table | None  # entry, count, kept; None when its file is gone
    entry_counts_path: Location


@dataclass
class ReportFacts:
    root: Location
    rows: RowFacts | None  # aggregates of the rows (mmdata.read_table's), None before any shard exists
    manifest: dict | None
    score_models: dict[str, dict] = field(default_factory=dict)  # model_id -> provenance
    dedup_metadata: dict | None = None
    views: list[ViewFacts] = field(default_factory=list)
    view: ViewFacts | None = None  # the one whose threshold the score sections show
    balances: list[BalanceFacts] = field(default_factory=list)

    @property
    def scored(self) -> bool:
        return self.rows is not None and "clip_score" in self.rows.columns

    @property
    def deduplicated(self) -> bool:
        return self.rows is not None and "dup_reason" in self.rows.columns

    @property
    def annotated(self) -> bool:
        """``mmdata annotate`` ran: a language or an image-quality column is there."""
        return self.rows is not None and bool({"caption_language", "laplacian_variance"} & set(self.rows.columns))

    @property
    def semantic_check(self) -> dict | None:
        """The dedup stage's check of its semantic tier (a verdict and its numbers), when it made one."""
        settings = (self.dedup_metadata or {}).get(DEDUP_METADATA_KEY.decode())
        check = settings.get("semantic_check") if isinstance(settings, dict) else None
        return check if isinstance(check, dict) else None


def gather(root: layout.Root, *, view: str | None = None, grid_size: int = 12, clusters_per_tier: int = 3,
           memory_limit: str = MEMORY_LIMIT, storage_options: dict | None = None) -> ReportFacts:
    """Read everything the report shows from ``root``; ``view`` picks the view whose threshold is drawn
    (default: the first view with a clip-score rule, else the first view). ``grid_size`` samples are
    picked on each side of that threshold and ``clusters_per_tier`` duplicate clusters per tier;
    ``memory_limit`` bounds DuckDB's share of the aggregation (it spills beyond it)."""
    root = layout.dataset(root, storage_options)
    if not root.is_dir():
        raise FileNotFoundError(f"no dataset folder at {root}: pass the --output folder of `mmdata download`")
    manifest = _read_json(layout.manifest_path(root))
    facts = ReportFacts(root=root, rows=None, manifest=manifest)
    scores = layout.scores_dir(root)
    for name, entry in sorted(scores.list().items()):
        if entry["type"] == "directory":
            facts.score_models[name] = _read_json(scores / name / layout.MODEL_RECORD) or {}
    dedup_path = layout.annotations_dir(root) / "dedup.parquet"
    if dedup_path.exists():
        facts.dedup_metadata = _decode_metadata(read_parquet_schema(dedup_path).metadata)
    views_dir = layout.views_dir(root)
    for name in views_dir.names(".parquet"):
        facts.views.append(_view_facts(root, views_dir / name))
    facts.balances = [_balance_facts(root, v) for v in facts.views if v.balance is not None]
    if view is not None:
        matches = [v for v in facts.views if v.name == view]
        if not matches:
            raise ValueError(f"no view {view!r} in {views_dir}; views: {[v.name for v in facts.views]}")
        facts.view = matches[0]
    else:
        with_threshold = [v for v in facts.views if v.threshold is not None]
        facts.view = (with_threshold or facts.views or [None])[0]
    if layout.complete_shards(root):
        facts.rows = summarise(root, threshold=facts.view.threshold if facts.view else None, grid_size=grid_size,
                               clusters_per_tier=clusters_per_tier, memory_limit=memory_limit)
    return facts


def _view_facts(root: Location, path: Location) -> ViewFacts:
    schema = read_parquet_schema(path)
    metadata = schema.metadata or {}
    rules = json.loads(metadata[RULES_KEY]) if RULES_KEY in metadata else {}
    funnel = json.loads(metadata[FUNNEL_KEY]) if FUNNEL_KEY in metadata else None
    balance = _json_dict(metadata.get(BALANCE_KEY))
    rows = read_parquet_rows(path)
    return ViewFacts(name=path.name.removesuffix(".parquet"), rows=rows, rules=rules, funnel=funnel,
                     threshold=_threshold(root, rules), balance=balance)


def _balance_facts(root: Location, view: ViewFacts) -> BalanceFacts:
    """The entry-count table a balanced view names (a path inside the dataset), read when present."""
    relative = str(view.balance.get("entry_counts") or f"balance/{view.name}.entry_counts.parquet")
    parts = relative.split("/")
    if relative.startswith("/") or ".." in parts or "" in parts:
        raise ValueError(f"view {view.name} names entry counts outside the dataset: {relative!r}")
    path = root
    for part in parts:
        path = path / part
    counts = read_parquet(path, columns=["entry", "count", "kept"]) if path.exists() else None
    return BalanceFacts(view=view.name, summary=view.balance, entry_counts=counts, entry_counts_path=path)


def _json_dict(value: bytes | None) -> dict | None:
    if value is None:
        return None
    try:
        decoded = json.loads(value)
    except ValueError:
        return None
    return decoded if isinstance(decoded, dict) else None


def _threshold(root: Location, rules: dict) -> float | None:
    """The clip_score cut-off of a view: the one its filter resolved and recorded, its absolute rule, or
    (a view that recorded none) the threshold its top fraction implies over today's scores."""
    flat = flatten(rules)
    for name, value in flat.items():
        if name.endswith(".threshold") and isinstance(value, (int, float)):
            return float(value)
    for name, value in flat.items():
        if name.endswith("min_clip_score") and isinstance(value, (int, float)):
            return float(value)
    for name, value in flat.items():
        if name.endswith("top_fraction") and isinstance(value, (int, float)):
            return _top_fraction_threshold(root, float(value))
    return None


def _top_fraction_threshold(root: Location, fraction: float) -> float | None:
    from mmdata.curate.rules import kth_largest
    from mmdata.table import JoinedShards

    if not layout.complete_shards(root) or "clip_score" not in JoinedShards(root, ["key"]).columns:
        return None

    def scores():
        for table in JoinedShards(root, ["clip_score"]):
            values = table.column("clip_score").to_numpy(zero_copy_only=False).astype(np.float64)
            yield values[~np.isnan(values)]

    return kth_largest(scores, lambda count: max(1, math.ceil(fraction * count)))


def flatten(payload, prefix: str = "") -> dict:
    """Nested dicts and lists as one dict of leaves under dotted names (``rules.0.threshold``)."""
    if isinstance(payload, dict):
        flat = {}
        for name, value in payload.items():
            flat.update(flatten(value, f"{prefix}{name}."))
        return flat
    if isinstance(payload, list):
        flat = {}
        for position, value in enumerate(payload):
            flat.update(flatten(value, f"{prefix}{position}."))
        return flat
    return {prefix.rstrip("."): payload}


def _read_json(path: Location) -> dict | None:
    try:
        return path.read_json()
    except FileNotFoundError:
        return None


def _decode_metadata(metadata: dict | None) -> dict:
    decoded = {}
    for name, value in (metadata or {}).items():
        name = name.decode(errors="replace")
        if name == "ARROW:schema":
            continue
        text = value.decode(errors="replace")
        try:
            decoded[name] = json.loads(text)
        except ValueError:
            decoded[name] = text
    return decoded
