"""The synthetic corpus: deterministic, junk at the asked fractions, ground truth that matches the bytes."""

import hashlib
import io
import json
import urllib.error
import urllib.request

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmdata.serve import serve_corpus
from mmdata.synthetic import KINDS, SyntheticConfig, generate_corpus, truth_summary, url_table

CONFIG = SyntheticConfig(samples=300, seed=7, min_side=64, max_side=200)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    return root, pq.read_table(generate_corpus(root, CONFIG)).to_pylist()


def _digest(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((folder / "files").iterdir())}


def test_same_seed_same_corpus_other_seed_other_corpus(corpus, tmp_path):
    root, rows = corpus
    again = tmp_path / "again"
    assert pq.read_table(generate_corpus(again, CONFIG)).to_pylist() == rows
    assert _digest(again) == _digest(root)
    other = tmp_path / "other"
    generate_corpus(other, SyntheticConfig(samples=300, seed=8, min_side=64, max_side=200))
    assert _digest(other) != _digest(root)


def test_every_kind_at_its_fraction(corpus):
    _, rows = corpus
    counts = truth_summary(pq.read_table(corpus[0] / "truth.parquet"))
    assert sum(counts.values()) == len(rows) == 300
    for kind, fraction in CONFIG.fractions.items():
        assert counts[kind] == round(300 * fraction), kind
    assert set(counts) == set(KINDS)
    assert sorted(row["row"] for row in rows) == list(range(300))


def test_ground_truth_matches_the_bytes(corpus):
    root, rows = corpus
    by_row = {row["row"]: row for row in rows}

    def body(row):
        return (root / "files" / row["path"].lstrip("/")).read_bytes()

    for row in rows:
        if row["kind"] == "exact_dup":
            assert body(row) == body(by_row[row["duplicate_of"]])
        elif row["kind"] in ("near_dup", "semantic_dup"):
            original = by_row[row["duplicate_of"]]
            assert body(row) != body(original)
            assert row["description"] == original["description"] and row["dup_group"] == original["row"]
        elif row["kind"] == "mismatched":
            assert row["description"] != row["caption_description"]
            image_words, caption_words = (
                row["description"].split(", ")[0].split(), row["caption_description"].split(", ")[0].split()
            )
            assert image_words[1] != caption_words[1] and image_words[2] != caption_words[2]  # colour and shape differ
        elif row["kind"] == "undecodable":
            with pytest.raises(OSError):
                Image.open(io.BytesIO(body(row))).load()
        if row["kind"] in ("clean", "near_dup", "semantic_dup", "exact_dup", "optout", "mismatched"):
            image = Image.open(io.BytesIO(body(row)))
            assert image.size == (row["width"], row["height"])
    # Clean originals show distinct scenes, so equal descriptions mean planted semantic duplicates.
    originals = [row["description"] for row in rows if row["kind"] in ("clean", "mismatched")]
    assert len(set(originals)) == len(originals)
    assert any(row["seed_subset"] for row in rows)
    assert all(row["kind"] == "clean" and row["dup_group"] is None for row in rows if row["seed_subset"])


def test_served_corpus_answers_as_the_ground_truth_says(corpus):
    root, rows = corpus
    table = pq.read_table(root / "truth.parquet")
    with serve_corpus(root, sites=2) as base_urls:
        urls = url_table(table, base_urls).column("url").to_pylist()
        assert len({url.split("/")[2] for url in urls if url.startswith("http://")}) == 2
        for row, url in zip(table.to_pylist(), urls):
            if row["kind"] == "broken":
                if url.startswith("http://"):
                    with pytest.raises(urllib.error.HTTPError) as error:
                        urllib.request.urlopen(url, timeout=10)
                    assert error.value.code in (404, 500)
                continue
            if row["kind"] not in ("optout", "clean", "undecodable"):
                continue
            with urllib.request.urlopen(url, timeout=10) as response:
                assert response.read() == (root / "files" / row["path"].lstrip("/")).read_bytes()
                robots = response.headers.get("X-Robots-Tag")
            assert (robots is not None) == (row["kind"] == "optout")
    routes = json.loads((root / "routes.json").read_text())
    assert sum("headers" in route for route in routes.values()) == sum(row["kind"] == "optout" for row in rows)


def test_config_is_validated():
    with pytest.raises(ValueError, match="unknown junk kinds"):
        SyntheticConfig(fractions={"spam": 0.1})
    with pytest.raises(ValueError, match="at most 0.6"):
        SyntheticConfig(fractions={"mismatched": 0.7})
