"""The SegmentMeIfYouCan toolkit's binned pixel metrics (its ``PixBinaryClass``), number for number.

The toolkit (``road_anomaly_benchmark``) does not count exact thresholds. Each frame's non-void
pixels are histogrammed over its own bin edges: two outer edges plus the quantiles of the frame's
anomaly scores and of its inlier scores (at most 384 each, ``np.quantile`` at evenly spaced
levels). Every bin is then a point of one pooled curve, thresholded at the bin's lower edge; the
bins of all frames are sorted by that edge (descending) and accumulated. Two editions differ:

* ``"2023"`` — SegmentMeIfYouCan/road-anomaly-benchmark @ 1c7804e (2023-08-24), the toolkit's
  current code: outer edges ``min - ε`` and ``max + ε`` (ε = max(1 % of the range, 0.01)); of
  each run of equal thresholds only the last point is kept; the curve is closed at (0, 0) and at
  full recall; AP = Σ ΔR · P (step-wise, as sklearn), precision 1 where nothing is predicted.
* ``"2021"`` — adynathos/road-anomaly-benchmark @ da3bc77 (2021-10-28), the first release: outer
  edges 0 and 1; points before the first prediction dropped; AP = trapezoid under the PR points.

Both: FPR95 = the FPR at the first point whose TPR ≥ 0.95 (``searchsorted`` on the TPRs; 1.0 if
never reached); AUROC = trapezoid under the ROC points; best F1 over the points. Ties among equal
thresholds of different frames are ordered by ``np.argsort`` exactly as the toolkit orders them,
so frames must be added in the toolkit's frame order (sorted frame ids) for bit-equal results; in
the 2023 edition ties change nothing but the curve's first point.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

EDITIONS = {
    "2023": "SegmentMeIfYouCan/road-anomaly-benchmark @ 1c7804e (2023-08-24)",
    "2021": "adynathos/road-anomaly-benchmark @ da3bc77 (2021-10-28)",
}
BINS_PER_FRAME = 768  # the toolkit's PixBinaryClass: num_bins, half of them per class


@dataclass
class FrameBins:
    """One frame's histogram, bins in descending order of their lower edge."""

    lower_edges: np.ndarray
    anomaly_counts: np.ndarray
    inlier_counts: np.ndarray
    n_anomaly: int
    n_inlier: int

    @property
    def nbytes(self) -> int:
        return self.lower_edges.nbytes + self.anomaly_counts.nbytes + self.inlier_counts.nbytes


def frame_bins(scores: np.ndarray, is_anomaly: np.ndarray, edition: str) -> FrameBins:
    """The histogram of one frame's non-void ``scores`` (flat, in the stored dtype: the edges are
    computed in it, as the toolkit does) with ``is_anomaly`` telling the classes apart."""
    at_anomaly, at_inlier = scores[is_anomaly], scores[~is_anomaly]
    if edition == "2023":
        low, high = np.min(scores), np.max(scores)
        margin = np.maximum((high - low) * 1e-2, 1e-2)  # keeps the outer edges apart from every score
        parts = [[low - margin, high + margin]]
    else:
        parts = [[0, 1]]
    for values in (at_anomaly, at_inlier):
        if values.size:
            parts.append(np.quantile(values, np.linspace(0, 1, min(BINS_PER_FRAME // 2, values.size))))
    edges = np.unique(np.concatenate(parts))
    anomaly_counts, _ = np.histogram(at_anomaly, bins=edges)
    inlier_counts, _ = np.histogram(at_inlier, bins=edges)
    return FrameBins(edges[-2::-1], anomaly_counts[::-1], inlier_counts[::-1], int(at_anomaly.size), int(at_inlier.size))


def pooled_points(frames: list[FrameBins]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int]:
    """(thresholds, true positives, false positives) of the pooled bins, thresholds descending,
    and the numbers of anomaly and inlier pixels."""
    thresholds = np.concatenate([f.lower_edges for f in frames])
    order = np.argsort(thresholds)[::-1]  # the toolkit's order, ties included
    true_pos = np.cumsum(np.concatenate([f.anomaly_counts for f in frames])[order].astype(np.float64))
    false_pos = np.cumsum(np.concatenate([f.inlier_counts for f in frames])[order].astype(np.float64))
    return thresholds[order], true_pos, false_pos, sum(f.n_anomaly for f in frames), sum(f.n_inlier for f in frames)


def _curve_2023(thresholds, true_pos, false_pos, n_anomaly, n_inlier):
    last_of_each_threshold = np.concatenate([[0], np.flatnonzero(thresholds[:-1] != thresholds[1:]), [len(thresholds) - 1]])
    thresholds = thresholds[last_of_each_threshold]
    true_pos, false_pos = true_pos[last_of_each_threshold], false_pos[last_of_each_threshold]
    if true_pos[0] != 0 or false_pos[0] != 0:  # the curve starts where nothing is predicted
        true_pos, false_pos = np.concatenate([[0], true_pos]), np.concatenate([[0], false_pos])
        thresholds = np.concatenate([[float(np.max(thresholds)) + 1], thresholds])
    if true_pos[-1] != n_anomaly or false_pos[-1] != n_inlier:  # and ends where everything is
        true_pos, false_pos = np.concatenate([true_pos, [n_anomaly]]), np.concatenate([false_pos, [n_inlier]])
        thresholds = np.concatenate([thresholds, [float(np.max(thresholds)) - 1]])
    predicted = true_pos + false_pos
    precision = np.ones(len(true_pos), np.float64)
    precision[predicted > 0] = true_pos[predicted > 0] / predicted[predicted > 0]
    recall = true_pos / n_anomaly
    return thresholds, true_pos, false_pos, precision, float(np.sum(np.diff(recall) * precision[1:]))


def _curve_2021(thresholds, true_pos, false_pos, n_anomaly, n_inlier):
    first_prediction = int(np.argmax(true_pos + false_pos > 0.01))
    thresholds, true_pos, false_pos = thresholds[first_prediction:], true_pos[first_prediction:], false_pos[first_prediction:]
    precision = true_pos / (true_pos + false_pos)
    return thresholds, true_pos, false_pos, precision, float(np.trapezoid(precision, true_pos / n_anomaly))


def binned_metrics(frames: list[FrameBins], edition: str) -> dict:
    """AUPRC, FPR95, AUROC and best F1 of the pooled bins (both classes must be present), and the
    curve they come from."""
    thresholds, true_pos, false_pos, n_anomaly, n_inlier = pooled_points(frames)
    curve = _curve_2023 if edition == "2023" else _curve_2021
    thresholds, true_pos, false_pos, precision, auprc = curve(thresholds, true_pos, false_pos, n_anomaly, n_inlier)
    tpr, fpr = true_pos / n_anomaly, false_pos / n_inlier
    fpr95_index = int(np.searchsorted(tpr, 0.95))
    f1 = 2 * true_pos / (2 * true_pos + false_pos + (n_anomaly - true_pos))
    best_f1_index = int(np.nanargmax(f1))
    reached = fpr95_index < len(tpr)
    return {
        "auprc": auprc,
        "fpr95": float(fpr[fpr95_index]) if reached else 1.0,
        "fpr95_threshold": float(thresholds[fpr95_index]) if reached else 0.0,
        "auroc": float(np.trapezoid(tpr, fpr)),
        "best_f1": float(f1[best_f1_index]),
        "best_f1_threshold": float(thresholds[best_f1_index]),
        "curve": {"thresholds": thresholds.astype(np.float64), "tpr": tpr, "fpr": fpr, "precision": precision},
    }
