"""The report of a dataset that was only downloaded, opened in real headless Chromium: every section
is there, the stages that did not run say so, every image loads, and nothing logs an error."""

import io

from browser import open_report, require_chromium
from PIL import Image

from mmdata.layout import sample_key, sample_uid
from mmdata.report.html import SECTIONS, write_report
from mmdata.shard_output import shard_output


def _downloaded_dataset(root, samples=12):
    with shard_output(root, 0) as output:
        for row in range(samples):
            key = sample_key(0, row, 100)
            url, caption = f"http://site{row % 3}.test/{row}.jpg", f"caption {row}"
            base = {"key": key, "uid": sample_uid(url, caption), "url": url, "caption": caption}
            if row % 4 == 3:
                output.add({**base, "status": "failed_to_download", "error_message": "HTTP 404",
                            "error_class": "http_404"})
                continue
            buffer = io.BytesIO()
            Image.new("RGB", (40 + 8 * row, 30 + 4 * row), (20 * row, 120, 200)).save(buffer, "JPEG")
            output.add({**base, "status": "success", "width": 64, "height": 64,
                        "original_width": 40 + 8 * row, "original_height": 30 + 4 * row},
                       {"jpg": buffer.getvalue(), "txt": caption.encode()})
        output.commit({"count": samples})


def test_download_only_report_in_chromium(tmp_path):
    require_chromium()
    _downloaded_dataset(tmp_path / "data")
    report = write_report(tmp_path / "data", tmp_path / "report.html")
    page = open_report(report, tmp_path / "report.png")
    assert page["errors"] == []
    assert page["sections"] == [key for key, _ in SECTIONS]
    assert {"scores", "threshold", "duplicates"} <= set(page["not_run"])
    assert "funnel" in page["not_run"]  # the funnel says score, dedup and filter did not run
    assert {image["section"] for image in page["images"]} == {"funnel", "domains", "sizes"}
    assert all(image["width"] > 0 for image in page["images"])
    assert (tmp_path / "report.png").stat().st_size > 10_000
    text = report.read_text()
    assert "site0.test" in text and "http_404" in text
    assert "<script" not in text and "http://site0.test/0.jpg\"" not in text  # nothing fetched, nothing run


def test_report_command_writes_the_same_page(tmp_path):
    from mmdata.cli import main

    _downloaded_dataset(tmp_path / "data")
    assert main(["report", str(tmp_path / "data"), "-o", str(tmp_path / "cli.html")]) == 0
    assert (tmp_path / "cli.html").read_text().count("<section id=") == len(SECTIONS)
    assert main(["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.html")]) == 2  # says what to pass


BALANCE_CAPTIONS = ["a dog in the park"] * 20 + ["a cat on a sofa"] * 10 + ["a fox, running"] * 4 + \
    ["an owl and a cat"] * 2 + ["nothing to see"] * 2
# shaped as mmdata.curate.semantic_check.SemanticCheck records it: here a refused tier
SEMANTIC_CHECK = {"verdict": "refused: 1 - eps = 0.9500 lies inside the bulk of nearest-neighbour similarities",
                  "ran": False, "refused": True, "forced": False, "eps": 0.05, "threshold": 0.95, "samples": 400,
                  "nearest_neighbour": {"q50": 0.912, "q99": 0.991}, "random_pairs": {"q99": 0.41},
                  "above_threshold": 0.0125}


def _balanced_dataset(root, folder, *, semantic_check=None):
    """Captions over four entries (with images), exact dedup, then balance with t=5: what the balance and
    duplicates sections show."""
    import json

    import pyarrow.parquet as pq

    import mmdata

    with shard_output(root, 0) as output:
        for row, caption in enumerate(BALANCE_CAPTIONS):
            key = sample_key(0, row, 100)
            url = f"http://site{row % 2}.test/{row}.jpg"
            buffer = io.BytesIO()
            Image.new("RGB", (48, 40), (6 * row, 255 - 6 * row, (37 * row) % 256)).save(buffer, "JPEG")
            output.add({"key": key, "uid": sample_uid(url, caption), "url": url, "caption": caption,
                        "status": "success", "width": 48, "height": 40, "original_width": 48, "original_height": 40},
                       {"jpg": buffer.getvalue(), "txt": caption.encode()})
        output.commit({"count": len(BALANCE_CAPTIONS)})
    mmdata.dedup(root, exact=True, executor="inline")
    if semantic_check is not None:  # what the dedup stage records when it checks its semantic tier
        path = root / "annotations" / "dedup.parquet"
        table = pq.read_table(path)
        metadata = dict(table.schema.metadata)
        settings = json.loads(metadata[b"mmdata.dedup"])
        metadata[b"mmdata.dedup"] = json.dumps({**settings, "semantic_check": semantic_check}).encode()
        pq.write_table(table.replace_schema_metadata(metadata), path)
    entries = folder / "entries.txt"
    entries.write_text("dog\ncat\nfox\nowl\nbadger\n")
    return mmdata.balance(root, metadata=str(entries), t=5, executor="inline")


def test_balance_and_semantic_check_sections_in_chromium(tmp_path):
    require_chromium()
    result = _balanced_dataset(tmp_path / "data", tmp_path, semantic_check=SEMANTIC_CHECK)
    report = write_report(tmp_path / "data", tmp_path / "report.html")
    page = open_report(report, tmp_path / "report.png")
    assert page["errors"] == []
    assert page["sections"] == [key for key, _ in SECTIONS]
    assert "balance" not in page["not_run"] and "duplicates" not in page["not_run"]
    charts = [image for image in page["images"] if image["section"] == "balance"]
    assert [image["alt"] for image in charts] == ["entry counts before and after balancing"]
    assert charts[0]["width"] > 0
    assert result.rows > 0


def _section(text: str, key: str) -> str:
    start = text.index(f'<section id="{key}">')
    return text[start : text.index("</section>", start)]


def test_balance_section_shows_the_numbers(tmp_path):
    result = _balanced_dataset(tmp_path / "data", tmp_path, semantic_check=SEMANTIC_CHECK)
    text = write_report(tmp_path / "data", tmp_path / "report.html").read_text()
    section = _section(text, "balance")
    pool, kept = 38, result.rows
    assert f"Kept fraction: <b>{100 * kept / pool:.1f}%</b> of the pool" in section
    assert f"<td>kept</td><td>{kept:,}</td>" in section
    assert "<td>matched an entry</td><td>36</td>" in section
    counts = result.entry_counts.to_pydict()
    for entry, count, after in zip(counts["entry"], counts["count"], counts["kept"]):
        if count:
            assert f"<td>{entry}</td><td>{count:,}</td><td>{min(count, 5):,}</td><td>{after:,}</td>" in section
    assert counts["count"] == [20, 12, 4, 2, 0]
    assert "<td>head (count &gt; t)</td><td>2</td><td>32</td>" in section  # dog and cat
    assert "<td>tail (1 ≤ count ≤ t)</td><td>2</td><td>6</td><td>6</td>" in section  # fox and owl: all kept
    assert "<td>never matched</td><td>1</td><td>0</td><td>0</td>" in section
    assert "<code>balanced</code>" in _section(text, "funnel") and "matched_any_entry" in _section(text, "funnel")

    duplicates = _section(text, "duplicates")
    assert "Semantic tier check" in duplicates
    assert "refused: 1 - eps = 0.9500 lies inside the bulk" in duplicates
    assert "Refused by its check" in duplicates  # the semantic tier is shown refused, not as "no duplicates"
    for name, value in [("eps", "0.05"), ("nearest_neighbour.q50", "0.912"),
                        ("nearest_neighbour.q99", "0.991"), ("random_pairs.q99", "0.41"),
                        ("above_threshold", "0.0125"), ("samples", "400")]:
        assert f"<td>{name}</td><td>{value}</td>" in duplicates


def test_without_balance_or_semantic_check_nothing_extra_is_drawn(tmp_path):
    import mmdata

    _downloaded_dataset(tmp_path / "data")
    mmdata.dedup(tmp_path / "data", exact=True, executor="inline")
    text = write_report(tmp_path / "data", tmp_path / "report.html").read_text()
    assert "Semantic tier check" not in _section(text, "duplicates")
    balance = _section(text, "balance")
    assert "No balanced view" in balance and "<img" not in balance and "not-run" not in balance
