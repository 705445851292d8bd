"""Bootstrap confidence intervals over images for pixel AUPRC, FPR95 and AUROC.

Method: Efron's nonparametric bootstrap with percentile intervals (Efron & Tibshirani, *An
Introduction to the Bootstrap*, 1993, ch. 13), resampling *images*, not pixels: pixels of one
image are strongly correlated, images are the independent units. Each replicate draws ``n``
images with replacement from the ``n`` evaluated images and computes the metric of that set
under the chosen protocol (for ``"pooled"``: over the pooled pixels of the drawn images, an
image drawn twice counting twice); the interval is the ``(1 - c)/2`` and ``(1 + c)/2``
percentiles of the replicate values.

Every image is reduced once to a small table (:func:`image_histogram`): for each float16 score
value present, how many inlier and how many anomaly pixels carry it. The pooled table of a
replicate is then a product ``multiplicities @ per-image tables``, so score files are read once.

Resolution: float16 score maps are counted exactly. float32/float64 scores are rounded to float16
*for the interval only*; the point estimates of :mod:`diffeel.metrics.pixel` stay exact. Rounding
keeps the score order but merges nearby values into ties, so the replicates are metrics at
float16 resolution; report the exact point estimate with this interval.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import scipy.sparse

from ..labels import ANOMALY, INLIER, VOID
from ._counts import FLOAT16_PATTERNS, from_keys, to_keys
from .pixel import (
    TPR_TARGET_DEN,
    TPR_TARGET_NUM,
    Protocol,
    UndefinedMetricWarning,
    _anomaly_side_of_histograms,
    _exact_float,
    _to_numpy,
    metrics_from_counts,
)

__all__ = ["BootstrapAccumulator", "ImageHistogram", "image_histogram", "paired_difference"]

# (float16 keys ascending, inlier pixel counts, anomaly pixel counts), nonzero bins only
ImageHistogram = tuple[np.ndarray, np.ndarray, np.ndarray]

METRIC_NAMES = ("auprc", "fpr95", "auroc")
_POSITIVE_ZERO_KEY, _NEGATIVE_ZERO_KEY = (int(k) for k in to_keys(np.array([0.0, -0.0], dtype=np.float16), "f16"))
# Default bound on the dense per-chunk arrays (replicates × distinct keys, and images × key block).
DEFAULT_CHUNK_BYTES = 256 << 20


def image_histogram(score_map, label_map) -> ImageHistogram:
    """One image's non-void pixels as ``(keys, inlier_counts, anomaly_counts)`` over float16 scores.

    ``keys`` (uint16, ascending) are the order-preserving keys of :func:`~diffeel.metrics._counts.to_keys`
    of the float16 score values present; the two count arrays (int64) give the inlier (label 0) and
    anomaly (label 1) pixels at each. Void pixels (255) are left out; ``-0.0`` ties with ``+0.0``.

    float16 scores are counted exactly. float32/float64 (and integer) scores are rounded to the
    nearest float16 here, for the bootstrap interval only — the point estimates of
    :class:`~diffeel.metrics.PixelMetrics` stay exact. Rounding never reverses two scores but
    merges close ones into ties (float16 has 11 significant bits), and magnitudes above 65504
    saturate to ±inf (warned).
    """
    scores = _exact_float(_to_numpy(score_map))
    labels = _to_numpy(label_map)
    if scores.shape != labels.shape:
        raise ValueError(f"score map of shape {scores.shape} does not match label map of shape {labels.shape}")
    if labels.dtype.kind == "b":
        labels = labels.view(np.uint8)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"label maps must hold integers, got dtype {labels.dtype}")
    known = (labels == INLIER) | (labels == ANOMALY) | (labels == VOID)
    if not known.all():
        bad = np.unique(labels[~known])
        raise ValueError(f"label map contains values outside {{0, 1, 255}}: {', '.join(str(v) for v in bad[:8])}")
    codes = labels.astype(np.uint8, copy=False) & np.uint8(3)  # 0 inlier, 1 anomaly, 3 void
    counted = codes != 3
    non_finite = int(np.count_nonzero(~np.isfinite(scores) & counted))
    if non_finite:
        raise ValueError(f"{non_finite} of {int(counted.sum())} non-void score values are NaN or infinite")

    with np.errstate(over="ignore"):  # saturation to ±inf keeps the order; warned below
        halves = scores.astype(np.float16, copy=False)
    if scores.dtype != np.float16 and np.count_nonzero(np.isinf(halves) & counted):
        warnings.warn(
            "scores beyond ±65504 saturate to ±inf in float16, so the bootstrap ties them",
            UserWarning,
            stacklevel=2,
        )
    # One bincount over (code, key) pairs; void pixels land in rows we ignore.
    pairs = codes.ravel().astype(np.uint32)
    pairs <<= 16
    pairs |= to_keys(halves, "f16").ravel()
    counts = np.bincount(pairs, minlength=4 * FLOAT16_PATTERNS).reshape(4, FLOAT16_PATTERNS)[:2]
    counts[:, _POSITIVE_ZERO_KEY] += counts[:, _NEGATIVE_ZERO_KEY]  # -0.0 ties with +0.0
    counts[:, _NEGATIVE_ZERO_KEY] = 0
    present = np.flatnonzero(counts[0] | counts[1])
    return present.astype(np.uint16), counts[0, present].astype(np.int64), counts[1, present].astype(np.int64)


def _checked_histogram(histogram) -> ImageHistogram:
    try:
        keys, inliers, anomalies = (np.asarray(part) for part in histogram)
    except (TypeError, ValueError):
        raise TypeError("a histogram is the tuple (keys, inlier_counts, anomaly_counts) of image_histogram") from None
    if keys.dtype != np.uint16 or keys.ndim != 1:
        raise ValueError("histogram keys must be a 1-D uint16 array of float16 keys (see image_histogram)")
    if inliers.shape != keys.shape or anomalies.shape != keys.shape:
        raise ValueError("histogram keys and counts must have the same length")
    for counts in (inliers, anomalies):
        if counts.dtype.kind not in "iu" or (counts.size and counts.min() < 0):
            raise ValueError("histogram counts must be non-negative integers")
    if np.any(keys[1:] <= keys[:-1]):
        raise ValueError("histogram keys must be strictly ascending")
    if np.any(keys == _NEGATIVE_ZERO_KEY):
        raise ValueError("histogram has a bin for -0.0; build it with image_histogram, which ties it with +0.0")
    parts = [np.array(keys), np.array(inliers, dtype=np.int64), np.array(anomalies, dtype=np.int64)]
    for part in parts:
        part.flags.writeable = False  # shared, not copied, by merge
    return tuple(parts)


def _id_order(image_id):
    # ints before strings, each in natural order; other types are rejected at add time
    return (isinstance(image_id, str), image_id)


@dataclass(frozen=True)
class _Pooled:
    """The images' tables side by side, columns = the distinct keys of all images (ascending)."""

    values: np.ndarray  # the score value of each column, float64 ascending
    inliers: scipy.sparse.csc_matrix  # images × distinct keys, float64 holding exact integers
    anomalies: scipy.sparse.csc_matrix
    inlier_totals: np.ndarray  # per image, float64
    anomaly_totals: np.ndarray


class BootstrapAccumulator:
    """Per-image tables keyed by image id; percentile bootstrap intervals over the images.

    ``add`` (a table from :func:`image_histogram`) or ``add_map`` (a score and label map) per
    image, ``merge`` accumulators of other workers, then ``intervals``. Images are resampled in
    the order of their ids (ints before strings), so a seed gives the same result whatever the
    order of adding or merging.

    Memory: per image, 18 bytes per distinct float16 score value (≤ 65,536 values); while
    intervals are computed, a sparse copy of all tables (~12 bytes per nonzero count, kept until
    images change) and dense chunks of about ``chunk_bytes``.
    """

    def __init__(self):
        self._images: dict[int | str, ImageHistogram] = {}
        self._pooled: _Pooled | None = None
        self._replicates: dict = {}  # (n_resamples, seed, protocol) → metric arrays, until images change

    # ---- building -----------------------------------------------------------------------------

    def add(self, histogram: ImageHistogram, *, image_id: int | str) -> BootstrapAccumulator:
        """Add one image's ``(keys, inlier_counts, anomaly_counts)`` under a unique id."""
        if isinstance(image_id, bool) or not isinstance(image_id, (int, str, np.integer)):
            raise TypeError(f"image_id must be an int or a str, got {type(image_id).__name__}")
        image_id = int(image_id) if isinstance(image_id, np.integer) else image_id
        if image_id in self._images:
            raise ValueError(f"image id {image_id!r} was already added")
        self._images[image_id] = _checked_histogram(histogram)
        self._forget_pooled()
        return self

    def add_map(self, score_map, label_map, *, image_id: int | str) -> BootstrapAccumulator:
        """Add one image from its score and label maps (see :func:`image_histogram`)."""
        return self.add(image_histogram(score_map, label_map), image_id=image_id)

    def merge(self, other: BootstrapAccumulator) -> BootstrapAccumulator:
        """Add another accumulator's images (ids must not repeat); the result ignores merge order."""
        if not isinstance(other, BootstrapAccumulator):
            raise TypeError(f"can only merge a BootstrapAccumulator, got {type(other).__name__}")
        repeated = self._images.keys() & other._images.keys()
        if other is self or repeated:
            shown = sorted(repeated, key=_id_order)[:5] if repeated else list(self._images)[:5]
            raise ValueError(f"cannot merge accumulators sharing image ids, e.g. {shown}")
        self._images.update(other._images)
        self._forget_pooled()
        return self

    def _forget_pooled(self) -> None:
        self._pooled = None
        self._replicates = {}

    @property
    def image_ids(self) -> list:
        """Image ids in resampling order: the positions :meth:`draws` refers to."""
        return sorted(self._images, key=_id_order)

    @property
    def n_images(self) -> int:
        return len(self._images)

    def _pool(self) -> _Pooled:
        if self._pooled is None:
            tables = [self._images[image_id] for image_id in self.image_ids]
            keys = np.concatenate([table[0] for table in tables])
            # Columns = the distinct keys of all images, ascending (only the order matters).
            present = np.zeros(FLOAT16_PATTERNS, dtype=bool)
            present[keys] = True
            column_of_key = np.cumsum(present) - 1
            row_starts = np.concatenate(([0], np.cumsum([len(table[0]) for table in tables])))
            columns = column_of_key[keys]
            shape = (len(tables), int(present.sum()))

            def matrix(part):
                # Each image's keys are ascending and distinct: its row of a CSR matrix as it is.
                values = np.concatenate([table[part] for table in tables]).astype(np.float64)
                counts = scipy.sparse.csr_matrix((values, columns, row_starts), shape=shape)
                counts.eliminate_zeros()
                return counts.tocsc()

            self._pooled = _Pooled(
                values=from_keys(np.flatnonzero(present).astype(np.uint16), "f16").astype(np.float64),
                inliers=matrix(1),
                anomalies=matrix(2),
                inlier_totals=np.array([float(table[1].sum()) for table in tables]),
                anomaly_totals=np.array([float(table[2].sum()) for table in tables]),
            )
        return self._pooled

    # ---- resampling ---------------------------------------------------------------------------

    def draws(self, n_resamples: int = 1000, seed: int = 0) -> np.ndarray:
        """Image positions (into :attr:`image_ids`) drawn for each replicate, ``(n_resamples, n)``.

        One ``numpy.random.default_rng(seed)`` draws each replicate's ``n`` positions in turn, so
        the first ``k`` replicates do not depend on ``n_resamples``.
        """
        _check_resampling(n_resamples, seed)
        if self.n_images == 0:
            raise ValueError("no images were added, so there is nothing to resample")
        return next(self._draw_chunks(n_resamples, seed, n_resamples))

    def _draw_chunks(self, n_resamples: int, seed: int, chunk: int):
        generator = np.random.default_rng(seed)
        for start in range(0, n_resamples, chunk):
            count = min(chunk, n_resamples - start)
            yield np.stack([generator.integers(0, self.n_images, size=self.n_images) for _ in range(count)])

    def replicates(
        self,
        n_resamples: int = 1000,
        seed: int = 0,
        protocol: str | Protocol | None = "pooled",
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        **protocol_options,
    ) -> dict:
        """Metric values of each replicate: ``{"auprc", "fpr95", "auroc"}`` → ``(n_resamples,)`` arrays.

        Replicate ``r`` is the metric of the images ``draws(n_resamples, seed)[r]`` under
        ``protocol`` (see :class:`~diffeel.metrics.Protocol`), at float16 resolution. A replicate
        lacking anomaly or inlier pixels (for ``per_image``: lacking any image with both) is NaN.
        ``chunk_bytes`` roughly bounds the dense working arrays (replicates are processed in
        chunks); it does not change the values.
        """
        protocol = Protocol.resolve(protocol, **protocol_options)
        _check_resampling(n_resamples, seed)
        if self.n_images == 0:
            raise ValueError("no images were added, so there is nothing to resample")
        cached = self._replicates.get((n_resamples, seed, protocol))
        if cached is None:
            # kept: comparing one method with several others resamples it once
            cached = {name: np.full(n_resamples, math.nan) for name in METRIC_NAMES}
            compute, per_chunk = self._metrics_of(protocol, chunk_bytes)
            start = 0
            for drawn in self._draw_chunks(n_resamples, seed, per_chunk):
                for name, chunk_values in zip(METRIC_NAMES, compute(_multiplicities(drawn, self.n_images))):
                    cached[name][start : start + len(drawn)] = chunk_values
                start += len(drawn)
            self._replicates[(n_resamples, seed, protocol)] = cached
        return {name: values.copy() for name, values in cached.items()}

    def statistic_replicates(self, statistic, n_resamples: int = 1000, seed: int = 0, *,
                             chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> np.ndarray:
        """Any statistic of the pooled pixels, per replicate: ``(n_resamples,)``.

        ``statistic(values, inlier_counts, anomaly_counts)`` gets the distinct float16 score values
        of all images (ascending, float64) and, for a block of replicates, the pooled inlier and
        anomaly pixel counts at each value (``(replicates, values)`` arrays); it returns one number
        per replicate. The draws are those of :meth:`replicates` with the same ``seed``, so a
        statistic and a metric of one accumulator are resampled together.
        """
        _check_resampling(n_resamples, seed)
        if self.n_images == 0:
            raise ValueError("no images were added, so there is nothing to resample")
        pooled = self._pool()
        result = np.full(n_resamples, math.nan)
        start = 0
        for drawn in self._draw_chunks(n_resamples, seed, max(1, chunk_bytes // (4 * 8 * max(1, len(pooled.values))))):
            result[start : start + len(drawn)] = self._statistic_of(statistic, _multiplicities(drawn, self.n_images), chunk_bytes)
            start += len(drawn)
        return result

    def statistic_point(self, statistic) -> float:
        """:meth:`statistic_replicates`' statistic of all images once."""
        if self.n_images == 0:
            raise ValueError("no images were added")
        return float(self._statistic_of(statistic, np.ones((1, self.n_images)), DEFAULT_CHUNK_BYTES)[0])

    def _statistic_of(self, statistic, multiplicities: np.ndarray, chunk_bytes: int) -> np.ndarray:
        pooled = self._pool()
        counts = {}
        for side, table in (("inliers", pooled.inliers), ("anomalies", pooled.anomalies)):
            counts[side] = np.empty((len(multiplicities), len(pooled.values)))
            _resampled_counts(multiplicities, table, counts[side], chunk_bytes)
        return np.asarray(statistic(pooled.values, counts["inliers"], counts["anomalies"]), dtype=np.float64)

    def point(self, protocol: str | Protocol | None = "pooled", **protocol_options) -> dict:
        """The metrics of all images once (at the replicates' float16 resolution):
        ``{"auprc", "fpr95", "auroc"}`` → float, NaN where a class is missing."""
        if self.n_images == 0:
            raise ValueError("no images were added")
        compute, _ = self._metrics_of(Protocol.resolve(protocol, **protocol_options), DEFAULT_CHUNK_BYTES)
        return {name: float(value[0]) for name, value in zip(METRIC_NAMES, compute(np.ones((1, self.n_images))))}

    def _metrics_of(self, protocol: Protocol, chunk_bytes: int):
        """``compute(multiplicities) -> (auprc, fpr95, auroc)`` rows for ``protocol``, and how many
        replicates a chunk may hold within ``chunk_bytes``."""
        if protocol.per_image:
            per_image = self._per_image_metrics(protocol)
            return (lambda multiplicities: _per_image_means(multiplicities, *per_image)), max(1, chunk_bytes // (8 * self.n_images))
        pooled = self._pool()
        n_keys = max(1, pooled.inliers.shape[1])
        # Two dense (replicates × keys) float64 count arrays per chunk, half the budget.
        return (lambda multiplicities: _pooled_metrics(multiplicities, pooled, protocol, chunk_bytes)), max(1, chunk_bytes // (4 * 8 * n_keys))

    def _per_image_metrics(self, protocol: Protocol):
        """Each image's (auprc, fpr95, auroc), and whether it has both classes."""
        metrics = np.zeros((self.n_images, 3))
        usable = np.zeros(self.n_images, dtype=bool)
        for position, image_id in enumerate(self.image_ids):
            _, inliers, anomalies = self._images[image_id]
            if anomalies.any() and inliers.any():
                _, *side = _anomaly_side_of_histograms(inliers, anomalies)
                result = metrics_from_counts(*side, protocol)
                metrics[position] = [result[name] for name in METRIC_NAMES]
                usable[position] = True
        return metrics, usable

    def intervals(
        self,
        n_resamples: int = 1000,
        seed: int = 0,
        confidence: float = 0.95,
        protocol: str | Protocol | None = "pooled",
        *,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        **protocol_options,
    ) -> dict:
        """Percentile bootstrap intervals ``{"auprc": [low, high], "fpr95": ..., "auroc": ...}``.

        Also returns ``n_resamples``, ``n_skipped`` (replicates lacking a class, left out of the
        percentiles), ``confidence``, ``seed``, ``n_images`` and ``protocol``. Bounds are
        ``np.percentile`` (linear) at ``(1 - confidence)/2`` and ``(1 + confidence)/2`` of the
        :meth:`replicates`.
        """
        if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
            raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")
        resolved = Protocol.resolve(protocol, **protocol_options)
        values = self.replicates(n_resamples, seed, resolved, chunk_bytes=chunk_bytes)
        kept = ~np.isnan(values["auprc"])
        n_skipped = int(n_resamples - kept.sum())
        result = {}
        for name in METRIC_NAMES:
            if kept.any():
                low, high = np.percentile(values[name][kept], [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
                result[name] = [float(low), float(high)]
            else:
                result[name] = [math.nan, math.nan]
        if not kept.any():
            warnings.warn(
                f"all {n_resamples} bootstrap replicates lack anomaly or inlier pixels; the intervals are NaN",
                UndefinedMetricWarning,
                stacklevel=2,
            )
        result.update(
            n_resamples=n_resamples,
            n_skipped=n_skipped,
            confidence=confidence,
            seed=seed,
            n_images=self.n_images,
            protocol=resolved.name,
        )
        return result


def paired_difference(a_runs: list[BootstrapAccumulator], b_runs: list[BootstrapAccumulator], metric="auprc", *,
                      n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95,
                      protocol: str | Protocol | None = "pooled") -> dict:
    """How much method A beats method B in ``metric``, with an interval over training seeds and
    test images: ``a_runs[s]`` and ``b_runs[s]`` hold the test images scored by A's and B's models of
    training seed ``s``.

    The difference is the mean over seeds of ``d_s = metric(A_s) - metric(B_s)``. Its interval adds
    two sources of noise in quadrature, each side separately:

    - test images: the percentile interval of a paired bootstrap — replicate ``r`` draws the test
      images once for every run (the same positions for runs over the same images, so an image
      that is hard for both counts against neither), and averages the seeds' differences;
    - training seeds: Student's t interval of the mean of the ``d_s`` (``n - 1`` degrees of
      freedom), as the seeds are a small sample of training runs. A bootstrap over a few seeds
      would be far too narrow (3 seeds give 10 distinct resamples and no t-quantile): another
      machine, which rounds differently, is another draw of every seed's model. One seed
      contributes no seed term (the interval then covers test-image noise only).

    Returns ``difference``, ``low``, ``high``, ``image_low``, ``image_high`` (the images' part alone),
    ``seed_half_width``, ``n_seeds``, ``n_resamples``, ``n_skipped`` (replicates where a metric is
    undefined) and ``confidence``.

    ``metric`` is a metric name or a statistic as :meth:`BootstrapAccumulator.statistic_replicates`
    takes. Runs over different images (say, clear against adverse frames) get independent image
    draws: the interval is then that of an unpaired difference.
    """
    if not callable(metric) and metric not in METRIC_NAMES:
        raise ValueError(f"metric must be one of {', '.join(METRIC_NAMES)} or a statistic, got {metric!r}")
    if not a_runs or len(a_runs) != len(b_runs):
        raise ValueError(f"need one run of A and one of B per training seed, got {len(a_runs)} and {len(b_runs)}")
    if not (isinstance(confidence, (int, float)) and 0 < confidence < 1):
        raise ValueError(f"confidence must be a number strictly between 0 and 1, got {confidence!r}")
    if callable(metric):
        point = lambda run: run.statistic_point(metric)  # noqa: E731
        resampled = lambda run: run.statistic_replicates(metric, n_resamples, seed)  # noqa: E731
    else:
        point = lambda run: run.point(protocol)[metric]  # noqa: E731
        resampled = lambda run: run.replicates(n_resamples, seed, protocol)[metric]  # noqa: E731
    seed_differences = np.array([point(a) - point(b) for a, b in zip(a_runs, b_runs)], dtype=np.float64)
    difference = float(seed_differences.mean())
    replicates = np.mean([resampled(a) - resampled(b) for a, b in zip(a_runs, b_runs)], axis=0)  # images drawn, seeds kept
    kept = ~np.isnan(replicates)
    image_low, image_high = (np.percentile(replicates[kept], [(1 - confidence) / 2 * 100, (1 + confidence) / 2 * 100])
                             if kept.any() else (math.nan, math.nan))
    seed_half = seed_half_width(seed_differences, confidence)
    low = difference - math.hypot(max(difference - image_low, 0.0), seed_half)
    high = difference + math.hypot(max(image_high - difference, 0.0), seed_half)
    return {"difference": difference, "low": float(low), "high": float(high), "image_low": float(image_low),
            "image_high": float(image_high), "seed_half_width": seed_half, "n_seeds": len(a_runs),
            "n_resamples": n_resamples, "n_skipped": int((~kept).sum()), "confidence": confidence}


def seed_half_width(values: np.ndarray, confidence: float = 0.95) -> float:
    """Half the width of Student's t interval for the mean of ``values`` (one per training seed):
    ``t_{(1+c)/2, n-1} · sd / √n``; 0 for a single seed (no spread to estimate)."""
    from scipy.stats import t

    values = np.asarray(values, dtype=np.float64)
    if len(values) < 2:
        return 0.0
    return float(t.ppf((1 + confidence) / 2, len(values) - 1) * values.std(ddof=1) / math.sqrt(len(values)))


def _check_resampling(n_resamples, seed) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer (a fixed seed keeps intervals reproducible), got {seed!r}")


def _multiplicities(drawn: np.ndarray, n_images: int) -> np.ndarray:
    """How often each image was drawn, per replicate: ``(replicates, images)`` float64."""
    flat = (drawn + n_images * np.arange(len(drawn))[:, None]).ravel()
    return np.bincount(flat, minlength=len(drawn) * n_images).reshape(len(drawn), n_images).astype(np.float64)


def _pooled_metrics(multiplicities: np.ndarray, pooled: _Pooled, protocol: Protocol, chunk_bytes: int):
    """(auprc, fpr95, auroc) arrays of the pooled resampled sets, NaN where a class is missing."""
    if protocol.skip_empty:
        multiplicities = multiplicities * (pooled.anomaly_totals > 0)  # as if never added
    n_keys = pooled.inliers.shape[1]
    # Counts of each replicate's pooled set per key (ascending). They are integers far below
    # 2**53, so the float64 BLAS products are exact whatever their summation order.
    inliers = np.empty((len(multiplicities), n_keys))
    anomalies = np.empty((len(multiplicities), n_keys))
    for counts, table in ((inliers, pooled.inliers), (anomalies, pooled.anomalies)):
        _resampled_counts(multiplicities, table, counts, chunk_bytes)
    n_inliers = multiplicities @ pooled.inlier_totals
    n_anomalies = multiplicities @ pooled.anomaly_totals

    values = np.full((3, len(multiplicities)), math.nan)
    defined = np.flatnonzero((n_inliers > 0) & (n_anomalies > 0))  # the others are skipped
    rows_per_pass = max(1, _PASS_BYTES // (8 * max(n_keys, 1)))
    for start in range(0, len(defined), rows_per_pass):
        rows = defined[start : start + rows_per_pass]
        values[:, rows] = _metrics_of_rows(inliers[rows], anomalies[rows], n_inliers[rows], n_anomalies[rows], protocol)
    return values


_PASS_BYTES = 8 << 20  # size of one temporary (replicates × keys) array in _metrics_of_rows


def _metrics_of_rows(inliers, anomalies, n_inliers, n_anomalies, protocol: Protocol) -> np.ndarray:
    """:func:`metrics_from_counts` for many count rows at once: ``(3, rows)`` auprc, fpr95, auroc.

    Each row holds one set's per-key counts, keys ascending, zeros allowed. The metrics are sums
    over keys weighted by the anomaly counts, so keys without anomalies add nothing and the rows
    need no compaction. Agrees with :func:`metrics_from_counts` up to the float rounding of those
    sums (tested); the FPR95 comparisons and choices are exact.
    """
    n_inliers, n_anomalies = n_inliers[:, None], n_anomalies[:, None]
    # Pixels scoring at least each key = total - pixels below it (exact integer arithmetic).
    true_pos = n_anomalies - np.cumsum(anomalies, axis=1) + anomalies
    inliers_at_least = n_inliers - np.cumsum(inliers, axis=1) + inliers
    precision = np.divide(true_pos, true_pos + inliers_at_least, out=np.zeros_like(true_pos), where=true_pos > 0)
    if protocol.auprc == "step":
        auprc = np.einsum("ij,ij->i", anomalies, precision) / n_anomalies[:, 0]
    else:
        true_pos_above = true_pos - anomalies
        pixels_above = true_pos_above + inliers_at_least - inliers
        precision_above = np.divide(true_pos_above, pixels_above, out=np.ones_like(true_pos), where=pixels_above > 0)
        auprc = np.einsum("ij,ij->i", anomalies, precision + precision_above) / (2 * n_anomalies[:, 0])

    row_index = np.arange(len(inliers))
    if protocol.fpr95 == "first":
        # True positives fall as the key rises, so the keys reaching TPR ≥ 0.95 are a prefix;
        # FPR95 is taken at the highest of them (the first threshold in descending order).
        reached = TPR_TARGET_DEN * true_pos >= TPR_TARGET_NUM * n_anomalies
        false_pos = inliers_at_least[row_index, np.count_nonzero(reached, axis=1) - 1]
    else:
        # Hendrycks' "nearest": over anomaly keys, the TPR nearest 0.95 (same float expression as
        # metrics_from_counts, so the same ties), the lowest key among equals (argmin's first);
        # false positives = inliers strictly above the next lower anomaly key, if any.
        is_anomaly_key = anomalies > 0
        distance = np.where(is_anomaly_key, np.abs(true_pos / n_anomalies - TPR_TARGET_NUM / TPR_TARGET_DEN), np.inf)
        chosen = np.argmin(distance, axis=1)
        last_anomaly_key_so_far = np.maximum.accumulate(np.where(is_anomaly_key, np.arange(inliers.shape[1]), -1), axis=1)
        next_lower = np.where(chosen > 0, last_anomaly_key_so_far[row_index, chosen - 1], -1)
        above_next_lower = inliers_at_least[row_index, next_lower] - inliers[row_index, next_lower]
        false_pos = np.where(next_lower >= 0, above_next_lower, inliers_at_least[row_index, chosen])
    fpr95 = false_pos / n_inliers[:, 0]

    inliers_below_plus_half_ties = n_inliers - inliers_at_least + 0.5 * inliers
    auroc = np.einsum("ij,ij->i", anomalies, inliers_below_plus_half_ties) / (n_anomalies[:, 0] * n_inliers[:, 0])
    return np.stack([auprc, fpr95, auroc])


def _resampled_counts(multiplicities: np.ndarray, table: scipy.sparse.csc_matrix, out: np.ndarray, chunk_bytes: int):
    """``out = multiplicities @ table``: dense BLAS over blocks of keys, or sparse if the table is."""
    n_images, n_keys = table.shape
    if table.nnz < _SPARSE_PRODUCT_DENSITY * n_images * n_keys:
        # Few nonzeros (typically the anomaly side): a sparse product does less work.
        out[...] = (table.T @ multiplicities.T).T
        return
    block = max(1, chunk_bytes // (4 * 8 * max(n_images, 1)))  # a dense images × block of keys
    for start in range(0, n_keys, block):
        stop = min(start + block, n_keys)
        out[:, start:stop] = multiplicities @ _dense_columns(table, start, stop).T


_SPARSE_PRODUCT_DENSITY = 0.1


def _dense_columns(matrix: scipy.sparse.csc_matrix, start: int, stop: int) -> np.ndarray:
    """Columns ``start:stop`` of a CSC matrix as a dense ``(stop - start, rows)`` array."""
    n_rows = matrix.shape[0]
    begin, end = matrix.indptr[start], matrix.indptr[stop]
    # CSC entries run column by column, so these writes sweep the output once, in order.
    column = np.repeat(np.arange(stop - start), np.diff(matrix.indptr[start : stop + 1]))
    dense = np.zeros((stop - start, n_rows))
    dense.ravel()[column * n_rows + matrix.indices[begin:end]] = matrix.data[begin:end]
    return dense


def _per_image_means(multiplicities: np.ndarray, metrics: np.ndarray, usable: np.ndarray):
    """Means of the per-image metrics over each replicate's drawn images having both classes."""
    weights = multiplicities * usable
    totals = weights.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):  # no usable image → NaN, skipped
        means = (weights @ metrics) / totals[:, None]
    means[totals == 0] = math.nan
    return means.T
