"""Image embeddings for a metadata corpus (``tests/metadata_corpus.py``): one more score run, with
``keep_embeddings`` and ``embed_dim``, whose per-shard score tables (the real score schema) hold synthetic
CLIP-like float16 embeddings with planted near-copies, written a shard at a time.

The space is ``bench/dedup.py``'s: unit vectors around a two-level hierarchy of topics (random pairs at
cosine ~0, same topic 0.3-0.6), and ``duplicate_fraction`` of the rows replaced by a near copy (cosine
0.96-0.995) of a row of the same shard or of one earlier shard, so copies cross shard boundaries. Text
embeddings are null (nothing reads them here), and a failed score has a null image embedding, as
``mmdata score`` writes it. Every shard is a function of (seed, shard), so nothing is held across shards.
The run is dated before the corpus's own, so the default model (and ``clip_score``) stay as they were.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import write_json, write_parquet
from mmdata.schemas.scores import score_schema
from mmdata.storage import read_parquet
from mmdata.table import iter_embeddings

EMBEDDING_MODEL = "bench-embed"
TOPICS, SUBTOPICS = 64, 32


@dataclass(frozen=True)
class EmbeddingSpec:
    dim: int = 512
    duplicate_fraction: float = 0.05  # rows replaced by a near copy of another row
    model_id: str = EMBEDDING_MODEL
    seed: int = 0


def add_embeddings(root: str | os.PathLike, spec: EmbeddingSpec = EmbeddingSpec()) -> int:
    """Write ``spec``'s score run into the corpus at ``root`` (every complete shard; the model record last,
    which marks the run complete); returns the number of embeddings written."""
    root = layout.dataset(root)
    written = 0
    shards = layout.complete_shards(root)
    for number, shard in enumerate(shards):
        table = shard_embedding_scores(root, spec, shards, number)
        write_parquet(table, layout.score_path(root, spec.model_id, shard),
                      score_schema(spec.dim, {"model_id": spec.model_id}))
        written += table.num_rows - table.column("image_embedding").null_count
    write_json(layout.model_record_path(root, spec.model_id), {
        "model_id": spec.model_id, "model": "ViT-B-32", "pretrained": "openai", "weights": "tag",
        "embed_dim": spec.dim, "keep_embeddings": True, "scored_at": "2025-12-01T00:00:00",
    })
    return written


def shard_embedding_scores(root, spec: EmbeddingSpec, shards: list[str], number: int) -> pa.Table:
    """Shard ``shards[number]``'s score table: a row per successful sample, its embedding null where the
    score failed."""
    keys = _successful_keys(root, shards[number])
    source = int(np.random.default_rng([spec.seed, number, 5]).integers(0, number + 1))
    vectors = shard_embeddings(spec, number, len(keys), source, len(_successful_keys(root, shards[source])))
    rng = np.random.default_rng([spec.seed, number, 1])
    scores = rng.normal(0.3, 0.05, len(keys)).astype(np.float32)
    failed = rng.random(len(keys)) < 0.002
    return pa.table({
        "key": keys,
        "clip_score": pa.array(scores, pa.float32(), mask=failed),
        "score_error": pa.array(np.where(failed, "decode: synthetic", None), pa.string()),
        "image_embedding": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1), pa.float16()), spec.dim,
                                                             mask=pa.array(failed)),
        "text_embedding": pa.nulls(len(keys), pa.list_(pa.float16(), spec.dim)),
    })


def shard_embeddings(spec: EmbeddingSpec, number: int, rows: int, source: int, source_rows: int) -> np.ndarray:
    """float16 ``[rows, dim]``: shard ``number``'s own vectors, then its planted copies put in place, half
    of them copies of rows of shard ``source`` (of ``source_rows`` rows; may be the shard itself)."""
    vectors = _base_embeddings(spec, number, rows)
    copies, sources = _planted(spec, number, rows)
    rng = np.random.default_rng([spec.seed, number, 2])
    same = (rng.random(len(copies)) < 0.5) | (source == number)
    originals = np.empty((len(copies), spec.dim), dtype=np.float32)
    originals[same] = vectors[rng.choice(sources, same.sum())]
    if not same.all():
        earlier_sources = _planted(spec, source, source_rows)[1]
        originals[~same] = _base_embeddings(spec, source, source_rows)[rng.choice(earlier_sources, (~same).sum())]
    strength = rng.uniform(0.1, 0.28, (len(copies), 1)).astype(np.float32)
    jitter = _unit(rng.standard_normal(originals.shape, dtype=np.float32))
    vectors[copies] = _unit(originals + strength * jitter)
    return vectors


def embedding_chunks(root, model_id: str = EMBEDDING_MODEL):
    """``chunks()`` for :func:`mmdata.curate.semantic_stream.semantic_duplicates`: per shard, the global
    row of each embedding among the dataset's successful samples (as dedup numbers them) and the vectors."""
    root = layout.dataset(root)

    def chunks():
        offset = 0
        for shard in layout.complete_shards(root):
            successful = _successful_keys(root, shard)
            for keys, vectors in iter_embeddings(root, "image", model_id, shards=[shard]):
                rows = pc.index_in(keys, value_set=successful).to_numpy(zero_copy_only=False).astype(np.int64)
                yield rows + offset, vectors
            offset += len(successful)

    return chunks


def successful_rows(root) -> int:
    """How many successful samples the dataset has (the length of dedup's ``known`` mask)."""
    return sum(len(_successful_keys(layout.dataset(root), shard)) for shard in layout.complete_shards(root))


def _successful_keys(root, shard: str) -> pa.Array:
    metadata = read_parquet(layout.parquet_path(root, shard), columns=["key", "status"])
    return metadata.column("key").filter(pc.equal(metadata.column("status"), "success")).combine_chunks()


def _planted(spec: EmbeddingSpec, number: int, rows: int) -> tuple[np.ndarray, np.ndarray]:
    """(rows replaced by a copy, rows that are never copies: the sources) of a shard of ``rows``."""
    order = np.random.default_rng([spec.seed, number, 3]).permutation(rows)
    count = int(rows * spec.duplicate_fraction)
    return np.sort(order[:count]), np.sort(order[count:])


def _base_embeddings(spec: EmbeddingSpec, number: int, rows: int) -> np.ndarray:
    rng = np.random.default_rng([spec.seed, number, 0])
    subtopics = _subtopics(spec.seed, spec.dim)
    centre = subtopics[rng.integers(0, len(subtopics), rows)]
    noise = rng.standard_normal((rows, spec.dim), dtype=np.float32) * np.float32(1.1 / np.sqrt(spec.dim))
    return _unit(centre + noise).astype(np.float16)


@lru_cache(maxsize=4)
def _subtopics(seed: int, dim: int) -> np.ndarray:
    rng = np.random.default_rng([seed, 1 << 20])
    topics = _unit(rng.standard_normal((TOPICS, dim)).astype(np.float32))
    spread = rng.standard_normal((TOPICS * SUBTOPICS, dim)).astype(np.float32) * np.float32(0.9 / np.sqrt(dim))
    return _unit(np.repeat(topics, SUBTOPICS, axis=0) + spread)


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
