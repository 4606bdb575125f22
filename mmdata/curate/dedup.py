"""Three-tier dedup → ``DIR/annotations/dedup.parquet``: exact, near (perceptual hash), semantic.

Every tier contributes duplicate pairs; union-find merges them, so transitive duplicates form one
group, and each group keeps one sample: the highest ``clip_score`` (ties: the smallest key). Every
other member gets ``duplicate_of`` (the kept sample), ``dup_reason`` (the first tier at which it
joined the kept sample's group, in the order exact → near → semantic) and ``dup_similarity``
(measured between it and the kept sample: 1.0 exact, 1 - hamming/64 near, the cosine semantic).
Near candidates (pHash within the radius) must also agree on their content thumbnails
(``thumbnail_tolerance``, :mod:`mmdata.curate.thumbnails`): without that check, background-dominated
hashes of different pictures link them, and union-find chains the false links into big groups.
Mirrored copies count as duplicates (``mirrors``): a picture flipped left to right shows the same
photo, and flipping is a standard training augmentation.

Before the semantic tier marks anything, :mod:`mmdata.curate.semantic_check` measures on a sample
the nearest-neighbour similarities of samples without a known copy (and of the near tier's copies),
and refuses the tier where ``1 - eps`` lies inside the bulk of those neighbours or cuts through a
continuous run of them instead of a gap (``force_semantic`` overrides). What it measured and decided
is ``DedupResult.semantic_check`` and ``semantic_check`` in ``dedup.parquet``'s metadata.

:func:`dedup` runs over a dataset of any size in bounded memory (:mod:`mmdata.curate.dedup_stream`:
a few bytes per sample, ``block_rows`` rows of hashes, the rest spilled to ``scratch_dir``);
:func:`find_duplicates` makes the same decision over inputs that are already in memory.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata import layout
from mmdata.curate.components import connected_components
from mmdata.curate.dedup_stream import dedup_dataset
from mmdata.curate.hashes import HASH_BITS, THUMBNAIL_TOLERANCE, NearHashes, near_distance, near_matches
from mmdata.curate.semantic import SemanticConfig, normalised, semantic_edges, semantic_groups
from mmdata.curate.semantic_check import SemanticCheck, check_semantic
from mmdata.execution import Execution, Executor
from mmdata.options import stage_settings
from mmdata.storage import Location, read_parquet


@dataclass(frozen=True, kw_only=True)
class DedupConfig:
    exact: bool = True
    near: bool = False
    hamming: int = 8  # near tier: largest pHash Hamming distance (of 64 bits) still called a duplicate
    colour_tolerance: float = 24.0  # near tier: largest difference of the RGB means/standard deviations
    # near tier: largest colour difference (0-255) between the candidates' aligned content thumbnails,
    # after a uniform brightness shift; None: trust the hash alone (see mmdata.curate.thumbnails for why
    # that is imprecise)
    thumbnail_tolerance: float | None = THUMBNAIL_TOLERANCE
    mirrors: bool = True  # near tier: a picture flipped left to right is a duplicate (the same photo)
    # near tier: 1.0 searches exactly (quadratic in the rows); below, an approximate search (bit-sampling LSH)
    # finds every pair within `hamming` with at least this probability (closer pairs more often) and never
    # adds a pair (mmdata.curate.dedup_near)
    near_recall: float = 1.0
    semantic: bool = False
    eps: float = 0.05  # semantic tier: cosine DISTANCE; pairs with cosine similarity > 1 - eps are duplicates
    # semantic tier: run even where its check refuses (1 - eps inside the bulk of nearest-neighbour
    # similarities, or cutting through a continuous run of them; see mmdata.curate.semantic_check)
    force_semantic: bool = False
    clusters: int | None = None  # semantic tier: k-means clusters (None: one per ~1,000 embeddings)
    model: str | None = None  # score model whose embeddings and clip_score to use (None: the default)
    # semantic tier: compare clusters as tasks on the executor from this many embeddings (below, a
    # task's start costs more than the comparisons)
    parallel_min_rows: int = 2_000_000
    # rows whose hashes are held at once: the exact tier's partitions (a block of 1M rows takes about
    # 0.5 GB) and the near tier's query blocks; its index holds 32x as many pHashes (~1 GB at the default,
    # the whole dataset below 32M rows); smaller: less memory, more passes
    block_rows: int = 1_000_000
    scratch_dir: str | None = None  # where the spilled hashes and embeddings go (None: the system's temp folder)

    def __post_init__(self) -> None:
        if not (self.exact or self.near or self.semantic):
            raise ValueError("no dedup tier selected: pass exact, near and/or semantic")
        if not 0 <= self.hamming <= 24:
            raise ValueError(f"hamming must be in [0, 24] bits of 64, got {self.hamming} (8 is a good start)")
        if not 0 < self.near_recall <= 1:
            raise ValueError(
                f"near_recall must be in (0, 1] (1.0: exact search; e.g. 0.95: approximate), got {self.near_recall}"
            )
        if self.colour_tolerance < 0:
            raise ValueError(f"colour_tolerance must be >= 0 (0-255 levels), got {self.colour_tolerance}")
        if self.thumbnail_tolerance is not None and not 0 <= self.thumbnail_tolerance <= 255:
            raise ValueError(f"thumbnail_tolerance must be in [0, 255] levels or None, got {self.thumbnail_tolerance}")
        if self.block_rows < 1:
            raise ValueError(f"block_rows must be >= 1 (rows of hashes held at once), got {self.block_rows}")
        SemanticConfig(eps=self.eps, clusters=self.clusters)


@dataclass
class DedupResult:
    counts: dict[str, int] = field(default_factory=dict)  # examined, kept, exact, near, semantic, ...
    path: Location | None = None
    semantic_check: SemanticCheck | None = None  # what the semantic tier's check measured (None: tier off)
    rows: int = 0  # rows of the table: one per examined sample
    computed: pa.Table | None = None  # find_duplicates' table; None: the table is the file at ``path``

    @property
    def table(self) -> pa.Table:
        """DEDUP_SCHEMA, one row per examined sample; a written one is read back whole (a large one is
        better read from ``path`` a row group at a time)."""
        return self.computed if self.computed is not None else read_parquet(self.path)

    def explanation(self) -> pa.Table:
        """The dropped samples only: key, kept twin, tier, similarity."""
        table = self.table
        return table.filter(pc.is_valid(table.column("duplicate_of")))


@dataclass
class DedupInputs:
    """Per-sample inputs of :func:`find_duplicates`, aligned by row; ``None`` for a tier not run."""

    keys: list[str]
    scores: np.ndarray  # float, -inf where unscored (never kept over a scored twin)
    sha256: list[str | None] | None = None
    pixel_hash: list[str | None] | None = None
    near: NearHashes | None = None  # perceptual hashes of the rows in near_rows
    near_rows: np.ndarray | None = None  # int: which sample each near hash belongs to
    embeddings: np.ndarray | None = None  # [m, d] rows for embedding_rows
    embedding_rows: np.ndarray | None = None  # int: which sample each embedding belongs to


def find_duplicates(inputs: DedupInputs, config: DedupConfig, executor: Executor | None = None) -> DedupResult:
    """The dedup decision over in-memory inputs (no I/O); the semantic tier's clusters are compared
    on ``executor`` when there are enough of them."""
    count = len(inputs.keys)
    labels = {}
    near_pairs = None
    current = np.arange(count, dtype=np.int64)
    if config.exact:
        left, right = _equal_value_edges(inputs.sha256)
        left2, right2 = _equal_value_edges(inputs.pixel_hash)
        current = connected_components(count, np.concatenate([left, left2]), np.concatenate([right, right2]), current)
        labels["exact"] = current
    if config.near:
        query, reference, _ = near_matches(
            inputs.near, inputs.near, config.hamming, config.colour_tolerance,
            thumbnail_tolerance=config.thumbnail_tolerance, mirrors=config.mirrors,
        )
        different = query != reference
        rows = inputs.near_rows
        near_pairs = (rows[query[different]], rows[reference[different]])
        current = connected_components(count, *near_pairs, current)
        labels["near"] = current
    check = None
    if config.semantic:
        semantic = SemanticConfig(eps=config.eps, clusters=config.clusters)
        groups = semantic_groups(inputs.embeddings, semantic)
        grouped = np.bincount(current, minlength=count)[current] > 1  # rows with a copy found by exact/near
        check = check_semantic(
            inputs.embeddings, groups, config.eps, known=grouped[inputs.embedding_rows],
            copy_pairs=_known_copies(inputs, labels, near_pairs), force=config.force_semantic,
        )
        if check.ran:
            parallel = executor if len(inputs.embedding_rows) >= config.parallel_min_rows else None
            left, right = semantic_edges(inputs.embeddings, semantic, executor=parallel, groups=groups)
            current = connected_components(count, inputs.embedding_rows[left], inputs.embedding_rows[right], current)
        labels["semantic"] = current

    kept_of_row = _kept_members(current, inputs.keys, inputs.scores)
    dropped = np.flatnonzero(kept_of_row != np.arange(count))
    reasons = np.empty(len(dropped), dtype=object)
    similarity = np.full(len(dropped), np.nan, dtype=np.float32)
    undecided = np.ones(len(dropped), dtype=bool)
    for tier, tier_labels in labels.items():
        joined = undecided & (tier_labels[dropped] == tier_labels[kept_of_row[dropped]])
        reasons[joined] = tier
        undecided &= ~joined
    similarity[reasons == "exact"] = 1.0
    # measured directly between each dropped row and its kept twin; left null where one of the two
    # lacks the tier's data (a row can join a group through another member)
    if config.near:
        rows, a, b = _measurable(reasons == "near", dropped, kept_of_row, inputs.near_rows, count)
        distance = near_distance(inputs.near.take(a), inputs.near.take(b), mirrors=config.mirrors)
        similarity[rows] = 1.0 - distance / HASH_BITS
    if config.semantic:
        rows, a, b = _measurable(reasons == "semantic", dropped, kept_of_row, inputs.embedding_rows, count)
        similarity[rows] = np.einsum("ij,ij->i", normalised(inputs.embeddings[a]), normalised(inputs.embeddings[b]))

    duplicate_of = np.full(count, None, dtype=object)
    dup_reason = np.full(count, None, dtype=object)
    dup_similarity = np.full(count, np.nan, dtype=np.float32)
    keys = np.asarray(inputs.keys, dtype=object)
    duplicate_of[dropped] = keys[kept_of_row[dropped]]
    dup_reason[dropped] = reasons
    dup_similarity[dropped] = similarity
    table = pa.table(
        {
            "key": pa.array(keys, pa.string()),
            "duplicate_of": pa.array(duplicate_of, pa.string()),
            "dup_reason": pa.array(dup_reason, pa.string()),
            "dup_similarity": pa.array(dup_similarity, pa.float32(), mask=np.isnan(dup_similarity)),
        }
    )
    counts = {"examined": count, "kept": count - len(dropped)}
    for tier in ("exact", "near", "semantic"):
        if tier in labels:
            counts[tier] = int((reasons == tier).sum())
    return DedupResult(counts, semantic_check=check, rows=table.num_rows, computed=table)


def _known_copies(
    inputs: DedupInputs, labels: dict[str, np.ndarray], near_pairs: tuple[np.ndarray, np.ndarray] | None
) -> tuple[np.ndarray, np.ndarray] | None:
    """The near tier's pairs as embedding rows, without identical files (the exact tier's): the copies
    the semantic check calibrates against; None when the near tier did not run."""
    if near_pairs is None:
        return None
    left, right = near_pairs
    keep = left < right  # each pair once (the near tier lists both directions)
    if "exact" in labels:
        keep &= labels["exact"][left] != labels["exact"][right]
    left, right = left[keep], right[keep]
    position = np.full(len(inputs.keys), -1, dtype=np.int64)
    position[inputs.embedding_rows] = np.arange(len(inputs.embedding_rows))
    both = (position[left] >= 0) & (position[right] >= 0)
    return position[left[both]], position[right[both]]


def dedup(root: layout.Root, config: DedupConfig | None = None, *, execution: Execution = None,
          storage_options: dict | None = None, **options) -> DedupResult:
    """Dedup the successful samples of dataset ``root``; writes ``annotations/dedup.parquet``.

    Pass a :class:`DedupConfig` or its options flat (``dedup(root, near=True, hamming=6)``), and
    where the work runs as ``execution=`` or the flat ``executor``/``workers``/``ray_address``.
    Hashes come from the per-shard cache (computed from the tars on first use, as tasks); the
    semantic tier needs a score run with embeddings (``mmdata score``). ``root`` may be a URL
    (``s3://bucket/ds``); ``storage_options`` go to its filesystem. Memory is bounded whatever the
    dataset's size (:mod:`mmdata.curate.dedup_stream`): a few bytes per sample, ``block_rows`` rows of
    hashes, the rest spilled under ``scratch_dir``.
    """
    config, execution = stage_settings(DedupConfig, "dedup", config, execution, options)
    root = layout.dataset(root, storage_options)
    if not layout.complete_shards(root):
        raise ValueError(f"{root} holds no complete shard: download into it first (mmdata download)")
    if config.model is not None and config.model not in layout.scored_models(root):
        raise ValueError(
            f"no score run {config.model!r} in {root}/scores (runs: {layout.scored_models(root) or 'none'})"
        )
    written = dedup_dataset(root, config, layout.annotations_dir(root) / "dedup.parquet", execution=execution)
    check = written.semantic_check
    if check is not None and not check.verdict.startswith("ok"):
        warnings.warn(f"semantic dedup: {check.verdict}", RuntimeWarning, stacklevel=2)
    return DedupResult(written.counts, path=written.path, semantic_check=check, rows=written.rows)


def _equal_value_edges(values: list[str | None] | None) -> tuple[np.ndarray, np.ndarray]:
    """Edges joining every row to the first row holding the same (non-null) value."""
    if values is None:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    first: dict[str, int] = {}
    left, right = [], []
    for row, value in enumerate(values):
        if value is None:
            continue
        owner = first.setdefault(value, row)
        if owner != row:
            left.append(row)
            right.append(owner)
    return np.asarray(left, dtype=np.int64), np.asarray(right, dtype=np.int64)


def _measurable(selected: np.ndarray, dropped: np.ndarray, kept_of_row: np.ndarray, data_rows: np.ndarray, count: int):
    """Of the ``selected`` dropped rows, those where both the row and its kept twin have data:
    (positions in ``dropped``, the row's data index, the twin's data index)."""
    position = np.full(count, -1, dtype=np.int64)
    position[data_rows] = np.arange(len(data_rows))
    rows = np.flatnonzero(selected)
    a, b = position[dropped[rows]], position[kept_of_row[dropped[rows]]]
    both = (a >= 0) & (b >= 0)
    return rows[both], a[both], b[both]


def _kept_members(labels: np.ndarray, keys: list[str], scores: np.ndarray) -> np.ndarray:
    """For each row, the row its group keeps: highest score, then smallest key."""
    key_rank = np.argsort(np.argsort(np.asarray(keys, dtype=object), kind="stable"), kind="stable")
    order = np.lexsort((key_rank, -np.asarray(scores, dtype=np.float64)))
    sorted_labels = labels[order]
    unique_labels, first = np.unique(sorted_labels, return_index=True)
    kept_of_label = np.empty(len(labels), dtype=np.int64)
    kept_of_label[unique_labels] = order[first]
    return kept_of_label[labels]
