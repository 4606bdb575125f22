"""Benchmark the search index on synthetic clustered CLIP-like embeddings.

Builds the index ``mmdata index`` would choose for N x D vectors (default 1M x 512, 4 GB budget:
IVF-PQ fast-scan with re-ranking), then reports its recall@k against exact search, its size, build
time, and single-query latency p50/p99 on ``--threads`` cores (exact search's latency alongside).

    python bench/search.py            # the full run: 1M x 512 (~7 GB RAM peak, a few minutes)
    python bench/search.py --quick    # 100k x 512, approximate index forced, for development
"""

from __future__ import annotations

import os

# On a shared machine OpenMP threads that spin while waiting starve each other (PQ training went
# from 2 s to 37 s here); passive waiting costs nothing on a quiet one. Set before faiss loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse
import json
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k vectors, approximate index forced")
    parser.add_argument("--count", type=int, default=None, help="vectors to index (default 1M, quick 100k)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("-k", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--max-index-memory", default="4GB")
    parser.add_argument("--output", default=None, help="also write the results as JSON here")
    arguments = parser.parse_args(argv)

    import faiss

    from mmdata.search.ann import AnnIndex, IndexConfig, normalise, parse_memory, recall_at_k
    from mmdata.search.clustered import clustered_embeddings

    faiss.omp_set_num_threads(arguments.threads)
    count = arguments.count or (100_000 if arguments.quick else 1_000_000)
    config = IndexConfig(max_index_memory=parse_memory(arguments.max_index_memory))
    if arguments.quick:  # at 100k the planner would pick exact search; bench the approximate path
        config = IndexConfig(**{**asdict(config), "exact_max_vectors": 0, "hnsw_max_vectors": 0})

    started = time.perf_counter()
    data = clustered_embeddings(count + arguments.queries, arguments.dim, seed=0)
    order = np.random.default_rng(1).permutation(len(data))
    vectors, queries = data[order[:count]], normalise(data[order[count:]])  # held-out samples as queries
    del data
    generate_seconds = time.perf_counter() - started
    print(f"generated {count} x {arguments.dim} in {generate_seconds:.1f} s", file=sys.stderr)

    started = time.perf_counter()
    exact_similarities, truth = faiss.knn(queries, vectors, arguments.k, metric=faiss.METRIC_INNER_PRODUCT)
    exact_seconds = time.perf_counter() - started

    index = AnnIndex.build(vectors, config)
    print(f"built {index.report.plan['factory']} in {index.report.build_seconds:.1f} s", file=sys.stderr)
    with tempfile.TemporaryDirectory() as folder:
        index.save(folder)
        vectors_bytes = (Path(folder) / "vectors.npy").stat().st_size
    similarities, found = index.search(queries, arguments.k)
    recall = recall_at_k(found, truth)

    latencies = []
    for query in queries:
        tick = time.perf_counter()
        index.search(query[None, :], arguments.k)
        latencies.append((time.perf_counter() - tick) * 1000)
    flat = faiss.IndexFlatIP(arguments.dim)
    flat.add(vectors)
    exact_latencies = []
    for query in queries[:100]:
        tick = time.perf_counter()
        flat.search(query[None, :], arguments.k)
        exact_latencies.append((time.perf_counter() - tick) * 1000)

    results = {
        "mode": "quick" if arguments.quick else "full",
        "count": count,
        "dim": arguments.dim,
        "queries": len(queries),
        "k": arguments.k,
        "threads": arguments.threads,
        "max_index_memory": config.max_index_memory,
        "index": index.report.plan["factory"],
        "search_params": index.report.search_params,
        "tuned_recall_at_10": index.report.tuned_recall,
        f"recall_at_{arguments.k}": round(recall, 4),
        "index_mb": round(index.report.index_bytes / 1e6, 1),
        "rerank_vectors_mb": round(vectors_bytes / 1e6, 1),
        "build_seconds": round(index.report.build_seconds, 1),
        "latency_ms_p50": round(float(np.percentile(latencies, 50)), 3),
        "latency_ms_p99": round(float(np.percentile(latencies, 99)), 3),
        "exact_latency_ms_p50": round(float(np.percentile(exact_latencies, 50)), 3),
        "exact_batch_seconds": round(exact_seconds, 1),
        "mean_top1_similarity": round(float(exact_similarities[:, 0].mean()), 3),
    }
    print(json.dumps(results, indent=2))
    if arguments.output:
        Path(arguments.output).write_text(json.dumps(results, indent=2) + "\n")
    return results


if __name__ == "__main__":
    main()
