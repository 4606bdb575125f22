"""The near tier over a whole dataset in bounded memory, with the pairs :func:`~mmdata.curate.hashes.near_matches`
finds when it is given every row at once.

The search hashes (pHash, crop and mirrored pHashes: 88 bytes a row) are spilled to a scratch file and
searched in blocks of ``block_rows`` rows: each block's hashes are indexed, and every row's pHash is looked
up in that index, one block of queries at a time, so memory holds one index and one query block whatever
the dataset's size. The index is multi-index hashing as a sort-join (:func:`band_plan`): the 64 bits are
cut into ``m`` bands; two codes within ``radius`` bits differ in some band by at most ``flips`` bits when
``m * (flips + 1) > radius`` (pigeonhole), so looking up each query's band values with up to ``flips``
bits flipped in the sorted band values of the index finds every pair: the search is exact, and returns
what a brute-force scan would. Its cost is about ``m * patterns * queries * codes / 2**width`` candidate
comparisons, quadratic in the rows with a small constant (2**21 for the default radius of 8 bits): exact
search within 8 of 64 bits has no sub-quadratic index over evenly spread codes. The candidate pairs are
then verified (colour moments, content thumbnails) in chunks, reading the hashes of only the rows that
take part.
"""

from __future__ import annotations

import itertools
import math
import os
from typing import Callable, Iterable

import numpy as np

from mmdata.curate.dedup_spill import ArraySpill
from mmdata.curate.hashes import HASH_BITS, NearHashes, near_distance, verify_pairs
from mmdata.curate.thumbnails import THUMB_BYTES
from mmdata.schemas.hashes import CROP_COUNT

VERIFY_PAIRS = 65_536  # candidate pairs verified at once
DENSE_BITS = 22  # bands up to this wide are looked up in a table over every value (64 MB at most)
CANDIDATE_COST = 4  # a candidate pair costs about this many binary-search steps (gathers, popcount)


class NearSearch:
    """Every row's search hashes, spilled in row order; rows without hashes are marked invalid."""

    def __init__(self, folder: str | os.PathLike):
        self.spill = ArraySpill(folder, {
            "phash": (np.uint64, ()), "crops": (np.uint64, (CROP_COUNT,)), "mirror": (np.uint64, ()),
            "valid": (np.bool_, ()),
        })

    def add(self, count: int, rows: np.ndarray, hashes: NearHashes) -> None:
        """The next ``count`` rows, of which ``rows`` (positions among them) have ``hashes``."""
        phash, crops, mirror = (np.zeros(count, np.uint64), np.zeros((count, CROP_COUNT), np.uint64),
                                np.zeros(count, np.uint64))
        valid = np.zeros(count, dtype=bool)
        phash[rows], crops[rows], mirror[rows], valid[rows] = hashes.phash, hashes.crops, hashes.mirror, True
        self.spill.append(phash=phash, crops=crops, mirror=mirror, valid=valid)

    def close(self) -> None:
        self.spill.close()

    def candidates(self, radius: int, *, mirrors: bool, block_rows: int) -> tuple[np.ndarray, np.ndarray]:
        """Every pair of rows (a < b) whose :func:`~mmdata.curate.hashes.near_distance` is within ``radius``:
        the full hash of one within ``radius`` of a full, crop (or, with ``mirrors``, mirrored) hash of the other."""
        rows, found = self.spill.rows, [np.empty((0, 2), np.int64)]
        for index_start in range(0, rows, block_rows):
            owners, codes = self._index_codes(index_start, min(rows, index_start + block_rows), mirrors)
            if not len(owners):
                continue
            bands, flips = band_plan(radius, min(rows, block_rows), len(codes))
            for low, width in bands:
                index = _BandIndex(owners, codes, low, width)
                for query_start in range(0, rows, block_rows):
                    query_stop = min(rows, query_start + block_rows)
                    valid = np.flatnonzero(self.spill.read("valid", query_start, query_stop))
                    query = self.spill.read("phash", query_start, query_stop)[valid]
                    left, right = index.within(query, valid + query_start, radius, flips)
                    different = left != right
                    pairs = np.stack([np.minimum(left, right)[different], np.maximum(left, right)[different]], axis=1)
                    found.append(np.unique(pairs, axis=0))
            found = [np.unique(np.concatenate(found), axis=0)]
        return found[0][:, 0], found[0][:, 1]

    def _index_codes(self, start: int, stop: int, mirrors: bool) -> tuple[np.ndarray, np.ndarray]:
        """(owner row of each code, uint64 codes): the full, crop and mirrored hashes of rows ``start:stop``."""
        valid = np.flatnonzero(self.spill.read("valid", start, stop))
        columns = [self.spill.read("phash", start, stop)[valid, None], self.spill.read("crops", start, stop)[valid]]
        if mirrors:
            columns.append(self.spill.read("mirror", start, stop)[valid, None])
        codes = np.concatenate(columns, axis=1)
        owners = np.repeat(valid + start, codes.shape[1])
        return owners, codes.reshape(-1)

    def distances(self, left: np.ndarray, right: np.ndarray, *, mirrors: bool) -> np.ndarray:
        """:func:`~mmdata.curate.hashes.near_distance` of the aligned row pairs (both with hashes)."""
        distance = np.empty(len(left), dtype=np.int64)
        for start in range(0, len(left), VERIFY_PAIRS):
            chunk = slice(start, start + VERIFY_PAIRS)
            distance[chunk] = near_distance(self._hashes(left[chunk]), self._hashes(right[chunk]), mirrors=mirrors)
        return distance

    def valid(self, rows: np.ndarray) -> np.ndarray:
        return self.spill.take("valid", rows)

    def _hashes(self, rows: np.ndarray) -> NearHashes:
        crops = self.spill.take("crops", rows)
        return NearHashes(self.spill.take("phash", rows), crops, np.zeros((len(rows), 6), np.float32),
                          mirror=self.spill.take("mirror", rows))


def band_plan(radius: int, queries: int, codes: int) -> tuple[list[tuple[int, int]], int]:
    """The cheapest exact multi-index plan for ``queries`` looked up among ``codes``: the bands, as (lowest
    bit, width), and how many bits to flip per band lookup (``bands * (flips + 1) > radius``). The cost
    weighs each lookup (a binary search) and each candidate pair it yields (evenly spread codes)."""
    plans = []
    for count in range(1, radius + 2):
        flips = -(-(radius + 1) // count) - 1
        widths = [HASH_BITS // count + (1 if band < HASH_BITS % count else 0) for band in range(count)]
        patterns = sum(math.comb(widths[0], bits) for bits in range(flips + 1))
        lookup = 1 if widths[0] <= DENSE_BITS else math.log2(codes + 1)
        cost = count * patterns * queries * (lookup + CANDIDATE_COST * codes / 2.0 ** widths[-1])
        lows = np.concatenate([[0], np.cumsum(widths)[:-1]]).tolist()
        plans.append((cost, list(zip(lows, widths)), flips))
    _, bands, flips = min(plans, key=lambda plan: plan[0])
    return bands, flips


class _BandIndex:
    """One band of a block's codes, sorted, looked up by queries' band values with bits flipped."""

    def __init__(self, owners: np.ndarray, codes: np.ndarray, low: int, width: int):
        self.low, self.mask = np.uint64(low), np.uint64((1 << width) - 1)
        keys = (codes >> self.low) & self.mask
        order = np.argsort(keys)
        keys, self.codes, self.owners = keys[order], codes[order], owners[order]
        self.width = width
        if width <= DENSE_BITS:  # a table over every band value: one lookup instead of a binary search
            self.counts = np.bincount(keys.astype(np.int64), minlength=1 << width)
            self.starts = np.cumsum(self.counts) - self.counts
        else:
            first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            self.keys, self.starts = keys[first], first
            self.counts = np.diff(np.append(first, len(keys)))

    def within(self, query: np.ndarray, query_rows: np.ndarray, radius: int,
               flips: int) -> tuple[np.ndarray, np.ndarray]:
        """(query row, owner row) of every query code and indexed code within ``radius`` bits whose band
        values differ in at most ``flips`` bits."""
        keys = (query >> self.low) & self.mask
        lefts, rights = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for pattern in _patterns(self.width, flips):
            starts, counts = self._lookup(keys ^ pattern)
            hit = np.flatnonzero(counts)
            if not len(hit):
                continue
            repeats = counts[hit]
            queried = np.repeat(hit, repeats)
            offsets = np.arange(len(queried)) - np.repeat(np.cumsum(repeats) - repeats, repeats)
            position = starts[queried] + offsets
            close = np.bitwise_count(query[queried] ^ self.codes[position]) <= radius
            lefts.append(query_rows[queried[close]])
            rights.append(self.owners[position[close]])
        return np.concatenate(lefts), np.concatenate(rights)


    def _lookup(self, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first position, count) of each probed band value among the sorted codes (count 0: none)."""
        if self.width <= DENSE_BITS:
            index = probe.astype(np.int64)
            return self.starts[index], self.counts[index]
        found = np.minimum(np.searchsorted(self.keys, probe), len(self.keys) - 1)
        present = self.keys[found] == probe
        return self.starts[found], np.where(present, self.counts[found], 0)


def _patterns(width: int, flips: int) -> list[np.uint64]:
    """Every ``width``-bit value with at most ``flips`` bits set."""
    return [np.uint64(sum(1 << bit for bit in bits))
            for count in range(flips + 1) for bits in itertools.combinations(range(width), count)]


def verified_pairs(
    left: np.ndarray, right: np.ndarray, read_rows: Callable[[np.ndarray], Iterable[NearHashes]], folder: str,
    radius: int, colour_tolerance: float, thumbnail_tolerance: float | None, *, mirrors: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Of the candidate pairs (``left < right``), (verified with ``left`` as the left side, verified either
    way): the near tier's pairs as :func:`~mmdata.curate.hashes.near_matches` lists them, both orientations.
    ``read_rows(sorted rows)`` yields those rows' NearHashes in order, a piece at a time; they are spilled
    to ``folder`` and gathered per chunk of pairs."""
    involved = np.unique(np.concatenate([left, right]))
    spill = ArraySpill(folder, {
        "phash": (np.uint64, ()), "crops": (np.uint64, (CROP_COUNT,)), "mirror": (np.uint64, ()),
        "colours": (np.float32, (6,)), "thumbnails": (np.uint8, (THUMB_BYTES,)), "texture": (np.float32, ()),
        "aspect": (np.float32, ()),
    })
    for piece in read_rows(involved):
        spill.append(phash=piece.phash, crops=piece.crops, mirror=piece.mirror, colours=piece.colours,
                     thumbnails=piece.thumbnails, texture=piece.texture, aspect=piece.aspect)
    spill.close()
    if spill.rows != len(involved):
        raise RuntimeError(f"near tier: read hashes of {spill.rows} rows, expected {len(involved)}")
    forward, either = np.zeros(len(left), dtype=bool), np.zeros(len(left), dtype=bool)
    for start in range(0, len(left), VERIFY_PAIRS):
        chunk = slice(start, start + VERIFY_PAIRS)
        a = _gathered(spill, np.searchsorted(involved, left[chunk]), mirrors)
        b = _gathered(spill, np.searchsorted(involved, right[chunk]), mirrors)
        forward[chunk], _ = verify_pairs(a, b, radius, colour_tolerance, thumbnail_tolerance)
        backward = np.flatnonzero(~forward[chunk])
        either[chunk] = forward[chunk]
        if len(backward):
            passed, _ = verify_pairs(b.take(backward), a.take(backward), radius, colour_tolerance, thumbnail_tolerance)
            either[chunk][backward[passed]] = True
    return forward, either


def _gathered(spill: ArraySpill, positions: np.ndarray, mirrors: bool) -> NearHashes:
    return NearHashes(
        spill.take("phash", positions), spill.take("crops", positions), spill.take("colours", positions),
        spill.take("thumbnails", positions), spill.take("texture", positions), spill.take("aspect", positions),
        spill.take("mirror", positions) if mirrors else None,
    )

