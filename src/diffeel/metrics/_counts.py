"""Exact score counts: order-preserving integer keys, a dense float16 histogram, sparse runs.

Every pixel metric of a (sub)set is a function of one table: for each distinct score value, how
many inlier and how many anomaly pixels carry it. We keep exactly those counts, never rounded:

* float16 scores: a dense histogram over the 65,536 bit patterns (1 MiB, whatever the number of
  images — SegmentMeIfYouCan ships its score maps in float16);
* float32/float64 scores: per class, the distinct keys seen so far with their counts, kept as
  sorted runs merged in tiers (amortised O(n log n)). Its size is the number of distinct score
  values: it stops growing once values repeat and never exceeds the dtype's value count.

A one-pass exact method cannot keep less than the distinct values for continuous scores: any later
anomaly pixel may fall between any two earlier inlier values.
"""

from __future__ import annotations

import numpy as np
import torch

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


Run = tuple[np.ndarray, np.ndarray]  # (distinct keys ascending, counts)


def empty_run(kind: str) -> Run:
    return np.zeros(0, dtype=KINDS[kind][1]), np.zeros(0, dtype=np.int64)


def merge_runs(runs: list[Run]) -> Run | None:
    """Merge sorted runs into one run of distinct keys, counts summed."""
    runs = [run for run in runs if len(run[0])]
    if len(runs) <= 1:
        return runs[0] if runs else None
    keys = np.concatenate([run[0] for run in runs])
    order = np.argsort(keys, kind="stable")  # timsort: a linear merge of presorted runs
    keys = keys[order]
    counts = np.concatenate([run[1] for run in runs])[order]
    last_of_value = np.concatenate((keys[1:] != keys[:-1], [True]))
    if last_of_value.all():
        return keys, counts
    ends = np.flatnonzero(last_of_value)
    # Differences of the running sum at each value's last entry: per-value sums, faster than reduceat.
    return keys[ends], np.diff(np.cumsum(counts)[ends], prepend=0)


def distinct_with_counts(keys: np.ndarray, kind: str) -> Run:
    """Sorted distinct keys and their multiplicities.

    torch's CPU sort is several times faster than numpy's here; keys are moved to signed integers of
    the same width (flipping the top bit keeps the order) because torch has no unsigned sort.
    """
    _, key_dtype, bits = KINDS[kind]
    if len(keys) == 0:
        return empty_run(kind)
    top_bit = key_dtype(1) << key_dtype(bits - 1)
    ordered = torch.sort(torch.from_numpy((keys ^ top_bit).view(f"int{bits}"))).values.numpy()
    starts = np.flatnonzero(np.concatenate(([True], ordered[1:] != ordered[:-1])))
    counts = np.diff(np.append(starts, len(ordered)))
    distinct = ordered[starts].view(key_dtype) ^ top_bit
    return distinct, counts.astype(np.int64)


def rank_counts(runs: list[Run], query_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each query key: how many counted keys are ≥ it and how many are equal to it."""
    at_least = np.zeros(len(query_keys), dtype=np.int64)
    equal = np.zeros(len(query_keys), dtype=np.int64)
    for keys, counts in runs:
        running = np.concatenate(([0], np.cumsum(counts)))
        below = running[np.searchsorted(keys, query_keys, side="left")]
        at_least += running[-1] - below
        equal += running[np.searchsorted(keys, query_keys, side="right")] - below
    return at_least, equal


class SparseCounts:
    """Exact counts of one class's distinct keys, as sorted runs merged in tiers.

    A new run enters tier 0; whenever a tier holds ``fan_in`` runs they are merged (one k-way
    merge, one pass over the data) into a run of the next tier, which also removes repeated keys.
    Each entry is moved O(log_fan_in n) times: merging is bound by memory traffic, so a wide
    fan-in pays. When a merge at least halves its input (values repeat), the result is folded
    into the older run as well, so repeated values keep the state at most ``fan_in`` runs deep. Queries (:func:`rank_counts`) work on the runs directly, without a final merge.
    """

    def __init__(self, kind: str, fan_in: int = 8):
        self.kind = kind
        self.fan_in = fan_in
        self.runs: list[Run] = []
        self.tiers: list[int] = []

    def add_run(self, run: Run) -> None:
        if len(run[0]) == 0:
            return
        self.runs.append(run)
        self.tiers.append(0)
        while len(self.tiers) >= self.fan_in and len(set(self.tiers[-self.fan_in :])) == 1:
            tier = self.tiers[-1]
            merging = self.runs[-self.fan_in :]
            merged = merge_runs(merging)
            del self.runs[-self.fan_in :], self.tiers[-self.fan_in :]
            if self.runs and 2 * len(merged[0]) <= sum(len(keys) for keys, _ in merging):
                # Values repeat: fold into the older run too, so the state stops growing.
                merged = merge_runs([self.runs.pop(), merged])
                tier = max(tier, self.tiers.pop() - 1)
            self.runs.append(merged)
            self.tiers.append(tier + 1)

    def table(self) -> Run:
        """All runs merged into one (keys ascending); also kept as the single run."""
        if not self.runs:
            return empty_run(self.kind)
        if len(self.runs) > 1:
            self.runs, self.tiers = [merge_runs(self.runs)], [max(self.tiers)]
        return self.runs[0]

    def total(self) -> int:
        return int(sum(int(counts.sum()) for _, counts in self.runs))

    def rank_counts(self, query_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return rank_counts(self.runs, query_keys)

    def promoted(self, kind: str) -> "SparseCounts":
        keys, counts = self.table()
        other = SparseCounts(kind, self.fan_in)
        # float16 ⊂ float32 ⊂ float64 exactly, and the key order is the float order.
        other.add_run((to_keys(from_keys(keys, self.kind).astype(KINDS[kind][0]), kind), counts))
        return other

    @property
    def nbytes(self) -> int:
        return sum(keys.nbytes + counts.nbytes for keys, counts in self.runs)


def histogram_as_sparse(histogram_row: np.ndarray) -> SparseCounts:
    """One class's float16 histogram (65536 bins) as sparse counts of float16 keys."""
    present = np.flatnonzero(histogram_row)
    table = SparseCounts("f16")
    table.add_run((present.astype(np.uint16), histogram_row[present]))
    return table
