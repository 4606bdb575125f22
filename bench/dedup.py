"""Benchmark: semantic dedup (SemDeDup) of clustered 512-d embeddings with planted near-duplicates,
and the near tier on the planted photo corpus of ``tests/curate/photo_corpus.py``.

Reports wall time, peak memory (ru_maxrss), the duplicates found, and recall against brute force on
a subsample (every pair with cosine > 1 - eps among the subsample, found by a blocked full matmul);
the semantic check's time and verdict (the planted pairs stand in for the near tier's copies); and
the near tier's recall and precision on planted copies against a sha256 + pHash <= 8 reference.
Target for the full run (1M embeddings, 2 cores): under 5 minutes, under 4 GB, recall >= 0.95.

    python bench/dedup.py --quick      # 100k embeddings, 10k subsample (what engineers run)
    python bench/dedup.py              # 1M embeddings, 50k subsample (the lead, on a quiet machine)
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import threading
import time
from pathlib import Path

import numpy as np

from mmdata.curate.components import connected_components
from mmdata.curate.semantic import SemanticConfig, normalised, semantic_edges, semantic_groups
from mmdata.curate.semantic_check import check_semantic

TARGET_SECONDS, TARGET_GIB, TARGET_RECALL = 300, 4.0, 0.95


def clustered_embeddings(rows: int, dim: int, duplicate_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """float16 unit vectors drawn around a two-level hierarchy of topics (like CLIP embeddings: random
    pairs at cosine ~0, same-topic pairs ~0.3-0.6), with ``duplicate_fraction`` of rows replaced by a
    near copy (cosine 0.96-0.995) of another row. Returns (embeddings, planted partner or -1)."""
    rng = np.random.default_rng(seed)
    topics = normalised(rng.standard_normal((64, dim)))
    subtopics = normalised(np.repeat(topics, 32, axis=0) + rng.standard_normal((64 * 32, dim)) * (0.9 / np.sqrt(dim)))
    embeddings = np.empty((rows, dim), dtype=np.float16)
    block = 65536
    for start in range(0, rows, block):
        size = min(block, rows - start)
        centre = subtopics[rng.integers(0, len(subtopics), size)]
        noise = rng.standard_normal((size, dim)).astype(np.float32) * (1.1 / np.sqrt(dim))
        embeddings[start : start + size] = normalised(centre + noise)
    partner = np.full(rows, -1, dtype=np.int64)
    # copies and originals disjoint, so no copy overwrites another copy's original
    chosen = rng.permutation(rows)[: 2 * int(rows * duplicate_fraction)]
    copies, originals = chosen[0::2], chosen[1::2]
    for start in range(0, len(copies), block):
        part = slice(start, start + block)
        source = embeddings[originals[part]].astype(np.float32)
        strength = rng.uniform(0.1, 0.28, (len(source), 1)).astype(np.float32)
        jitter = normalised(rng.standard_normal(source.shape).astype(np.float32))
        embeddings[copies[part]] = normalised(source + strength * jitter)
        partner[copies[part]] = originals[part]
    return embeddings, partner


def brute_force_pairs(vectors: np.ndarray, threshold: float, block: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    unit = normalised(vectors)
    lefts, rights = [], []
    for start in range(0, len(unit), block):
        similarity = unit[start : start + block] @ unit.T
        rows, columns = np.nonzero(similarity > threshold)
        rows = rows + start
        upper = columns > rows
        lefts.append(rows[upper])
        rights.append(columns[upper])
    return np.concatenate(lefts), np.concatenate(rights)


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


class RssSampler:
    """Highest resident memory seen while the block runs (psutil, every 20 ms): the dedup's own peak,
    which ru_maxrss hides when generating the data peaked higher."""

    def __init__(self) -> None:
        import psutil

        self._process = psutil.Process()
        self._stop = threading.Event()
        self.peak_bytes = 0
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)
            self._stop.wait(0.02)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
        self._stop.set()
        self._thread.join()
        self.peak_bytes = max(self.peak_bytes, self._process.memory_info().rss)


def near_tier_figures(layouts: int = 80, seed: int = 0) -> dict:
    """Recall and precision of the near tier, and of sha256 + pHash <= 8, on the planted photo corpus."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "curate"))
    from photo_corpus import build_photo_corpus, corpus_hashes, near_tier_labels, quality, reference_labels

    corpus = build_photo_corpus(layouts, seed=seed)
    started = time.perf_counter()
    hashes = corpus_hashes(corpus)
    hash_seconds = time.perf_counter() - started
    figures = {"pictures": len(corpus), "hash_ms_per_picture": round(1000 * hash_seconds / len(corpus), 2)}
    for name, labels in (("near", near_tier_labels(corpus, hashes)), ("reference", reference_labels(corpus, hashes))):
        measured = quality(labels, corpus)
        figures[name] = {
            "recall": round(float(measured["recall"]), 4), "precision": round(float(measured["precision"]), 4),
            "recall_by_kind": {kind: round(float(value), 3) for kind, value in measured["recall_by_kind"].items()},
        }
    return figures


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100k embeddings and a 10k subsample")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--subsample", type=int, default=None)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--eps", type=float, default=0.05)
    parser.add_argument("--clusters", type=int, default=None)
    parser.add_argument("--duplicates", type=float, default=0.02, help="fraction of rows planted as near copies")
    parser.add_argument("--seed", type=int, default=0)
    arguments = parser.parse_args(argv)
    rows = arguments.rows or (100_000 if arguments.quick else 1_000_000)
    subsample = arguments.subsample or (10_000 if arguments.quick else 50_000)

    started = time.perf_counter()
    embeddings, partner = clustered_embeddings(rows, arguments.dim, arguments.duplicates, arguments.seed)
    generated_seconds = time.perf_counter() - started
    rss_before = peak_rss_gib()

    config = SemanticConfig(eps=arguments.eps, clusters=arguments.clusters)
    started = time.perf_counter()
    with RssSampler() as sampler:
        groups = semantic_groups(embeddings, config)
        check_started = time.perf_counter()
        planted = np.flatnonzero(partner >= 0)
        known = np.zeros(rows, dtype=bool)
        known[planted] = known[partner[planted]] = True
        check = check_semantic(embeddings, groups, arguments.eps, known=known, copy_pairs=(planted, partner[planted]))
        check_seconds = time.perf_counter() - check_started
        left, right = semantic_edges(embeddings, config, groups=groups)
        labels = connected_components(rows, left, right)
    dedup_seconds = time.perf_counter() - started
    rss_after = peak_rss_gib()

    # subsample: half planted pairs (both members), half random rows, so it holds real duplicates
    rng = np.random.default_rng(arguments.seed + 1)
    chosen = rng.choice(planted, min(len(planted), subsample // 4), replace=False)
    members = np.unique(
        np.concatenate([chosen, partner[chosen], rng.choice(rows, subsample, replace=False)])
    )[:subsample]
    started = time.perf_counter()
    truth_left, truth_right = brute_force_pairs(embeddings[members], 1.0 - arguments.eps)
    brute_seconds = time.perf_counter() - started
    found = labels[members[truth_left]] == labels[members[truth_right]]
    planted_found = labels[planted] == labels[partner[planted]]
    report = {
        "mode": "quick" if arguments.quick else "full",
        "rows": rows,
        "dim": arguments.dim,
        "eps": arguments.eps,
        "clusters": config.cluster_count(rows),
        "generate_seconds": round(generated_seconds, 1),
        "dedup_seconds": round(dedup_seconds, 1),
        "peak_rss_gib_before_dedup": round(rss_before, 2),
        "peak_rss_gib": round(rss_after, 2),
        "dedup_peak_rss_gib": round(sampler.peak_bytes / 2**30, 2),
        "duplicates_removed": int(rows - len(np.unique(labels))),
        "planted": int(len(planted)),
        "planted_recall": round(float(planted_found.mean()) if len(planted) else 1.0, 4),
        "subsample": int(len(members)),
        "brute_force_pairs": int(len(truth_left)),
        "brute_force_seconds": round(brute_seconds, 1),
        "recall_vs_brute_force": round(float(found.mean()) if len(found) else 1.0, 4),
        "semantic_check_seconds": round(check_seconds, 1),
        "semantic_check": check.verdict,
        "near_tier": near_tier_figures(),
    }
    report["meets_targets"] = bool(
        dedup_seconds < TARGET_SECONDS
        and report["peak_rss_gib"] < TARGET_GIB
        and report["recall_vs_brute_force"] >= TARGET_RECALL
    )
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    sys.exit(0 if main()["meets_targets"] else 1)
