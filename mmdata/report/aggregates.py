"""What the report shows of a dataset's rows, as aggregates made a shard at a time: counts, histograms,
the few samples it draws, never the whole table.

Two passes over :class:`~mmdata.table.JoinedShards`, each reading only the columns it needs: the first
counts (statuses, scores, duplicate reasons, languages), finds each histogram's range, picks the samples
nearest the clip-score threshold and sends the groupings that can be as many as the rows (per domain,
per kept duplicate) to DuckDB, which sums them under a memory limit and spills to a temporary folder;
the second fills the histograms (the edges numpy would choose for all the values at once) and finds the
members of the duplicate clusters shown. The rows drawn as thumbnails are then read from their shards.
"""

from __future__ import annotations

import functools
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.schemas.samples import SUCCESS
from mmdata.storage import Location
from mmdata.table import JoinedShards

MEMORY_LIMIT = "512MB"  # DuckDB's, for the groupings; beyond it they spill to a temporary folder
TOP_DOMAINS = 20
TOP_ERRORS = 40
TOP_LANGUAGES = 10
CLUSTER_MEMBERS = 7  # members drawn beside a cluster's kept sample
DUP_TIERS = ("exact", "near", "semantic")
FIGURE_COLUMNS = ("key", "shard", "tar_offset", "tar_size", "caption")
HISTOGRAM_BINS = {"original_width": 40, "original_height": 40, "aspect_ratio": 40, "clip_score": 60,
                  "laplacian_variance": 40, "caption_chars_per_100px": 40, "caption_language_score": 40}
LOG_SCALE = ("laplacian_variance",)  # histogrammed over log10 of the positive values
_FLUSH_ROWS = 1 << 20  # grouped rows buffered before they go to DuckDB
_NETLOC = r"^[^/?#]*//[^/?#]*"  # a URL's start up to the end of its authority, when the first '/' opens it


@dataclass
class Histogram:
    counts: np.ndarray
    edges: np.ndarray  # len(counts) + 1; log10 of the values for a log-scale histogram
    log: bool = False
    outside: int = 0  # values a log scale cannot show (zero or negative)

    @property
    def total(self) -> int:
        return int(self.counts.sum())


@dataclass
class Cluster:
    kept_key: str
    size: int  # samples marked as its duplicates
    kept: dict | None = None  # the kept sample's figure row (None when the dataset no longer has it)
    members: list[dict] = field(default_factory=list)  # the first CLUSTER_MEMBERS, in dataset order


@dataclass
class TierClusters:
    dropped: int = 0
    clusters: int = 0
    shown: list[Cluster] = field(default_factory=list)


@dataclass
class RowFacts:
    """The report's view of every row (``mmdata.read_table``'s), in aggregates."""

    rows: int = 0
    columns: list[str] = field(default_factory=list)
    statuses: list[tuple[str, int]] = field(default_factory=list)  # most rows first
    scored: int = 0  # rows with a clip_score
    dup_reasons: dict[str, int] = field(default_factory=dict)
    domains: list[tuple[str, dict[str, int]]] = field(default_factory=list)  # the busiest first: status -> rows
    errors: list[tuple[str, str, str, int]] = field(default_factory=list)  # (domain, status, class, rows)
    sized: int = 0  # stored images that record their original size
    histograms: dict[str, Histogram] = field(default_factory=dict)  # HISTOGRAM_BINS names (aspect_ratio too)
    threshold: float | None = None
    at_or_above: int = 0  # scored rows at or above the threshold
    below: int = 0
    just_above: list[dict] = field(default_factory=list)  # figure rows + clip_score, nearest the threshold first
    just_below: list[dict] = field(default_factory=list)
    clusters: dict[str, TierClusters] = field(default_factory=dict)  # tier -> clusters
    languages: list[tuple[str, int]] = field(default_factory=list)  # caption_language, most rows first
    no_language: int = 0  # rows whose caption_language is null


def summarise(root: Location, *, threshold: float | None, grid_size: int, clusters_per_tier: int,
              memory_limit: str = MEMORY_LIMIT) -> RowFacts:
    """Aggregate the joined rows of ``root``'s complete shards for the report (see the module docstring)."""
    shards = layout.complete_shards(root)
    columns = JoinedShards(root, ["key"], shards=shards).columns
    facts = RowFacts(columns=columns, threshold=threshold)
    has = set(columns)
    with _DuckCounts(memory_limit) as counts:
        ranges = _first_pass(root, shards, has, facts, counts, grid_size)
        facts.domains, facts.errors = counts.domains(), counts.errors()
        wanted = counts.clusters(clusters_per_tier) if "duplicate_of" in has else {}
        facts.clusters = counts.tiers if "duplicate_of" in has else {}
    edges = {name: _edges(name, low, high) for name, (low, high) in ranges.items()}
    if edges or wanted:
        _second_pass(root, shards, has, facts, edges, wanted)
    _fill_figures(root, shards, facts)
    return facts


def _first_pass(root: Location, shards: list[str], has: set, facts: RowFacts, counts: "_DuckCounts",
                grid_size: int) -> dict[str, tuple[float, float]]:
    reads = ["key", "shard", "status", "url", "error_class", "original_width", "original_height", "clip_score",
             "dup_reason", "duplicate_of", *_ANNOTATION_NUMBERS, "caption_language"]
    statuses, reasons, languages = Counter(), Counter(), Counter()
    ranges: dict[str, tuple[float, float]] = {}
    above, below = _Nearest(grid_size, ascending=True), _Nearest(grid_size, ascending=False)
    offset = 0
    for table in JoinedShards(root, [name for name in reads if name in has], shards=shards):
        rows = pa.array(np.arange(offset, offset + table.num_rows), pa.int64())
        offset += table.num_rows
        statuses.update(_value_counts(table.column("status")))
        domains = _domains(table.column("url")) if "url" in has else pa.array(["(no host)"] * table.num_rows)
        counts.add_domains(table.column("status"), table.column("error_class"), domains, rows)
        for name, values in _numbers(table, has).items():
            _widen(ranges, name, values)
        if "clip_score" in has:
            scores = table.column("clip_score")
            facts.scored += len(scores) - scores.null_count
            if facts.threshold is not None:
                values = _floats(scores)
                scored = ~np.isnan(values)
                facts.at_or_above += int((scored & (values >= facts.threshold)).sum())
                facts.below += int((scored & (values < facts.threshold)).sum())
                above.offer(table, values, scored & (values >= facts.threshold), rows)
                below.offer(table, values, scored & (values < facts.threshold), rows)
        if "dup_reason" in has:
            reasons.update(_value_counts(table.column("dup_reason")))
        if "duplicate_of" in has:
            counts.add_clusters(table.column("dup_reason") if "dup_reason" in has else None,
                                table.column("duplicate_of"), rows)
        if "caption_language" in has:
            languages.update(_value_counts(table.column("caption_language")))
            facts.no_language += table.column("caption_language").null_count
    facts.rows = offset
    facts.statuses = statuses.most_common()
    facts.dup_reasons = dict(reasons)
    facts.languages = languages.most_common(TOP_LANGUAGES)
    facts.just_above, facts.just_below = above.rows(), below.rows()
    return ranges


def _second_pass(root: Location, shards: list[str], has: set, facts: RowFacts, edges: dict[str, np.ndarray],
                 wanted: dict[tuple[str, str], Cluster]) -> None:
    reads = ["status", "original_width", "original_height", "clip_score", *_ANNOTATION_NUMBERS, "key", "shard",
             "dup_reason", "duplicate_of"]
    histograms = {name: np.zeros(len(bins) - 1, dtype=np.int64) for name, bins in edges.items()}
    outside = Counter()
    kept_keys = {cluster.kept_key for cluster in wanted.values()}
    for table in JoinedShards(root, [name for name in reads if name in has], shards=shards):
        for name, values in _numbers(table, has).items():
            if name not in edges:  # no value anywhere in the first pass (a column of nulls): no histogram
                continue
            if name in LOG_SCALE:
                outside[name] += int((values <= 0).sum())
                values = np.log10(values[values > 0])
            histograms[name] += np.histogram(values, bins=edges[name])[0]
        if wanted:
            _find_members(table, has, wanted, kept_keys)
    facts.histograms = {name: Histogram(counts, edges[name], name in LOG_SCALE, outside[name])
                        for name, counts in histograms.items()}
    facts.sized = facts.histograms["original_width"].total if "original_width" in facts.histograms else 0
    for (tier, _), cluster in wanted.items():
        facts.clusters[tier].shown.append(cluster)


def _find_members(table: pa.Table, has: set, wanted: dict[tuple[str, str], Cluster], kept_keys: set) -> None:
    """Note the shown clusters' next members and kept samples that this batch holds."""
    value_set = pa.array(sorted(kept_keys), pa.string())
    marked = table.filter(_filled(pc.is_in(table.column("duplicate_of"), value_set=value_set)))
    tiers = _tiers(marked.column("dup_reason") if "dup_reason" in has else None, marked.num_rows).to_pylist()
    for tier, kept, key, shard in zip(tiers, marked.column("duplicate_of").to_pylist(),
                                      marked.column("key").to_pylist(), marked.column("shard").to_pylist()):
        cluster = wanted.get((tier, kept))
        if cluster is not None and len(cluster.members) < CLUSTER_MEMBERS:
            cluster.members.append({"key": key, "shard": shard})
    holding = table.filter(_filled(pc.is_in(table.column("key"), value_set=value_set)))
    for key, shard in zip(holding.column("key").to_pylist(), holding.column("shard").to_pylist()):
        for cluster in wanted.values():
            if cluster.kept_key == key and cluster.kept is None:
                cluster.kept = {"key": key, "shard": shard}


def _fill_figures(root: Location, shards: list[str], facts: RowFacts) -> None:
    """Read the figure columns (and dup_similarity) of the rows the report draws, from their shards only."""
    drawn = [*facts.just_above, *facts.just_below]
    for tier in facts.clusters.values():
        for cluster in tier.shown:
            drawn += [row for row in (cluster.kept, *cluster.members) if row is not None]
    by_shard: dict[str, list[dict]] = {}
    for row in drawn:
        by_shard.setdefault(row["shard"], []).append(row)
    names = [name for name in (*FIGURE_COLUMNS, "dup_similarity") if name in facts.columns]
    joined = JoinedShards(root, names, shards=[shard for shard in shards if shard in by_shard])
    for shard in joined.shards:
        table = joined.read(shard)
        position = {key: index for index, key in enumerate(table.column("key").to_pylist())}
        for row in by_shard[shard]:
            index = position[row["key"]]
            row.update({name: table.column(name)[index].as_py() for name in names})


class _Nearest:
    """The ``size`` scored rows nearest the threshold on one side, in dataset order among equal scores."""

    def __init__(self, size: int, *, ascending: bool):
        self.size, self.ascending = size, ascending
        self.best: list[tuple[float, int, str, str]] = []  # (score, row, shard, key)

    def offer(self, table: pa.Table, values: np.ndarray, mask: np.ndarray, rows: pa.Array) -> None:
        chosen = np.flatnonzero(mask)
        if not len(chosen):
            return
        order = np.argsort(values[chosen] if self.ascending else -values[chosen], kind="stable")[: self.size]
        picked = chosen[order]
        keys, shards = table.column("key").take(picked).to_pylist(), table.column("shard").take(picked).to_pylist()
        row_numbers = rows.take(pa.array(picked)).to_pylist()
        self.best += [(float(values[i]), r, s, k) for i, r, s, k in zip(picked, row_numbers, shards, keys)]
        self.best.sort(key=lambda item: ((item[0] if self.ascending else -item[0]), item[1]))
        del self.best[self.size:]

    def rows(self) -> list[dict]:
        return [{"clip_score": score, "shard": shard, "key": key} for score, _, shard, key in self.best]


class _DuckCounts:
    """Row counts by domain, by failure and by duplicate cluster: groups that can number as many as the rows,
    summed in a DuckDB database in a temporary folder under a memory limit."""

    def __init__(self, memory_limit: str):
        self.memory_limit = memory_limit
        self._pending: dict[str, list[pa.Table]] = {"domains": [], "errors": [], "clusters": []}

    def __enter__(self) -> "_DuckCounts":
        import duckdb

        self._folder = tempfile.TemporaryDirectory(prefix="mmdata-report-")
        config = {"memory_limit": self.memory_limit, "temp_directory": self._folder.name, "threads": 1,
                  "preserve_insertion_order": False}
        self._db = duckdb.connect(os.path.join(self._folder.name, "counts.duckdb"), config=config)
        self._db.execute("CREATE TABLE domains (domain VARCHAR, status VARCHAR, n BIGINT, first_row BIGINT)")
        self._db.execute("CREATE TABLE errors (domain VARCHAR, status VARCHAR, error_class VARCHAR, n BIGINT, "
                         "first_row BIGINT)")
        self._db.execute("CREATE TABLE clusters (tier VARCHAR, kept VARCHAR, n BIGINT, first_row BIGINT)")
        return self

    def __exit__(self, *exc) -> None:
        self._db.close()
        self._folder.cleanup()

    def add_domains(self, statuses: pa.ChunkedArray, error_classes: pa.ChunkedArray, domains: pa.Array,
                    rows: pa.Array) -> None:
        table = pa.table({"domain": domains, "status": statuses, "row": rows})
        self._add("domains", _grouped(table, ["domain", "status"]))
        failed = pc.fill_null(pc.not_equal(statuses, SUCCESS), True)
        errors = table.append_column("error_class", pc.fill_null(error_classes, "(none)")).filter(failed)
        self._add("errors", _grouped(errors, ["domain", "status", "error_class"]))

    def add_clusters(self, reasons: pa.ChunkedArray | None, kept: pa.ChunkedArray, rows: pa.Array) -> None:
        table = pa.table({"tier": _tiers(reasons, len(kept)), "kept": kept, "row": rows})
        self._add("clusters", _grouped(table.filter(pc.is_valid(kept)), ["tier", "kept"]))

    def domains(self) -> list[tuple[str, dict[str, int]]]:
        self._flush()
        top = self._db.execute(
            "SELECT domain FROM domains GROUP BY domain ORDER BY sum(n) DESC, min(first_row) LIMIT ?", [TOP_DOMAINS]
        ).fetchall()
        names = [name for (name,) in top]
        by_domain: dict[str, dict[str, int]] = {name: {} for name in names}
        for domain, status, rows in self._db.execute(
            "SELECT domain, status, sum(n) FROM domains WHERE domain IN (SELECT unnest(?)) GROUP BY ALL", [names]
        ).fetchall():
            by_domain[domain][status] = int(rows)
        return [(name, by_domain[name]) for name in names]

    def errors(self) -> list[tuple[str, str, str, int]]:
        self._flush()
        return [(domain, status, error_class, int(rows)) for domain, status, error_class, rows in self._db.execute(
            "SELECT domain, status, error_class, sum(n) FROM errors GROUP BY ALL ORDER BY sum(n) DESC, "
            "min(first_row) LIMIT ?", [TOP_ERRORS]
        ).fetchall()]

    def clusters(self, per_tier: int) -> dict[tuple[str, str], Cluster]:
        """The ``per_tier`` largest clusters of each tier (first seen first among equals), to be filled by the
        second pass; each tier's totals go in ``tiers``."""
        self._flush()
        self.tiers = {tier: TierClusters(int(dropped), int(clusters)) for tier, dropped, clusters in self._db.execute(
            "SELECT tier, sum(n), count(DISTINCT kept) FROM clusters GROUP BY tier").fetchall()}
        chosen = self._db.execute(
            "SELECT tier, kept, size FROM (SELECT tier, kept, sum(n) AS size, row_number() OVER (PARTITION BY tier "
            "ORDER BY sum(n) DESC, min(first_row)) AS place FROM clusters GROUP BY tier, kept) WHERE place <= ? "
            "ORDER BY tier, place", [per_tier]
        ).fetchall()
        return {(tier, kept): Cluster(kept_key=kept, size=int(size)) for tier, kept, size in chosen}

    def _add(self, name: str, table: pa.Table) -> None:
        self._pending[name].append(table)
        if sum(part.num_rows for part in self._pending[name]) >= _FLUSH_ROWS:
            self._flush(name)

    def _flush(self, name: str | None = None) -> None:
        for table_name in [name] if name else list(self._pending):
            if self._pending[table_name]:
                self._db.register("part", pa.concat_tables(self._pending[table_name]))
                self._db.execute(f"INSERT INTO {table_name} SELECT * FROM part")
                self._db.unregister("part")
                self._pending[table_name] = []


_ANNOTATION_NUMBERS = ("laplacian_variance", "caption_chars_per_100px", "caption_language_score")


def _numbers(table: pa.Table, has: set) -> dict[str, np.ndarray]:
    """The values each histogram counts in this batch (NaN-free)."""
    found: dict[str, np.ndarray] = {}
    if {"original_width", "original_height"} <= has:
        success = _filled(pc.equal(table.column("status"), SUCCESS))
        widths, heights = _floats(table.column("original_width")), _floats(table.column("original_height"))
        keep = success & ~(np.isnan(widths) | np.isnan(heights)) & (heights > 0)
        found.update(original_width=widths[keep], original_height=heights[keep],
                     aspect_ratio=widths[keep] / heights[keep])
    for name in ("clip_score", *_ANNOTATION_NUMBERS):
        if name in has:
            values = _floats(table.column(name))
            found[name] = values[~np.isnan(values)]
    return found


def _widen(ranges: dict, name: str, values: np.ndarray) -> None:
    if name in LOG_SCALE:
        values = np.log10(values[values > 0])
    if len(values):
        low, high = float(values.min()), float(values.max())
        if name in ranges:
            low, high = min(low, ranges[name][0]), max(high, ranges[name][1])
        ranges[name] = (low, high)


def _edges(name: str, low: float, high: float) -> np.ndarray:
    """The edges ``np.histogram(values, bins)`` picks for values spanning [low, high]."""
    return np.histogram_bin_edges(np.array([low, high]), bins=HISTOGRAM_BINS.get(name, 40))


def _domains(urls: pa.ChunkedArray) -> pa.Array:
    """Each URL's host as ``urlsplit(url).netloc`` gives it; computed once per distinct start of a URL (the
    authority ends at the first '/', '?' or '#' after the '//', so that start decides it)."""
    filled = pc.fill_null(urls.combine_chunks() if isinstance(urls, pa.ChunkedArray) else urls, "")
    start = pc.extract_regex(filled, f"(?P<start>{_NETLOC})")
    candidates = pc.if_else(pc.is_valid(start), pc.struct_field(start, "start"), filled)
    encoded = pc.dictionary_encode(candidates)
    names = pa.array([domain(text) for text in encoded.dictionary.to_pylist()], pa.string())
    return names.take(encoded.indices)


@functools.lru_cache(maxsize=1 << 16)  # the busiest hosts recur in every shard
def domain(url: str | None) -> str:
    try:
        return urlsplit(url or "").netloc or "(no host)"
    except ValueError:
        return "(malformed)"


def _tiers(reasons: pa.ChunkedArray | None, rows: int) -> pa.Array:
    """Each row's dedup tier: its dup_reason, "unknown" where it has none."""
    if reasons is None:
        return pa.array(["unknown"] * rows, pa.string())
    reasons = reasons.combine_chunks() if isinstance(reasons, pa.ChunkedArray) else reasons
    return pc.if_else(pc.fill_null(pc.not_equal(reasons, ""), False), reasons, pa.scalar("unknown"))


def _grouped(table: pa.Table, keys: list[str]) -> pa.Table:
    grouped = table.group_by(keys, use_threads=False).aggregate([("row", "count"), ("row", "min")])
    return grouped.select([*keys, "row_count", "row_min"])


def _value_counts(column: pa.ChunkedArray) -> dict:
    counts = pc.value_counts(column.drop_null() if isinstance(column, pa.ChunkedArray) else column)
    return {item["values"].as_py(): item["counts"].as_py() for item in counts}


def _floats(column: pa.ChunkedArray) -> np.ndarray:
    return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), dtype=np.float64)


def _filled(mask) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False).astype(bool)

