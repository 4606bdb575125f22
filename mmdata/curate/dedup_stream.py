"""The dedup decision over a whole dataset in bounded memory: what :func:`mmdata.curate.dedup.dedup` runs.

Samples are numbered in shard order (the successful ones: *rows*). Per row the process holds a few small
arrays (a float32 score, int32 group labels per tier); everything else is read a shard at a time, or
spilled to scratch files and read back a partition or a block at a time: the exact tier's digests
(:mod:`mmdata.curate.dedup_exact`), the near tier's hashes (:mod:`mmdata.curate.dedup_near`), the
semantic tier's embeddings (:mod:`mmdata.curate.semantic_stream`). Keys are read per shard when
``dedup.parquet`` is written, and only for the rows that can be kept when ties are broken (by key) and
kept twins are named. The decisions are those of :func:`mmdata.curate.dedup.find_duplicates` on the same
data: same groups, same kept sample, same reason and similarity.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import asdict, dataclass
from typing import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.atomic import parquet_writer
from mmdata.curate.components import connected_components, label_dtype
from mmdata.curate.dedup_exact import EqualValues, hex_digests
from mmdata.curate.dedup_near import NearSearch, verified_pairs
from mmdata.curate.hashes import HASH_BITS, NearHashes, ensure_hashes, shard_hashes
from mmdata.curate.semantic import SemanticConfig
from mmdata.curate.semantic_check import SemanticCheck
from mmdata.execution import Execution, using
from mmdata.schemas.annotations import DEDUP_METADATA_KEY, DEDUP_REASONS, DEDUP_SCHEMA
from mmdata.schemas.samples import SUCCESS
from mmdata.storage import Location, read_parquet
from mmdata.storage.parquet import read_parquet_rows

NEAR_COLUMNS = ["key", "phash", "crop_hashes", "mirror_phash", "colour_moments", "thumbnails", "texture", "aspect"]


@dataclass
class StreamedDedup:
    """What :func:`dedup_dataset` wrote: ``rows`` of ``path``, the counts and the semantic check."""

    path: Location
    rows: int
    counts: dict[str, int]
    semantic_check: SemanticCheck | None


class Samples:
    """The successful samples of ``shards`` as global rows: shard boundaries, and each shard's keys and
    hashes aligned to its rows, read again whenever a pass needs them."""

    def __init__(self, root: Location, shards: list[str], counts: list[int]):
        self.root, self.shards = root, shards
        self.starts = np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])
        self.count = int(self.starts[-1])

    def keys(self, number: int) -> pa.Array:
        table = read_parquet(layout.parquet_path(self.root, self.shards[number]), columns=["key", "status"])
        return table.filter(pc.equal(table.column("status"), SUCCESS)).column("key").combine_chunks()

    def hashes(self, number: int, columns: list[str]) -> pa.Table:
        return aligned_hashes(self.root, self.shards[number], columns, self.keys(number))

    def pieces(self, rows: np.ndarray) -> Iterator[tuple[int, np.ndarray, slice]]:
        """For ascending ``rows``: (shard number, positions in the shard, the slice of ``rows``) per shard met."""
        bounds = np.searchsorted(rows, self.starts)
        for number in range(len(self.shards)):
            if bounds[number + 1] > bounds[number]:
                chosen = slice(int(bounds[number]), int(bounds[number + 1]))
                yield number, rows[chosen] - self.starts[number], chosen

    def near_hashes(self, rows: np.ndarray) -> Iterator[NearHashes]:
        """NearHashes of ascending ``rows`` (all with hashes), a shard at a time."""
        for number, positions, _ in self.pieces(rows):
            table = self.hashes(number, NEAR_COLUMNS).take(pa.array(positions, pa.int64()))
            valid, hashes = NearHashes.from_table(table)
            if len(valid) != len(positions):
                raise RuntimeError(f"near tier: candidates without a pHash in shard {self.shards[number]}")
            yield hashes

    def read_keys(self, rows: np.ndarray) -> pa.Array:
        """The keys of ascending ``rows``, as one Arrow array (no Python object per key)."""
        pieces = [self.keys(number).take(pa.array(positions, pa.int64())) for number, positions, _ in self.pieces(rows)]
        return pa.concat_arrays(pieces) if pieces else pa.array([], pa.string())


def aligned_hashes(root: Location, shard: str, columns: list[str], keys: pa.Array) -> pa.Table:
    """The shard's hash rows (``columns``, ``key`` first), one per key of ``keys`` in its order."""
    table = shard_hashes(root, shard, columns)
    positions = pc.index_in(keys, value_set=table.column("key").combine_chunks())
    if positions.null_count:
        missing = keys.filter(pc.is_null(positions)).to_pylist()
        raise RuntimeError(
            f"no hash rows for {len(missing)} successful samples of shard {shard} (e.g. {missing[:3]}): "
            "the tars and metadata disagree"
        )
    return table.take(positions)


def dedup_dataset(root: Location, config, path: Location, *, execution: Execution = None) -> StreamedDedup:
    """Dedup ``root``'s successful samples with ``config`` (a DedupConfig) and write ``path`` shard by shard."""
    scratch_parent = config.scratch_dir
    if scratch_parent is not None:
        os.makedirs(scratch_parent, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="mmdata-dedup-", dir=scratch_parent) as scratch:
        return _dedup_in(root, config, path, scratch, execution)


def _dedup_in(root: Location, config, path: Location, scratch: str, execution: Execution) -> StreamedDedup:
    shards = ensure_hashes(root, execution=execution) if (config.exact or config.near) else layout.complete_shards(root)
    score_column = _score_column(root, config.model)
    samples, scores, exact, near = _first_pass(root, shards, score_column, config, scratch)
    count = samples.count
    labels: dict[str, np.ndarray] = {}
    current = np.arange(count, dtype=label_dtype(count))
    copy_pairs = None
    if config.exact:
        edges = [values.edges() for values in exact]
        current = connected_components(count, *(np.concatenate(side) for side in zip(*edges)), current)
        labels["exact"] = current
    if config.near:
        edges, copy_pairs = _near_tier(samples, near, config, labels.get("exact"), scratch)
        current = connected_components(count, *edges, current)
        labels["near"] = current
    check = outcome = None
    if config.semantic:
        outcome = _semantic(samples, config, current, copy_pairs, scratch, execution)
        check = outcome.check
        current = connected_components(count, *outcome.edges, current)
        labels["semantic"] = current
    try:
        kept, candidates, candidate_keys = _kept(samples, current, scores)
        dropped = np.flatnonzero(kept >= 0)
        twins = kept[dropped]
        reasons = _reasons(labels, dropped, twins)
        similarity = np.full(len(dropped), np.nan, dtype=np.float32)
        similarity[reasons == DEDUP_REASONS.index("exact")] = 1.0
        if config.near:
            chosen = np.flatnonzero(reasons == DEDUP_REASONS.index("near"))
            chosen = chosen[near.valid(dropped[chosen]) & near.valid(twins[chosen])]
            distance = near.distances(dropped[chosen], twins[chosen], mirrors=config.mirrors)
            similarity[chosen] = 1.0 - distance / HASH_BITS
        if outcome is not None:
            chosen = np.flatnonzero(reasons == DEDUP_REASONS.index("semantic"))
            similarity[chosen] = outcome.similarities(dropped[chosen], twins[chosen])
    finally:
        if outcome is not None:
            outcome.close()
    counts = {"examined": count, "kept": count - len(dropped)}
    for tier in labels:
        counts[tier] = int((reasons == DEDUP_REASONS.index(tier)).sum())
    settings = {"config": asdict(config), "counts": counts}
    if check is not None:
        settings["semantic_check"] = asdict(check)
    twin_keys = candidate_keys.take(pa.array(np.searchsorted(candidates, twins), pa.int64()))
    rows = _write(samples, path, dropped, twin_keys, reasons, similarity, settings)
    return StreamedDedup(path=path, rows=rows, counts=counts, semantic_check=check)


def _near_tier(samples: Samples, near: NearSearch, config, exact_labels: np.ndarray | None, scratch: str):
    """(the near tier's edges, its copies for the semantic check: each verified pair once, identical files
    (one exact group) left out)."""
    left, right = near.candidates(config.hamming, mirrors=config.mirrors, block_rows=config.block_rows,
                                  near_recall=config.near_recall)
    forward, either = verified_pairs(
        left, right, samples.near_hashes, os.path.join(scratch, "near-verify"), config.hamming,
        config.colour_tolerance, config.thumbnail_tolerance, mirrors=config.mirrors,
    )
    copies = forward if exact_labels is None else forward & (exact_labels[left] != exact_labels[right])
    return (left[either], right[either]), (left[copies], right[copies])


def _score_column(root: Location, model: str | None) -> str | None:
    """The column whose best value a group keeps: the chosen model's clip_score, or the default's, if scored."""
    if model:
        return f"{layout.SCORE_COLUMN_PREFIX}{model}"
    return "clip_score" if layout.default_model(root) else None


def _first_pass(root: Location, shards: list[str], score_column: str | None, config, scratch: str):
    """One pass over the shards: the rows, their scores (-inf where unscored), and the exact and near
    tiers' hashes spilled to ``scratch``."""
    from mmdata.table import JoinedShards

    total = sum(read_parquet_rows(layout.parquet_path(root, shard)) for shard in shards)
    partitions = -(-total // config.block_rows)
    exact = [EqualValues(os.path.join(scratch, name), partitions) for name in ("sha256", "pixel_hash")
             if config.exact]
    near = NearSearch(os.path.join(scratch, "near")) if config.near else None
    columns = ["key", "sha256", "pixel_hash"] if config.exact else ["key"]
    columns += NEAR_COLUMNS[1:] if config.near else []
    joined = JoinedShards(root, ["key", "status", *([score_column] if score_column else [])], shards=shards)
    counts, score_parts, start = [], [], 0
    for shard, table in zip(shards, joined):
        table = table.filter(pc.equal(table.column("status"), SUCCESS))
        counts.append(table.num_rows)
        if score_column is not None:
            scores = table.column(score_column).to_numpy(zero_copy_only=False).astype(np.float32)
            score_parts.append(np.where(np.isnan(scores), -np.inf, scores).astype(np.float32))
        else:
            score_parts.append(np.full(table.num_rows, -np.inf, dtype=np.float32))
        if config.exact or config.near:
            hashes = aligned_hashes(root, shard, columns, table.column("key").combine_chunks())
            if config.exact:
                for values, name in zip(exact, ("sha256", "pixel_hash")):
                    positions, digests = hex_digests(hashes.column(name))
                    values.add(positions + start, digests)
            if near is not None:
                valid, near_hashes = NearHashes.from_table(hashes)
                near.add(table.num_rows, valid, near_hashes)
        start += table.num_rows
    if near is not None:
        near.close()
    samples = Samples(root, shards, counts)
    scores = np.concatenate(score_parts) if score_parts else np.empty(0, np.float32)
    return samples, scores, exact, near


def _semantic(samples: Samples, config, labels: np.ndarray, copy_pairs, scratch: str, execution: Execution):
    """The semantic tier over the dataset's embeddings, streamed a shard at a time."""
    from mmdata.curate.semantic_stream import semantic_duplicates
    from mmdata.table import iter_embeddings

    def chunks() -> Iterator[tuple[np.ndarray, np.ndarray]]:
        for number, shard in enumerate(samples.shards):
            for keys, vectors in iter_embeddings(samples.root, "image", config.model, shards=[shard]):
                found = pc.index_in(keys, value_set=samples.keys(number))  # null: not a successful sample
                positions = found.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64)
                present = np.flatnonzero(positions >= 0)
                order = present[np.argsort(positions[present], kind="stable")]
                if len(order):
                    yield positions[order] + samples.starts[number], vectors[order]

    if not any(len(rows) for rows, _ in _first_chunks(chunks)):
        raise ValueError(
            f"no image embeddings for the samples of {samples.root}: run mmdata score (with embeddings) first"
        )
    semantic = SemanticConfig(eps=config.eps, clusters=config.clusters)
    known = _grouped(labels)
    options = dict(known=known, copy_pairs=copy_pairs, force=config.force_semantic,
                   scratch=os.path.join(scratch, "semantic"))
    if samples.count < config.parallel_min_rows:  # below, a task's start costs more than the comparisons
        return semantic_duplicates(chunks, semantic, **options)
    with using(execution) as executor:
        return semantic_duplicates(chunks, semantic, executor=executor, **options)


def _first_chunks(chunks) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """The chunks up to the first non-empty one."""
    for rows, vectors in chunks():
        yield rows, vectors
        if len(rows):
            return


def _grouped(labels: np.ndarray) -> np.ndarray:
    """Mask of the rows whose group has another member."""
    rows = np.arange(len(labels), dtype=labels.dtype)
    joined = labels != rows
    grouped = joined.copy()
    grouped[labels[joined]] = True
    return grouped


def _kept(samples: Samples, labels: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, pa.Array]:
    """(for each row, the row its group keeps, -1 where that is itself; the rows that could be kept (the
    best-scored members of groups with more than one member), ascending; their keys). A group keeps its
    highest score, then its smallest key: keys are read for the rows that tie on the best score only."""
    members = np.flatnonzero(_grouped(labels))
    group, score = labels[members], scores[members]
    order = np.lexsort((-score, group))  # by group, best score first
    group, score, members = group[order], score[order], members[order]
    first = np.ones(len(members), dtype=bool)
    first[1:] = group[1:] != group[:-1]
    best = score[np.flatnonzero(first)[np.cumsum(first) - 1]]
    top = score == best
    candidates = np.sort(members[top])
    keys = samples.read_keys(candidates)
    positions = np.searchsorted(candidates, members[top])
    ranked = pa.table({"group": group[top], "key": keys.take(pa.array(positions, pa.int64())), "row": members[top]})
    ranked = ranked.take(pc.sort_indices(ranked, [("group", "ascending"), ("key", "ascending"), ("row", "ascending")]))
    ranked_group = ranked.column("group").to_numpy()
    winners = np.ones(len(ranked_group), dtype=bool)
    winners[1:] = ranked_group[1:] != ranked_group[:-1]
    winner_groups = ranked_group[winners]
    winner_rows = ranked.column("row").to_numpy()[winners]
    kept = np.full(len(labels), -1, dtype=label_dtype(len(labels)))
    kept[members] = winner_rows[np.searchsorted(winner_groups, labels[members])]
    kept[winner_rows] = -1
    return kept, candidates, keys


def _reasons(labels: dict[str, np.ndarray], dropped: np.ndarray, twins: np.ndarray) -> np.ndarray:
    """Index into DEDUP_REASONS of the first tier at which each dropped row joined its kept twin's group."""
    reasons = np.full(len(dropped), -1, dtype=np.int8)
    for tier, tier_labels in labels.items():
        joined = (reasons < 0) & (tier_labels[dropped] == tier_labels[twins])
        reasons[joined] = DEDUP_REASONS.index(tier)
    return reasons


def _write(samples: Samples, path: Location, dropped: np.ndarray, twin_keys: pa.Array, reasons: np.ndarray,
           similarity: np.ndarray, settings: dict) -> int:
    """dedup.parquet, a shard at a time: every row's key, and for the dropped ones the kept twin's key,
    the tier and the similarity."""
    reason_names = pa.array(DEDUP_REASONS, pa.string()).take(pa.array(reasons.astype(np.int64), pa.int64()))
    similarities = pa.array(similarity, pa.float32(), mask=np.isnan(similarity))
    bounds = np.searchsorted(dropped, samples.starts)
    with parquet_writer(path, DEDUP_SCHEMA) as writer:
        for number in range(len(samples.shards)):
            keys = samples.keys(number)
            where = np.zeros(len(keys), dtype=np.int64)  # each row's position among the dropped rows
            missing = np.ones(len(keys), dtype=bool)
            local = dropped[bounds[number] : bounds[number + 1]] - samples.starts[number]
            where[local] = np.arange(bounds[number], bounds[number + 1])
            missing[local] = False
            index = pa.array(where, pa.int64(), mask=missing)  # a null index takes a null
            writer.write(pa.table({
                "key": keys, "duplicate_of": twin_keys.take(index), "dup_reason": reason_names.take(index),
                "dup_similarity": similarities.take(index),
            }))
        writer.set_metadata({DEDUP_METADATA_KEY: json.dumps(settings, sort_keys=True).encode()})
    return writer.rows
