"""The near tier over a whole dataset in bounded memory, with the pairs :func:`~mmdata.curate.hashes.near_matches`
finds when it is given every row at once.

The search hashes (pHash, crop and mirrored pHashes: 88 bytes a row) are spilled to a scratch file. Two rows
are a candidate pair when the pHash of one lies within ``radius`` bits of any hash of the other, so one side
of the search is every row's hashes and the other every row's pHash: one is indexed, a block of rows at a
time, and the other looked up in it, read from the spill a block at a time. The exact search indexes every
hash of ``block_rows`` rows (its lookups flip many bits, so it looks up the fewer codes); the approximate one
indexes the pHashes only (8 bytes a row: 32M rows per index at the default ``block_rows``) and looks up
every hash. Each index meets every query block, so once a dataset outgrows one index the work grows with
the square of the rows; keys are searched two at a time, one index each.

The exact index is multi-index hashing as a sort-join (:func:`band_plan`): the 64 bits are cut into ``m``
bands; two codes within ``radius`` bits differ in some band by at most ``flips`` bits when
``m * (flips + 1) > radius`` (pigeonhole), so looking up each query's band values with up to ``flips``
bits flipped in the sorted band values of the index finds every pair: the search is exact, and returns
what a brute-force scan would. Its cost is about ``m * patterns * queries * codes / 2**width`` candidate
comparisons, quadratic in the rows with a small constant (2**21 for the default radius of 8 bits): exact
search within 8 of 64 bits has no sub-quadratic index over evenly spread codes. The candidate pairs are
then verified (colour moments, content thumbnails) in chunks, reading the hashes of only the rows that
take part.

With ``near_recall`` below 1 the search is approximate instead (:func:`sampled_plan`): bit-sampling LSH, each
of ``tables`` keys made of ``bits`` bit positions drawn at random (a fixed seed: every run draws the same), a
query looked up with up to ``flips`` key bits flipped. The guarantee is per pair of a query hash and an
indexed pHash within ``radius`` bits, over the random draws: it is found with probability at least
``near_recall`` (closer pairs more often); every candidate is still checked with the exact distance, so the
search only ever misses pairs, never adds one. Its plan widens the keys as the index grows (61 keys at 1M
rows, 111 at 10M), so within one index its time grows with the rows times the keys, not with their square
(measured: an exponent of 1.4 from 1M to 10M, bench/scale.py near-search).
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Iterable

import numpy as np

from mmdata.curate.dedup_spill import ArraySpill
from mmdata.curate.hashes import HASH_BITS, NearHashes, near_distance, verify_pairs
from mmdata.curate.thumbnails import THUMB_BYTES
from mmdata.execution.progress import COUNT, StageProgress
from mmdata.schemas.hashes import CROP_COUNT

VERIFY_PAIRS = 65_536  # candidate pairs verified at once
DENSE_BITS = 22  # bands up to this wide are looked up in a table over every value (64 MB at most)
CANDIDATE_COST = 4  # a candidate pair costs about this many binary-search steps (gathers, popcount)
BUCKET_PASSES = 8  # candidates taken one bucket position at a time (no per-candidate index) before the rest at once
SAMPLING_SEED = 1_729  # the approximate search's bit draws: fixed, so runs are deterministic
MAX_SAMPLED_BITS = 32  # sampled keys are uint32
# the approximate search's cost model, in nanoseconds measured on one core (bench/scale.py near-search, 1M
# rows): per indexed code and table (its key, the sort, the gathers), per dense bucket, per query and table
# (its key, the pass), per probe's lookup (dense table, or binary search of the sorted probes), per candidate
SAMPLED_BUILD_NS, SAMPLED_BUCKET_NS, SAMPLED_QUERY_NS = 110.0, 30.0, 200.0
SAMPLED_DENSE_NS, SAMPLED_SPARSE_NS, SAMPLED_CANDIDATE_NS = 40.0, 180.0, 45.0
# the index holds this many rows' pHashes per row of ``block_rows`` (~32 bytes each while a key is sorted,
# against ~90 for a row of every hash); query codes are read a quarter of ``block_rows`` rows at a time
INDEX_ROWS_PER_BLOCK_ROW = 32
SEARCH_THREADS = 2  # keys searched at once, each with its own index (so at most twice its memory)


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

    def candidates(self, radius: int, *, mirrors: bool, block_rows: int,
                   near_recall: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
        """Every pair of rows (a < b) whose :func:`~mmdata.curate.hashes.near_distance` is within ``radius``:
        the full hash of one within ``radius`` of a full, crop (or, with ``mirrors``, mirrored) hash of the other.
        Below 1, ``near_recall`` is the least probability with which each such pair of hashes is found
        (:func:`sampled_plan`); what is returned is then a subset of the exact answer."""
        keys = self.keys(radius, mirrors=mirrors, block_rows=block_rows, near_recall=near_recall)
        exact = near_recall >= 1
        index_rows, query_rows = _block_sizes(block_rows, exact)
        found, searched = [np.empty(0, np.uint64)], itertools.count()
        progress = StageProgress("near dedup search", total=-(-self.spill.rows // index_rows) * len(keys), unit="key",
                                 final_counts=lambda _: (next(searched), {COUNT: 1}))
        with progress, ThreadPoolExecutor(SEARCH_THREADS) as pool:  # numpy's array work runs outside the GIL
            for index_start in range(0, self.spill.rows, index_rows):
                owners, codes = self._codes(index_start, index_start + index_rows, every=exact, mirrors=mirrors)
                search = functools.partial(self._key_pairs, owners, codes, radius=radius, query_rows=query_rows,
                                           every=not exact, mirrors=mirrors)
                nothing = [np.empty(0, np.uint64)] * len(keys)  # no row of the block has hashes
                for pairs in pool.map(search, *zip(*keys)) if len(owners) else nothing:
                    progress.task_done(pairs)
                    found.append(pairs)
                found = [np.unique(np.concatenate(found))]
        pairs = found[0]
        return (pairs >> np.uint64(32)).astype(np.int64), (pairs & np.uint64(0xFFFFFFFF)).astype(np.int64)

    def _key_pairs(self, owners: np.ndarray, codes: np.ndarray, key: _Band | _SampledBits, flips: int, *,
                   radius: int, query_rows: int, every: bool, mirrors: bool) -> np.ndarray:
        """The pairs (``low << 32 | high``, unique) one key finds between the indexed ``codes`` (of rows
        ``owners``) and every row's hashes (``every``) or pHashes, read ``query_rows`` rows at a time."""
        index = _KeyIndex(owners, codes, key)
        pairs = [np.empty(0, np.uint64)]
        for start in range(0, self.spill.rows, query_rows):
            rows, query = self._codes(start, start + query_rows, every=every, mirrors=mirrors)
            left, right = index.within(query, rows, radius, flips)
            different = left != right
            low, high = np.minimum(left, right)[different], np.maximum(left, right)[different]
            pairs.append(np.unique((low.astype(np.uint64) << np.uint64(32)) | high.astype(np.uint64)))
        return np.unique(np.concatenate(pairs))

    def keys(self, radius: int, *, mirrors: bool, block_rows: int,
             near_recall: float = 1.0) -> list[tuple[_Band | _SampledBits, int]]:
        """The search's keys, each with the key bits flipped per lookup: the exact plan's bands
        (:func:`band_plan`, every hash of ``block_rows`` rows indexed at once, pHashes looked up) or, below 1,
        the approximate plan's sampled bits (:func:`sampled_plan`, pHashes indexed, every hash looked up)."""
        per_row = CROP_COUNT + (2 if mirrors else 1)
        hashes = int(self.spill.read("valid", 0, self.spill.rows).sum()) * per_row
        index_rows, _ = _block_sizes(block_rows, near_recall >= 1)
        if near_recall >= 1:
            bands, flips = band_plan(radius, self.spill.rows, min(hashes, index_rows * per_row))
            return [(_Band(low, width), flips) for low, width in bands]
        plan = sampled_plan(radius, near_recall, hashes, min(self.spill.rows, index_rows))
        return [(_SampledBits(positions), plan.flips) for positions in plan.draw()]

    def _codes(self, start: int, stop: int, *, every: bool, mirrors: bool) -> tuple[np.ndarray, np.ndarray]:
        """(owner row of each code, uint64 codes) of rows ``start:stop`` with hashes: their full, crop and
        mirrored hashes (``every``), or their pHashes."""
        stop = min(self.spill.rows, stop)
        valid = np.flatnonzero(self.spill.read("valid", start, stop))
        columns = [self.spill.read("phash", start, stop)[valid, None]]
        if every:
            columns.append(self.spill.read("crops", start, stop)[valid])
        if every and mirrors:
            columns.append(self.spill.read("mirror", start, stop)[valid, None])
        codes = np.concatenate(columns, axis=1)
        return np.repeat(valid + start, codes.shape[1]), codes.reshape(-1)

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


def _block_sizes(block_rows: int, exact: bool) -> tuple[int, int]:
    """(rows indexed at once, rows looked up at once). The exact search indexes every hash of a block and
    looks pHashes up (its lookups flip many bits: the fewer codes); the approximate one indexes pHashes only."""
    if exact:
        return block_rows, block_rows
    return block_rows * INDEX_ROWS_PER_BLOCK_ROW, max(1, block_rows // 4)


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


class _Band:
    """A key made of the code's bits ``low`` to ``low + width``."""

    def __init__(self, low: int, width: int):
        self.low, self.mask, self.width = np.uint64(low), np.uint64((1 << width) - 1), width

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        return (codes >> self.low) & self.mask


@dataclass(frozen=True)
class SampledPlan:
    """The approximate search: ``tables`` keys of ``bits`` bit positions, each looked up with up to ``flips``
    key bits flipped."""

    bits: int
    tables: int
    flips: int

    def found(self, distance: int) -> float:
        """The probability that a query code and an indexed code ``distance`` bits apart meet in some table."""
        return 1.0 - (1.0 - _collision(distance, self.bits, self.flips)) ** self.tables

    def draw(self) -> list[np.ndarray]:
        """Each table's bit positions (``bits`` of the 64, without replacement), the same on every run."""
        rng = np.random.default_rng(SAMPLING_SEED)
        return [np.sort(rng.choice(HASH_BITS, self.bits, replace=False)) for _ in range(self.tables)]


def _collision(distance: int, bits: int, flips: int) -> float:
    """The probability that ``bits`` positions drawn from the 64 hold at most ``flips`` of the ``distance``
    positions where two codes differ (hypergeometric)."""
    together = sum(math.comb(distance, flipped) * math.comb(HASH_BITS - distance, bits - flipped)
                   for flipped in range(min(flips, distance) + 1))
    return together / math.comb(HASH_BITS, bits)


def sampled_plan(radius: int, recall: float, queries: int, codes: int) -> SampledPlan:
    """The cheapest approximate plan for ``queries`` looked up in blocks of ``codes`` indexed codes that finds
    every pair within ``radius`` bits with probability >= ``recall`` (the bound is tightest at ``radius``:
    closer pairs collide more often). Per block and table it weighs building the index (keys, sort, dense
    buckets) against the lookups and the candidate pairs they yield (evenly spread codes: ``codes / 2**bits``
    per probe)."""
    if not 0 < recall < 1:
        raise ValueError(f"an approximate plan needs 0 < recall < 1, got {recall}")
    plans = []
    for bits in range(1, MAX_SAMPLED_BITS + 1):
        for flips in range(min(bits, 3)):
            once = _collision(radius, bits, flips)
            if once <= 0:
                continue
            tables = 1 if once >= 1 else max(1, math.ceil(math.log1p(-recall) / math.log1p(-once)))
            plan = SampledPlan(bits, tables, flips)
            while plan.found(radius) < recall:  # rounding
                plan = SampledPlan(bits, plan.tables + 1, flips)
            dense = bits <= DENSE_BITS
            build = codes * SAMPLED_BUILD_NS + (SAMPLED_BUCKET_NS * 2**bits if dense else 0)
            probes = sum(math.comb(bits, flipped) for flipped in range(flips + 1))
            lookup = SAMPLED_DENSE_NS if dense else SAMPLED_SPARSE_NS
            probe = lookup + SAMPLED_CANDIDATE_NS * codes / 2.0**bits
            plans.append((plan.tables * (build + queries * (SAMPLED_QUERY_NS + probes * probe)), bits, plan))
    return min(plans, key=lambda cost_plan: cost_plan[:2])[2]


class _SampledBits:
    """A key made of the code's bits at ``positions`` (key bit j: code bit ``positions[j]``), computed with one
    lookup table per 16-bit quarter of the code (each entry: that quarter's sampled bits moved to their key
    positions), 4 gathers whatever the number of bits (measured faster than 8 byte tables)."""

    def __init__(self, positions: np.ndarray):
        self.width = len(positions)
        values = np.arange(1 << 16, dtype=np.uint32)
        self.tables = np.zeros((4, 1 << 16), dtype=np.uint32)
        for key_bit, position in enumerate(int(position) for position in positions):
            quarter, bit = divmod(position, 16)
            self.tables[quarter] |= ((values >> bit) & 1) << np.uint32(key_bit)
        self.quarters = [quarter for quarter in range(4) if self.tables[quarter].any()]

    def __call__(self, codes: np.ndarray) -> np.ndarray:
        quarters = np.ascontiguousarray(codes, dtype=np.uint64).view(np.uint16).reshape(-1, 4)
        if not self.quarters:
            return np.zeros(len(codes), dtype=np.uint32)
        key = np.take(self.tables[self.quarters[0]], quarters[:, _LITTLE[self.quarters[0]]])
        for quarter in self.quarters[1:]:
            key |= np.take(self.tables[quarter], quarters[:, _LITTLE[quarter]])
        return key


_LITTLE = [0, 1, 2, 3] if np.little_endian else [3, 2, 1, 0]  # the uint16 column holding each quarter


class _KeyIndex:
    """A block's codes (and their owner rows) sorted by a key, looked up by queries' keys with bits flipped."""

    def __init__(self, owners: np.ndarray, codes: np.ndarray, key: _Band | _SampledBits):
        self.key, self.width = key, key.width
        keys = key(codes)
        if self.width <= 32 and len(keys) < 2**32:  # sort key and position packed: much faster than argsort
            packed = keys.astype(np.uint64)  # built and sorted in place: the index's peak memory
            del keys
            packed <<= np.uint64(32)
            packed |= np.arange(len(packed), dtype=np.uint64)
            packed.sort()
            order = (packed & np.uint64(0xFFFFFFFF)).view(np.int64)
            packed >>= np.uint64(32)
            keys = packed
        else:
            order = np.argsort(keys)
            keys = keys[order]
        self.codes, self.owners = codes[order], owners[order]
        del order
        if self.width <= DENSE_BITS:  # a table over every key value: one lookup instead of a binary search
            counts = np.bincount(keys.view(np.int64) if keys.dtype == np.uint64 else keys.astype(np.int64),
                                 minlength=1 << self.width)
            self.starts = np.concatenate([[0], np.cumsum(counts)])
        else:
            first = np.flatnonzero(np.concatenate([[True], keys[1:] != keys[:-1]]))
            self.keys, self.first = keys[first], first
            self.counts = np.diff(np.append(first, len(keys)))

    def within(self, query: np.ndarray, query_rows: np.ndarray, radius: int,
               flips: int) -> tuple[np.ndarray, np.ndarray]:
        """(query row, owner row) of every query code and indexed code within ``radius`` bits whose keys
        differ in at most ``flips`` bits."""
        keys = self.key(query)
        lefts, rights = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for pattern in _patterns(self.width, flips):
            starts, counts = self._lookup(keys ^ pattern.astype(keys.dtype))
            queried, offset = np.flatnonzero(counts), 0
            while len(queried):
                if offset < BUCKET_PASSES:  # the offset-th code of every bucket still that long
                    queried_at, position = queried, starts[queried] + offset
                else:  # the rest of the few long buckets (blank pictures share a hash): every candidate at once
                    repeats = counts[queried] - offset
                    queried_at = np.repeat(queried, repeats)
                    position = starts[queried_at] + offset + np.arange(len(queried_at)) - np.repeat(
                        np.cumsum(repeats) - repeats, repeats)
                close = np.bitwise_count(query[queried_at] ^ self.codes[position]) <= radius
                lefts.append(query_rows[queried_at[close]])
                rights.append(self.owners[position[close]])
                if offset >= BUCKET_PASSES:
                    break
                offset += 1
                queried = queried[counts[queried] > offset]
        return np.concatenate(lefts), np.concatenate(rights)

    def _lookup(self, probe: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(first position, count) of each probed key among the sorted codes (count 0: none)."""
        if self.width <= DENSE_BITS:
            index = probe.astype(np.int64)
            starts = self.starts[index]
            return starts, self.starts[index + 1] - starts
        order = np.argsort(probe)  # sorted probes: the binary searches walk the keys in order (~10x faster)
        found = np.empty(len(probe), dtype=np.int64)
        found[order] = np.searchsorted(self.keys, probe[order])
        found = np.minimum(found, len(self.keys) - 1)
        present = self.keys[found] == probe
        return self.first[found], np.where(present, self.counts[found], 0)


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

