"""The streamed dedup (``mmdata.curate.dedup_stream``: a shard at a time, hashes spilled and searched in
blocks) writes the table that ``find_duplicates`` makes with every row in memory, whatever the block size."""

import json
import os
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from curate_corpus import PIXEL_MODEL_ID, write_photo_dataset

from mmdata import layout
from mmdata.curate.dedup import DedupConfig, DedupInputs, dedup, find_duplicates
from mmdata.curate.dedup_exact import hex_digests
from mmdata.curate.dedup_near import NearSearch, band_plan
from mmdata.curate.hashes import NearHashes, cache_path, dataset_hashes, hamming
from mmdata.schemas.annotations import DEDUP_METADATA_KEY
from mmdata.schemas.hashes import CROP_COUNT
from mmdata.schemas.samples import SUCCESS
from mmdata.table import read_embeddings, read_table

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hash_corpus import write_hash_corpus  # noqa: E402
from metadata_corpus import CorpusSpec, write_corpus  # noqa: E402

COLUMNS = ["key", "duplicate_of", "dup_reason", "dup_similarity"]


def in_memory(root, config: DedupConfig) -> pa.Table:
    """``find_duplicates`` over the whole dataset read into memory (what dedup did before it streamed)."""
    model = config.model
    score = f"{layout.SCORE_COLUMN_PREFIX}{model}" if model else ("clip_score" if layout.default_model(root) else None)
    samples = read_table(root, columns=["key", "status", *([score] if score else [])])
    samples = samples.filter(pc.equal(samples.column("status"), SUCCESS))
    keys = samples.column("key").to_pylist()
    scores = (samples.column(score).to_numpy(zero_copy_only=False).astype(np.float64) if score
              else np.full(len(keys), np.nan))
    inputs = DedupInputs(keys=keys, scores=np.where(np.isnan(scores), -np.inf, scores))
    hashes = dataset_hashes(root)
    row_of = {key: row for row, key in enumerate(hashes.column("key").to_pylist())}
    aligned = hashes.take(pa.array([row_of[key] for key in keys], pa.int64()))
    inputs.sha256 = aligned.column("sha256").to_pylist()
    inputs.pixel_hash = aligned.column("pixel_hash").to_pylist()
    inputs.near_rows, inputs.near = NearHashes.from_table(aligned)
    if config.semantic:
        embedding_keys, embeddings = read_embeddings(root, "image", model)
        position = {key: row for row, key in enumerate(keys)}
        pairs = [(position[key], row) for row, key in enumerate(embedding_keys) if key in position]
        inputs.embedding_rows, chosen = (np.asarray(column, dtype=np.int64) for column in zip(*pairs))
        inputs.embeddings = embeddings[chosen]
    return find_duplicates(inputs, config).table


def written(root) -> pa.Table:
    return pq.read_table(layout.annotations_dir(root) / "dedup.parquet").select(COLUMNS)


def assert_same(table: pa.Table, expected: pa.Table) -> None:
    rows, wanted = table.to_pylist(), expected.select(COLUMNS).to_pylist()
    differing = [(row, other) for row, other in zip(rows, wanted) if row != other]
    assert len(rows) == len(wanted) and not differing, differing[:5]


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    root = tmp_path_factory.mktemp("planted")
    write_photo_dataset(root, tied_every=7)  # ties on the best score: the smallest key is kept
    return root


@pytest.fixture(scope="module")
def hash_corpus(tmp_path_factory):
    root = tmp_path_factory.mktemp("hash-corpus")
    write_corpus(root, CorpusSpec(rows=20_000, shard_size=2_500, annotations=False))
    planted = write_hash_corpus(root)
    return root, planted


@pytest.mark.parametrize("block_rows", [1_000_000, 7])
def test_streamed_dedup_equals_the_in_memory_decision_on_pictures(planted, block_rows):
    options = dict(exact=True, near=True, semantic=True, eps=0.05, clusters=4, model=PIXEL_MODEL_ID)
    result = dedup(planted, executor="inline", block_rows=block_rows, **options)
    expected = in_memory(planted, DedupConfig(**options))
    assert_same(written(planted), expected)
    assert result.counts["exact"] and result.counts["near"] and result.counts["semantic"], result.counts
    assert result.rows == expected.num_rows == result.counts["examined"]
    assert result.explanation().num_rows == result.counts["examined"] - result.counts["kept"]


def test_streamed_dedup_equals_the_in_memory_decision_on_a_hash_corpus(hash_corpus, tmp_path):
    root, planted = hash_corpus
    config = DedupConfig(exact=True, near=True)
    expected = in_memory(root, config).select(COLUMNS)
    dedup(root, config, executor="inline")
    assert_same(written(root), expected)
    # blocks of 1,500 rows: 10 exact-tier partitions, 14 x 14 near search blocks; same table
    scratch = tmp_path / "scratch"
    dedup(root, exact=True, near=True, block_rows=1_500, scratch_dir=str(scratch), executor="inline")
    assert_same(written(root), expected)
    assert scratch.is_dir() and not any(scratch.iterdir())  # the spilled hashes are gone
    counts = json.loads(pq.read_schema(layout.annotations_dir(root) / "dedup.parquet").metadata[DEDUP_METADATA_KEY])
    counts = counts["counts"]
    # every planted copy is found (each joins its source's group: one fewer kept), and little else
    copies = sum(planted.values())
    assert copies <= counts["examined"] - counts["kept"] <= copies + 5, (counts, planted)


def test_mirrors_off_and_a_small_radius_agree_too(hash_corpus):
    root, _ = hash_corpus
    options = dict(exact=False, near=True, hamming=2, mirrors=False, thumbnail_tolerance=None)
    dedup(root, executor="inline", block_rows=4_000, **options)
    assert_same(written(root), in_memory(root, DedupConfig(**options)))


def test_a_failed_run_leaves_the_previous_table(hash_corpus):
    root, _ = hash_corpus
    dedup(root, exact=True, executor="inline")
    path = layout.annotations_dir(root) / "dedup.parquet"
    before = path.read_bytes()
    shard = layout.complete_shards(root)[-1]
    hashes = pq.read_table(cache_path(root, shard).path)
    pq.write_table(hashes.slice(1).replace_schema_metadata(hashes.schema.metadata), cache_path(root, shard).path)
    try:
        with pytest.raises(RuntimeError, match="no hash rows for 1 successful samples"):
            dedup(root, exact=True, executor="inline")
    finally:
        pq.write_table(hashes, cache_path(root, shard).path)
    assert path.read_bytes() == before
    assert [name for name in os.listdir(path.parent) if not name.startswith(".")] == ["dedup.parquet"]


@pytest.mark.parametrize("radius", [0, 3, 8, 11])
def test_band_search_finds_every_pair_a_brute_force_scan_finds(tmp_path, radius):
    rng = np.random.default_rng(radius)
    rows = 400
    codes = rng.integers(0, 2**63, rows, dtype=np.uint64)
    sources = rng.integers(0, rows, rows)
    flips = np.array([sum(1 << int(bit) for bit in rng.choice(64, int(rng.integers(0, 13)), replace=False))
                      for _ in range(rows)], dtype=np.uint64)
    codes[rows // 2:] = codes[sources[rows // 2:] // 2] ^ flips[rows // 2:]  # copies with 0-12 bits flipped
    crops = codes[rng.integers(0, rows, (rows, CROP_COUNT))] ^ flips[rng.integers(0, rows, (rows, CROP_COUNT))]
    mirror = codes[rng.integers(0, rows, rows)] ^ flips
    valid = rng.random(rows) > 0.05
    search = NearSearch(tmp_path)
    hashes = NearHashes(codes[valid], crops[valid], np.zeros((int(valid.sum()), 6), np.float32), mirror=mirror[valid])
    search.add(rows, np.flatnonzero(valid), hashes)
    search.close()
    every = np.concatenate([codes[:, None], crops, mirror[:, None]], axis=1)
    close = (hamming(codes[:, None, None], every[None]) <= radius).any(axis=2)
    close = (close | close.T) & valid[:, None] & valid[None, :]
    expected = {(a, b) for a, b in zip(*np.nonzero(close)) if a < b}
    for block_rows in (rows, 37):
        found = set(zip(*(side.tolist() for side in search.candidates(radius, mirrors=True, block_rows=block_rows))))
        assert found == expected and (radius == 0 or len(found) > 10)


def test_band_plan_covers_the_radius():
    for radius in range(0, 25):
        for queries, codes in ((100, 1_000), (10**6, 10**7), (10**8, 10**9)):
            bands, flips = band_plan(radius, queries, codes)
            assert len(bands) * (flips + 1) > radius  # pigeonhole: some band within `flips` bits
            assert sum(width for _, width in bands) == 64 and bands[0][0] == 0


def test_hex_digests_are_the_first_128_bits():
    values = pa.array(["00" * 32, None, "ff" * 16 + "0" * 32, "0123456789abcdef" * 4])
    positions, digests = hex_digests(values)
    assert positions.tolist() == [0, 2, 3]
    assert digests.tolist() == [[0, 0], [2**64 - 1, 2**64 - 1], [0x0123456789ABCDEF, 0x0123456789ABCDEF]]
    with pytest.raises(ValueError, match="one length"):
        hex_digests(pa.array(["ab" * 16, "ab" * 17]))
    with pytest.raises(ValueError, match="lowercase hex"):
        hex_digests(pa.array(["zz" * 16]))
