"""Exact score counts: order-preserving integer keys, a dense float16 histogram, a sparse table.

Every pixel metric of a (sub)set is a function of one table: for each distinct score value, how
many inlier and how many anomaly pixels carry it. We keep exactly that table, never a rounded one:

* float16 scores: a dense histogram over the 65,536 bit patterns (1 MiB, whatever the number of
  images — SegmentMeIfYouCan ships its score maps in float16);
* float32/float64 scores: the distinct keys seen so far with their counts, kept as a few sorted
  runs merged like a binary counter (amortised O(n log n)). Its size is the number of distinct
  score values: it stops growing once values repeat and never exceeds the dtype's value count.

A one-pass exact method cannot keep less than the distinct values for continuous scores: any later
anomaly pixel may fall between any two earlier inlier values.
"""

from __future__ import annotations

import numpy as np

# kind → (float dtype, unsigned key dtype, bits)
KINDS = {
    "f16": (np.float16, np.uint16, 16),
    "f32": (np.float32, np.uint32, 32),
    "f64": (np.float64, np.uint64, 64),
}
KIND_ORDER = ("f16", "f32", "f64")
FLOAT16_PATTERNS = 1 << 16


def kind_of(dtype: np.dtype) -> str:
    return {np.dtype(np.float16): "f16", np.dtype(np.float32): "f32", np.dtype(np.float64): "f64"}[np.dtype(dtype)]


def wider_kind(a: str | None, b: str) -> str:
    if a is None:
        return b
    return max(a, b, key=KIND_ORDER.index)


def to_keys(values: np.ndarray, kind: str) -> np.ndarray:
    """Unsigned integer keys whose order is the float order (IEEE sign-magnitude → two's order).

    Non-negative floats get the sign bit set; negative floats have every bit flipped. ``-0.0`` and
    ``+0.0`` get different keys here; callers canonicalise zeros (they must tie, as in sklearn).
    """
    float_dtype, key_dtype, bits = KINDS[kind]
    raw = np.ascontiguousarray(values, dtype=float_dtype).view(key_dtype)
    sign_bit = key_dtype(1) << key_dtype(bits - 1)
    flip = (raw >> key_dtype(bits - 1)) * (sign_bit - key_dtype(1)) | sign_bit
    return raw ^ flip


def from_keys(keys: np.ndarray, kind: str) -> np.ndarray:
    float_dtype, key_dtype, bits = KINDS[kind]
    keys = np.asarray(keys, dtype=key_dtype)
    sign_bit = key_dtype(1) << key_dtype(bits - 1)
    raw = np.where(keys & sign_bit, keys ^ sign_bit, ~keys)
    return raw.astype(key_dtype).view(float_dtype)


def merge_runs(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """Merge sorted (keys, counts[n, 2]) runs into one run with distinct keys, counts summed."""
    if len(runs) == 1:
        return runs[0]
    keys = np.concatenate([k for k, _ in runs])
    counts = np.concatenate([c for _, c in runs])
    order = np.argsort(keys, kind="stable")  # timsort: linear-time merge of presorted runs
    keys = keys[order]
    counts = counts[order]
    starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1])))
    if len(starts) == len(keys):
        return keys, counts
    return keys[starts], np.add.reduceat(counts, starts, axis=0)


def unique_counts(keys: np.ndarray, column: int) -> tuple[np.ndarray, np.ndarray]:
    """Distinct keys of one class and their counts as a run (counts in ``column`` of 2)."""
    distinct, counts = np.unique(keys, return_counts=True)
    table = np.zeros((len(distinct), 2), dtype=np.int64)
    table[:, column] = counts
    return distinct, table


class SparseCounts:
    """Distinct keys with (inlier, anomaly) counts, as sorted runs of geometrically growing size."""

    def __init__(self, kind: str):
        self.kind = kind
        self.runs: list[tuple[np.ndarray, np.ndarray]] = []

    def add_run(self, keys: np.ndarray, counts: np.ndarray) -> None:
        if len(keys) == 0:
            return
        self.runs.append((keys, counts))
        # Binary-counter merging: a run is merged once its left neighbour is at most twice its size,
        # so each entry takes part in O(log n) merges and there are O(log n) runs.
        while len(self.runs) >= 2 and len(self.runs[-2][0]) <= 2 * len(self.runs[-1][0]):
            right = self.runs.pop()
            left = self.runs.pop()
            self.runs.append(merge_runs([left, right]))

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """The collapsed (keys ascending, counts) table; also stored back as the single run."""
        if not self.runs:
            _, key_dtype, _ = KINDS[self.kind]
            return np.zeros(0, dtype=key_dtype), np.zeros((0, 2), dtype=np.int64)
        self.runs = [merge_runs(self.runs)]
        return self.runs[0]

    def promoted(self, kind: str) -> "SparseCounts":
        keys, counts = self.table()
        other = SparseCounts(kind)
        # float16 ⊂ float32 ⊂ float64 exactly, and the key order is the float order.
        other.add_run(to_keys(from_keys(keys, self.kind).astype(KINDS[kind][0]), kind), counts)
        return other

    @property
    def nbytes(self) -> int:
        return sum(k.nbytes + c.nbytes for k, c in self.runs)


def histogram_as_sparse(histogram: np.ndarray) -> SparseCounts:
    """A float16 histogram (2, 65536) as a sparse table of float16 keys."""
    present = np.flatnonzero(histogram.sum(axis=0))
    table = SparseCounts("f16")
    table.add_run(present.astype(np.uint16), np.ascontiguousarray(histogram[:, present].T))
    return table
