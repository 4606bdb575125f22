"""``mmdata report``: one self-contained HTML page that shows what curation did to a dataset.

Every section is always present; a stage that has not run says so. Charts are matplotlib PNGs and
sample images are thumbnails, all inline as data URIs, so the file can be mailed or archived alone.
The dataset and the report file may each be a local path or a URL (``s3://bucket/ds``); each
thumbnail is one ranged read of its shard's tar.
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import os
from pathlib import Path

import numpy as np

import mmdata
from mmdata import layout
from mmdata.atomic import atomic_file
from mmdata.report import plots
from mmdata.report.aggregates import MEMORY_LIMIT, TierClusters
from mmdata.report.facts import BalanceFacts, ReportFacts, flatten, gather
from mmdata.schemas.members import image_member
from mmdata.schemas.samples import SUCCESS
from mmdata.shards import ShardFormatError, samples_in_range
from mmdata.storage import Location, location

SECTIONS = (
    ("funnel", "Funnel per stage"),
    ("domains", "Statuses and error classes by domain"),
    ("sizes", "Image sizes and aspect ratios"),
    ("annotations", "Caption languages and image quality"),
    ("scores", "CLIP score distribution"),
    ("threshold", "Samples at the threshold"),
    ("duplicates", "Duplicate clusters"),
    ("balance", "Entry balancing (MetaCLIP)"),
    ("provenance", "Provenance of every stage"),
)
THUMBNAIL_SIDE = 128

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
h1 { margin-bottom: 0.2em; } section { margin: 2em 0; border-top: 1px solid #ddd; padding-top: 0.5em; }
table { border-collapse: collapse; font-size: 0.9em; margin: 0.5em 0; }
th, td { border: 1px solid #ccc; padding: 3px 8px; text-align: right; } \
th:first-child, td:first-child { text-align: left; }
.not-run { color: #8a6d3b; background: #fcf8e3; padding: 0.5em 1em; border-radius: 4px; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; } .grid figure { margin: 0; width: 140px; font-size: 0.75em; }
.grid img { width: 128px; height: 128px; object-fit: contain; background: #eee; display: block; }
.cluster { border: 1px solid #ddd; padding: 6px; margin: 6px 0; border-radius: 4px; }
pre { background: #f6f6f6; padding: 0.6em; overflow-x: auto; font-size: 0.8em; max-height: 24em; }
img.chart { max-width: 100%; }
"""


def write_report(root: layout.Root, output: str | os.PathLike | Location, *, view: str | None = None,
                 grid_size: int = 12, clusters_per_tier: int = 3, memory_limit: str = MEMORY_LIMIT,
                 storage_options: dict | None = None) -> Path | Location:
    """Write the report of dataset ``root`` to ``output`` (one HTML file) and return where it is: a
    Path for a local file, a Location for a URL. ``storage_options`` serve both URLs.

    ``view`` picks the view whose clip-score threshold is drawn (default: the first with a score rule).
    The rows are read a shard at a time as aggregates; ``memory_limit`` bounds DuckDB's share (the counts
    per domain and per duplicate cluster), which spills to a temporary folder beyond it.
    """
    if grid_size < 1 or clusters_per_tier < 1:
        raise ValueError("grid_size and clusters_per_tier must be at least 1")
    facts = gather(root, view=view, grid_size=grid_size, clusters_per_tier=clusters_per_tier,
                   memory_limit=memory_limit, storage_options=storage_options)
    thumbnails = _Thumbnails(facts)
    bodies = {
        "funnel": _funnel_section(facts),
        "domains": _domains_section(facts),
        "sizes": _sizes_section(facts),
        "annotations": _annotations_section(facts),
        "scores": _scores_section(facts),
        "threshold": _threshold_section(facts, thumbnails),
        "duplicates": _duplicates_section(facts, thumbnails),
        "balance": _balance_section(facts),
        "provenance": _provenance_section(facts),
    }
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<link rel="icon" href="data:,">',
        f"<title>mmdata report: {_e(facts.root.name)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>Curation report: {_e(str(facts.root))}</h1>",
        f"<p>mmdata {mmdata.__version__}, generated {generated}.</p>",
        "<nav><ul>" + "".join(f'<li><a href="#{key}">{_e(title)}</a></li>' for key, title in SECTIONS) + "</ul></nav>",
    ]
    for key, title in SECTIONS:
        parts.append(f'<section id="{key}"><h2>{_e(title)}</h2>{bodies[key]}</section>')
    parts.append("</body></html>")
    output = location(output, storage_options)
    with atomic_file(output, "w") as handle:
        handle.write("\n".join(parts))
    return output.local_path() if output.is_local else output


def _funnel_section(facts: ReportFacts) -> str:
    if facts.rows is None:
        return _not_run("download", "no complete shard in this folder")
    rows = facts.rows
    statuses = dict(rows.statuses)
    stages = [("input rows", rows.rows), ("downloaded", statuses.get(SUCCESS, 0))]
    notes = []
    if facts.scored:
        stages.append(("scored", rows.scored))
    else:
        notes.append(_not_run("score", "no scores/ folder"))
    if facts.deduplicated:
        reasons = rows.dup_reasons
        kept = statuses.get(SUCCESS, 0) - sum(reasons.values())
        for tier in ("exact", "near", "semantic"):
            stages.append((f"dropped as {tier} duplicate", reasons.get(tier, 0)))
        stages.append(("unique after dedup", kept))
    else:
        notes.append(_not_run("dedup", "no annotations/dedup.parquet"))
    if facts.views:
        for view_facts in facts.views:
            stages.append((f"view {view_facts.name}", view_facts.rows))
    else:
        notes.append(_not_run("filter", "no views/ folder"))
    parts = [f'<img class="chart" alt="funnel" src="{plots.funnel_chart(stages, "Samples per stage")}">']
    parts.append(_table(["stage", "samples"], [[label, f"{count:,}"] for label, count in stages]))
    parts.append("<h3>Download statuses</h3>")
    parts.append(_table(["status", "rows"], [[s, f"{n:,}"] for s, n in rows.statuses]))
    for view_facts in facts.views:
        parts.append(f"<h3>Filter funnel of view <code>{_e(view_facts.name)}</code></h3>")
        parts.append(_funnel_table(view_facts.funnel))
    return "".join(parts + notes)


def _funnel_table(funnel) -> str:
    """The filter's own funnel (rows in, dropped per rule, rows out) as a chart and a table."""
    if not isinstance(funnel, dict) or not isinstance(funnel.get("steps"), list) or "rows_in" not in funnel:
        return _json_block(funnel) if funnel is not None else "<p>No funnel recorded with this view.</p>"
    remaining = int(funnel["rows_in"])
    stages, rows = [("rows in", remaining)], [["rows in", "", f"{remaining:,}"]]
    for step in funnel["steps"]:
        dropped = int(step.get("dropped", 0))
        remaining -= dropped
        details = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                            for k, v in step.items() if k not in ("rule", "dropped"))
        label = str(step.get("rule", "?"))
        stages.append((label, remaining))
        rows.append([f"{label} ({details})" if details else label, f"-{dropped:,}", f"{remaining:,}"])
    chart = plots.funnel_chart(stages, "Rows left after each rule")
    return f'<img class="chart" alt="filter funnel" src="{chart}">' + _table(["rule", "dropped", "rows left"], rows)


def _domains_section(facts: ReportFacts) -> str:
    if facts.rows is None:
        return _not_run("download", "no complete shard in this folder")
    order = [name for name, _ in facts.rows.domains]
    by_domain = dict(facts.rows.domains)
    status_names = [status for status, _ in facts.rows.statuses]
    series = {status: [by_domain[d].get(status, 0) for d in order] for status in status_names}
    parts = [
        f'<img class="chart" alt="statuses by domain" src="{plots.stacked_bars(order, series, "Status by domain")}">'
    ]
    parts.append(_table(["domain", *status_names],
                        [[d, *[by_domain[d].get(s, 0) for s in status_names]] for d in order]))
    parts.append("<h3>Error classes</h3>")
    parts.append(_table(["domain", "status", "error class", "rows"], [list(error) for error in facts.rows.errors]))
    return "".join(parts)


def _sizes_section(facts: ReportFacts) -> str:
    if facts.rows is None:
        return _not_run("download", "no complete shard in this folder")
    histograms = facts.rows.histograms
    if not facts.rows.sized:
        return "<p>No stored image records its original size.</p>"
    chart = plots.histograms(
        [("original width (px)", histograms["original_width"]), ("original height (px)", histograms["original_height"]),
         ("aspect ratio (w/h)", histograms["aspect_ratio"])],
        f"{facts.rows.sized:,} stored images",
    )
    return f'<img class="chart" alt="size histograms" src="{chart}">'


def _annotations_section(facts: ReportFacts) -> str:
    if not facts.annotated:  # an optional stage, not a step of the loop: a plain note, not "not run"
        return ("<p>No annotations in this dataset. <code>mmdata annotate DIR</code> adds each caption's language "
                "and each image's sharpness (<code>laplacian_variance</code>).</p>")
    rows, parts = facts.rows, []
    if rows.languages:
        labels = [code for code, _ in rows.languages]
        chart = plots.bars(labels, [count for _, count in rows.languages],
                           f"The {len(labels)} most frequent caption languages")
        parts.append(f'<img class="chart" alt="caption languages" src="{chart}">')
        parts.append(_table(["caption_language", "rows", "share"],
                            [[code, f"{count:,}", _share(count, rows.rows)] for code, count in rows.languages]))
        parts.append(f"<p>{rows.no_language:,} rows have no caption language (no caption).</p>")
    panels = [(label, rows.histograms[name]) for name, label in (
        ("laplacian_variance", "laplacian_variance (log scale)"),
        ("caption_chars_per_100px", "caption_chars_per_100px"),
        ("caption_language_score", "caption_language_score"),
    ) if name in rows.histograms]
    if panels:
        chart = plots.histograms(panels, "Image quality and language confidence")
        parts.append(f'<img class="chart" alt="annotation histograms" src="{chart}">')
        outside = rows.histograms.get("laplacian_variance")
        if outside is not None and outside.outside:
            parts.append(f"<p>{outside.outside:,} images with a laplacian_variance of 0 are not drawn "
                         "(flat images: nothing to see on a log scale).</p>")
    return "".join(parts)


def _scores_section(facts: ReportFacts) -> str:
    if not facts.scored:
        return _not_run("score", "no clip_score column: run `mmdata score`")
    histogram = facts.rows.histograms.get("clip_score")
    threshold = facts.view.threshold if facts.view else None
    title = f"{facts.rows.scored:,} scored pairs"
    parts = []
    if histogram is not None:
        chart = plots.score_histogram(histogram, threshold, title)
        parts.append(f'<img class="chart" alt="clip_score histogram" src="{chart}">')
    if threshold is None:
        parts.append(_not_run("filter", "no view with a clip-score rule, so no threshold to draw"))
    else:
        parts.append(f"<p>Threshold {threshold:.4f} from view <code>{_e(facts.view.name)}</code>: "
                     f"{facts.rows.at_or_above:,} pairs at or above, {facts.rows.below:,} below.</p>")
    return "".join(parts)


def _threshold_section(facts: ReportFacts, thumbnails: "_Thumbnails") -> str:
    if not facts.scored or facts.view is None or facts.view.threshold is None:
        return _not_run("filter", "needs scores and a view with a clip-score rule")
    threshold = facts.view.threshold
    parts = []
    for title, rows in (
        (f"Just above {threshold:.4f} (kept)", facts.rows.just_above),
        (f"Just below {threshold:.4f} (dropped)", facts.rows.just_below),
    ):
        parts.append(f"<h3>{_e(title)}</h3>")
        figures = [_figure(thumbnails, row, f"{row['clip_score']:.3f}") for row in rows]
        parts.append('<div class="grid">' + "".join(figures) + "</div>" if figures else "<p>None.</p>")
    return "".join(parts)


def _duplicates_section(facts: ReportFacts, thumbnails: "_Thumbnails") -> str:
    if not facts.deduplicated:
        return _not_run("dedup", "no annotations/dedup.parquet: run `mmdata dedup`")
    parts = []
    for tier in ("exact", "near", "semantic"):
        clusters = facts.rows.clusters.get(tier, TierClusters())
        parts.append(f"<h3>{tier} ({clusters.dropped:,} dropped, {clusters.clusters:,} clusters)</h3>")
        check = facts.semantic_check
        if tier == "semantic" and check is not None and check.get("ran") is False:
            parts.append("<p>Refused by its check: the embeddings cannot tell a copy from a neighbour at this eps, "
                         "so the tier marked nothing (see the check below).</p>")
            continue
        if not clusters.clusters:
            parts.append("<p>No duplicates in this tier.</p>")
            continue
        for cluster in clusters.shown:
            figures = [_figure(thumbnails, cluster.kept, "kept")] if cluster.kept is not None else []
            for row in cluster.members:
                similarity = row.get("dup_similarity")
                figures.append(_figure(thumbnails, row, tier if similarity is None else f"{tier} {similarity:.3f}"))
            parts.append('<div class="cluster grid">' + "".join(figures) + "</div>")
    if facts.semantic_check is not None:
        parts.append(_semantic_check(facts.semantic_check))
    return "".join(parts)


def _semantic_check(check: dict) -> str:
    """The dedup stage's check of its semantic tier: the verdict, then every number it measured."""
    parts = ["<h3>Semantic tier check</h3>"]
    if check.get("verdict") is not None:
        parts.append(f'<p class="verdict"><b>Verdict:</b> {_e(str(check["verdict"]))}</p>')
    numbers = [[name, f"{value:.4g}" if isinstance(value, float) else f"{value:,}"]
               for name, value in flatten(check).items()
               if isinstance(value, (int, float)) and not isinstance(value, bool)]
    if numbers:
        parts.append(_table(["measure", "value"], numbers))
    return "".join(parts)


_HEAD_ENTRIES = 15


def _balance_section(facts: ReportFacts) -> str:
    if not facts.balances:  # an optional stage, not a step of the loop: a plain note, not "not run"
        return ("<p>No balanced view in this dataset. <code>mmdata balance DIR --metadata entries.txt</code> "
                "caps each entry's matched samples at about t (MetaCLIP).</p>")
    return "".join(_balanced_view(balance) for balance in facts.balances)


def _balanced_view(balance: BalanceFacts) -> str:
    summary = balance.summary
    t = int(summary.get("t", 0))
    pool, matched, kept = (int(summary.get(name, 0)) for name in ("pool", "matched", "kept"))
    source = f"the successful samples of view <code>{_e(str(summary['from_view']))}</code>" \
        if summary.get("from_view") else "every successful sample"
    parts = [
        f"<h3>View <code>{_e(balance.view)}</code></h3>",
        f"<p>Pool: {source}. Entry list <code>{_e(str(summary.get('metadata', '?')))}</code>, "
        f"{int(summary.get('entries', 0)):,} entries, {int(summary.get('entries_matched', 0)):,} matched, "
        f"{int(summary.get('head_entries', 0)):,} above t = {t:,} (seed {summary.get('seed', 0)}). "
        f"Kept fraction: <b>{_share(kept, pool)}</b> of the pool, {_share(kept, matched)} of the matched samples.</p>",
        _table(["samples", "count", "share of pool"], [
            ["pool", f"{pool:,}", _share(pool, pool)],
            ["matched an entry", f"{matched:,}", _share(matched, pool)],
            ["kept", f"{kept:,}", _share(kept, pool)],
        ]),
    ]
    if balance.entry_counts is None:
        parts.append(f"<p>The per-entry counts ({_e(str(balance.entry_counts_path))}) are missing: "
                     "re-run mmdata balance to draw the distribution.</p>")
        return "".join(parts)
    entries = balance.entry_counts.column("entry").to_pylist()
    before = balance.entry_counts.column("count").to_numpy(zero_copy_only=False).astype(np.int64)
    after = balance.entry_counts.column("kept").to_numpy(zero_copy_only=False).astype(np.int64)
    chart = plots.entry_count_curves(before, after, t, "Matched samples per entry, largest first")
    parts.append(f'<img class="chart" alt="entry counts before and after balancing" src="{chart}">')
    parts.append(f"<h4>Head: the {min(_HEAD_ENTRIES, int((before > 0).sum()))} entries with the most samples</h4>")
    head = [i for i in np.argsort(-before, kind="stable")[:_HEAD_ENTRIES] if before[i] > 0]
    parts.append(_table(["entry", "count before", "min(count, t)", "kept", "kept / count"], [
        [entries[i], f"{before[i]:,}", f"{min(before[i], t):,}", f"{after[i]:,}", _share(after[i], before[i])]
        for i in head
    ]))
    parts.append("<p>A sample that matches one entry is kept with probability min(1, t / count), so such an "
                 "entry keeps min(count, t) give or take the binomial spread. A sample matching several entries "
                 "is kept when any of them keeps it and counts for each: head entries end above t by those "
                 "riders.</p>")
    parts.append("<h4>Head and tail</h4>")
    groups = [("head (count > t)", before > t), ("tail (1 ≤ count ≤ t)", (before > 0) & (before <= t)),
              ("never matched", before == 0)]
    parts.append(_table(["entries", "number", "matches before", "matches after", "largest after"], [
        [label, f"{int(mask.sum()):,}", f"{int(before[mask].sum()):,}", f"{int(after[mask].sum()):,}",
         f"{int(after[mask].max()) if mask.any() else 0:,}"]
        for label, mask in groups
    ]))
    return "".join(parts)


def _share(part: int, whole: int) -> str:
    return f"{100 * part / whole:.1f}%" if whole else "-"


def _provenance_section(facts: ReportFacts) -> str:
    parts = ["<h3>Download</h3>"]
    if facts.manifest is None:
        parts.append(_not_run("download", "no manifest.json (the job has not finished)"))
    else:
        manifest = dict(facts.manifest)
        shards = manifest.get("shards")
        if isinstance(shards, list) and len(shards) > 5:
            manifest["shards"] = shards[:5] + [f"... {len(shards) - 5} more"]
        parts.append(_json_block(manifest))
    parts.append("<h3>Scores</h3>")
    if facts.score_models:
        for model_id, provenance in facts.score_models.items():
            parts.append(f"<h4><code>{_e(model_id)}</code></h4>{_json_block(provenance)}")
    else:
        parts.append(_not_run("score", "no scores/ folder"))
    parts.append("<h3>Dedup</h3>")
    parts.append(_json_block(facts.dedup_metadata) if facts.dedup_metadata is not None
                 else _not_run("dedup", "no annotations/dedup.parquet"))
    parts.append("<h3>Views</h3>")
    if facts.views:
        for view_facts in facts.views:
            parts.append(f"<h4><code>{_e(view_facts.name)}</code> ({view_facts.rows:,} samples)</h4>")
            provenance = {"rules": view_facts.rules, "funnel": view_facts.funnel}
            if view_facts.balance is not None:
                provenance["balance"] = view_facts.balance
            parts.append(_json_block(provenance))
    else:
        parts.append(_not_run("filter", "no views/ folder"))
    return "".join(parts)


class _Thumbnails:
    """Reads one sample's image straight from its tar byte range and shrinks it to a JPEG data URI.

    Shards whose metadata lacks the byte ranges (img2dataset output) are indexed by one header scan.
    """

    def __init__(self, facts: ReportFacts):
        self.root = facts.root
        self._scanned: dict[str, dict[str, tuple[int, int]]] = {}

    def data_uri(self, shard: str, key: str, offset: int | None, size: int | None) -> str | None:
        from PIL import Image

        path = layout.tar_path(self.root, shard)
        if offset is None or size is None:
            offset, size = self._span_from_scan(shard, path).get(key, (None, None))
            if offset is None:
                return None
        blob = path.read_range(offset, size)
        samples = samples_in_range(blob) if len(blob) == size else []
        if len(samples) != 1:
            raise ShardFormatError(f"{path}: bytes {offset}+{size} are not one sample (is its parquet stale?)")
        body = image_member(samples[0][1])
        if body is None:
            return None
        image = Image.open(io.BytesIO(body)).convert("RGB")
        image.thumbnail((THUMBNAIL_SIDE, THUMBNAIL_SIDE))
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=85)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()

    def _span_from_scan(self, shard: str, path: Location) -> dict[str, tuple[int, int]]:
        if shard not in self._scanned:
            from mmdata.stream.index import scan_members

            with path.open("rb") as handle:
                members = scan_members(handle)
            self._scanned[shard] = dict(zip(
                members.column("key").to_pylist(),
                zip(members.column("tar_offset").to_pylist(), members.column("tar_size").to_pylist()),
            ))
        return self._scanned[shard]


def _figure(thumbnails: _Thumbnails, row: dict, label: str) -> str:
    shard = row.get("shard") or row["key"][: layout.SHARD_DIGITS]
    caption = (f'<figcaption><b>{_e(label)}</b> <code>{_e(row["key"])}</code><br>'
               f'{_e((row.get("caption") or "")[:90])}</figcaption>')
    try:
        uri = thumbnails.data_uri(shard, row["key"], row.get("tar_offset"), row.get("tar_size"))
    except FileNotFoundError:  # a metadata-only copy of a dataset: say so where the picture would be
        return f"<figure><p>(no image: the tar of shard {_e(shard)} is missing)</p>{caption}</figure>"
    if uri is None:
        return ""
    return f'<figure><img alt="{_e(row["key"])}" src="{uri}">{caption}</figure>'


def _table(header: list[str], rows: list[list], *, escape: bool = True) -> str:
    cell = _e if escape else str
    head = "".join(f"<th>{_e(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _json_block(payload) -> str:
    return f"<pre>{_e(json.dumps(payload, indent=2, sort_keys=True, default=str))}</pre>"


def _not_run(stage: str, why: str) -> str:
    return f'<p class="not-run">{_e(stage)}: not run ({_e(why)}).</p>'


def _e(text: str) -> str:
    return html.escape(text, quote=True)
