"""The report's aggregates, made a shard at a time, are what the whole in-memory table says: counts by
status, domain and error class, histograms, the samples nearest the threshold, the duplicate clusters
and the annotate stage's columns; also under a tight DuckDB memory limit, and without any tar."""

from collections import Counter, defaultdict
from urllib.parse import urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from metadata_corpus import CorpusSpec, in_memory_table, write_corpus

from mmdata.curate.view import write_view
from mmdata.report import aggregates
from mmdata.report.aggregates import HISTOGRAM_BINS, summarise
from mmdata.report.html import write_report
from mmdata.storage import location

THRESHOLD = 0.33


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    write_corpus(root, CorpusSpec(rows=12_000, shard_size=1_500, seed=6, domains=3_000, group_rows=2_000))
    return root


def floats(table: pa.Table, name: str) -> np.ndarray:
    return table.column(name).cast(pa.float64()).to_numpy(zero_copy_only=False)


def expected_facts(table: pa.Table, grid_size: int, per_tier: int) -> dict:
    """The report's numbers the way its sections computed them over the whole table."""
    rows = table.to_pydict()
    statuses = Counter(rows["status"])
    domains = [urlsplit(url or "").netloc or "(no host)" for url in rows["url"]]
    by_domain: dict[str, Counter] = defaultdict(Counter)
    errors = Counter()
    for domain, status, error_class in zip(domains, rows["status"], rows["error_class"]):
        by_domain[domain][status] += 1
        if status != "success":
            errors[(domain, status, error_class or "(none)")] += 1
    order = sorted(by_domain, key=lambda d: -sum(by_domain[d].values()))[:20]
    success = np.array([status == "success" for status in rows["status"]])
    widths, heights = floats(table, "original_width"), floats(table, "original_height")
    sized = success & ~(np.isnan(widths) | np.isnan(heights)) & (heights > 0)
    scores = floats(table, "clip_score")
    scored = np.flatnonzero(~np.isnan(scores))
    above = sorted((i for i in scored if scores[i] >= THRESHOLD), key=lambda i: (scores[i], i))[:grid_size]
    below = sorted((i for i in scored if scores[i] < THRESHOLD), key=lambda i: (-scores[i], i))[:grid_size]
    clusters: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for i, (kept, reason) in enumerate(zip(rows["duplicate_of"], rows["dup_reason"])):
        if kept is not None:
            clusters[reason or "unknown"][kept].append(i)
    sharpness = floats(table, "laplacian_variance")
    sharpness = sharpness[~np.isnan(sharpness)]
    numbers = {"original_width": widths[sized], "original_height": heights[sized],
               "aspect_ratio": widths[sized] / heights[sized], "clip_score": scores[scored],
               "laplacian_variance": np.log10(sharpness[sharpness > 0])}
    for name in ("caption_chars_per_100px", "caption_language_score"):
        values = floats(table, name)
        numbers[name] = values[~np.isnan(values)]
    return {
        "statuses": statuses.most_common(),
        "domains": [(d, dict(by_domain[d])) for d in order],
        "errors": [(*key, count) for key, count in errors.most_common(40)],
        "histograms": {name: np.histogram(values, bins=HISTOGRAM_BINS[name])[0] for name, values in numbers.items()},
        "flat": int((sharpness <= 0).sum()),
        "just_above": [rows["key"][i] for i in above],
        "just_below": [rows["key"][i] for i in below],
        "clusters": {tier: (sum(len(v) for v in found.values()), len(found),
                            [(kept, [rows["key"][i] for i in members[:7]])
                             for kept, members in sorted(found.items(), key=lambda item: -len(item[1]))[:per_tier]])
                     for tier, found in clusters.items()},
        "languages": Counter(language for language in rows["caption_language"] if language).most_common(10),
        "scored": len(scored),
        "at_or_above": int((scores[scored] >= THRESHOLD).sum()),
    }


@pytest.mark.parametrize("memory_limit", ["512MB", "16MB"])
def test_aggregates_are_what_the_whole_table_says(dataset, monkeypatch, memory_limit):
    monkeypatch.setattr(aggregates, "_FLUSH_ROWS", 1_000)  # many inserts, and DuckDB spills under 16MB
    facts = summarise(location(dataset), threshold=THRESHOLD, grid_size=5, clusters_per_tier=3,
                      memory_limit=memory_limit)
    table = in_memory_table(dataset)
    expected = expected_facts(table, grid_size=5, per_tier=3)
    assert facts.rows == table.num_rows and facts.statuses == expected["statuses"]
    assert facts.domains == expected["domains"] and len(facts.domains) == 20
    assert facts.errors == expected["errors"]
    assert facts.scored == expected["scored"] and facts.at_or_above == expected["at_or_above"]
    for name, counts in expected["histograms"].items():
        assert facts.histograms[name].counts.tolist() == counts.tolist(), name
    assert facts.histograms["laplacian_variance"].outside == expected["flat"] > 0
    assert [row["key"] for row in facts.just_above] == expected["just_above"]
    assert [row["key"] for row in facts.just_below] == expected["just_below"]
    assert all(row["caption"] is not None or row["key"] for row in facts.just_above)
    assert facts.languages == expected["languages"]
    assert set(facts.clusters) == set(expected["clusters"]) == {"exact", "near", "semantic"}
    for tier, (dropped, count, shown) in expected["clusters"].items():
        clusters = facts.clusters[tier]
        assert (clusters.dropped, clusters.clusters) == (dropped, count)
        assert [(c.kept_key, [m["key"] for m in c.members]) for c in clusters.shown] == shown
        assert all(c.kept["key"] == c.kept_key and c.kept["tar_size"] for c in clusters.shown)


def test_domains_are_urlsplit_hosts():
    urls = ["http://a.test/x", "https://b.test:8080/x?y#z", "http://c.test?q=1", "http://d.test#frag", "//e.test/p",
            "ftp://f.test", "no-scheme/path", "http:/g.test/x", "http:\t//h.test/x", "http://i.te\nst/x", "", None,
            "http://[::1/x", "http://user:pw@j.test/", "HTTP://K.TEST/x", "http://l.test", "mailto:x@m.test",
            " http://n.test/x", "http://o.test/a//b"]
    hosts = aggregates._domains(pa.chunked_array([pa.array(urls, pa.string())])).to_pylist()
    assert hosts == [aggregates.domain(url) for url in urls]
    assert hosts[:3] == ["a.test", "b.test:8080", "c.test"] and hosts[12] == "(malformed)"


def section(text: str, key: str) -> str:
    start = text.index(f'<section id="{key}">')
    return text[start : text.index("</section>", start)]


def test_report_with_annotations_and_no_tars(dataset, tmp_path):
    """A metadata-only dataset (no tar at all) still gets its whole report; the annotate stage's columns
    have their own section: the language bars and the image-quality histograms."""
    write_view(dataset, view="best", top_fraction=0.3, drop_duplicates=True)
    text = write_report(dataset, tmp_path / "report.html", grid_size=4).read_text()
    annotations = section(text, "annotations")
    assert 'alt="caption languages"' in annotations and 'alt="annotation histograms"' in annotations
    table = in_memory_table(dataset)
    english = int(pc.sum(pc.equal(table.column("caption_language"), "en")).as_py())
    assert f"<td>en</td><td>{english:,}</td>" in annotations
    assert "laplacian_variance of 0 are not drawn" in annotations
    assert section(text, "threshold").count("(no image: the tar of shard") == 2 * 4
    clusters = summarise(location(dataset), threshold=None, grid_size=4, clusters_per_tier=3).clusters
    drawn = sum(1 + len(cluster.members) for tier in clusters.values() for cluster in tier.shown)
    assert section(text, "duplicates").count("(no image: the tar of shard") == drawn > 9
    assert "not-run" not in section(text, "funnel") + section(text, "scores") + section(text, "duplicates")
