"""The semantic tier's check: refused where unrelated pictures sit as close as copies (the demo's tiny
model puts distinct scenes at cosine ~0.998), run where copies separate from neighbours, and what it
measured written to dedup.parquet's metadata and printed in the summary."""

import json
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_corpus import PIXEL_MODEL_ID, build_corpus, scene_embeddings, write_dataset

from mmdata import layout
from mmdata.cli import main as cli_main
from mmdata.curate.dedup import dedup
from mmdata.curate.semantic import SemanticConfig, normalised, semantic_groups
from mmdata.curate.semantic_check import MIN_COPIES, SemanticCheck, check_semantic, nearest_similarity
from mmdata.schemas.annotations import DEDUP_METADATA_KEY

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from dedup import clustered_embeddings  # noqa: E402  (the benchmark's generator)


def crowded_embeddings(rows: int = 3000, copies: int = 300, seed: int = 0):
    """Like the demo's 64-d filter network: every picture has an unrelated neighbour at cosine ~0.998
    (scenes differing in one attribute), and copies of a picture spread over the same range."""
    rng = np.random.default_rng(seed)
    attributes = normalised(rng.standard_normal((rows // 3, 64)))
    spread = rng.uniform(0.001, 0.008, (rows, 1))  # siblings at cosine ~0.994 to 0.9999
    scenes = normalised(np.repeat(attributes, 3, axis=0) + rng.standard_normal((rows, 64)) * spread)
    sources = rng.choice(rows, copies, replace=False)
    strength = rng.uniform(0.001, 0.012, (copies, 1))
    duplicates = normalised(scenes[sources] + rng.standard_normal((copies, 64)) * strength)
    vectors = np.concatenate([scenes, duplicates]).astype(np.float32)
    known = np.zeros(len(vectors), dtype=bool)
    known[sources] = known[rows:] = True
    return vectors, known, (sources, np.arange(rows, rows + copies))


def separated_embeddings(seed: int = 3):
    """The benchmark's CLIP-like space: random pairs ~0, topics 0.3-0.6, planted copies 0.96-0.995."""
    vectors, partner = clustered_embeddings(6000, 64, 0.05, seed=seed)
    copies = np.flatnonzero(partner >= 0)
    known = np.zeros(len(vectors), dtype=bool)
    known[copies] = known[partner[copies]] = True
    return vectors, known, (copies, partner[copies])


def run_check(vectors, known, pairs, eps, **options) -> SemanticCheck:
    groups = semantic_groups(vectors, SemanticConfig(eps=eps))
    return check_semantic(vectors, groups, eps, known=known, copy_pairs=pairs, **options)


def test_unrelated_pictures_at_cosine_0998_refuse_the_tier_at_any_eps():
    vectors, known, pairs = crowded_embeddings()
    bulk = run_check(vectors, known, pairs, 0.05)
    assert bulk.refused and not bulk.ran and bulk.verdict.startswith("refused: 1 - eps = 0.9500 lies inside the bulk")
    assert bulk.above_threshold > 0.9 and bulk.nearest_neighbour["q50"] > 0.99
    # a tight eps leaves the bulk alone, but cuts through the run of neighbours instead of a gap
    for eps in (0.0005, 0.0001):
        tight = run_check(vectors, known, pairs, eps)
        assert tight.refused and not tight.separated and "continuous run" in tight.verdict, tight.verdict
        assert tight.above_threshold < 0.5 and tight.just_below_threshold >= tight.above_threshold
    forced = run_check(vectors, known, pairs, 0.0005, force=True)
    assert forced.ran and forced.refused and forced.forced and forced.verdict.startswith("forced")


def test_copies_that_separate_from_neighbours_let_the_tier_run():
    vectors, known, pairs = separated_embeddings()
    check = run_check(vectors, known, pairs, 0.05)
    assert check.ran and not check.refused and check.separated, check.verdict
    assert check.verdict.startswith("ok: 1 - eps = 0.9500 sits in a gap")
    assert check.known_copies == len(pairs[0]) and check.copies_above_threshold >= 0.9
    assert check.random_pairs["q50"] < 0.2 < check.nearest_neighbour["q99"] < check.threshold < check.copies["q05"]
    # the same space at an eps inside its bulk is refused
    assert run_check(vectors, known, pairs, 0.6).verdict.startswith("refused: 1 - eps = 0.4000 lies inside the bulk")


def test_a_threshold_that_keeps_few_copies_or_has_none_to_compare_with_warns():
    vectors, known, pairs = separated_embeddings()
    uncalibrated = run_check(vectors, known, None, 0.05)
    assert uncalibrated.ran and not uncalibrated.refused and uncalibrated.copies is None
    assert uncalibrated.verdict.startswith("warning: not calibrated")
    few = run_check(vectors, known, (pairs[0][: MIN_COPIES - 1], pairs[1][: MIN_COPIES - 1]), 0.05)
    assert few.copies is None and few.known_copies == MIN_COPIES - 1 and "not calibrated" in few.verdict
    strict = run_check(vectors, known, pairs, 0.01)  # the planted copies sit at 0.96-0.995
    assert strict.ran and "misses most pixel-verified copies" in strict.verdict


def test_nearest_similarity_searches_within_clusters_like_brute_force():
    vectors, known, pairs = separated_embeddings()
    rows = np.unique(np.concatenate([np.arange(0, len(vectors), 7), pairs[0][:200]]))
    unit = normalised(vectors)
    brute = unit[rows] @ unit.T
    brute[np.arange(len(rows)), rows] = -np.inf
    whole = nearest_similarity(vectors, rows, [np.arange(len(vectors))], block_rows=1000)
    assert np.allclose(whole, brute.max(axis=1), atol=1e-5)
    # within k-means clusters: never above the true nearest, and exact for the close ones (copies)
    clustered = nearest_similarity(vectors, rows, semantic_groups(vectors, SemanticConfig(clusters=6)))
    assert np.all(clustered <= whole + 1e-5)
    close = whole > 0.9
    assert close.sum() >= 200 and np.mean(np.isclose(clustered[close], whole[close], atol=1e-5)) >= 0.98


@pytest.fixture()
def crowded_dataset(tmp_path):
    """The planted corpus with embeddings squeezed into a cone: every pair above cosine 0.99."""
    corpus = build_corpus(24, seed=5)
    rng = np.random.default_rng(0)
    scores = [0.9 if item.kind == "original" else float(rng.uniform(0.2, 0.6)) for item in corpus]
    squeezed = normalised(np.ones((1, 64)) * 8 + scene_embeddings(corpus))
    write_dataset(tmp_path, corpus, shard_size=64, scores=scores, embeddings=squeezed)
    return tmp_path


def test_dedup_records_and_prints_a_refused_tier(crowded_dataset, capsys):
    with pytest.warns(RuntimeWarning, match="semantic dedup: refused"):
        result = dedup(crowded_dataset, exact=True, near=True, semantic=True, eps=0.05, model=PIXEL_MODEL_ID,
                       executor="inline")
    assert result.counts["semantic"] == 0 and result.semantic_check.refused and not result.semantic_check.ran
    settings = json.loads(pq.read_schema(layout.annotations_dir(crowded_dataset) / "dedup.parquet").metadata[
        DEDUP_METADATA_KEY])
    recorded = settings["semantic_check"]
    assert recorded["refused"] is True and recorded["ran"] is False and recorded["threshold"] == pytest.approx(0.95)
    assert recorded["verdict"] == result.semantic_check.verdict and recorded["above_threshold"] > 0.5
    assert set(recorded["nearest_neighbour"]) == set(recorded["random_pairs"]) == {
        "q01", "q05", "q25", "q50", "q75", "q95", "q99"}
    assert recorded["known_copies"] >= MIN_COPIES and recorded["copies"]["q50"] > recorded["nearest_neighbour"]["q50"]
    code = cli_main(["dedup", str(crowded_dataset), "--exact", "--near", "--semantic", "--model", PIXEL_MODEL_ID,
                     "--executor", "inline", "--force-semantic"])
    printed = capsys.readouterr().out
    assert code == 0 and "semantic check          forced (force_semantic): 1 - eps = 0.9500" in printed
    assert "the tier ran" in printed
    forced = json.loads(pq.read_schema(layout.annotations_dir(crowded_dataset) / "dedup.parquet").metadata[
        DEDUP_METADATA_KEY])
    assert forced["counts"]["semantic"] > 0 and forced["semantic_check"]["forced"] is True


def test_dedup_without_the_semantic_tier_records_no_check(crowded_dataset):
    result = dedup(crowded_dataset, exact=True, executor="inline")
    assert result.semantic_check is None
    settings = json.loads(pq.read_schema(layout.annotations_dir(crowded_dataset) / "dedup.parquet").metadata[
        DEDUP_METADATA_KEY])
    assert "semantic_check" not in settings
