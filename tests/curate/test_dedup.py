"""Dedup on a planted corpus: per-tier precision >= 0.95 and recall >= 0.9, plus the machinery."""

import json
from collections import defaultdict

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_corpus import NEAR_KINDS, PIXEL_MODEL_ID, build_corpus, scene_embeddings, write_dataset

from mmdata import layout
from mmdata.cli import main as cli_main
from mmdata.curate.components import connected_components
from mmdata.curate.dedup import DedupConfig, DedupInputs, dedup, find_duplicates
from mmdata.curate.hashes import NearHashes, cache_path, dataset_hashes, near_matches
from mmdata.execution import ExecutionConfig

# the tier that links each planted kind to its original (which is kept: it has the top clip_score)
EXPECTED_TIER = {"copy": "exact", "png_original": "near", "png_resave": "near", "redraw": "semantic"}
EXPECTED_TIER.update({kind: "near" for kind in NEAR_KINDS})
TIERS = ("exact", "near", "semantic")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    corpus = build_corpus(40, seed=3, uniques=120)  # redraws: 1 in 5 of the samples without a pixel copy
    rng = np.random.default_rng(0)
    scores = [0.9 if item.kind == "original" else float(rng.uniform(0.2, 0.6)) for item in corpus]
    keys = write_dataset(
        root, corpus, shard_size=64, scores=scores, embeddings=scene_embeddings(corpus), failures_every=17
    )
    return root, {key: item for key, item in zip(keys, corpus)}


def tier_metrics(table, items):
    """Per tier: precision (flags whose kept twin is of the same scene) and recall (planted duplicates
    the tier is responsible for, flagged by it or an earlier tier with the scene's original kept)."""
    group = {key: (item.base if item.kind != "lookalike" else f"lookalike-{item.base}") for key, item in items.items()}
    rows = table.to_pylist()
    metrics = {}
    for tier in TIERS:
        flagged = [row for row in rows if row["dup_reason"] == tier]
        correct = sum(group[row["key"]] == group[row["duplicate_of"]] for row in flagged)
        responsible = [row for row in rows if EXPECTED_TIER.get(items[row["key"]].kind) == tier]
        found = sum(
            row["duplicate_of"] is not None and items[row["duplicate_of"]].kind == "original"
            and group[row["key"]] == group[row["duplicate_of"]]
            and TIERS.index(row["dup_reason"]) <= TIERS.index(tier)
            for row in responsible
        )
        metrics[tier] = {
            "flagged": len(flagged),
            "precision": correct / len(flagged) if flagged else 1.0,
            "recall": found / len(responsible),
        }
    return metrics


def test_exact_tier_alone_finds_copies_and_pixel_identical_files(planted):
    root, items = planted
    result = dedup(root, exact=True, executor="inline")
    by_key = {row["key"]: row for row in result.table.to_pylist()}
    for key, item in items.items():
        row = by_key[key]
        if item.kind == "copy":
            assert row["dup_reason"] == "exact" and items[row["duplicate_of"]].kind == "original"
        elif item.kind in ("png_original", "png_resave"):
            partner = [
                k for k, i in items.items()
                if i.base == item.base and i.kind in ("png_original", "png_resave") and k != key
            ][0]
            assert row["duplicate_of"] in (None, partner)
        else:
            assert row["duplicate_of"] is None
    assert result.counts["exact"] == 2 * 40  # the copy and one of the two PNG encodings per scene
    assert result.counts["examined"] == len(items) and result.counts["kept"] == len(items) - 80


def test_each_tier_meets_precision_and_recall(planted, capsys):
    root, items = planted
    code = cli_main([
        "dedup", str(root), "--exact", "--near", "--hamming", "8", "--semantic", "--eps", "0.05", "--clusters", "4",
        "--model", PIXEL_MODEL_ID, "--executor", "inline",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    table = pq.read_table(layout.annotations_dir(root) / "dedup.parquet")
    metrics = tier_metrics(table, items)
    for tier in TIERS:
        assert metrics[tier]["precision"] >= 0.95, (tier, metrics)
        assert metrics[tier]["recall"] >= 0.9, (tier, metrics)
    assert metrics["semantic"]["flagged"] > 0, metrics  # the redraws the hashes miss are caught semantically
    rows = table.to_pylist()
    assert all(row["duplicate_of"] is None for row in rows
               if items[row["key"]].kind in ("original", "lookalike", "unique"))
    settings = json.loads(table.schema.metadata[b"mmdata.dedup"])
    counts = settings["counts"]
    assert counts["kept"] + counts["exact"] + counts["near"] + counts["semantic"] == counts["examined"] == len(items)
    assert f"{counts['semantic']:>12,}" in printed
    # the semantic tier's check found the threshold in a gap between neighbours and copies
    check = settings["semantic_check"]
    assert check["ran"] and not check["refused"] and check["separated"] and check["verdict"].startswith("ok:")
    assert check["copies_above_threshold"] == 1.0 and check["nearest_neighbour"]["q50"] < check["threshold"]
    assert f"semantic check          {check['verdict']}" in printed
    # the explanation: similarity in the tier's own measure, between the sample and its kept twin
    for row in rows:
        if row["dup_reason"] == "exact":
            assert row["dup_similarity"] == 1.0
        elif row["dup_reason"] == "near":
            assert 1 - 8 / 64 <= row["dup_similarity"] <= 1.0
        elif row["dup_reason"] == "semantic":
            assert row["dup_similarity"] > 0.95
        else:
            assert row["dup_similarity"] is None


def test_hashes_are_cached_per_shard(planted):
    root, _ = planted
    dedup(root, exact=True, near=True, executor="inline")
    shard = layout.complete_shards(root)[0]
    before = cache_path(root, shard).local_path().stat().st_mtime_ns
    dedup(root, exact=True, near=True, executor="inline")
    assert cache_path(root, shard).local_path().stat().st_mtime_ns == before
    cache_path(root, shard).remove()
    dedup(root, exact=True, executor="inline")
    assert cache_path(root, shard).exists()


def test_shards_are_hashed_as_ray_tasks_with_the_same_result(planted, ray_local):
    root, _ = planted
    in_process = dataset_hashes(root, execution=ExecutionConfig(executor="inline"))
    for shard in layout.complete_shards(root):
        cache_path(root, shard).remove()
    assert dataset_hashes(root).equals(in_process)


def test_transitive_duplicates_keep_the_best_scored_sample():
    # a-b near, b-c near, a and c far apart: one group, kept = highest score (c), ties by key
    inputs = DedupInputs(
        keys=["a", "b", "c", "d"],
        scores=np.array([0.1, 0.2, 0.9, 0.5]),
        sha256=["x", "y", "z", "x"],
        pixel_hash=["p", "q", "r", "s"],
        near=NearHashes(
            np.array([0, 0b1111, 0b11111111, 2**63], dtype=np.uint64),
            np.array([[0] * 9, [0b1111] * 9, [0b11111111] * 9, [2**63] * 9], dtype=np.uint64),
            np.zeros((4, 6), dtype=np.float32),
        ),
        near_rows=np.arange(4),
    )
    result = find_duplicates(inputs, DedupConfig(exact=True, near=True, hamming=4))
    rows = {row["key"]: row for row in result.table.to_pylist()}
    assert rows["c"]["duplicate_of"] is None
    assert rows["a"]["duplicate_of"] == "c" and rows["a"]["dup_reason"] == "near"
    assert rows["b"]["duplicate_of"] == "c" and rows["b"]["dup_similarity"] == pytest.approx(1 - 4 / 64)
    assert rows["d"]["duplicate_of"] == "c" and rows["d"]["dup_reason"] == "near"  # exact twin of a, joined through it
    assert result.explanation().num_rows == 3


def test_multi_index_hashing_finds_what_the_flat_scan_finds():
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 2**63, 3000, dtype=np.uint64)
    flips = np.array(
        [sum(1 << int(b) for b in rng.choice(64, i % 12, replace=False)) for i in range(3000)], dtype=np.uint64
    )
    neighbours = codes ^ flips
    colours = np.zeros((3000, 6), dtype=np.float32)
    query = NearHashes(codes, np.repeat(codes[:, None], 9, axis=1), colours)
    reference = NearHashes(neighbours, np.repeat(neighbours[:, None], 9, axis=1), colours)
    flat = near_matches(query, reference, 7, 24.0)
    hashed = near_matches(query, reference, 7, 24.0, exhaustive_limit=0)
    assert {(q, r) for q, r in zip(*flat[:2])} == {(q, r) for q, r in zip(*hashed[:2])}
    assert {(i, i) for i in range(3000) if i % 12 <= 7} <= {(q, r) for q, r in zip(*flat[:2])}


def test_connected_components_match_a_plain_union_find():
    rng = np.random.default_rng(1)
    for _ in range(10):
        count = int(rng.integers(1, 200))
        left, right = rng.integers(0, count, 150), rng.integers(0, count, 150)
        parent = list(range(count))

        def find(node, parent=parent):
            while parent[node] != node:
                node = parent[node]
            return node

        for a, b in zip(left, right):
            ra, rb = find(a), find(b)
            parent[max(ra, rb)] = min(ra, rb)
        members = defaultdict(list)
        for node in range(count):
            members[find(node)].append(node)
        expected = np.array([min(members[find(node)]) for node in range(count)])
        assert (connected_components(count, left, right) == expected).all()


def test_config_refuses_nonsense():
    with pytest.raises(ValueError, match="no dedup tier"):
        DedupConfig(exact=False)
    with pytest.raises(ValueError, match="eps"):
        DedupConfig(semantic=True, eps=-0.1)
    with pytest.raises(ValueError, match="hamming"):
        DedupConfig(near=True, hamming=40)
    with pytest.raises(ValueError, match="thumbnail_tolerance"):
        DedupConfig(near=True, thumbnail_tolerance=-1.0)
