"""The near tier's approximate search (``near_recall`` < 1, bit-sampling LSH): a subset of the exact pairs,
finding pairs at the radius at least as often as its plan promises."""

import math
from types import SimpleNamespace

import numpy as np
import pyarrow.parquet as pq
import pytest
from curate_corpus import PIXEL_MODEL_ID, write_photo_dataset

from mmdata import layout
from mmdata.cli import main
from mmdata.curate.dedup import DedupConfig, dedup
from mmdata.curate.dedup_near import NearSearch, sampled_plan
from mmdata.curate.hashes import NearHashes
from mmdata.schemas.hashes import CROP_COUNT

RADIUS = 8


def flipped(rng: np.random.Generator, codes: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """``codes`` with ``counts`` distinct random bits flipped each."""
    chosen = np.argsort(rng.random((len(codes), 64)), axis=1) < counts[:, None]
    masks = np.bitwise_or.reduce(np.where(chosen, np.uint64(1) << np.arange(64, dtype=np.uint64), np.uint64(0)), axis=1)
    return codes ^ masks


def spilled(folder, rows: int, copies: int, seed: int) -> tuple[NearSearch, np.ndarray, np.ndarray]:
    """A spill of random codes where rows ``rows - copies:`` copy an earlier row's pHash with 0..RADIUS bits
    flipped (a fifth of them exactly RADIUS); returns it, every row's codes (pHash, crops, mirror) and the
    planted (source, copy, distance)."""
    rng = np.random.default_rng(seed)
    phash = rng.integers(0, 2**64, rows, dtype=np.uint64)
    sources = rng.integers(0, rows - copies, copies)
    distance = np.where(rng.random(copies) < 0.2, RADIUS, rng.integers(0, RADIUS + 1, copies))
    phash[rows - copies:] = flipped(rng, phash[sources], distance)
    crops = flipped(rng, np.repeat(phash, CROP_COUNT), rng.integers(2, 7, rows * CROP_COUNT)).reshape(rows, CROP_COUNT)
    mirror = rng.integers(0, 2**64, rows, dtype=np.uint64)
    mirror[:50] = flipped(rng, phash[50:100], np.full(50, 5))  # mirrored copies
    search = NearSearch(folder)
    search.add(rows, np.arange(rows), NearHashes(phash, crops, np.zeros((rows, 6), np.float32), mirror=mirror))
    search.close()
    every = np.concatenate([phash[:, None], crops, mirror[:, None]], axis=1)
    planted = np.stack([sources, np.arange(rows - copies, rows), distance], axis=1)
    return search, every, planted


def brute_force(every: np.ndarray) -> set[tuple[int, int]]:
    phash = every[:, 0]
    pairs = set()
    for start in range(0, len(phash), 256):
        close = (np.bitwise_count(phash[start:start + 256, None, None] ^ every[None]) <= RADIUS).any(axis=2)
        for query, indexed in zip(*np.nonzero(close)):
            if query + start != indexed:
                pairs.add((min(query + start, indexed), max(query + start, indexed)))
    return {(int(a), int(b)) for a, b in pairs}


def found(search: NearSearch, **options) -> set[tuple[int, int]]:
    return set(zip(*(side.tolist() for side in search.candidates(RADIUS, mirrors=True, **options))))


@pytest.fixture(scope="module")
def planted_spill(tmp_path_factory):
    return spilled(tmp_path_factory.mktemp("near-approx"), rows=3_000, copies=600, seed=7)


@pytest.mark.parametrize("block_rows", [3_000, 701])  # one index; 5 of 701 rows' hashes
def test_exact_equals_brute_force(planted_spill, block_rows):
    search, every, _ = planted_spill
    expected = brute_force(every)
    assert len(expected) >= 600
    assert found(search, block_rows=block_rows) == expected
    assert found(search, block_rows=block_rows, near_recall=1.0) == expected


@pytest.mark.parametrize("block_rows", [3_000, 60])  # one index; 2 of 1,920 rows' pHashes, 15-row queries
def test_approximate_is_a_subset_of_exact(planted_spill, block_rows):
    search, every, _ = planted_spill
    expected = brute_force(every)
    approximate = found(search, block_rows=block_rows, near_recall=0.9)
    assert approximate <= expected and len(approximate) >= 0.8 * len(expected)


def test_crowded_buckets_find_every_pair(tmp_path):
    """Many rows sharing one hash (blank pictures): buckets longer than the per-position passes."""
    rng = np.random.default_rng(11)
    _, every, _ = spilled(tmp_path / "crowded", rows=400, copies=40, seed=3)
    rows = 400
    phash, crops, mirror = every[:, 0].copy(), every[:, 1:-1].copy(), every[:, -1].copy()
    phash[:120] = 0  # 120 blank pictures
    phash[120:150] = flipped(rng, np.zeros(30, np.uint64), np.full(30, 3))  # and near-blank ones
    crowded = NearSearch(tmp_path / "crowded-spill")
    crowded.add(rows, np.arange(rows), NearHashes(phash, crops, np.zeros((rows, 6), np.float32), mirror=mirror))
    crowded.close()
    expected = brute_force(np.concatenate([phash[:, None], crops, mirror[:, None]], axis=1))
    assert len(expected) > 120 * 119 // 2
    assert found(crowded, block_rows=150) == expected  # 3 indexes
    assert found(crowded, block_rows=5, near_recall=0.9) <= expected  # 3 indexes, queries one row at a time


def test_pairs_at_the_radius_are_found_as_often_as_promised(tmp_path):
    """4,000 pairs at exactly the radius, each differing in its own random bits. Over the bit draws, each is
    found with probability ``plan.found(RADIUS) >= recall``; for the one fixed draw (the seed is fixed: the
    test cannot flake) the pairs are independent trials of one probability near that, and their found
    fraction falls more than 0.03 below it with probability <= exp(-2 n 0.03^2) = 7e-4 (Hoeffding)."""
    recall, copies = 0.8, 4_000
    rng = np.random.default_rng(11)
    rows = 2 * copies
    phash = rng.integers(0, 2**64, rows, dtype=np.uint64)
    phash[copies:] = flipped(rng, phash[:copies], np.full(copies, RADIUS))
    crops = rng.integers(0, 2**64, (rows, CROP_COUNT), dtype=np.uint64)  # unrelated: only the planted pairs
    search = NearSearch(tmp_path)
    search.add(rows, np.arange(rows), NearHashes(phash, crops, np.zeros((rows, 6), np.float32),
                                                 mirror=rng.integers(0, 2**64, rows, dtype=np.uint64)))
    search.close()
    planted = {(row, row + copies) for row in range(copies)}
    pairs = found(search, block_rows=rows, near_recall=recall)
    hit = len(pairs & planted) / copies
    assert math.exp(-2 * copies * 0.03**2) < 1e-3
    assert recall - 0.03 <= hit < 1.0, hit  # and it is approximate: some pairs are missed


@pytest.mark.parametrize("radius", [0, 1, 4, 8, 12, 24])
@pytest.mark.parametrize("recall", [0.5, 0.9, 0.95, 0.999])
def test_the_plan_meets_the_bound_at_every_distance(radius, recall):
    for queries, codes in ((1_000, 11_000), (10**6, 11 * 10**6), (10**8, 11 * 10**6)):
        plan = sampled_plan(radius, recall, queries, codes)
        assert 1 <= plan.bits <= 32 and plan.tables >= 1 and 0 <= plan.flips < plan.bits
        for distance in range(radius + 1):
            assert plan.found(distance) >= recall, (plan, distance)
        # hypergeometric: bits drawn without replacement; checked against a direct count at the radius
        once = sum(math.comb(radius, j) * math.comb(64 - radius, plan.bits - j) for j in range(plan.flips + 1))
        assert plan.found(radius) == pytest.approx(1 - (1 - once / math.comb(64, plan.bits)) ** plan.tables)
        tables = [tuple(positions) for positions in plan.draw()]
        assert len(tables) == plan.tables and all(len(set(table)) == plan.bits for table in tables)
        assert tables == [tuple(positions) for positions in plan.draw()]  # the same draws every run


def test_the_plan_is_cheaper_than_more_tables():
    plan = sampled_plan(RADIUS, 0.95, 10**7, 11 * 10**6)
    smaller = type(plan)(plan.bits, plan.tables - 1, plan.flips)
    assert smaller.found(RADIUS) < 0.95 <= plan.found(RADIUS)


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """The photo corpus of tests/curate/test_dedup_streamed.py."""
    root = tmp_path_factory.mktemp("photos")
    write_photo_dataset(root)
    return root


def near_pairs(root) -> set[tuple[str, str]]:
    table = pq.read_table(layout.annotations_dir(root) / "dedup.parquet").to_pylist()
    return {(row["key"], row["duplicate_of"]) for row in table if row["dup_reason"] == "near"}


def test_approximate_dedup_marks_a_subset_of_the_exact_near_duplicates(photos):
    options = dict(exact=True, near=True, model=PIXEL_MODEL_ID, executor="inline")
    exact = dedup(photos, **options)
    exact_pairs = near_pairs(photos)
    approximate = dedup(photos, near_recall=0.95, **options)
    approximate_pairs = near_pairs(photos)
    assert exact.counts["near"] > 5 and approximate_pairs <= exact_pairs
    assert approximate_pairs == exact_pairs  # a few dozen pairs: at 0.95 each, all found here (fixed draws)
    assert approximate.counts == exact.counts


@pytest.mark.parametrize("near_recall", [0, -0.5, 1.01, float("nan")])
def test_a_bad_near_recall_is_refused(near_recall):
    with pytest.raises(ValueError, match="near_recall must be in"):
        DedupConfig(near=True, near_recall=near_recall)


def test_the_command_passes_near_recall(monkeypatch):
    calls = []
    monkeypatch.setattr("mmdata.curate.dedup.dedup", lambda *arguments, **options: calls.append(options)
                        or SimpleNamespace(counts={}, path="annotations/dedup.parquet"))
    assert main(["dedup", "data", "--near", "--near-recall", "0.95"]) == 0
    assert calls[0]["near_recall"] == 0.95 and calls[0]["near"] is True
