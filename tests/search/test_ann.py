import numpy as np
import pytest

from mmdata.search.ann import (
    FLAT,
    HNSW,
    IVF_PQ,
    AnnIndex,
    IndexConfig,
    normalise,
    parse_memory,
    plan_index,
    recall_at_k,
)
from mmdata.search.clustered import clustered_embeddings


@pytest.mark.parametrize(
    "count, dim, budget, kind",
    [
        (500, 512, 10**6, FLAT),  # tiny sets are always exact
        (50_000, 512, 4 * 10**9, FLAT),
        (50_000, 512, 50 * 10**6, IVF_PQ),  # flat (102 MB) and the graph over budget: compressed
        (200_000, 512, 4 * 10**9, HNSW),
        (200_000, 512, 300 * 10**6, IVF_PQ),  # HNSW needs ~460 MB
        (1_000_000, 512, 4 * 10**9, IVF_PQ),  # past the HNSW size limit
        (100_000_000, 768, 16 * 10**9, IVF_PQ),
    ],
)
def test_plan_follows_size_and_budget(count, dim, budget, kind):
    plan = plan_index(count, dim, IndexConfig(max_index_memory=budget))
    assert plan.kind == kind
    assert plan.estimated_bytes <= budget or kind == FLAT and count < 1000


def test_tighter_budget_gives_coarser_codes_then_refuses():
    roomy = plan_index(1_000_000, 512, IndexConfig(max_index_memory=4 * 10**9))
    tight = plan_index(1_000_000, 512, IndexConfig(max_index_memory=30 * 10**6))
    assert roomy.factory == "IVF2048,PQ256x4fs" and tight.factory == "IVF2048,PQ32x4fs"
    assert tight.estimated_bytes < roomy.estimated_bytes
    with pytest.raises(ValueError, match="max-index-memory"):
        plan_index(1_000_000, 512, IndexConfig(max_index_memory=10**6))


@pytest.mark.parametrize(
    "text, size", [("2GB", 2 * 10**9), ("512MiB", 512 * 2**20), ("300m", 300 * 10**6), (1234, 1234)]
)
def test_parse_memory(text, size):
    assert parse_memory(text) == size


@pytest.mark.parametrize("text", ["lots", "-1GB", "0", "2 parsecs"])
def test_parse_memory_refuses(text):
    with pytest.raises(ValueError):
        parse_memory(text)


@pytest.fixture(scope="module")
def clustered():
    vectors = clustered_embeddings(12_000, 64, clusters=60, seed=1)
    rng = np.random.default_rng(2)
    queries = normalise(vectors[rng.integers(0, len(vectors), 100)] + 0.3 * normalise(rng.standard_normal((100, 64))))
    return vectors, queries


@pytest.mark.parametrize(
    "config, kind",
    [
        (IndexConfig(exact_max_vectors=0, hnsw_max_vectors=10**6), HNSW),
        (IndexConfig(exact_max_vectors=0, hnsw_max_vectors=0), IVF_PQ),
    ],
)
def test_approximate_index_reaches_target_recall(clustered, tmp_path, config, kind):
    import faiss

    vectors, queries = clustered
    index = AnnIndex.build(vectors, config)
    assert index.kind == kind
    assert index.report.tuned_recall >= config.target_recall
    _, truth = faiss.knn(queries, vectors, 10, metric=faiss.METRIC_INNER_PRODUCT)
    _, found = index.search(queries, 10)
    recall = recall_at_k(found, truth)
    print(f"{kind}: recall@10 {recall:.3f} with {index.report.search_params}")
    assert recall >= 0.9
    index.save(tmp_path)
    reloaded = AnnIndex.load(tmp_path)
    assert np.array_equal(reloaded.search(queries, 10)[1], found)
    assert reloaded.report.index_bytes == (tmp_path / "index.faiss").stat().st_size > 0


@pytest.mark.parametrize("config", [IndexConfig(), IndexConfig(exact_max_vectors=0, hnsw_max_vectors=0)])
@pytest.mark.parametrize("subset_size", [40, 3_000])
def test_allowed_ids_restrict_hits(clustered, config, subset_size):
    """Small subsets are scanned exactly; large ones go through the index with an id selector."""
    vectors, queries = clustered
    small = {"exact_max_vectors": min(config.exact_max_vectors, 1000), "exact_subset_max": 1000}
    index = AnnIndex.build(vectors, IndexConfig(**{**config.__dict__, **small}))
    allowed = np.random.default_rng(3).choice(len(vectors), subset_size, replace=False)
    similarities, ids = index.search(queries[:20], 10, allowed=allowed)
    assert np.isin(ids, allowed).all()
    exact = normalise(queries[:20]) @ vectors[allowed].T
    best = np.sort(exact, axis=1)[:, ::-1][:, :10]
    assert np.abs(similarities[:, 0] - best[:, 0]).max() < 1e-2  # the best allowed hit is found


def test_fewer_vectors_than_k_pads_with_minus_one():
    vectors = normalise(np.random.default_rng(0).standard_normal((5, 8)))
    similarities, ids = AnnIndex.build(vectors).search(vectors[:1], 8)
    assert ids[0, 0] == 0 and (ids[0, 5:] == -1).all() and np.isclose(similarities[0, 0], 1.0, atol=1e-3)
