"""Exact, streaming pixel-level AUPRC, FPR95 and AUROC.

Default protocol (``"pooled"``), over the pooled non-void pixels of all images of a set:

* AUPRC — step-wise average precision ``Σ_k (R_k - R_{k-1})·P_k`` over distinct thresholds,
  identical to ``sklearn.metrics.average_precision_score``;
* FPR95 — the false positive rate at the first threshold (scores descending) where TPR ≥ 0.95,
  no interpolation (1.0 if never reached);
* AUROC — trapezoidal area under the exact ROC curve (``sklearn.metrics.roc_auc_score``).

Named alternatives: ``fpr95="nearest"`` (the ROC point whose TPR is nearest 0.95, Hendrycks'
helper used by RPL's evaluation), ``auprc="trapezoid"`` (trapezoid under the PR curve with the
(0, 1) anchor, ``sklearn.metrics.auc`` of ``precision_recall_curve``), ``per_image`` (metrics per
image, then the mean over images having both classes) and ``skip_empty`` (pooled, images without
anomaly pixels left out). ``rpl`` reproduces RPL's published evaluation in one name: each
score map Gaussian-smoothed (7 taps, σ = 1, reflect padding, as RPL's inference does), pooled
pixels, step-wise AUPRC (sklearn's ``average_precision_score``) and the "nearest" FPR95.
``smiyc`` (and ``smiyc-2021``) are the SegmentMeIfYouCan toolkit's binned metrics
(:mod:`diffeel.metrics.toolkit`), for figures comparable with its leaderboard.

Labels are 0 = inlier, 1 = anomaly, 255 = void (or anything else via ``label_map``). Scores are
"higher = more anomalous", float16/32/64 (narrower integer dtypes are converted exactly).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace
from typing import Mapping

import numpy as np

from ..labels import LabelMapping
from . import toolkit
from ._counts import (
    FLOAT16_PATTERNS,
    KINDS,
    SparseCounts,
    distinct_with_counts,
    from_keys,
    histogram_as_sparse,
    kind_of,
    rank_counts,
    to_keys,
    wider_kind,
)

__all__ = ["Protocol", "PROTOCOLS", "PixelMetrics", "pixel_metrics", "UndefinedMetricWarning", "metrics_from_counts"]

TPR_TARGET_NUM, TPR_TARGET_DEN = 19, 20  # 0.95 as an exact integer ratio
# Codes after label mapping: VOID & 3 == 3, so {0, 1, 255} maps to codes by a bit mask.
_CODE_INLIER, _CODE_ANOMALY, _CODE_VOID = 0, 1, 3


def smoothed(scores: np.ndarray) -> np.ndarray:
    """Score maps Gaussian-smoothed as RPL's inference does (float32; ``(H, W)`` or ``(B, H, W)``)."""
    from ..scores import gaussian_smooth

    if scores.ndim == 1:
        raise ValueError("a smoothing protocol needs (H, W) score maps, not flat pixel lists")
    return gaussian_smooth(np.asarray(scores, dtype=np.float32))


class UndefinedMetricWarning(UserWarning):
    """A set lacks anomaly or inlier pixels, so its AUPRC/FPR95/AUROC are NaN."""


@dataclass(frozen=True)
class Protocol:
    """How pixel metrics are computed. Use a name from :data:`PROTOCOLS` or override fields."""

    name: str = "pooled"
    fpr95: str = "first"  # "first" | "nearest"
    auprc: str = "step"  # "step" | "trapezoid"
    per_image: bool = False
    skip_empty: bool = False
    smooth: bool = False  # Gaussian-smooth each score map first (RPL's inference, scores.gaussian_smooth)
    toolkit: str | None = None  # the SMIYC toolkit's binned metrics, edition "2023" or "2021" (metrics.toolkit)

    def __post_init__(self):
        if self.toolkit is not None:
            if self.toolkit not in toolkit.EDITIONS:
                raise ValueError(f"toolkit must be one of {', '.join(toolkit.EDITIONS)}, got {self.toolkit!r}")
            if self.per_image or self.skip_empty or self.smooth:
                raise ValueError("the toolkit's binned metrics pool every frame as they are; no per_image, skip_empty or smooth")
        if self.fpr95 not in ("first", "nearest"):
            raise ValueError(f"fpr95 must be 'first' or 'nearest', got {self.fpr95!r}")
        if self.auprc not in ("step", "trapezoid"):
            raise ValueError(f"auprc must be 'step' or 'trapezoid', got {self.auprc!r}")

    @classmethod
    def resolve(cls, protocol: "str | Protocol | None" = None, **overrides) -> "Protocol":
        """A preset by name (or a Protocol), with field overrides such as ``fpr95="nearest"``."""
        if isinstance(protocol, Protocol):
            base = protocol
        else:
            name = protocol or "pooled"
            if name not in PROTOCOLS:
                raise ValueError(f"unknown protocol {name!r}; choose one of {', '.join(PROTOCOLS)}")
            base = PROTOCOLS[name]
        known = {f.name for f in fields(cls)} - {"name"}
        unknown = set(overrides) - known
        if unknown:
            raise TypeError(f"unknown protocol option(s): {', '.join(sorted(unknown))}")
        changed = {k: v for k, v in overrides.items() if v is not None and getattr(base, k) != v}
        if not changed:
            return base
        label = ",".join(f"{k}={v}" for k, v in sorted(changed.items()))
        return replace(base, name=f"{base.name}[{label}]", **changed)


PROTOCOLS: dict[str, Protocol] = {
    "pooled": Protocol(),
    "nearest": Protocol("nearest", fpr95="nearest"),
    "trapezoid": Protocol("trapezoid", auprc="trapezoid"),
    "per_image": Protocol("per_image", per_image=True),
    "skip_empty": Protocol("skip_empty", skip_empty=True),
    "rpl": Protocol("rpl", fpr95="nearest", smooth=True),
    "smiyc": Protocol("smiyc", toolkit="2023"),
    "smiyc-2021": Protocol("smiyc-2021", toolkit="2021"),
}


# --------------------------------------------------------------------------------------------
# metrics from a count table


def metrics_from_counts(
    anomaly_counts: np.ndarray, inliers_at_least: np.ndarray, inliers_equal: np.ndarray, n_inlier: int, protocol: Protocol
) -> dict:
    """AUPRC, FPR95, AUROC and best F1, exactly, from the distinct anomaly scores alone.

    Inputs run over the distinct scores carried by anomaly pixels, in *descending* order: the
    number of anomaly pixels at each, and the number of inlier pixels scoring at least / exactly
    that much. Recall changes only at these scores, so every metric (including sklearn's
    step-wise AP and trapezoidal AUROC over all distinct thresholds) is a sum over them; inlier
    scores matter only through their ranks. Returns indices (``fpr95_index``, ``best_f1_index``)
    into the given order for threshold look-up. Both classes must be present.
    """
    true_pos = np.cumsum(anomaly_counts)
    n_anomaly = int(true_pos[-1])
    anomaly_weights = anomaly_counts.astype(np.float64)  # exact below 2**53; float dots are BLAS-fast
    precision = true_pos / (true_pos + inliers_at_least)

    if protocol.auprc == "step":
        auprc = float(np.dot(anomaly_weights, precision) / n_anomaly)
    else:
        # Trapezoids of sklearn's PR curve: each recall step ends at an anomaly score and starts at
        # the next higher threshold (or at the (0, 1) anchor when no pixel scores higher).
        true_pos_above = true_pos - anomaly_counts
        inliers_above = inliers_at_least - inliers_equal
        pixels_above = true_pos_above + inliers_above
        precision_above = np.where(pixels_above > 0, true_pos_above / np.maximum(pixels_above, 1), 1.0)
        auprc = float(np.sum(anomaly_counts / n_anomaly * (precision + precision_above) / 2))

    if protocol.fpr95 == "first":
        reached = TPR_TARGET_DEN * true_pos >= TPR_TARGET_NUM * n_anomaly  # exact integer compare
        fpr95_index = int(np.argmax(reached))
        false_pos = inliers_at_least[fpr95_index]
    else:
        # Hendrycks' helper: among ROC points up to full recall, the TPR nearest 0.95, scanning from
        # full recall upwards and keeping the first minimum — i.e. for equal TPR the lowest
        # threshold, whose false positives are the inliers above the next anomaly score.
        lowest_threshold_false_pos = np.append(
            inliers_at_least[1:] - inliers_equal[1:], inliers_at_least[-1:]
        )
        distance = np.abs(true_pos / n_anomaly - TPR_TARGET_NUM / TPR_TARGET_DEN)
        fpr95_index = len(distance) - 1 - int(np.argmin(distance[::-1]))
        false_pos = lowest_threshold_false_pos[fpr95_index]

    inliers_below = n_inlier - inliers_at_least
    auroc = float(np.dot(anomaly_weights, inliers_below + 0.5 * inliers_equal) / (n_anomaly * n_inlier))

    f1 = 2 * true_pos / (true_pos + inliers_at_least + n_anomaly)
    best_f1_index = int(np.argmax(f1))
    return {
        "auprc": auprc,
        "fpr95": float(false_pos / n_inlier),
        "auroc": auroc,
        "best_f1": float(f1[best_f1_index]),
        "fpr95_index": fpr95_index,
        "best_f1_index": best_f1_index,
    }


def _anomaly_side_of_histograms(inlier: np.ndarray, anomaly: np.ndarray):
    """(anomaly keys descending, anomaly counts, inliers ≥, inliers ==, n_inlier) of histograms."""
    keys = np.flatnonzero(anomaly)[::-1]
    inliers_at_least = np.cumsum(inlier[::-1])[::-1]
    return keys, anomaly[keys], inliers_at_least[keys], inlier[keys], int(inlier.sum())


# --------------------------------------------------------------------------------------------
# input normalisation


def _to_numpy(array) -> np.ndarray:
    if hasattr(array, "detach"):  # a torch tensor; the metrics need no torch import
        array = array.detach().cpu()
        if str(array.dtype) == "torch.bfloat16":
            array = array.float()
        array = array.numpy()
    return np.asarray(array)


def _exact_float(scores: np.ndarray) -> np.ndarray:
    """Scores as float16/32/64, converting integer and boolean maps exactly."""
    dtype = scores.dtype
    if dtype.kind == "f":
        if dtype.itemsize > 8:
            raise TypeError(f"score dtype {dtype} is not supported; use float16, float32 or float64")
        return scores
    if dtype.kind == "b" or (dtype.kind in "iu" and dtype.itemsize == 1):
        return scores.astype(np.float16)
    if dtype.kind in "iu" and dtype.itemsize == 2:
        return scores.astype(np.float32)
    if dtype.kind in "iu" and dtype.itemsize == 4:
        return scores.astype(np.float64)
    if dtype.kind in "iu":
        if scores.size and np.abs(scores.astype(np.float64)).max() > 2.0**53:
            raise ValueError("integer scores beyond 2**53 cannot be converted to float64 exactly")
        return scores.astype(np.float64)
    raise TypeError(f"scores must be numeric, got dtype {dtype}")


class _LabelCoder:
    """Maps label values to codes: mapped value & 3 = 0 inlier, 1 anomaly, 3 void (255 & 3)."""

    def __init__(self, label_map: Mapping | LabelMapping | None):
        self.mapping = label_map if isinstance(label_map, LabelMapping) else LabelMapping(label_map)

    def encode(self, labels: np.ndarray) -> np.ndarray:
        # Fast path: uint8 labels already in {0, 1, 255} (x + 1 wraps 255 to 0, so valid means ≤ 2).
        if self.mapping.is_identity and labels.dtype == np.uint8:
            if labels.size == 0 or (labels + np.uint8(1)).max() <= 2:
                return labels & np.uint8(3)
        return self.mapping.apply(labels) & np.uint8(3)


# --------------------------------------------------------------------------------------------
# the streaming accumulator


class PixelMetrics:
    """Exact streaming pixel metrics: ``update`` per image (or batch), ``merge``, ``compute``.

    State: float16 scores use a fixed 1 MiB histogram, whatever the number of images;
    float32/float64 scores keep per class the distinct values seen with their counts (see
    ``state_nbytes``; it stops growing once values repeat). A set mixing dtypes is promoted
    exactly to the widest. ``name`` labels warnings (e.g. ``"fog"``).
    """

    def __init__(
        self,
        protocol: str | Protocol | None = None,
        *,
        label_map: Mapping | None = None,
        name: str = "all",
        **protocol_options,
    ):
        self.protocol = Protocol.resolve(protocol, **protocol_options)
        self.name = name
        self._labels = _LabelCoder(label_map)
        self.reset()

    def reset(self) -> None:
        self._kind: str | None = None
        self._histogram: np.ndarray | None = None  # float16: (2, 65536) int64, rows inlier/anomaly
        self._classes: tuple[SparseCounts, SparseCounts] | None = None  # float32/64: inlier, anomaly
        self._per_image: list[tuple[float, float, float]] = []
        self._frame_bins: list[toolkit.FrameBins] = []  # toolkit protocols: one histogram per frame, in order
        self.n_images = 0
        self.n_images_skipped = 0
        self.n_void = 0

    # ---- state -----------------------------------------------------------------------------

    def _promote(self, kind: str) -> None:
        target = wider_kind(self._kind, kind)
        if target == self._kind:
            return
        if self._kind is None and target == "f16":
            self._histogram = np.zeros((2, FLOAT16_PATTERNS), dtype=np.int64)
        elif self._kind is None:
            self._classes = (SparseCounts(target), SparseCounts(target))
        elif self._kind == "f16":
            self._classes = tuple(histogram_as_sparse(row).promoted(target) for row in self._histogram)
            self._histogram = None
        else:
            self._classes = tuple(counts.promoted(target) for counts in self._classes)
        self._kind = target

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the count state (constant for float16; distinct values for float32/64)."""
        held = 0 if self._histogram is None else self._histogram.nbytes
        held += 0 if self._classes is None else sum(counts.nbytes for counts in self._classes)
        return held + 24 * len(self._per_image) + sum(bins.nbytes for bins in self._frame_bins)

    # ---- update ------------------------------------------------------------------------------

    def update(self, score_map, label_map) -> "PixelMetrics":
        """Add one image ``(H, W)`` (or flat ``(N,)``) or a batch ``(B, H, W)`` of images."""
        scores = _to_numpy(score_map)
        labels = _to_numpy(label_map)
        if scores.shape != labels.shape:
            raise ValueError(f"score map shape {scores.shape} does not match label map shape {labels.shape}")
        if scores.ndim not in (1, 2, 3):
            raise ValueError(f"expected an (H, W) map or a (B, H, W) batch, got shape {scores.shape}")
        if self.protocol.smooth:
            scores = smoothed(scores)
        scores = _exact_float(scores)
        codes = self._labels.encode(labels)
        self._check_finite(scores, codes)
        self._promote(kind_of(scores.dtype))
        if scores.dtype != KINDS[self._kind][0]:
            scores = scores.astype(KINDS[self._kind][0])  # exact widening

        batched = scores.ndim == 3
        if batched and not (self.protocol.per_image or self.protocol.skip_empty or self.protocol.toolkit):
            self._add_counts(scores, codes)
            self.n_images += scores.shape[0]
            return self
        for image_scores, image_codes in zip(scores, codes) if batched else [(scores, codes)]:
            self._update_image(image_scores, image_codes)
        return self

    def _update_image(self, scores: np.ndarray, codes: np.ndarray) -> None:
        self.n_images += 1
        if self.protocol.skip_empty and not (codes == _CODE_ANOMALY).any():
            self.n_images_skipped += 1
            return
        _, anomaly_counts, at_least, equal, n_inlier = self._add_counts(scores, codes)
        if self.protocol.toolkit:
            roi = codes != _CODE_VOID
            self._frame_bins.append(toolkit.frame_bins(scores[roi], codes[roi] == _CODE_ANOMALY, self.protocol.toolkit))
        if self.protocol.per_image:
            if len(anomaly_counts) == 0 or n_inlier == 0:
                self._per_image.append((math.nan, math.nan, math.nan))
            else:
                result = metrics_from_counts(anomaly_counts, at_least, equal, n_inlier, self.protocol)
                self._per_image.append((result["auprc"], result["fpr95"], result["auroc"]))

    @staticmethod
    def _check_finite(scores: np.ndarray, codes: np.ndarray) -> None:
        if scores.dtype == np.float16:  # exponent all ones = inf or NaN; cheaper than isfinite on halves
            exponent = scores.view(np.uint16) & np.uint16(0x7C00)
            non_finite = exponent == np.uint16(0x7C00)
        else:
            non_finite = ~np.isfinite(scores)
        if not non_finite.any():
            return
        counted = int(np.count_nonzero(non_finite & (codes != _CODE_VOID)))
        if counted:
            n_valid = int(np.count_nonzero(codes != _CODE_VOID))
            raise ValueError(f"{counted} of {n_valid} non-void score values are NaN or infinite")

    def _add_counts(self, scores: np.ndarray, codes: np.ndarray):
        """Add a map's counts to the state; return the map's own anomaly-side counts."""
        if self._kind == "f16":
            # One bincount over (code, key) pairs; void pixels land in bins we ignore.
            pairs = codes.ravel().astype(np.uint32)
            pairs <<= 16
            pairs |= to_keys(scores, "f16").ravel()
            counts = np.bincount(pairs, minlength=4 * FLOAT16_PATTERNS).reshape(4, FLOAT16_PATTERNS)
            self.n_void += int(counts[_CODE_VOID].sum())
            counts = counts[:2].copy()
            zero, negative_zero = to_keys(np.array([0.0, -0.0], dtype=np.float16), "f16")
            counts[:, zero] += counts[:, negative_zero]  # -0.0 ties with +0.0
            counts[:, negative_zero] = 0
            self._histogram += counts
            return _anomaly_side_of_histograms(counts[0], counts[1]) if self.protocol.per_image else (None,) * 5

        runs = []
        for code, class_counts in zip((_CODE_INLIER, _CODE_ANOMALY), self._classes):
            values = scores[codes == code]
            values += 0.0  # -0.0 → +0.0 so that the zeros tie (values is a copy)
            runs.append(distinct_with_counts(to_keys(values, self._kind), self._kind))
            class_counts.add_run(runs[-1])
        (inlier_keys, inlier_counts), (anomaly_keys, anomaly_counts) = runs
        self.n_void += codes.size - int(inlier_counts.sum()) - int(anomaly_counts.sum())
        if not self.protocol.per_image:
            return (None,) * 5
        at_least, equal = rank_counts([runs[0]], anomaly_keys[::-1])
        return anomaly_keys[::-1], anomaly_counts[::-1], at_least, equal, int(inlier_counts.sum())

    # ---- merge / compute -----------------------------------------------------------------

    def merge(self, other: "PixelMetrics") -> "PixelMetrics":
        """Add another accumulator's state (e.g. from a worker process); exact and order-free."""
        if other.protocol != self.protocol:
            raise ValueError(f"cannot merge metrics of protocol {other.protocol.name!r} into {self.protocol.name!r}")
        if other._kind is not None:
            self._promote(other._kind)
            if self._kind == "f16":
                self._histogram += other._histogram
            else:
                sources = other._classes if other._kind != "f16" else [histogram_as_sparse(r) for r in other._histogram]
                for target, source in zip(self._classes, sources):
                    if source.kind != self._kind:
                        source = source.promoted(self._kind)
                    for run in source.runs:
                        target.add_run(run)
        self._per_image.extend(other._per_image)
        self._frame_bins.extend(other._frame_bins)  # after this state's frames: merge in frame order
        self.n_images += other.n_images
        self.n_images_skipped += other.n_images_skipped
        self.n_void += other.n_void
        return self

    def _anomaly_side(self):
        """(anomaly keys descending, anomaly counts, inliers ≥ each, inliers == each, n_inlier)."""
        if self._kind is None:
            return np.zeros(0, dtype=np.uint16), *(np.zeros(0, dtype=np.int64),) * 3, 0
        if self._kind == "f16":
            return _anomaly_side_of_histograms(*self._histogram)
        inliers, anomalies = self._classes
        keys, counts = (part[::-1] for part in anomalies.table())
        at_least, equal = inliers.rank_counts(keys)
        return keys, counts, at_least, equal, inliers.total()

    def compute(self) -> dict:
        """``{"auprc", "fpr95", "auroc", "n_pixels", "n_anomaly", ...}`` as fractions.

        ``n_pixels`` counts the non-void pixels evaluated. Metrics of a set lacking either class
        are NaN, with an :class:`UndefinedMetricWarning` naming the set.
        """
        keys, anomaly_counts, at_least, equal, n_inlier = self._anomaly_side()
        n_anomaly = int(anomaly_counts.sum())
        result = {
            "auprc": math.nan,
            "fpr95": math.nan,
            "auroc": math.nan,
            "fpr95_threshold": math.nan,
            "best_f1": math.nan,
            "best_f1_threshold": math.nan,
            "n_pixels": n_anomaly + n_inlier,
            "n_anomaly": n_anomaly,
            "n_void": self.n_void,
            "n_images": self.n_images,
            "protocol": self.protocol.name,
        }
        if self.protocol.skip_empty:
            result["n_images_skipped"] = self.n_images_skipped
        if n_anomaly == 0 or n_inlier == 0:
            missing = "anomaly" if n_anomaly == 0 else "inlier"
            warnings.warn(
                f"set {self.name!r} has no {missing} pixels; its AUPRC, FPR95 and AUROC are NaN",
                UndefinedMetricWarning,
                stacklevel=2,
            )
            return result
        if self.protocol.toolkit:
            binned = toolkit.binned_metrics(self._frame_bins, self.protocol.toolkit)
            result.update({key: binned[key] for key in ("auprc", "fpr95", "auroc", "best_f1", "fpr95_threshold", "best_f1_threshold")})
            return result
        pooled = metrics_from_counts(anomaly_counts, at_least, equal, n_inlier, self.protocol)
        values = from_keys(keys[[pooled["fpr95_index"], pooled["best_f1_index"]]], self._kind)
        result.update(
            auprc=pooled["auprc"],
            fpr95=pooled["fpr95"],
            auroc=pooled["auroc"],
            best_f1=pooled["best_f1"],
            fpr95_threshold=float(values[0]),
            best_f1_threshold=float(values[1]),
        )
        if self.protocol.per_image:
            result.update(self._per_image_means())
        return result

    def _per_image_means(self) -> dict:
        usable = [m for m in self._per_image if not math.isnan(m[0])]
        skipped = len(self._per_image) - len(usable)
        if skipped:
            warnings.warn(
                f"set {self.name!r}: {skipped} image(s) without both anomaly and inlier pixels are "
                "left out of the per-image mean",
                UndefinedMetricWarning,
                stacklevel=3,
            )
        means = {"n_images_evaluated": len(usable)}
        for index, key in enumerate(("auprc", "fpr95", "auroc")):
            means[key] = math.fsum(m[index] for m in usable) / len(usable) if usable else math.nan
        return means

    def curves(self) -> dict:
        """The exact PR and ROC curves over all distinct thresholds (descending), for plots; the
        toolkit's binned curve for its protocols (when both classes are present)."""
        if self.protocol.toolkit and any(b.n_anomaly for b in self._frame_bins) and any(b.n_inlier for b in self._frame_bins):
            return toolkit.binned_metrics(self._frame_bins, self.protocol.toolkit)["curve"]
        if self._kind is None:
            inlier = anomaly = np.zeros(0, dtype=np.int64)
            keys = np.zeros(0, dtype=np.uint16)
        elif self._kind == "f16":
            keys = np.flatnonzero(self._histogram.sum(axis=0))[::-1]
            inlier, anomaly = self._histogram[0, keys], self._histogram[1, keys]
        else:
            tables = [counts.table() for counts in self._classes]
            keys = np.union1d(tables[0][0], tables[1][0])[::-1]
            inlier, anomaly = (np.zeros(len(keys), dtype=np.int64) for _ in range(2))
            for target, (class_keys, class_counts) in zip((inlier, anomaly), tables):
                target[len(keys) - 1 - np.searchsorted(keys[::-1], class_keys)] = class_counts
        true_pos, false_pos = np.cumsum(anomaly), np.cumsum(inlier)
        return {
            "thresholds": from_keys(keys, self._kind or "f64").astype(np.float64),
            "tpr": true_pos / max(int(anomaly.sum()), 1),
            "fpr": false_pos / max(int(inlier.sum()), 1),
            "precision": true_pos / np.maximum(true_pos + false_pos, 1),
        }


def pixel_metrics(scores, labels, protocol: str | Protocol | None = None, *, label_map=None, **protocol_options) -> dict:
    """One-shot :class:`PixelMetrics` over one map, a batch ``(B, H, W)`` or flat arrays."""
    return PixelMetrics(protocol, label_map=label_map, **protocol_options).update(scores, labels).compute()
