"""Component-level sIoU, PPV and mean F1, exact and fast.

SegmentMeIfYouCan (Chan et al., 2021), component-level metrics. Per image, at one score threshold:

* the prediction is ``score >= threshold`` outside void; the ground truth is ``label == ANOMALY``;
  each is split into connected components with 8-connectivity (diagonal neighbours join);
* predicted components smaller than ``min_pred`` pixels are dropped; ground-truth components
  smaller than ``min_gt`` pixels become void (see below);
* sIoU of a ground-truth component ``k``, with ``A`` the union of the predicted components that
  meet ``k``: ``|k ∩ A| / (|k ∪ A| - |A ∩ other ground-truth components|)`` — a prediction is not
  blamed for also covering a neighbouring anomaly; 0 when no predicted component meets ``k``;
* PPV of a predicted component: the fraction of its pixels lying on ground-truth components;
* for τ in ``np.linspace(0.25, 0.75, 11)`` (the floats exactly, so the sixth τ is
  0.6000000000000001): TP(τ) = ground-truth components with sIoU ≥ τ, FN(τ) = the others,
  FP(τ) = predicted components with PPV < τ, counts pooled over images;
  F1(τ) = 2TP / (2TP + FN + FP), 0 when that denominator is 0. ``mean_f1`` is the mean over τ.

Small ground-truth components are relabelled void *before* the prediction is split into
components, exactly as if the label map held 255 there: their pixels belong to no predicted
component, so they count neither in a predicted component's size nor in its overlaps, and a
predicted component they cut in two becomes two components (each then checked against
``min_pred`` on its remaining pixels).

``rules="toolkit"`` follows the SegmentMeIfYouCan toolkit's ``SegEval`` code instead (both
editions of :mod:`diffeel.metrics.toolkit`): the prediction is ``score > threshold``; the
prediction is split into components and filtered by ``min_pred`` *before* small ground-truth
components become void; a predicted component then counts only its pixels outside void (its size
in PPV and sIoU), and one lying wholly on small ground truth is no component at all.

:func:`component_stats` is the fast core: two labelling passes (``scipy.ndimage.label``, the
ground truth only over its band of rows), then component sizes and overlap tables from
``np.bincount`` over the predicted and ground-truth pixels — no loop over components. :func:`reference_component_stats` computes
the same per-component values plainly, one boolean mask per component; it is the test oracle.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from ..labels import ANOMALY, EVAL_LABEL_VALUES, INLIER, VOID, shown_values
from .pixel import _to_numpy

__all__ = [
    "TAUS",
    "TRACKS",
    "ComponentMetrics",
    "Track",
    "component_stats",
    "metrics_from_components",
    "reference_component_stats",
]


@dataclass(frozen=True)
class Track:
    """Minimum component sizes (pixels) of a SegmentMeIfYouCan track."""

    min_pred: int
    min_gt: int


TRACKS: dict[str, Track] = {
    "anomaly": Track(min_pred=500, min_gt=100),
    "obstacle": Track(min_pred=50, min_gt=10),
}
TAUS = np.linspace(0.25, 0.75, 11)  # the SegmentMeIfYouCan τ grid for TP/FN/FP
EIGHT_CONNECTIVITY = np.ones((3, 3), dtype=bool)
# Above this many cells (32 MiB of int64) the overlap table would cost more memory than sorting
# the overlapping pixels' keys, so distinct (prediction, ground truth) pairs come from np.unique.
DENSE_OVERLAP_TABLE_LIMIT = 1 << 22


# --------------------------------------------------------------------------------------------
# shared helpers (used by the fast core and the reference alike)


def _label_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected component ids (0 = background, 1..n in raster order of first pixel) and n."""
    labels, count = ndimage.label(mask, structure=EIGHT_CONNECTIVITY)
    return labels, int(count)


def _as_masks(pred_mask, gt_mask, void_mask) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    masks = tuple(np.asarray(_to_numpy(mask), dtype=bool) for mask in (pred_mask, gt_mask, void_mask))
    if masks[0].ndim != 2:
        raise ValueError(f"masks must be 2-D (H, W), got shape {masks[0].shape}.")
    if not masks[0].shape == masks[1].shape == masks[2].shape:
        shapes = ", ".join(str(mask.shape) for mask in masks)
        raise ValueError(f"prediction, ground-truth and void masks must have one shape, got {shapes}.")
    return masks


def _min_size(value, name: str) -> int:
    size = operator.index(value)
    if size < 0:
        raise ValueError(f"{name} must be a non-negative number of pixels, got {size}.")
    return size


# --------------------------------------------------------------------------------------------
# the fast core


RULES = ("paper", "toolkit")


def component_stats(pred_mask, gt_mask, void_mask, min_pred: int, min_gt: int, rules: str = "paper") -> tuple[np.ndarray, np.ndarray]:
    """Per-component sIoU and PPV of one image (SegmentMeIfYouCan, Chan et al., 2021).

    ``pred_mask``, ``gt_mask`` and ``void_mask`` are boolean ``(H, W)`` maps; void pixels are
    removed from both prediction and ground truth. Returns ``(siou_per_gt, ppv_per_pred)``,
    float64, for the kept ground-truth and predicted components in label order (raster order of
    each component's first pixel). Ground-truth components below ``min_gt`` pixels become void
    before the prediction is labelled (``rules="toolkit"``: after; see the module docstring).

    With ``O[j, k]`` the pixels shared by predicted component ``j`` and ground-truth component
    ``k``, the sIoU denominator simplifies to ``|k| + Σ_{j meets k} (|j| - Σ_k' O[j, k'])``, and
    ``|k ∩ A| = Σ_j O[j, k]``: only the overlap table and the component sizes are needed.
    """
    pred_mask, gt_mask, void_mask = _as_masks(pred_mask, gt_mask, void_mask)
    min_pred, min_gt = _min_size(min_pred, "min_pred"), _min_size(min_gt, "min_gt")

    # Ground truth first: its small components must be void before the prediction is labelled.
    gt = gt_mask & ~void_mask
    gt_pixels = np.flatnonzero(gt)  # anomalies are sparse: work on their pixels only
    # Label only the band of rows holding ground truth; ids and their order are unchanged.
    width = gt.shape[1]
    first_row, end_row = (gt_pixels[0] // width, gt_pixels[-1] // width + 1) if len(gt_pixels) else (0, 0)
    band_labels, n_gt_found = _label_components(gt[first_row:end_row])
    gt_of_pixel = band_labels.ravel()[gt_pixels - first_row * width]
    gt_sizes = np.bincount(gt_of_pixel, minlength=n_gt_found + 1)
    is_kept_gt = gt_sizes >= min_gt
    is_kept_gt[0] = False
    on_kept_gt = is_kept_gt[gt_of_pixel]

    prediction = pred_mask & ~void_mask
    if rules == "paper":
        prediction.flat[gt_pixels[~on_kept_gt]] = False
    pred_labels, n_pred_found = _label_components(prediction)
    pred_sizes = np.bincount(pred_labels[prediction], minlength=n_pred_found + 1)  # predicted pixels only
    is_kept_pred = pred_sizes >= min_pred
    if rules == "toolkit":  # sizes filtered whole, then counted outside the small ground truth made void
        pred_sizes -= np.bincount(pred_labels.ravel()[gt_pixels[~on_kept_gt]], minlength=n_pred_found + 1)
        is_kept_pred &= pred_sizes > 0
    is_kept_pred[0] = False

    # Kept ground-truth components renumbered 0..n_gt-1 in label order.
    n_gt = int(np.count_nonzero(is_kept_gt))
    gt_index_of_id = np.cumsum(is_kept_gt) - 1
    gt_pixels = gt_pixels[on_kept_gt]
    gt_index_of_pixel = gt_index_of_id[gt_of_pixel[on_kept_gt]]
    pred_of_pixel = pred_labels.ravel()[gt_pixels]
    overlapping = is_kept_pred[pred_of_pixel]
    pair_pred, pair_gt = pred_of_pixel[overlapping], gt_index_of_pixel[overlapping]

    pred_on_gt = np.bincount(pair_pred, minlength=n_pred_found + 1)  # Σ_k O[j, k]
    intersection = np.bincount(pair_gt, minlength=n_gt)  # Σ_j O[j, k] = |k ∩ A|
    meeting_pred, meeting_gt = _overlapping_pairs(pair_pred, pair_gt, n_pred_found + 1, n_gt)
    # Weighted bincount sums in float64, exact for integers below 2**53 (any image's pixel count).
    covering_size = np.bincount(meeting_gt, weights=pred_sizes[meeting_pred], minlength=n_gt)
    covering_on_gt = np.bincount(meeting_gt, weights=pred_on_gt[meeting_pred], minlength=n_gt)
    denominator = gt_sizes[is_kept_gt] + covering_size.astype(np.int64) - covering_on_gt.astype(np.int64)

    siou = intersection / denominator  # denominator ≥ |k| > 0; 0 when nothing meets k
    ppv = pred_on_gt[is_kept_pred] / pred_sizes[is_kept_pred]
    return siou.astype(np.float64, copy=False), ppv.astype(np.float64, copy=False)


def _overlapping_pairs(pair_pred: np.ndarray, pair_gt: np.ndarray, n_pred_ids: int, n_gt: int):
    """Each (predicted id, ground-truth index) sharing a pixel, once: the overlap table's non-zeros.

    ``pair_pred``/``pair_gt`` hold the ids of every pixel lying on both. Only predicted components
    that touch ground truth get a table row, so the noise components do not inflate the table.
    """
    if len(pair_pred) == 0:
        empty = np.zeros(0, dtype=np.intp)
        return empty, empty
    touches = np.zeros(n_pred_ids, dtype=bool)
    touches[pair_pred] = True
    touching_ids = np.flatnonzero(touches)
    row_of_id = np.cumsum(touches) - 1
    keys = row_of_id[pair_pred].astype(np.int64) * n_gt + pair_gt
    n_cells = len(touching_ids) * n_gt
    if n_cells <= DENSE_OVERLAP_TABLE_LIMIT:
        overlap_table = np.bincount(keys, minlength=n_cells)  # O[j, k], flattened row-major
        cells = np.flatnonzero(overlap_table)
    else:
        cells = np.unique(keys)
    return touching_ids[cells // n_gt], cells % n_gt


# --------------------------------------------------------------------------------------------
# the reference (test oracle)


def reference_component_stats(
    pred_mask, gt_mask, void_mask, min_pred: int, min_gt: int
) -> tuple[np.ndarray, np.ndarray]:
    """Same result as :func:`component_stats`, written plainly: one boolean mask per component.

    Slow (a full-image pass per component and per pair); used by the tests and the benchmark.
    """
    pred_mask, gt_mask, void_mask = _as_masks(pred_mask, gt_mask, void_mask)
    min_pred, min_gt = _min_size(min_pred, "min_pred"), _min_size(min_gt, "min_gt")

    void = void_mask.copy()
    gt_labels, n_gt_found = _label_components(gt_mask & ~void)
    gt_components = []
    for gt_id in range(1, n_gt_found + 1):
        component = gt_labels == gt_id
        if np.count_nonzero(component) >= min_gt:
            gt_components.append(component)
        else:
            void |= component  # too small to count: void, like label 255

    pred_labels, n_pred_found = _label_components(pred_mask & ~void)
    pred_components = []
    for pred_id in range(1, n_pred_found + 1):
        component = pred_labels == pred_id
        if np.count_nonzero(component) >= min_pred:
            pred_components.append(component)

    any_gt = np.zeros_like(void)
    for component in gt_components:
        any_gt |= component

    siou = []
    for gt_component in gt_components:
        covering = np.zeros_like(void)
        for pred_component in pred_components:
            if np.any(pred_component & gt_component):
                covering |= pred_component
        if not covering.any():
            siou.append(0.0)
            continue
        other_gt = any_gt & ~gt_component
        intersection = np.count_nonzero(gt_component & covering)
        union = np.count_nonzero(gt_component | covering)
        on_other_gt = np.count_nonzero(covering & other_gt)
        siou.append(intersection / (union - on_other_gt))

    ppv = [np.count_nonzero(component & any_gt) / np.count_nonzero(component) for component in pred_components]
    return np.array(siou, dtype=np.float64), np.array(ppv, dtype=np.float64)


# --------------------------------------------------------------------------------------------
# aggregation


def metrics_from_components(siou: np.ndarray, ppv: np.ndarray, n_images: int = 0) -> dict:
    """The reported metrics from pooled per-component sIoU and PPV values (any order)."""
    siou = np.sort(np.asarray(siou, dtype=np.float64))
    ppv = np.sort(np.asarray(ppv, dtype=np.float64))
    n_gt, n_pred = len(siou), len(ppv)
    # Counts from sorted values: #(sIoU ≥ τ) = n - #(sIoU < τ); #(PPV < τ) directly.
    true_pos = n_gt - np.searchsorted(siou, TAUS, side="left")
    false_neg = n_gt - true_pos
    false_pos = np.searchsorted(ppv, TAUS, side="left")
    f1_denominator = 2 * true_pos + false_neg + false_pos
    f1 = [2 * int(tp) / int(d) if d else 0.0 for tp, d in zip(true_pos, f1_denominator)]
    return {
        # math.fsum is exactly rounded, so means do not depend on the order of updates.
        "siou": math.fsum(siou) / n_gt if n_gt else math.nan,
        "ppv": math.fsum(ppv) / n_pred if n_pred else math.nan,
        "mean_f1": math.fsum(f1) / len(TAUS),
        "f1_per_tau": f1,
        "taus": TAUS.tolist(),
        "tp_per_tau": true_pos.tolist(),
        "fn_per_tau": false_neg.tolist(),
        "fp_per_tau": false_pos.tolist(),
        "n_gt_components": n_gt,
        "n_pred_components": n_pred,
        "n_images": n_images,
    }


class ComponentMetrics:
    """Streaming SegmentMeIfYouCan (Chan et al., 2021) component-level metrics.

    ``update`` per image, ``merge`` partial results (e.g. from workers), ``compute`` at the end.
    ``track`` picks the minimum component sizes ("anomaly": predicted 500 px, ground truth 100 px;
    "obstacle": 50 px, 10 px); ``min_pred``/``min_gt`` override them (``track=None`` needs both).
    The state is one float per component; ``compute`` gives the same result, bit for bit,
    whatever the order of updates and merges.

    ``compute()`` returns ``siou`` (mean over ground-truth components, NaN if none), ``ppv`` (mean
    over predicted components, NaN if none), ``mean_f1``, ``f1_per_tau`` and ``taus``, the per-τ
    ``tp_per_tau``/``fn_per_tau``/``fp_per_tau``, ``n_gt_components``, ``n_pred_components`` and
    ``n_images``.
    """

    def __init__(self, track: str | None = "anomaly", min_pred: int | None = None, min_gt: int | None = None,
                 rules: str = "paper"):
        if rules not in RULES:
            raise ValueError(f"unknown rules {rules!r}; choose one of {', '.join(RULES)}.")
        self.rules = rules
        if track is None:
            if min_pred is None or min_gt is None:
                raise ValueError("without a track, give both min_pred and min_gt.")
            preset = Track(min_pred, min_gt)
        elif track in TRACKS:
            preset = TRACKS[track]
        else:
            raise ValueError(f"unknown track {track!r}; choose one of {', '.join(TRACKS)}.")
        self.track = track
        self.min_pred = _min_size(preset.min_pred if min_pred is None else min_pred, "min_pred")
        self.min_gt = _min_size(preset.min_gt if min_gt is None else min_gt, "min_gt")
        self.reset()

    def reset(self) -> None:
        self._siou: list[np.ndarray] = []
        self._ppv: list[np.ndarray] = []
        self.n_images = 0

    def update(self, score_map, label_map, threshold: float) -> ComponentMetrics:
        """Add one image: ``score_map`` (H, W), ``label_map`` (H, W) in {0, 1, 255}."""
        scores = _to_numpy(score_map)
        labels = _to_numpy(label_map)
        if scores.ndim != 2:
            raise ValueError(f"score map must be 2-D (H, W), got shape {scores.shape}.")
        if scores.shape != labels.shape:
            raise ValueError(f"score map shape {scores.shape} differs from label map shape {labels.shape}.")
        if scores.dtype.kind not in "biuf":
            raise ValueError(f"scores must be real numbers, got dtype {scores.dtype}.")
        if scores.dtype.kind == "f":
            n_nan = int(np.count_nonzero(np.isnan(scores)))
            if n_nan:
                raise ValueError(f"score map contains {n_nan} NaN values; replace them before evaluating.")
        _check_labels(labels)
        threshold = float(threshold)
        if math.isnan(threshold):
            raise ValueError("threshold is NaN.")

        # A float64 threshold compares exactly: float16/32 scores are promoted, not the threshold rounded.
        prediction = scores > np.float64(threshold) if self.rules == "toolkit" else scores >= np.float64(threshold)
        siou, ppv = component_stats(prediction, labels == ANOMALY, labels == VOID, self.min_pred, self.min_gt, self.rules)
        self._siou.append(siou)
        self._ppv.append(ppv)
        self.n_images += 1
        return self

    def merge(self, other: ComponentMetrics) -> ComponentMetrics:
        """Add another accumulator's images (same minimum sizes) to this one."""
        if not isinstance(other, ComponentMetrics):
            raise TypeError(f"can only merge ComponentMetrics, got {type(other).__name__}")
        if (other.min_pred, other.min_gt, other.rules) != (self.min_pred, self.min_gt, self.rules):
            raise ValueError(
                f"cannot merge metrics with minimum sizes (pred {other.min_pred}, gt {other.min_gt}) "
                f"into (pred {self.min_pred}, gt {self.min_gt})."
            )
        self._siou.extend(other._siou)
        self._ppv.extend(other._ppv)
        self.n_images += other.n_images
        return self

    def per_component(self) -> tuple[np.ndarray, np.ndarray]:
        """All sIoU values and all PPV values so far, each concatenated in update order."""
        empty = np.zeros(0, dtype=np.float64)
        return (np.concatenate([empty, *self._siou]), np.concatenate([empty, *self._ppv]))

    def compute(self) -> dict:
        siou, ppv = self.per_component()
        return metrics_from_components(siou, ppv, self.n_images)


def _check_labels(labels: np.ndarray) -> None:
    if labels.dtype.kind not in "biu":
        raise ValueError(f"label map must hold integers 0, 1 or 255, got dtype {labels.dtype}.")
    invalid = (labels != INLIER) & (labels != ANOMALY) & (labels != VOID)
    if invalid.any():
        bad = np.unique(labels[invalid])
        allowed = ", ".join(str(value) for value in EVAL_LABEL_VALUES)
        raise ValueError(f"label map holds values outside {{{allowed}}}: {shown_values(bad, 5)}.")
