"""Hash caches for a metadata-only corpus (``tests/metadata_corpus.py``), so dedup's exact and near tiers
run on it without tars: ``annotations/.hashes/<shard>.parquet`` with the real HASH_SCHEMA, one row per
successful sample, random hashes with planted copies of earlier samples (of this shard or an earlier one):

* ``exact``: the same file (sha256, pixel hash and every other hash);
* ``pixels``: the same pixels in another file (pixel hash, perceptual hashes; a new sha256);
* ``near``: another picture's pHash with 1-``max_flips`` bits flipped (a re-encode);
* ``crop``: one of another picture's crop pHashes with bits flipped (a crop of it);
* ``mirror``: another picture's mirrored pHash with bits flipped (flipped left to right).

Near copies keep their source's content (thumbnails, texture, aspect) and move its colour moments by at
most 4 levels, so they verify; every picture's thumbnails are one flat colour (they compress to nothing).
A share of the rows has no hashes (``hash_error``), as undecodable images have. What this can check:
that dedup finds the planted copies and that two ways of running it agree; what it cannot: the hashes'
own quality on real pictures (random pHashes are spread evenly, real ones cluster), which the photo
corpora test.

Everything is a function of (seed, shard), like the metadata corpus.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from mmdata import layout
from mmdata.atomic import write_parquet
from mmdata.curate.hashes import cache_path
from mmdata.schemas.hashes import CROP_COUNT, HASH_SCHEMA, THUMB_BYTES

KINDS = {"exact": 0.03, "pixels": 0.01, "near": 0.03, "crop": 0.01, "mirror": 0.01}  # share of the rows
HASH_ERRORS = 0.01  # share of the rows without hashes
WINDOW = 3  # a copy's source lies in its own shard or one of the WINDOW before it


@dataclass(frozen=True)
class HashCorpusSpec:
    seed: int = 0
    max_flips: int = 4  # bits flipped in a near copy's pHash (1 to this many)


def write_hash_corpus(root: str | os.PathLike, spec: HashCorpusSpec = HashCorpusSpec()) -> dict[str, int]:
    """Write the hash cache of every complete shard of ``root``; returns the planted copies per kind
    (a copy whose source slot holds a failed sample, or one without hashes, is not planted)."""
    root = layout.dataset(root)
    planted = dict.fromkeys(KINDS, 0)
    recent: dict[int, dict[str, np.ndarray]] = {}  # the last shards' hashes, sources of the copies
    for number, shard in enumerate(layout.complete_shards(root)):
        table = pq.read_table(layout.parquet_path(root, shard).path, columns=["key", "status"])
        success = pc.equal(table.column("status"), "success").to_numpy(zero_copy_only=False)
        hashes = _random_hashes(spec, number, table.num_rows, success)
        recent = {key: value for key, value in recent.items() if key >= number - WINDOW}
        recent[number] = hashes
        rng = np.random.default_rng([spec.seed, number, 1])
        kind = rng.choice(len(KINDS) + 1, table.num_rows, p=[1 - sum(KINDS.values()), *KINDS.values()])
        sources = rng.integers(max(0, number - WINDOW), number + 1, table.num_rows)
        draws = rng.random(table.num_rows)
        for row in np.flatnonzero((kind > 0) & success):
            source = recent[int(sources[row])]
            slot = int(draws[row] * (row if sources[row] == number else len(source["success"])))
            if not source["success"][slot] or source["failed"][slot] or (sources[row] == number and slot == row):
                continue
            name = list(KINDS)[kind[row] - 1]
            _plant(hashes, row, source, slot, name, rng, spec.max_flips)
            planted[name] += 1
        write_parquet(_table(hashes, table.column("key")).filter(pa.array(success)), cache_path(root, shard),
                      HASH_SCHEMA)
    return planted


def _random_hashes(spec: HashCorpusSpec, number: int, size: int, success: np.ndarray) -> dict[str, np.ndarray]:
    """Unrelated hashes for the ``size`` rows of shard ``number``."""
    rng = np.random.default_rng([spec.seed, number])
    return {
        "success": success,
        "failed": rng.random(size) < HASH_ERRORS,
        "digests": rng.integers(0, 256, (size, 48), dtype=np.uint8),  # sha256 (32 bytes), pixel hash (16)
        "codes": rng.integers(0, 2**64 - 1, (size, CROP_COUNT + 2), dtype=np.uint64, endpoint=True),
        "colours": np.concatenate([rng.uniform(0, 255, (size, 3)), rng.uniform(0, 80, (size, 3))],
                                  axis=1).astype(np.float32),
        "texture": rng.uniform(1, 30, size).astype(np.float32),
        "aspect": rng.uniform(-0.5, 0.5, size).astype(np.float32),
    }


def _plant(hashes: dict, row: int, source: dict, slot: int, kind: str, rng: np.random.Generator,
           max_flips: int) -> None:
    """Make ``row`` of ``hashes`` a copy of ``kind`` of ``source``'s ``slot``."""
    for name in ("codes", "colours", "texture", "aspect", "failed"):
        hashes[name][row] = source[name][slot]
    if kind in ("exact", "pixels"):
        hashes["digests"][row, 32:] = source["digests"][slot, 32:]
        if kind == "exact":
            hashes["digests"][row, :32] = source["digests"][slot, :32]
        return
    bits = rng.choice(64, int(rng.integers(1, max_flips + 1)), replace=False)
    flips = np.uint64(sum(1 << int(bit) for bit in bits))
    column = {"near": 0, "crop": 1 + int(rng.integers(0, CROP_COUNT)), "mirror": CROP_COUNT + 1}[kind]
    hashes["codes"][row, 0] = source["codes"][slot, column] ^ flips
    hashes["colours"][row] = source["colours"][slot] + rng.uniform(-4, 4, 6).astype(np.float32)


def _table(hashes: dict, keys: pa.ChunkedArray) -> pa.Table:
    """HASH_SCHEMA rows; rows marked failed get nulls and a hash_error."""
    failed = hashes["failed"]
    valid = pa.array(~failed)
    codes, colours = hashes["codes"], hashes["colours"]
    flat = np.repeat(colours[:, :3].clip(0, 255).astype(np.uint8), THUMB_BYTES // 3, axis=0).reshape(-1, THUMB_BYTES)
    hexes = hashes["digests"].tobytes().hex()
    width = 2 * hashes["digests"].shape[1]
    sha256 = [hexes[start : start + 64] for start in range(0, len(hexes), width)]
    pixels = [hexes[start + 64 : start + width] for start in range(0, len(hexes), width)]

    def masked(array: pa.Array) -> pa.Array:
        return pc.if_else(valid, array, pa.scalar(None, array.type))

    return pa.table({
        "key": keys,
        "sha256": masked(pa.array(sha256, pa.string())),
        "pixel_hash": masked(pa.array(pixels, pa.string())),
        "phash": masked(pa.array(codes[:, 0])),
        "crop_hashes": masked(pa.FixedSizeListArray.from_arrays(pa.array(codes[:, 1:1 + CROP_COUNT].reshape(-1)),
                                                                CROP_COUNT)),
        "mirror_phash": masked(pa.array(codes[:, -1])),
        "colour_moments": masked(pa.FixedSizeListArray.from_arrays(pa.array(colours.reshape(-1)), 6)),
        "thumbnails": masked(pa.FixedSizeBinaryArray.from_buffers(pa.binary(THUMB_BYTES), len(flat),
                                                                  [None, pa.py_buffer(flat.tobytes())])),
        "texture": masked(pa.array(hashes["texture"])),
        "aspect": masked(pa.array(hashes["aspect"])),
        "hash_error": pa.array(np.where(failed, "no image member", None), pa.string()),
    })
