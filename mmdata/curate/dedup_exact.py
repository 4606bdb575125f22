"""The exact tier in bounded memory: rows with the same sha256 (or pixel hash), found partition by partition.

Each hash is reduced to its first 128 bits (two uint64 words; at 100M rows the chance that two different
files share them is about 1e-23), spilled with its row to one of ``partitions`` scratch files chosen by
the digest, and each partition is then sorted on its own: memory holds one partition, not the dataset.
"""

from __future__ import annotations

import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from mmdata.curate.dedup_spill import ArraySpill

_HEX_VALUES = np.full(256, 255, dtype=np.uint8)
_HEX_VALUES[np.frombuffer(b"0123456789abcdef", np.uint8)] = np.arange(16, dtype=np.uint8)
_NIBBLE_SHIFTS = np.arange(60, -1, -4, dtype=np.uint64)  # 16 hex digits, most significant first


def hex_digests(values: pa.Array | pa.ChunkedArray) -> tuple[np.ndarray, np.ndarray]:
    """(positions of the non-null values, their first 128 bits as uint64 ``[n, 2]``) of hex strings of one
    length (at least 32 digits), converted without a Python object per value."""
    if isinstance(values, pa.ChunkedArray):
        values = values.combine_chunks()
    values = values.cast(pa.string())
    positions = np.flatnonzero(values.is_valid().to_numpy(zero_copy_only=False))
    present = pc.drop_null(values)
    if not len(present):
        return positions, np.empty((0, 2), dtype=np.uint64)
    offsets = np.frombuffer(present.buffers()[1], np.int32)[present.offset : present.offset + len(present) + 1]
    lengths = np.diff(offsets)
    if lengths.min() != lengths.max() or lengths[0] < 32:
        raise ValueError(f"hash values must be hex strings of one length (>= 32 digits), got lengths {set(lengths)}")
    data = np.frombuffer(present.buffers()[2], np.uint8)[offsets[0] : offsets[-1]]
    nibbles = _HEX_VALUES[data.reshape(len(present), lengths[0])[:, :32]]
    if (nibbles > 15).any():
        raise ValueError("hash values must be lowercase hex strings: found a character outside 0-9a-f")
    words = (nibbles.reshape(-1, 2, 16).astype(np.uint64) << _NIBBLE_SHIFTS).sum(axis=2, dtype=np.uint64)
    return positions, words


class EqualValues:
    """Collects (row, digest) pairs into partition files; :meth:`edges` joins rows with equal digests."""

    def __init__(self, folder: str | os.PathLike, partitions: int):
        self.partitions = [
            ArraySpill(os.path.join(folder, f"{number:05d}"), {"row": (np.int64, ()), "digest": (np.uint64, (2,))})
            for number in range(max(1, partitions))
        ]

    def add(self, rows: np.ndarray, digests: np.ndarray) -> None:
        """Spill ``rows`` (ascending) with their ``[n, 2]`` digests."""
        target = (digests[:, 0] % np.uint64(len(self.partitions))).astype(np.int64)
        order = np.argsort(target, kind="stable")
        bounds = np.searchsorted(target[order], np.arange(len(self.partitions) + 1))
        for number, (start, stop) in enumerate(zip(bounds[:-1], bounds[1:])):
            if stop > start:
                chosen = order[start:stop]
                self.partitions[number].append(row=rows[chosen], digest=digests[chosen])

    def edges(self) -> tuple[np.ndarray, np.ndarray]:
        """(row, first row with the same digest) for every row that is not the first of its digest."""
        lefts, rights = [np.empty(0, np.int64)], [np.empty(0, np.int64)]
        for spill in self.partitions:
            spill.close()
            rows, digests = spill.read("row", 0, spill.rows), spill.read("digest", 0, spill.rows)
            order = np.lexsort((rows, digests[:, 1], digests[:, 0]))
            rows, digests = rows[order], digests[order]
            starts = np.ones(len(rows), dtype=bool)
            starts[1:] = (digests[1:] != digests[:-1]).any(axis=1)
            owner = rows[np.flatnonzero(starts)[np.cumsum(starts) - 1]]
            joined = ~starts
            lefts.append(rows[joined])
            rights.append(owner[joined])
        return np.concatenate(lefts), np.concatenate(rights)
