"""A nearest-neighbour index over L2-normalised vectors (inner product = cosine), with faiss.

The kind is chosen from the number of vectors and a memory budget, after autofaiss's heuristics:
exact (``Flat``) for small sets; ``HNSW`` (graph over the full vectors) when it fits the budget and the
set is mid-sized; beyond that an inverted file with 4-bit fast-scan product quantisation
(``IVF,PQ x4fs``), whose candidates are re-ranked with the float16 vectors kept beside the index as a
memory map. The search parameter (``nprobe`` / ``efSearch``) is tuned at build time on the data itself
until recall@10 against exact search reaches a target, and stored with the index.

The budget bounds the faiss index held in RAM; the float16 vectors (``vectors.npy``, 2 bytes per
dimension) stay on disk and are paged in only for the rows a query re-ranks or a view restricts to.
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

FLAT, HNSW, IVF_PQ = "flat", "hnsw", "ivf_pq"
INDEX_FILE = "index.faiss"
VECTORS_FILE = "vectors.npy"
PLAN_FILE = "plan.json"
_UNITS = {
    "": 1, "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "TB": 1e12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*$", re.IGNORECASE)
_TUNE_K = 10
_TUNE_QUERIES = 256


def parse_memory(value: str | int | float) -> int:
    """``"2GB"``, ``"512MiB"``, ``"300M"`` or a byte count → bytes."""
    if isinstance(value, (int, float)):
        if value <= 0:
            raise ValueError(f"memory size must be positive, not {value}")
        return int(value)
    match = _SIZE.match(value)
    unit = match.group(2).upper() if match else ""
    if unit and not unit.endswith("B"):
        unit += "B"
    if not match or unit not in _UNITS or float(match.group(1)) <= 0:
        raise ValueError(f"memory size {value!r} is not understood: write e.g. 2GB, 512MB or 1GiB")
    return int(float(match.group(1)) * _UNITS[unit])


@dataclass(frozen=True, kw_only=True)
class IndexConfig:
    """How to choose and tune an index; the defaults suit a single machine."""

    max_index_memory: int = 4 * 10**9  # bytes of RAM the faiss index may take
    exact_max_vectors: int = 100_000  # up to this many, exact search (fast enough, and exact)
    hnsw_max_vectors: int = 250_000  # HNSW builds slowly beyond this on a few cores
    target_recall: float = 0.97  # recall@10 against exact search the tuning aims for
    rerank_factor: int = 10  # IVF-PQ re-ranks k * rerank_factor candidates with the float16 vectors
    exact_subset_max: int = 100_000  # a restriction (view) to at most this many ids is scanned exactly
    seed: int = 0

    def __post_init__(self) -> None:
        if self.max_index_memory <= 0:
            raise ValueError(f"max_index_memory must be positive, not {self.max_index_memory}")
        if self.exact_max_vectors < 0 or self.hnsw_max_vectors < 0:
            raise ValueError("exact_max_vectors and hnsw_max_vectors must be >= 0")
        if not 0 < self.target_recall <= 1:
            raise ValueError(f"target_recall must be in (0, 1], not {self.target_recall}")
        if self.rerank_factor < 1:
            raise ValueError(f"rerank_factor must be at least 1, not {self.rerank_factor}")


@dataclass(frozen=True)
class IndexPlan:
    """Which index to build: the faiss factory string and the estimated RAM it takes."""

    kind: str
    factory: str
    estimated_bytes: int
    nlist: int | None = None


def plan_index(count: int, dim: int, config: IndexConfig = IndexConfig()) -> IndexPlan:
    """Pick the index kind from the size and the memory budget (autofaiss-style thresholds)."""
    if count < 1 or dim < 1:
        raise ValueError(f"cannot index {count} vectors of dimension {dim}")
    budget = config.max_index_memory
    flat_bytes = 4 * count * dim
    if count < 1000 or (count <= config.exact_max_vectors and flat_bytes <= budget):
        return IndexPlan(FLAT, "Flat", flat_bytes)
    # HNSW keeps the vectors plus 2*M links of 4 bytes per vector (autofaiss: M from the budget, 8..32).
    links = int((budget / count - 4 * dim) // 8)
    if count <= config.hnsw_max_vectors and links >= 8:
        m = min(links, 32)
        return IndexPlan(HNSW, f"HNSW{m}", count * (4 * dim + 8 * m))
    nlist = _nlist(count)
    if not _pq_sizes(dim):
        raise ValueError(f"a compressed index needs an even dimension, not {dim}: "
                         "raise --max-index-memory so an exact or HNSW index fits")
    for m in _pq_sizes(dim):
        estimated = count * (m // 2 + 8) + nlist * dim * 4
        if estimated <= budget:
            return IndexPlan(IVF_PQ, f"IVF{nlist},PQ{m}x4fs", estimated, nlist)
    smallest = _pq_sizes(dim)[-1]
    need = count * (smallest // 2 + 8) + nlist * dim * 4
    raise ValueError(
        f"{count} vectors of dimension {dim} do not fit max_index_memory={budget} bytes even compressed "
        f"(need about {need}): raise --max-index-memory"
    )


def _nlist(count: int) -> int:
    """About 2*sqrt(n) lists, a power of two: fewer than autofaiss's 4-16*sqrt(n), so k-means and
    assignment stay in minutes on a few cores; re-ranking recovers the recall."""
    return int(2 ** round(math.log2(2 * math.sqrt(count))))


def _pq_sizes(dim: int) -> list[int]:
    """Sub-quantiser counts to try, finest first: 4 bits per 2, 4, 8 or 16 dimensions (even, divides dim)."""
    return [dim // step for step in (2, 4, 8, 16) if dim % step == 0 and (dim // step) % 2 == 0]


@dataclass
class BuildReport:
    """What was built and how well it does, kept in ``plan.json`` beside the index."""

    plan: dict
    search_params: dict
    tuned_recall: float | None
    build_seconds: float
    index_bytes: int  # size of the faiss index file (0 until saved)
    count: int
    dim: int
    config: dict = field(default_factory=dict)


class AnnIndex:
    """A faiss index plus the float16 vectors it was built from (for re-ranking and exact subsets)."""

    def __init__(self, faiss_index, vectors: np.ndarray, report: BuildReport):
        self.faiss_index = faiss_index
        self.vectors = vectors
        self.report = report

    @property
    def kind(self) -> str:
        return self.report.plan["kind"]

    @classmethod
    def build(cls, vectors: np.ndarray, config: IndexConfig = IndexConfig()) -> "AnnIndex":
        """Normalise ``vectors`` (float, [n, d]), build the planned index and tune its search parameter."""
        import faiss

        started = time.perf_counter()
        vectors = normalise(np.asarray(vectors, dtype=np.float32))
        count, dim = vectors.shape
        plan = plan_index(count, dim, config)
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        if plan.kind == IVF_PQ:
            rng = np.random.default_rng(config.seed)
            sample = min(count, 64 * plan.nlist)
            index.train(vectors[np.sort(rng.choice(count, sample, replace=False))])
        index.add(vectors)
        stored = vectors.astype(np.float16)
        report = BuildReport(
            plan=asdict(plan), search_params={}, tuned_recall=None, build_seconds=0.0,
            index_bytes=0, count=count, dim=dim, config=asdict(config),
        )
        built = cls(index, stored, report)
        if plan.kind != FLAT:
            built._tune(vectors, config)
        report.build_seconds = time.perf_counter() - started
        return built

    def search(self, queries: np.ndarray, k: int, *,
               allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` (similarities, ids) per query row; ``allowed`` restricts hits to those ids.

        Ids are -1 (and similarities -inf) where fewer than ``k`` vectors qualify.
        """
        queries = normalise(np.atleast_2d(np.asarray(queries, dtype=np.float32)))
        k = max(1, int(k))
        if allowed is not None:
            allowed = np.unique(np.asarray(allowed, dtype=np.int64))
            if len(allowed) <= self.report.config.get("exact_subset_max", 100_000) or self.kind == FLAT:
                return _exact(queries, self.vectors, k, allowed)
        params = self._search_parameters(allowed)
        if self.kind != IVF_PQ:
            similarities, ids = self.faiss_index.search(queries, k, params=params)
            return similarities, ids
        fetch = min(self.report.count, k * self.report.search_params.get("rerank_factor", 10))
        _, candidates = self.faiss_index.search(queries, fetch, params=params)
        return _rerank(queries, self.vectors, candidates, k)

    def save(self, folder: str | os.PathLike) -> None:
        """Write the index, vectors and report into ``folder`` (the caller makes the folder's commit atomic)."""
        import faiss

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        faiss.write_index(self.faiss_index, str(folder / INDEX_FILE))
        self.report.index_bytes = (folder / INDEX_FILE).stat().st_size
        np.save(folder / VECTORS_FILE, self.vectors)
        (folder / PLAN_FILE).write_text(json.dumps(asdict(self.report), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: str | os.PathLike) -> "AnnIndex":
        import faiss

        folder = Path(folder)
        report = BuildReport(**json.loads((folder / PLAN_FILE).read_text()))
        index = faiss.read_index(str(folder / INDEX_FILE))
        if report.plan["kind"] == FLAT and getattr(faiss, "get_num_gpus", lambda: 0)() > 0:
            index = faiss.index_cpu_to_all_gpus(index)  # faiss-gpu: exact search on the GPUs
        vectors = np.load(folder / VECTORS_FILE, mmap_mode="r")
        return cls(index, vectors, report)

    def _search_parameters(self, allowed: np.ndarray | None):
        import faiss

        values = {name: value for name, value in self.report.search_params.items() if name in ("nprobe", "efSearch")}
        if allowed is not None:
            # A restriction to a fraction f of the ids leaves about f of each probed list or graph
            # neighbourhood usable: probe 1/f times wider to see as many allowed candidates.
            widen = math.ceil(self.report.count / len(allowed))
            if "nprobe" in values:
                values["nprobe"] = min(self.report.plan["nlist"], values["nprobe"] * widen)
            if "efSearch" in values:
                values["efSearch"] = min(4096, values["efSearch"] * widen)
            mask = np.zeros(self.report.count, dtype=bool)
            mask[allowed] = True
            bitmap = np.packbits(mask, bitorder="little")
            selector = faiss.IDSelectorBitmap(len(mask), faiss.swig_ptr(bitmap))
            selector.bitmap_keepalive = bitmap  # the selector reads the numpy buffer: keep it alive
            values["sel"] = selector
        if not values:
            return None
        if self.kind == IVF_PQ:
            return faiss.SearchParametersIVF(**values)
        if self.kind == HNSW:
            return faiss.SearchParametersHNSW(**values)
        return faiss.SearchParameters(**values)

    def _tune(self, vectors: np.ndarray, config: IndexConfig) -> None:
        """Smallest nprobe / efSearch whose recall@10 against exact search reaches the target.

        Queries are midpoints of random pairs of indexed vectors: they fall between the data, as
        real queries do, instead of on a stored point that any index finds.
        """
        import faiss

        rng = np.random.default_rng(config.seed + 1)
        count = len(vectors)
        pairs = rng.choice(count, size=(min(_TUNE_QUERIES, count), 2))
        queries = normalise(vectors[pairs[:, 0]] + vectors[pairs[:, 1]])
        k = min(_TUNE_K, count)
        _, truth = faiss.knn(queries, vectors, k, metric=faiss.METRIC_INNER_PRODUCT)
        if self.kind == IVF_PQ:
            name, values = "nprobe", _powers_of_two(1, self.report.plan["nlist"])
            self.report.search_params["rerank_factor"] = config.rerank_factor
        else:
            name, values = "efSearch", _powers_of_two(16, 4096)
        recall = 0.0
        for value in values:
            self.report.search_params[name] = value
            _, found = self.search(queries, k)
            recall = recall_at_k(found, truth)
            if recall >= config.target_recall:
                break
        self.report.tuned_recall = recall


def normalise(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=-1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each row of ``truth`` (exact top-k ids) that ``found`` holds."""
    hits = sum(len(set(f.tolist()) & set(t.tolist())) for f, t in zip(found, truth))
    return hits / truth.size


def _exact(queries: np.ndarray, vectors: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact search over the rows ``allowed`` (a view small enough to scan)."""
    subset = np.asarray(vectors[allowed], dtype=np.float32)
    similarities = queries @ subset.T
    return _top_k(similarities, allowed, k)


def _rerank(queries: np.ndarray, vectors: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact inner products of each query with its candidates (from the float16 vectors), best k."""
    out_similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(queries), k), -1, dtype=np.int64)
    for row, (query, ids) in enumerate(zip(queries, candidates)):
        ids = ids[ids >= 0]
        if not len(ids):
            continue
        order = np.argsort(ids)  # sorted reads from the memory map
        ids = ids[order]
        similarities = np.asarray(vectors[ids], dtype=np.float32) @ query
        top_similarities, top_ids = _top_k(similarities[None, :], ids, k)
        out_similarities[row], out_ids[row] = top_similarities[0], top_ids[0]
    return out_similarities, out_ids


def _top_k(similarities: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    count = similarities.shape[1]
    take = min(k, count)
    if take < count:
        part = np.argpartition(-similarities, take - 1, axis=1)[:, :take]
    else:
        part = np.tile(np.arange(count), (len(similarities), 1))
    part_similarities = np.take_along_axis(similarities, part, axis=1)
    order = np.argsort(-part_similarities, axis=1, kind="stable")
    best = np.take_along_axis(part, order, axis=1)
    out_similarities = np.full((len(similarities), k), -np.inf, dtype=np.float32)
    out_ids = np.full((len(similarities), k), -1, dtype=np.int64)
    out_similarities[:, :take] = np.take_along_axis(similarities, best, axis=1)
    out_ids[:, :take] = ids[best]
    return out_similarities, out_ids


def _powers_of_two(low: int, high: int) -> list[int]:
    values, value = [], low
    while value < high:
        values.append(value)
        value *= 2
    return values + [high]
