"""A nearest-neighbour index over L2-normalised vectors (inner product = cosine), with faiss.

The kind is chosen from the number of vectors and a memory budget, after autofaiss's heuristics:
exact (``Flat``) for small sets; ``HNSW`` (graph over the full vectors) when it fits the budget and the
set is mid-sized; beyond that an inverted file with 4-bit fast-scan product quantisation
(``IVF,PQ x4fs``), whose candidates are re-ranked with the float16 vectors kept beside the index as a
memory map. The search parameter (``nprobe`` / ``efSearch``) is tuned at build time on the data itself
until recall@10 against exact search reaches a target, and stored with the index.

The budget bounds the faiss index held in RAM; the float16 vectors (``vectors.npy``, 2 bytes per
dimension) stay on disk and are paged in only for the rows a query re-ranks or a view restricts to.
A build never holds the vectors either: the training sample and the tuning queries are drawn from
them in one pass, then they are normalised and added in batches (:data:`BATCH_VECTORS` at a time);
:class:`VectorFile` streams a dataset's vectors to disk first, where the build reads them back.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
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
BATCH_VECTORS = 65_536  # vectors normalised and added to the index at a time (128 MB of float32 at 512-d)
NPY_HEADER_BYTES = 128  # fixed, so VectorFile can write the header once the count is known


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
    def build(cls, vectors: np.ndarray, config: IndexConfig = IndexConfig(), *,
              batch_size: int = BATCH_VECTORS) -> "AnnIndex":
        """Normalise ``vectors`` (float, [n, d], in memory), build the planned index and tune its search
        parameter; the float16 copy kept for re-ranking is in memory too."""
        return cls._build(_ArrayVectors(np.asarray(vectors)), config, batch_size)

    @classmethod
    def build_from_file(cls, path: str | os.PathLike, config: IndexConfig = IndexConfig(), *,
                        batch_size: int = BATCH_VECTORS) -> "AnnIndex":
        """The same index over the float16 vectors of the ``.npy`` file ``path`` (as :class:`VectorFile`
        writes them), read ``batch_size`` at a time; the file is rewritten in place with the normalised
        vectors and becomes the index's (memory-mapped) ``vectors.npy``."""
        with _FileVectors(path) as source:
            return cls._build(source, config, batch_size)

    @classmethod
    def _build(cls, source: "_ArrayVectors | _FileVectors", config: IndexConfig, batch_size: int) -> "AnnIndex":
        import faiss

        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, not {batch_size}")
        started = time.perf_counter()
        count, dim = source.count, source.dim
        plan = plan_index(count, dim, config)
        index = faiss.index_factory(dim, plan.factory, faiss.METRIC_INNER_PRODUCT)
        training = np.empty(0, np.int64)
        if plan.kind == IVF_PQ:
            rng = np.random.default_rng(config.seed)
            training = np.sort(rng.choice(count, min(count, 64 * plan.nlist), replace=False))
        pairs = np.empty((0, 2), np.int64)
        if plan.kind != FLAT:
            # Tuning queries are midpoints of random pairs of indexed vectors: they fall between the
            # data, as real queries do, instead of on a stored point that any index finds.
            pairs = np.random.default_rng(config.seed + 1).choice(count, size=(min(_TUNE_QUERIES, count), 2))
        endpoints, slots = np.unique(pairs, return_inverse=True)
        sample, picked = _pick(source, [training, endpoints], batch_size)
        if len(training):
            index.train(sample)
        del sample
        picked = picked[slots.reshape(pairs.shape)]
        queries = normalise(picked[:, 0] + picked[:, 1]) if len(pairs) else None
        del picked
        truth = _ExactTopK(queries, min(_TUNE_K, count)) if queries is not None else None
        for start, block in source.blocks(batch_size):
            unit = normalise(block)
            index.add(unit)
            source.store(start, unit.astype(np.float16))
            if truth is not None:
                truth.add(unit, start)
        report = BuildReport(
            plan=asdict(plan), search_params={}, tuned_recall=None, build_seconds=0.0,
            index_bytes=0, count=count, dim=dim, config=asdict(config),
        )
        built = cls(index, source.stored(), report)
        if truth is not None:
            built._tune(queries, truth.ids, config)
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
        mapped = getattr(self.vectors, "filename", None)
        if mapped is None or not (folder / VECTORS_FILE).exists() or not (folder / VECTORS_FILE).samefile(mapped):
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

    def _tune(self, queries: np.ndarray, truth: np.ndarray, config: IndexConfig) -> None:
        """Smallest nprobe / efSearch whose recall@10 on ``queries`` against their exact top-k ids
        (``truth``) reaches the target."""
        if self.kind == IVF_PQ:
            name, values = "nprobe", _powers_of_two(1, self.report.plan["nlist"])
            self.report.search_params["rerank_factor"] = config.rerank_factor
        else:
            name, values = "efSearch", _powers_of_two(16, 4096)
        recall = 0.0
        for value in values:
            self.report.search_params[name] = value
            _, found = self.search(queries, truth.shape[1])
            recall = recall_at_k(found, truth)
            if recall >= config.target_recall:
                break
        self.report.tuned_recall = recall


class _ArrayVectors:
    """Vectors in memory as a build source; the normalised float16 copy is kept in memory."""

    def __init__(self, vectors: np.ndarray):
        if vectors.ndim != 2:
            raise ValueError(f"vectors must be a 2-d array [n, d], not of shape {vectors.shape}")
        self.vectors = vectors
        self.count, self.dim = vectors.shape
        self.output = np.empty((self.count, self.dim), np.float16)

    def blocks(self, size: int):
        for start in range(0, self.count, size):
            yield start, self.vectors[start : start + size]

    def store(self, start: int, block: np.ndarray) -> None:
        self.output[start : start + len(block)] = block

    def stored(self) -> np.ndarray:
        return self.output


class _FileVectors:
    """The float16 ``.npy`` file of :class:`VectorFile` as a build source: read a block at a time with
    plain file reads (no memory map, whose pages would count as this process's memory), and rewritten
    in place with the normalised vectors."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        header = np.load(self.path, mmap_mode="r")
        if header.ndim != 2 or header.dtype != np.float16:
            raise ValueError(f"{path} does not hold float16 vectors [n, d] (got {header.dtype} {header.shape})")
        self.count, self.dim = header.shape
        self.offset = header.offset
        del header
        self.handle = open(self.path, "r+b")

    def __enter__(self) -> "_FileVectors":
        return self

    def __exit__(self, *exc_info) -> None:
        self.handle.close()

    def blocks(self, size: int):
        for start in range(0, self.count, size):
            block = np.empty((min(size, self.count - start), self.dim), np.float16)
            self.handle.seek(self.offset + start * self.dim * 2)
            if self.handle.readinto(block) != block.nbytes:
                raise ValueError(f"{self.path} is shorter than its header says: was it written completely?")
            yield start, block

    def store(self, start: int, block: np.ndarray) -> None:
        self.handle.seek(self.offset + start * self.dim * 2)
        self.handle.write(np.ascontiguousarray(block, dtype=np.float16).tobytes())

    def stored(self) -> np.ndarray:
        self.handle.flush()
        return np.load(self.path, mmap_mode="r")


def _pick(source: "_ArrayVectors | _FileVectors", id_lists: list[np.ndarray], size: int) -> list[np.ndarray]:
    """The normalised float32 rows of each sorted id list, in one pass over the source (none when all
    lists are empty)."""
    picked = [np.empty((len(ids), source.dim), np.float32) for ids in id_lists]
    if not any(len(ids) for ids in id_lists):
        return picked
    for start, block in source.blocks(size):
        for ids, rows in zip(id_lists, picked):
            low, high = np.searchsorted(ids, [start, start + len(block)])
            if high > low:
                rows[low:high] = normalise(block[ids[low:high] - start])
    return picked


class _ExactTopK:
    """The exact top-k ids of a few queries over vectors seen a block at a time."""

    def __init__(self, queries: np.ndarray, k: int):
        self.queries, self.k = queries, k
        self.similarities = np.full((len(queries), k), -np.inf, dtype=np.float32)
        self.ids = np.full((len(queries), k), -1, dtype=np.int64)

    def add(self, block: np.ndarray, start: int) -> None:
        import faiss

        similarities, ids = faiss.knn(self.queries, block, min(self.k, len(block)), metric=faiss.METRIC_INNER_PRODUCT)
        similarities = np.concatenate([self.similarities, similarities], axis=1)
        ids = np.concatenate([self.ids, ids + start], axis=1)
        best = np.argsort(-similarities, axis=1, kind="stable")[:, : self.k]
        self.similarities = np.take_along_axis(similarities, best, axis=1)
        self.ids = np.take_along_axis(ids, best, axis=1)


class VectorFile:
    """A float16 ``.npy`` file of [n, dim] vectors written a piece at a time; the header, which holds n,
    is written when the file is closed (a fixed :data:`NPY_HEADER_BYTES` reserved for it)."""

    def __init__(self, path: str | os.PathLike, dim: int):
        self.path, self.dim, self.count = Path(path), int(dim), 0
        self.handle = open(self.path, "wb")
        self.handle.write(bytes(NPY_HEADER_BYTES))

    def append(self, vectors: np.ndarray) -> None:
        vectors = np.asarray(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"{self.path}: vectors of shape {vectors.shape} where [n, {self.dim}] was expected")
        self.handle.write(np.ascontiguousarray(vectors, dtype=np.float16).tobytes())
        self.count += len(vectors)

    def close(self) -> None:
        if self.handle.closed:
            return
        self.handle.seek(0)
        self.handle.write(_npy_header((self.count, self.dim)))
        self.handle.close()

    def __enter__(self) -> "VectorFile":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _npy_header(shape: tuple[int, int]) -> bytes:
    """A version 1.0 ``.npy`` header for float16 C-order ``shape``, padded to :data:`NPY_HEADER_BYTES`."""
    text = repr({"descr": np.dtype(np.float16).str, "fortran_order": False, "shape": tuple(shape)})
    length = NPY_HEADER_BYTES - 10  # magic (6), version (2), length (2)
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", length) + (text.ljust(length - 1) + "\n").encode("latin1")


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
