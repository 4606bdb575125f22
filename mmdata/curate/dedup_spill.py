"""Scratch files for dedup at any scale: fixed-width numpy columns appended to raw files and read back
by row range or by row, so a tier holds the rows it works on, not the dataset's.

Reads copy out of the file (``np.fromfile``, or a memory map opened and closed around one gather), so
the pages read do not stay mapped into the process and count towards its resident memory.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np


class ArraySpill:
    """Named columns of ``rows`` x ``shape`` values of one dtype each, one raw file per column."""

    def __init__(self, folder: str | os.PathLike, columns: dict[str, tuple[np.dtype, tuple[int, ...]]]):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.columns = {name: (np.dtype(dtype), tuple(shape)) for name, (dtype, shape) in columns.items()}
        self._handles = {name: open(self.folder / f"{name}.bin", "wb") for name in self.columns}
        self.rows = 0

    def append(self, **arrays: np.ndarray) -> None:
        """Append the same number of rows to every column."""
        counts = {len(values) for values in arrays.values()}
        if set(arrays) != set(self.columns) or len(counts) != 1:
            raise ValueError(f"append needs every column ({sorted(self.columns)}) with as many rows each")
        for name, values in arrays.items():
            dtype, shape = self.columns[name]
            self._handles[name].write(np.ascontiguousarray(values, dtype=dtype).reshape(-1, *shape).tobytes())
        self.rows += counts.pop()

    def close(self) -> None:
        """Finish writing; the columns can be read from then on."""
        for handle in self._handles.values():
            handle.close()
        self._handles = {}

    def read(self, name: str, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of column ``name``."""
        dtype, shape = self.columns[name]
        width = int(np.prod(shape, dtype=np.int64)) if shape else 1
        stop = min(stop, self.rows)
        values = np.fromfile(self.folder / f"{name}.bin", dtype=dtype, count=max(0, stop - start) * width,
                             offset=start * width * dtype.itemsize)
        return values.reshape(-1, *shape)

    def take(self, name: str, rows: np.ndarray) -> np.ndarray:
        """Column ``name`` at ``rows`` (any order, repeats allowed)."""
        dtype, shape = self.columns[name]
        if not self.rows:
            return np.empty((0, *shape), dtype=dtype)
        mapped = np.memmap(self.folder / f"{name}.bin", dtype=dtype, mode="r", shape=(self.rows, *shape))
        try:
            return np.array(mapped[np.asarray(rows, dtype=np.int64)])
        finally:
            del mapped
