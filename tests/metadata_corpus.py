"""Metadata-only datasets with the real schemas and no image bytes: shard parquets and stats files, one
score table per shard and model, and the annotation tables (language, image quality, dedup), made with
numpy a shard at a time. The out-of-core tests compare stages on them with the in-memory paths, and
``bench/scale.py`` builds its 1M-100M-row datasets with them.

Everything is a function of (seed, shard), so a dataset is the same whatever else was built before it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from mmdata import layout
from mmdata.atomic import parquet_writer, write_json, write_parquet
from mmdata.schemas import align_table
from mmdata.schemas.annotations import DEDUP_SCHEMA, IMAGE_QUALITY_SCHEMA, LANGUAGE_SCHEMA
from mmdata.schemas.samples import SAMPLE_SCHEMA
from mmdata.schemas.scores import score_schema
from mmdata.stats import shard_stats

MODEL = "bench-b32"
FAILURES = {  # status -> (share of all rows, error classes)
    "failed_to_download": (0.12, ("timeout", "http_404", "http_403", "connection_reset")),
    "failed_to_decode": (0.04, ("not_an_image", "truncated")),
    "filtered": (0.02, ("too_small",)),
    "invalid_url": (0.01, ("bad_scheme",)),
    "opted_out": (0.01, ("noai",)),
}
LANGUAGES = {"en": 0.6, "de": 0.08, "fr": 0.08, "es": 0.08, "ru": 0.05, "ja": 0.04, "zh": 0.04, "pt": 0.03}
WORDS = np.array(("a photo of the red blue green dog cat house tree car beach mountain city street night "
                  "wedding dress shoes logo vintage poster kitchen table chair sale free shipping design art "
                  "portrait landscape sunset flower garden food cake coffee book phone watch bag").split())


@dataclass(frozen=True)
class CorpusSpec:
    rows: int
    shard_size: int = 10_000
    seed: int = 0
    domains: int = 1_000_000  # Zipf-distributed hosts drawn from this many
    models: tuple[str, ...] = (MODEL,)
    annotations: bool = True  # language, image_quality and dedup tables
    extra_column: bool = False  # an input column outside SAMPLE_SCHEMA (source_id), in every other shard
    group_rows: int = 1 << 20  # rows per row group of the annotation tables
    shuffle_annotations: bool = False  # annotation rows in a random order (small datasets only)


def write_corpus(root: str | os.PathLike, spec: CorpusSpec) -> list[str]:
    """Write the dataset ``spec`` describes under ``root``; returns its shard names."""
    shards = [layout.shard_name(shard) for shard in range((spec.rows + spec.shard_size - 1) // spec.shard_size)]
    for model_id in spec.models:
        write_json(layout.model_record_path(root, model_id), {
            "model_id": model_id, "model": "ViT-B-32", "pretrained": "openai", "weights": "tag", "embed_dim": None,
            "keep_embeddings": False, "scored_at": f"2026-01-0{1 + spec.models.index(model_id)}T00:00:00",
        })
    tables = {"language": [], "image_quality": [], "dedup": []}
    writers = {}
    if spec.annotations and not spec.shuffle_annotations:
        folder = layout.annotations_dir(root)
        writers = {kind: parquet_writer(folder / f"{kind}.parquet", schema, group_rows=spec.group_rows)
                   for kind, schema in (("language", LANGUAGE_SCHEMA), ("image_quality", IMAGE_QUALITY_SCHEMA),
                                        ("dedup", DEDUP_SCHEMA))}
    opened = {kind: writer.__enter__() for kind, writer in writers.items()}
    try:
        for number, shard in enumerate(shards):
            rows = min(spec.shard_size, spec.rows - number * spec.shard_size)
            metadata = shard_metadata(spec, number, rows)
            write_parquet(metadata, layout.parquet_path(root, shard), SAMPLE_SCHEMA, keep_extra=True)
            stats = shard_stats(align_table(metadata, SAMPLE_SCHEMA), shard=shard, duration=0.0, start_time=0.0)
            for model_id in spec.models:
                write_parquet(shard_scores(spec, number, metadata, model_id),
                              layout.score_path(root, model_id, shard), score_schema(None, {"model_id": model_id}))
            if spec.annotations:
                for kind, table in shard_annotations(spec, number, metadata).items():
                    if kind in opened:
                        opened[kind].write(table)
                    else:
                        tables[kind].append(table)
            write_json(layout.stats_path(root, shard), stats)  # last: the shard's completion marker
    except BaseException as error:
        for writer in writers.values():
            writer.__exit__(type(error), error, error.__traceback__)
        raise
    for writer in writers.values():
        writer.__exit__(None, None, None)
    if spec.annotations and spec.shuffle_annotations:
        rng = np.random.default_rng([spec.seed, 1 << 30])
        folder = layout.annotations_dir(root)
        for kind, schema in (("language", LANGUAGE_SCHEMA), ("image_quality", IMAGE_QUALITY_SCHEMA),
                             ("dedup", DEDUP_SCHEMA)):
            table = pa.concat_tables(tables[kind])
            with parquet_writer(folder / f"{kind}.parquet", schema, group_rows=spec.group_rows) as writer:
                writer.write(table.take(rng.permutation(table.num_rows)))
    return shards


def shard_metadata(spec: CorpusSpec, number: int, rows: int) -> pa.Table:
    """One shard's metadata rows (SAMPLE_SCHEMA, plus source_id when asked): 80% successes."""
    rng = np.random.default_rng([spec.seed, number])
    shard = layout.shard_name(number)
    digits = layout.row_digits(spec.shard_size)
    keys = [f"{shard}{row:0{digits}d}" for row in range(rows)]
    names = ["success", *FAILURES]
    shares = np.array([1.0 - sum(share for share, _ in FAILURES.values()), *(share for share, _ in FAILURES.values())])
    status = np.array(names)[rng.choice(len(names), rows, p=shares)]
    success = status == "success"
    error_class = np.array([None] * rows, dtype=object)
    for name, (_, classes) in FAILURES.items():
        chosen = status == name
        error_class[chosen] = np.array(classes, dtype=object)[rng.integers(0, len(classes), int(chosen.sum()))]
    hosts = np.minimum(rng.zipf(1.3, rows), spec.domains)
    urls = [f"http://img{host}.site{host % 97}.test/{key}.jpg" for host, key in zip(hosts.tolist(), keys)]
    word_counts = rng.integers(0, 16, rows)
    words = WORDS[rng.integers(0, len(WORDS), int(word_counts.sum()))].tolist()
    captions, start = [], 0
    for count in word_counts.tolist():
        captions.append(" ".join(words[start:start + count]))
        start += count
    captions = [None if missing else caption for caption, missing in zip(captions, rng.random(rows) < 0.01)]
    width = np.where(success, rng.integers(64, 512, rows), 0)
    height = np.where(success, rng.integers(64, 512, rows), 0)
    original_width = np.where(success, width * rng.integers(1, 8, rows), 0)
    original_height = np.where(success, height * rng.integers(1, 8, rows), 0)
    no_original = rng.random(rows) < 0.05
    tar_size = np.where(success, rng.integers(5_000, 60_000, rows), 0)
    tar_offset = np.cumsum(tar_size) - tar_size
    columns = {
        "key": pa.array(keys, pa.string()),
        "uid": pa.array(_hex(rng, rows, 16), pa.string()),
        "url": pa.array(urls, pa.string()),
        "caption": pa.array(captions, pa.string()),
        "status": pa.array(status.tolist(), pa.string()),
        "error_message": pa.array([None if ok else f"{name}: synthetic failure"
                                   for ok, name in zip(success, error_class)], pa.string()),
        "error_class": pa.array(error_class.tolist(), pa.string()),
        "width": pa.array(width, pa.int32(), mask=~success),
        "height": pa.array(height, pa.int32(), mask=~success),
        "original_width": pa.array(original_width, pa.int32(), mask=~success | no_original),
        "original_height": pa.array(original_height, pa.int32(), mask=~success | no_original),
        "sha256": pa.array([digest if ok else None for digest, ok in zip(_hex(rng, rows, 32), success)], pa.string()),
        "exif": pa.array(["{}" if ok else None for ok in success], pa.string()),
        "http_status": pa.array(np.where(success, 200, 404), pa.int32()),
        "byte_count": pa.array(tar_size, pa.int64(), mask=~success),
        "image_format": pa.array(["jpeg" if ok else None for ok in success], pa.string()),
        "tar_offset": pa.array(tar_offset, pa.int64(), mask=~success),
        "tar_size": pa.array(tar_size, pa.int64(), mask=~success),
    }
    if spec.extra_column and number % 2 == 0:
        columns["source_id"] = pa.array(np.arange(number * spec.shard_size, number * spec.shard_size + rows))
    return pa.table(columns)


def shard_scores(spec: CorpusSpec, number: int, metadata: pa.Table, model_id: str) -> pa.Table:
    """A score row per successful sample; a few scores rounded (ties), one in 500 failed (null)."""
    rng = np.random.default_rng([spec.seed, number, spec.models.index(model_id) + 1])
    stored = metadata.filter(pa.compute.equal(metadata.column("status"), "success"))
    scores = rng.normal(0.3, 0.05, stored.num_rows).astype(np.float32)
    rounded = rng.random(stored.num_rows) < 0.1
    scores[rounded] = np.round(scores[rounded], 2)
    failed = rng.random(stored.num_rows) < 0.002
    return pa.table({
        "key": stored.column("key"),
        "clip_score": pa.array(scores, pa.float32(), mask=failed),
        "score_error": pa.array(["decode: synthetic" if bad else None for bad in failed], pa.string()),
    })


def shard_annotations(spec: CorpusSpec, number: int, metadata: pa.Table) -> dict[str, pa.Table]:
    """This shard's rows of each annotation table, in metadata order (as mmdata annotate and dedup write)."""
    rng = np.random.default_rng([spec.seed, number, 1 << 20])
    rows = metadata.num_rows
    keys = metadata.column("key")
    success = np.asarray(pa.compute.equal(metadata.column("status"), "success"))
    captioned = np.asarray(metadata.column("caption").is_valid())
    codes = np.array(list(LANGUAGES))[rng.choice(len(LANGUAGES), rows, p=list(LANGUAGES.values()))]
    language = pa.table({
        "key": keys,
        "caption_language": pa.array(codes, pa.string(), mask=~captioned),
        "caption_language_score": pa.array(rng.uniform(0.2, 1.0, rows).astype(np.float32), mask=~captioned),
    })
    sharpness = rng.lognormal(5.0, 1.5, rows).astype(np.float32)
    sharpness[rng.random(rows) < 0.01] = 0.0
    quality = pa.table({
        "key": keys,
        "laplacian_variance": pa.array(sharpness, pa.float32(), mask=~success),
        "caption_chars_per_100px": pa.array(rng.gamma(2.0, 3.0, rows).astype(np.float32), mask=~success),
        "image_quality_error": pa.array([None] * rows, pa.string()),
    })
    stored = np.flatnonzero(success)
    key_list = keys.to_pylist()
    duplicate_of, reason, similarity = [None] * len(stored), [None] * len(stored), [None] * len(stored)
    marked = np.flatnonzero(rng.random(len(stored)) < 0.1)
    for position, why in zip(marked[marked > 0].tolist(), rng.choice(("exact", "near", "semantic"), len(marked))):
        duplicate_of[position] = key_list[stored[int(rng.integers(0, position))]]  # an earlier stored sample
        reason[position] = str(why)
        similarity[position] = 1.0 if why == "exact" else float(rng.uniform(0.9, 1.0))
    dedup = pa.table({
        "key": pa.array([key_list[row] for row in stored.tolist()], pa.string()),
        "duplicate_of": pa.array(duplicate_of, pa.string()),
        "dup_reason": pa.array(reason, pa.string()),
        "dup_similarity": pa.array(similarity, pa.float32()),
    })
    return {"language": language, "image_quality": quality, "dedup": dedup}


def _hex(rng: np.random.Generator, rows: int, width: int) -> list[str]:
    """``rows`` random lowercase hex strings of ``2 * width`` characters."""
    text = rng.integers(0, 256, rows * width, dtype=np.uint8).tobytes().hex()
    return [text[start:start + 2 * width] for start in range(0, len(text), 2 * width)]


def in_memory_table(root) -> pa.Table:
    """The joined table the way ``read_table`` made it before it went a shard at a time: every shard's
    metadata concatenated, then each score and annotation table read whole and looked up by key. The
    out-of-core tests compare with it."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    root = layout.dataset(root)
    shards = layout.complete_shards(root)
    pieces = []
    for shard in shards:
        table = pq.read_table(layout.parquet_path(root, shard).path)
        if "uid" not in table.column_names:
            pairs = zip(table.column("url").to_pylist(), table.column("caption").to_pylist())
            table = table.append_column("uid", pa.array([layout.sample_uid(u, c) for u, c in pairs], pa.string()))
        table = align_table(table, SAMPLE_SCHEMA, keep_extra=True)
        pieces.append(table.append_column(pa.field("shard", pa.string(), nullable=False),
                                          pa.array([shard] * table.num_rows, pa.string())))
    table = pa.concat_tables(pieces, promote_options="permissive")
    keys = table.column("key")

    def lookup(source: pa.Table, column: str) -> pa.ChunkedArray:
        positions = pc.index_in(keys, value_set=source.column("key").combine_chunks())
        return pa.chunked_array([source.column(column).combine_chunks().take(positions)])

    models = layout.scored_models(root)
    default = layout.default_model(root)
    for name, model_id in ([("clip_score", default)] if default else []) + [
            (f"{layout.SCORE_COLUMN_PREFIX}{model_id}", model_id) for model_id in models]:
        folder = layout.model_dir(root, model_id)
        scores = pa.concat_tables([pq.read_table((folder / f"{shard}.parquet").path, columns=["key", "clip_score"])
                                   for shard in shards if (folder / f"{shard}.parquet").exists()])
        table = table.append_column(pa.field(name, pa.float32()), lookup(scores, "clip_score"))
    folder = layout.annotations_dir(root)
    for name in folder.names(".parquet"):
        annotation = pq.read_table((folder / name).path)
        for field in annotation.schema:
            if field.name != "key" and field.name not in table.column_names:
                table = table.append_column(field.with_nullable(True), lookup(annotation, field.name))
    return table
