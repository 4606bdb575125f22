"""Image hashes for the exact and near dedup tiers, computed once per shard and cached.

* ``sha256``: the stored image bytes; ``pixel_hash``: the decoded RGB pixels (same picture, other
  encoder settings or container).
* ``phash``: a 64-bit perceptual hash (DCT of the 32×32 grey thumbnail, bits above the median of
  the 8×8 low-frequency block). A plain pHash moves 8–16 bits under a 5% crop, as far as unrelated
  pictures can be, so each image also gets ``crop_hashes``: the pHashes of its nine 95% crops (three
  offsets per axis). Two images are near duplicates when the full hash of one lies within the
  Hamming radius of any hash (full or crop) of the other. On the test corpus, crops then move 2–6
  bits, re-encodes, resizes and small colour shifts 0–4, and same-colour pictures of other shapes
  stay 26+ away.
* ``mirror_phash``: the pHash of the picture flipped left to right (26-32 bits from its own pHash),
  so a mirrored copy's full hash lies within the radius of it (``mirrors=True``).
* ``colour_moments``: mean and standard deviation of each RGB channel of the content (the picture
  without its padding, whose share changes when a copy is cropped). A grey-level hash cannot
  tell a red scene from a green one of the same brightness layout, and unrelated pictures do collide
  within 8 bits now and then; near duplicates must also agree on these six numbers within
  ``colour_tolerance`` (re-encodes, crops and small colour shifts move them ≤ 13, the rare unrelated
  pHash collisions by 60+).
* ``thumbnails``, ``texture``, ``aspect`` (see :mod:`mmdata.curate.thumbnails`): what the grey hash
  cannot see. On web-style pictures a flat background (and border padding) dominates the pHash, and
  plainly different pictures of one layout collide; candidate pairs are verified on these.

Cache: ``DIR/annotations/.hashes/<shard>.parquet`` (hidden, so ``read_table`` does not join it),
recomputed when missing or written by another ``HASH_VERSION``.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa
from PIL import Image, ImageStat

from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.curate.thumbnails import (
    THUMB_BYTES,
    THUMBNAIL_TOLERANCE,
    content_box,
    content_features,
    mirrored_thumbnails,
    verified,
)
from mmdata.execution import Execution, StageProgress, sized, using
from mmdata.execution.progress import COUNT
from mmdata.schemas.hashes import CROP_COUNT, HASH_SCHEMA, HASH_VERSION
from mmdata.schemas.members import image_member
from mmdata.shards import iter_samples
from mmdata.storage import Location, read_parquet, read_parquet_schema
from mmdata.storage.reads import each

CROP_FRACTION = 0.95
CROP_OFFSETS = (0.0, 0.025, 0.05)  # per axis: CROP_COUNT crops
THUMB_SIZE = 128
HASH_BITS = 64


@dataclass(frozen=True)
class ImageHashes:
    sha256: str
    pixel_hash: str
    phash: int
    crop_hashes: tuple[int, ...]
    mirror_phash: int
    colour_moments: tuple[float, ...]
    thumbnails: bytes
    texture: float
    aspect: float


@dataclass(frozen=True)
class NearHashes:
    """The near tier's hashes of n images, as arrays aligned by row."""

    phash: np.ndarray  # uint64 [n]
    crops: np.ndarray  # uint64 [n, CROP_COUNT]
    colours: np.ndarray  # float32 [n, 6]
    thumbnails: np.ndarray | None = None  # uint8 [n, THUMB_BYTES]; None: candidates are not verified
    texture: np.ndarray | None = None  # float32 [n]
    aspect: np.ndarray | None = None  # float32 [n]
    mirror: np.ndarray | None = None  # uint64 [n]: pHashes of the mirrored pictures; None: mirrors are not matched

    def take(self, rows: np.ndarray) -> "NearHashes":
        def rows_of(values: np.ndarray | None) -> np.ndarray | None:
            return None if values is None else values[rows]

        return NearHashes(
            self.phash[rows], self.crops[rows], self.colours[rows], rows_of(self.thumbnails),
            rows_of(self.texture), rows_of(self.aspect), rows_of(self.mirror),
        )

    def __len__(self) -> int:
        return len(self.phash)

    @classmethod
    def from_table(cls, hashes: pa.Table) -> tuple[np.ndarray, "NearHashes"]:
        """(row ids of the rows that have hashes, their NearHashes) from a HASH_SCHEMA table."""
        valid = np.flatnonzero(hashes.column("phash").is_valid().to_numpy(zero_copy_only=False))
        usable = hashes.take(pa.array(valid, pa.int64()))
        crops = usable.column("crop_hashes").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        colours = usable.column("colour_moments").combine_chunks().flatten().to_numpy(zero_copy_only=False)
        thumbnails = np.frombuffer(b"".join(usable.column("thumbnails").to_pylist()), dtype=np.uint8)
        return valid, cls(
            usable.column("phash").to_numpy(zero_copy_only=False).astype(np.uint64),
            crops.astype(np.uint64).reshape(len(valid), CROP_COUNT),
            colours.astype(np.float32).reshape(len(valid), 6),
            thumbnails.reshape(len(valid), THUMB_BYTES),
            usable.column("texture").to_numpy(zero_copy_only=False).astype(np.float32),
            usable.column("aspect").to_numpy(zero_copy_only=False).astype(np.float32),
            usable.column("mirror_phash").to_numpy(zero_copy_only=False).astype(np.uint64),
        )


def _dct_matrix(size: int) -> np.ndarray:
    k = np.arange(size)[:, None]
    i = np.arange(size)[None, :]
    matrix = np.cos(np.pi * (2 * i + 1) * k / (2 * size)) * np.sqrt(2 / size)
    matrix[0] /= np.sqrt(2)
    return matrix.astype(np.float64)


_DCT32 = _dct_matrix(32)


def phash_of(grey: Image.Image, box: tuple[float, float, float, float] | None = None) -> int:
    """64-bit pHash of a greyscale image (or of its ``box`` region): low 8×8 DCT block of the
    32×32 thumbnail vs its median."""
    thumb = np.asarray(grey.resize((32, 32), Image.BILINEAR, box=box), dtype=np.float64)
    block = (_DCT32 @ thumb @ _DCT32.T)[:8, :8].reshape(-1)
    bits = block > np.median(block[1:])
    return int(np.packbits(bits).view(">u8")[0])


def image_hashes(blob: bytes) -> ImageHashes:
    """All hashes of one encoded image; raises what Pillow raises on undecodable bytes."""
    with Image.open(io.BytesIO(blob)) as opened:
        rgb = opened.convert("RGB")
    pixels = hashlib.blake2b(f"{rgb.width}x{rgb.height}:".encode(), digest_size=16)
    pixels.update(rgb.tobytes())
    # every hash is taken from one 128×128 grey thumbnail: ten resamplings of it cost less than
    # ten of a full-size picture, and the 32×32 hash input is the same to within rounding
    grey = rgb.convert("L").resize((THUMB_SIZE, THUMB_SIZE), Image.BOX)
    crops = [
        phash_of(
            grey,
            (THUMB_SIZE * fx, THUMB_SIZE * fy, THUMB_SIZE * (fx + CROP_FRACTION), THUMB_SIZE * (fy + CROP_FRACTION)),
        )
        for fx in CROP_OFFSETS
        for fy in CROP_OFFSETS
    ]
    mirror_phash = phash_of(grey.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    box = content_box(rgb)  # moments without the padding, whose share differs between cropped copies
    statistics = ImageStat.Stat(rgb.crop(box))  # from the per-band histograms, in C
    moments = tuple(float(v) for v in [*statistics.mean, *statistics.stddev])
    thumbnails, texture, aspect = content_features(rgb, box)
    return ImageHashes(
        hashlib.sha256(blob).hexdigest(), pixels.hexdigest(), phash_of(grey), tuple(crops), mirror_phash,
        moments, thumbnails, texture, aspect,
    )


def hash_rows(named_images: list[tuple[str, bytes | None]]) -> pa.Table:
    """HASH_SCHEMA rows for ``(key, image bytes or None)``; failures become rows with ``hash_error``."""
    rows = []
    for key, blob in named_images:
        if blob is None:
            rows.append({"key": key, "hash_error": "no image member"})
            continue
        try:
            hashes = image_hashes(blob)
        except Exception as error:  # any decoder failure is a per-sample row, not a crash
            rows.append({
                "key": key, "sha256": hashlib.sha256(blob).hexdigest(),
                "hash_error": f"{type(error).__name__}: {error}",
            })
            continue
        rows.append(
            {"key": key, "sha256": hashes.sha256, "pixel_hash": hashes.pixel_hash, "phash": hashes.phash,
             "crop_hashes": list(hashes.crop_hashes), "mirror_phash": hashes.mirror_phash,
             "colour_moments": list(hashes.colour_moments),
             "thumbnails": hashes.thumbnails, "texture": hashes.texture, "aspect": hashes.aspect}
        )
    table = pa.Table.from_pylist(rows, schema=HASH_SCHEMA) if rows else HASH_SCHEMA.empty_table()
    return table


def cache_dir(root: layout.Root) -> Location:
    return layout.annotations_dir(root) / ".hashes"


def cache_path(root: layout.Root, shard: str) -> Location:
    return cache_dir(root) / f"{shard}.parquet"


def hash_shard(root: layout.Root, shard: str) -> str:
    """Hash every stored sample of one shard into its cache file; returns the shard name."""
    path = layout.tar_path(root, shard)
    try:
        named = [(key, image_member(members)) for key, members in iter_samples(path)]
    except Exception as error:
        raise RuntimeError(f"hashing shard {path}: {error}") from error
    write_parquet(hash_rows(named), cache_path(root, shard), HASH_SCHEMA)
    return shard


def ensure_hashes(root: layout.Root, *, execution: Execution = None, storage_options: dict | None = None) -> list[str]:
    """Hash the complete shards not cached yet (as tasks on the executor, one per shard); returns every
    complete shard, whose hashes :func:`shard_hashes` then reads one shard at a time."""
    root = layout.dataset(root, storage_options)
    shards = layout.complete_shards(root)
    present = set(cache_dir(root).names(".parquet"))
    current = each(lambda shard: _is_current(root, shard, present), shards, root)
    missing = [shard for shard, cached in zip(shards, current) if not cached]
    if missing:
        progress = StageProgress("hashing", total=len(missing), unit="shard", tasks=len(shards),
                                 tasks_done=len(shards) - len(missing), final_counts=lambda shard: (shard, {COUNT: 1}))
        with using(sized(execution, len(missing))) as executor, progress:
            executor.run_tasks(hash_shard, [(root, shard) for shard in missing], progress=progress)
    return shards


def shard_hashes(root: layout.Root, shard: str, columns: list[str] | None = None) -> pa.Table:
    """One shard's cached hashes (HASH_SCHEMA, or ``columns`` of it); :func:`ensure_hashes` first."""
    table = read_parquet(cache_path(root, shard), columns=columns)
    schema = HASH_SCHEMA if columns is None else pa.schema([HASH_SCHEMA.field(name) for name in columns])
    return table.cast(schema)


def dataset_hashes(root: layout.Root, *, execution: Execution = None, storage_options: dict | None = None) -> pa.Table:
    """Hashes of every stored sample of the complete shards in one table, computing only the shards not
    cached; for datasets whose hashes fit in memory (dedup reads them a shard at a time)."""
    root = layout.dataset(root, storage_options)
    shards = ensure_hashes(root, execution=execution)
    tables = each(lambda shard: shard_hashes(root, shard), shards, root)
    return pa.concat_tables(tables) if tables else HASH_SCHEMA.empty_table()


def _is_current(root: Location, shard: str, present: set[str]) -> bool:
    """Whether the shard's cache exists and was written by this ``HASH_VERSION``."""
    if f"{shard}.parquet" not in present:
        return False
    metadata = read_parquet_schema(cache_path(root, shard)).metadata or {}
    return metadata.get(b"mmdata.hash_version") == HASH_VERSION.encode()


def to_codes(values: np.ndarray) -> np.ndarray:
    """uint64 hashes → ``[n, 8]`` uint8 rows, most significant byte first (faiss binary layout)."""
    return np.ascontiguousarray(np.asarray(values, dtype=np.uint64).astype(">u8")).view(np.uint8).reshape(-1, 8)


def hamming(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """Bitwise Hamming distance between uint64 arrays (broadcasting)."""
    xor = np.bitwise_xor(np.asarray(left, dtype=np.uint64), np.asarray(right, dtype=np.uint64))
    return np.unpackbits(xor.astype(">u8").view(np.uint8).reshape(*xor.shape, 8), axis=-1).sum(axis=-1)


def near_distance(left: NearHashes, right: NearHashes, *, mirrors: bool = False) -> np.ndarray:
    """Hamming distance of aligned pairs: the smallest between the full hash of one and any hash
    (full, crop, and with ``mirrors`` mirrored) of the other."""
    straight, mirrored = oriented_distances(left, right)
    return np.minimum(straight, mirrored) if mirrors else straight


def oriented_distances(left: NearHashes, right: NearHashes) -> tuple[np.ndarray, np.ndarray]:
    """(straight, mirrored) Hamming distances of aligned pairs. Straight: the full hash of one against
    the full and crop hashes of the other; mirrored: the full hash of one against the mirrored hash of
    the other (``HASH_BITS + 1``, out of any radius, where either side has no mirrored hash)."""
    full = hamming(left.phash, right.phash)
    left_in_right = hamming(left.phash[:, None], right.crops).min(axis=1)
    right_in_left = hamming(right.phash[:, None], left.crops).min(axis=1)
    straight = np.minimum(full, np.minimum(left_in_right, right_in_left))
    if left.mirror is None or right.mirror is None:
        return straight, np.full(len(straight), HASH_BITS + 1, dtype=straight.dtype)
    return straight, np.minimum(hamming(left.phash, right.mirror), hamming(left.mirror, right.phash))


def colour_distance(left: NearHashes, right: NearHashes) -> np.ndarray:
    """Largest difference of the six colour moments, per aligned pair."""
    return np.abs(left.colours - right.colours).max(axis=1)


def near_matches(
    query: NearHashes,
    reference: NearHashes,
    radius: int,
    colour_tolerance: float,
    *,
    thumbnail_tolerance: float | None = THUMBNAIL_TOLERANCE,
    mirrors: bool = False,
    exhaustive_limit: int = 2_000_000,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (query row, reference row, Hamming distance) with :func:`near_distance` ≤ ``radius`` and
    colour moments within ``colour_tolerance``; one row per pair. Unless ``thumbnail_tolerance`` is None
    (and given thumbnails on both sides), each pair must also pass :func:`mmdata.curate.thumbnails.verified`.
    With ``mirrors`` (and mirrored hashes on both sides), a picture flipped left to right matches too:
    where only the mirrored hash is within the radius, one side's thumbnails are mirrored to verify.

    Each side's full hashes are range-searched against the other side's full, crop (and mirrored)
    hashes. Up to ``exhaustive_limit`` indexed hashes the search is an exact faiss flat scan; beyond
    it, faiss's multi-index hashing (4 tables of 16 bits, enough bit flips per table that, by
    pigeonhole, every pair within ``radius`` shares a probed bucket), which is exact too but sub-quadratic.
    """
    if not mirrors or query.mirror is None or reference.mirror is None:
        query, reference = replace(query, mirror=None), replace(reference, mirror=None)
    found = []
    for searched, indexed, swap in ((query, reference, False), (reference, query, True)):
        codes = np.concatenate(
            [indexed.phash[:, None], indexed.crops, *([] if indexed.mirror is None else [indexed.mirror[:, None]])],
            axis=1,
        )
        owners = np.repeat(np.arange(len(indexed)), codes.shape[1])
        searched_rows, indexed_rows = _range_search(
            to_codes(codes.reshape(-1)), to_codes(searched.phash), radius, exhaustive_limit
        )
        indexed_rows = owners[indexed_rows]
        found.append(np.stack([indexed_rows, searched_rows] if swap else [searched_rows, indexed_rows], axis=1))
    pairs = np.unique(np.concatenate(found), axis=0)
    if not len(pairs):
        return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
    keep, distance = verify_pairs(
        query.take(pairs[:, 0]), reference.take(pairs[:, 1]), radius, colour_tolerance, thumbnail_tolerance
    )
    return pairs[keep, 0], pairs[keep, 1], distance[keep]


def verify_pairs(
    left: NearHashes, right: NearHashes, radius: int, colour_tolerance: float, thumbnail_tolerance: float | None
) -> tuple[np.ndarray, np.ndarray]:
    """(mask, Hamming distance) of the aligned candidate pairs that are near duplicates: within ``radius``,
    colour moments within ``colour_tolerance`` and, unless ``thumbnail_tolerance`` is None (or a side has
    no thumbnails), content that :func:`mmdata.curate.thumbnails.verified` agrees on, left as it is or
    (where only the mirrored hash is within the radius) mirrored."""
    straight, mirrored = oriented_distances(left, right)
    distance = np.minimum(straight, mirrored)
    keep = (distance <= radius) & (colour_distance(left, right) <= colour_tolerance)
    if thumbnail_tolerance is not None and left.thumbnails is not None and right.thumbnails is not None:
        candidates = np.flatnonzero(keep)
        keep[:] = False
        for flip, within in ((False, straight), (True, mirrored)):
            rows = candidates[(within[candidates] <= radius) & ~keep[candidates]]
            right_thumbnails = mirrored_thumbnails(right.thumbnails[rows]) if flip else right.thumbnails[rows]
            agree = verified(
                left.thumbnails[rows], right_thumbnails, left.texture[rows], right.texture[rows],
                left.aspect[rows], right.aspect[rows], thumbnail_tolerance,
            )
            keep[rows[agree]] = True
            distance[rows[agree]] = within[rows[agree]]
    return keep, distance


def _range_search(
    index_codes: np.ndarray, query_codes: np.ndarray, radius: int, exhaustive_limit: int
) -> tuple[np.ndarray, np.ndarray]:
    import faiss

    if len(index_codes) == 0 or len(query_codes) == 0:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    if len(index_codes) <= exhaustive_limit:
        index = faiss.IndexBinaryFlat(HASH_BITS)
    else:
        tables, bits = 4, 16
        index = faiss.IndexBinaryMultiHash(HASH_BITS, tables, bits)
        index.nflip = max(0, -(-(radius + 1) // tables) - 1)
    index.add(index_codes)
    # faiss counts a distance < radius as inside; ask for radius + 1 to include the boundary
    limits, _, neighbours = index.range_search(query_codes, radius + 1)
    query_rows = np.repeat(np.arange(len(query_codes)), np.diff(limits).astype(np.int64))
    return query_rows.astype(np.int64), neighbours.astype(np.int64)
