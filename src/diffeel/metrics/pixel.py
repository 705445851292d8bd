"""Exact, streaming pixel-level AUPRC, FPR95 and AUROC (definitions in the docs: "Metrics").

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
anomaly pixels left out).

Labels are 0 = inlier, 1 = anomaly, 255 = void (or anything else via ``label_map``). Scores are
"higher = more anomalous", float16/32/64 (narrower integer dtypes are converted exactly).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, fields, replace
from typing import Mapping

import numpy as np

from ..labels import ANOMALY, INLIER, VOID
from ._counts import (
    FLOAT16_PATTERNS,
    KINDS,
    SparseCounts,
    from_keys,
    histogram_as_sparse,
    kind_of,
    merge_runs,
    to_keys,
    unique_counts,
    wider_kind,
)

__all__ = ["Protocol", "PROTOCOLS", "PixelMetrics", "pixel_metrics", "UndefinedMetricWarning", "metrics_from_counts"]

TPR_TARGET_NUM, TPR_TARGET_DEN = 19, 20  # 0.95 as an exact integer ratio
_CODE_INLIER, _CODE_ANOMALY, _CODE_VOID, _CODE_INVALID = 0, 1, 2, 3


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

    def __post_init__(self):
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
}


# --------------------------------------------------------------------------------------------
# metrics from a count table


def metrics_from_counts(inlier_counts: np.ndarray, anomaly_counts: np.ndarray, protocol: Protocol) -> dict:
    """AUPRC, FPR95, AUROC and best F1 from per-threshold counts in *descending* score order.

    Returns indices (``fpr95_index``, ``best_f1_index``) into the given order for threshold look-up.
    Both classes must be present.
    """
    true_pos = np.cumsum(anomaly_counts)
    false_pos = np.cumsum(inlier_counts)
    n_anomaly, n_inlier = int(true_pos[-1]), int(false_pos[-1])
    precision = true_pos / (true_pos + false_pos)
    # sklearn's PR curve stops at the first threshold reaching full recall.
    full_recall = int(np.searchsorted(true_pos, n_anomaly))

    if protocol.auprc == "step":
        # Only thresholds with anomaly pixels move recall, by count/n_anomaly.
        auprc = float(np.dot(anomaly_counts, precision) / n_anomaly)
    else:
        recall = np.concatenate(([0.0], true_pos[: full_recall + 1] / n_anomaly))
        prec = np.concatenate(([1.0], precision[: full_recall + 1]))
        auprc = float(np.sum(np.diff(recall) * (prec[1:] + prec[:-1]) / 2))

    if protocol.fpr95 == "first":
        reached = TPR_TARGET_DEN * true_pos >= TPR_TARGET_NUM * n_anomaly  # exact integer compare
        fpr95_index = int(np.argmax(reached))
    else:
        distance = np.abs(true_pos[: full_recall + 1] / n_anomaly - TPR_TARGET_NUM / TPR_TARGET_DEN)
        # Hendrycks' helper scans from full recall towards the top score and keeps the first minimum.
        fpr95_index = full_recall - int(np.argmin(distance[::-1]))
    fpr95 = false_pos[fpr95_index] / n_inlier

    true_pos_before = true_pos - anomaly_counts
    auroc = float(np.dot(inlier_counts, true_pos_before + 0.5 * anomaly_counts) / (n_anomaly * n_inlier))

    f1 = 2 * true_pos / (true_pos + false_pos + n_anomaly)
    best_f1_index = int(np.argmax(f1))
    return {
        "auprc": auprc,
        "fpr95": float(fpr95),
        "auroc": auroc,
        "best_f1": float(f1[best_f1_index]),
        "fpr95_index": fpr95_index,
        "best_f1_index": best_f1_index,
    }


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
    """Maps label values to codes 0 inlier / 1 anomaly / 2 void, rejecting unmapped values."""

    def __init__(self, label_map: Mapping | None):
        self.label_map = dict(label_map or {})
        default = self.label_map.pop("*", None)
        for source, target in self.label_map.items():
            if not isinstance(source, (int, np.integer)) or source < 0:
                raise ValueError(f"label_map keys must be non-negative integers or '*', got {source!r}")
            self._code_of(target)
        self.default_code = None if default is None else self._code_of(default)
        self._tables: dict[int, np.ndarray] = {}

    @staticmethod
    def _code_of(target) -> int:
        codes = {INLIER: _CODE_INLIER, ANOMALY: _CODE_ANOMALY, VOID: _CODE_VOID}
        if target not in codes:
            raise ValueError(f"label_map targets must be 0, 1 or 255, got {target!r}")
        return codes[target]

    def table(self, size: int) -> np.ndarray:
        if size not in self._tables:
            fallback = _CODE_INVALID if self.default_code is None else self.default_code
            table = np.full(size, fallback, dtype=np.uint8)
            if self.default_code is None:
                for value, code in ((INLIER, _CODE_INLIER), (ANOMALY, _CODE_ANOMALY), (VOID, _CODE_VOID)):
                    if value < size:
                        table[value] = code
            for source, target in self.label_map.items():
                if source < size:
                    table[source] = self._code_of(target)
            self._tables[size] = table
        return self._tables[size]

    def encode(self, labels: np.ndarray) -> np.ndarray:
        if labels.dtype.kind == "b":
            labels = labels.view(np.uint8)
        if labels.dtype.kind not in "iu":
            raise TypeError(f"label maps must hold integers, got dtype {labels.dtype}")
        if labels.dtype != np.uint8:
            low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
            if low < 0 or high >= 1 << 16:
                bad = low if low < 0 else high
                raise ValueError(f"label map contains the value {bad}, outside 0..65535")
            labels = labels.astype(np.uint8 if high < 256 else np.int64, copy=False)
            size = 256 if high < 256 else high + 1
        else:
            size = 256
        table = self.table(size)
        codes = table[labels]
        present = np.bincount(labels.ravel(), minlength=size) if size == 256 else None
        invalid = (table[present > 0] == _CODE_INVALID).any() if present is not None else (codes == _CODE_INVALID).any()
        if invalid:
            bad = np.unique(labels[codes == _CODE_INVALID])
            shown = ", ".join(str(v) for v in bad[:8]) + (", …" if len(bad) > 8 else "")
            raise ValueError(
                f"label map contains values outside {{0, 1, 255}} with no mapping for them: {shown} "
                "(pass label_map, e.g. {2: 1, '*': 255})"
            )
        return codes


# --------------------------------------------------------------------------------------------
# the streaming accumulator


class PixelMetrics:
    """Exact streaming pixel metrics: ``update`` per image (or batch), ``merge``, ``compute``.

    Memory does not depend on the number of images: float16 scores use a fixed 1 MiB histogram;
    float32/float64 scores a table of the distinct values seen (see ``state_nbytes``). A set mixing
    dtypes is promoted exactly to the widest. ``name`` labels warnings (e.g. ``"fog"``).
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
        self._histogram: np.ndarray | None = None  # float16: (2, 65536) int64
        self._table: SparseCounts | None = None  # float32/float64
        self._per_image: list[tuple[float, float, float]] = []
        self.n_images = 0
        self.n_images_skipped = 0
        self.n_void = 0

    # ---- state -----------------------------------------------------------------------------

    def _promote(self, kind: str) -> None:
        target = wider_kind(self._kind, kind)
        if target == self._kind:
            return
        if self._kind is None:
            if target == "f16":
                self._histogram = np.zeros((2, FLOAT16_PATTERNS), dtype=np.int64)
            else:
                self._table = SparseCounts(target)
        elif self._kind == "f16":
            self._table = histogram_as_sparse(self._histogram).promoted(target)
            self._histogram = None
        else:
            self._table = self._table.promoted(target)
        self._kind = target

    @property
    def state_nbytes(self) -> int:
        """Bytes held by the count state (constant for float16; distinct values for float32/64)."""
        held = 0 if self._histogram is None else self._histogram.nbytes
        held += 0 if self._table is None else self._table.nbytes
        return held + 24 * len(self._per_image)

    # ---- update ------------------------------------------------------------------------------

    def update(self, score_map, label_map) -> "PixelMetrics":
        """Add one image ``(H, W)`` (or flat ``(N,)``) or a batch ``(B, H, W)`` of images."""
        scores = _to_numpy(score_map)
        labels = _to_numpy(label_map)
        if scores.shape != labels.shape:
            raise ValueError(f"score map shape {scores.shape} does not match label map shape {labels.shape}")
        if scores.ndim not in (1, 2, 3):
            raise ValueError(f"expected an (H, W) map or a (B, H, W) batch, got shape {scores.shape}")
        scores = _exact_float(scores)
        codes = self._labels.encode(labels)
        self._check_finite(scores, codes)
        kind = kind_of(scores.dtype)
        self._promote(kind)
        if scores.dtype != KINDS[self._kind][0]:
            scores = scores.astype(KINDS[self._kind][0])  # exact widening

        batched = scores.ndim == 3
        if batched and not (self.protocol.per_image or self.protocol.skip_empty):
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
        frame = self._add_counts(scores, codes)
        if self.protocol.per_image:
            inlier, anomaly = frame
            present = (inlier + anomaly) > 0
            inlier, anomaly = inlier[present], anomaly[present]
            if inlier.sum() == 0 or anomaly.sum() == 0:
                self._per_image.append((math.nan, math.nan, math.nan))
            else:
                result = metrics_from_counts(inlier[::-1], anomaly[::-1], self.protocol)
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

    def _add_counts(self, scores: np.ndarray, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Add a map's counts to the state; return its own (inlier, anomaly) counts, ascending."""
        if self._kind == "f16":
            keys = to_keys(scores, "f16").ravel().astype(np.intp)
            keys |= codes.ravel().astype(np.intp) << 16  # void (code 2) lands in a bin we ignore
            counts = np.bincount(keys, minlength=3 * FLOAT16_PATTERNS)[: 2 * FLOAT16_PATTERNS]
            counts = counts.reshape(2, FLOAT16_PATTERNS)
            zero, negative_zero = to_keys(np.array([0.0, -0.0], dtype=np.float16), "f16")
            counts[:, zero] += counts[:, negative_zero]  # -0.0 ties with +0.0
            counts[:, negative_zero] = 0
            self._histogram += counts
            self.n_void += int(np.count_nonzero(codes == _CODE_VOID))
            return counts[0], counts[1]

        runs = []
        for code in (_CODE_INLIER, _CODE_ANOMALY):
            values = scores[codes == code]
            values += 0.0  # -0.0 → +0.0 so that the zeros tie (values is a copy)
            runs.append(unique_counts(to_keys(values, self._kind), column=code))
        keys, counts = merge_runs(runs)
        self._table.add_run(keys, counts)
        self.n_void += int(codes.size - counts.sum())
        return counts[:, 0], counts[:, 1]

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
                source = other._table if other._kind != "f16" else histogram_as_sparse(other._histogram)
                if source.kind != self._kind:
                    source = source.promoted(self._kind)
                for keys, counts in source.runs:
                    self._table.add_run(keys, counts)
        self._per_image.extend(other._per_image)
        self.n_images += other.n_images
        self.n_images_skipped += other.n_images_skipped
        self.n_void += other.n_void
        return self

    def _descending_table(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(score values, inlier counts, anomaly counts) over distinct scores, descending."""
        if self._kind is None:
            return np.zeros(0), np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
        if self._kind == "f16":
            present = np.flatnonzero(self._histogram.sum(axis=0))[::-1]
            keys, inlier, anomaly = present.astype(np.uint16), self._histogram[0, present], self._histogram[1, present]
        else:
            keys, counts = self._table.table()
            keys, inlier, anomaly = keys[::-1], counts[::-1, 0], counts[::-1, 1]
        return from_keys(keys, self._kind).astype(np.float64), inlier, anomaly

    def compute(self) -> dict:
        """``{"auprc", "fpr95", "auroc", "n_pixels", "n_anomaly", ...}`` as fractions.

        ``n_pixels`` counts the non-void pixels evaluated. Metrics of a set lacking either class
        are NaN, with an :class:`UndefinedMetricWarning` naming the set.
        """
        values, inlier, anomaly = self._descending_table()
        n_anomaly, n_inlier = int(anomaly.sum()), int(inlier.sum())
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
        pooled = metrics_from_counts(inlier, anomaly, self.protocol)
        result.update(
            auprc=pooled["auprc"],
            fpr95=pooled["fpr95"],
            auroc=pooled["auroc"],
            best_f1=pooled["best_f1"],
            fpr95_threshold=float(values[pooled["fpr95_index"]]),
            best_f1_threshold=float(values[pooled["best_f1_index"]]),
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
        """The exact PR and ROC curves over distinct thresholds (descending), for plots."""
        values, inlier, anomaly = self._descending_table()
        true_pos, false_pos = np.cumsum(anomaly), np.cumsum(inlier)
        n_anomaly, n_inlier = max(int(anomaly.sum()), 1), max(int(inlier.sum()), 1)
        return {
            "thresholds": values,
            "tpr": true_pos / n_anomaly,
            "fpr": false_pos / n_inlier,
            "precision": true_pos / np.maximum(true_pos + false_pos, 1),
        }


def pixel_metrics(scores, labels, protocol: str | Protocol | None = None, *, label_map=None, **protocol_options) -> dict:
    """One-shot :class:`PixelMetrics` over one map, a batch ``(B, H, W)`` or flat arrays."""
    return PixelMetrics(protocol, label_map=label_map, **protocol_options).update(scores, labels).compute()
