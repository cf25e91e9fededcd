"""Per-image records in flat numpy arrays, for datasets that DataLoader workers read.

A worker forked from the main process shares the parent's memory until it writes to it, and
reading a Python object writes to it (its reference count; the garbage collector's pass over
every object too). Per-image Python objects (dicts, lists, ints, strings) are so copied page
by page into each worker as training goes on. Numpy arrays are a handful of objects whatever
their length: a worker reads their elements without writing a byte of the parent's pages.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


class StringArray:
    """n strings in one UTF-8 byte buffer plus (n + 1,) int64 offsets."""

    def __init__(self, strings: Sequence[str]):
        encoded = list(map(str.encode, strings))
        self._offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum(np.fromiter(map(len, encoded), np.int64, len(encoded)), out=self._offsets[1:])
        self._buffer = np.frombuffer(b"".join(encoded), dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def __getitem__(self, index: int) -> str:
        start, stop = self._offsets[index], self._offsets[index + 1]
        return self._buffer[start:stop].tobytes().decode()

    @property
    def nbytes(self) -> int:
        return self._buffer.nbytes + self._offsets.nbytes


class RaggedArray:
    """Rows of `values` grouped into n consecutive runs: run i is values[offsets[i]:offsets[i+1]].

    Args:
        values: (M, ...) array, the runs one after the other.
        counts: (n,) int, the length of each run (summing to M).
    """

    def __init__(self, values: np.ndarray, counts: np.ndarray):
        if int(np.sum(counts)) != len(values):
            raise ValueError(f"run lengths sum to {int(np.sum(counts))}, not {len(values)} rows")
        self.values = values
        self.offsets = np.zeros(len(counts) + 1, dtype=np.int64)
        np.cumsum(counts, out=self.offsets[1:])

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, index: int) -> np.ndarray:
        return self.values[self.offsets[index] : self.offsets[index + 1]]

    def lengths(self) -> np.ndarray:
        """(n,) int64: the length of every run."""
        return np.diff(self.offsets)
