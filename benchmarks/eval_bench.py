"""Evaluating float16 score maps: diffeel's exact streaming metrics vs SMIYC-style binning.

The SegmentMeIfYouCan toolkit (PixBinaryClass) histograms each frame's ROI scores into fixed bins
per class, sums the per-frame confusion matrices and reads AP (trapezoid, precision forced to 1
where fewer than 10 pixels are predicted positive) and FPR95 off the binned curve. We re-implement
that procedure with 768 bins and time it against ``diffeel.metrics.PixelMetrics`` on the same
in-memory float16 frames in the same run. diffeel is exact (checked against sklearn on the first
frames); the binned numbers are printed beside it so the binning error is visible.

    python benchmarks/eval_bench.py                 # 1000 frames of 2048x1024 (cycling 16 distinct maps)
    python benchmarks/eval_bench.py --frames 100    # quicker
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from _scenes import blob_labels
from sklearn.metrics import average_precision_score, roc_curve

from diffeel.metrics import PixelMetrics

TARGET = 3.0
SMIYC_BINS = 768


def make_frames(count: int, width: int, height: int, seed: int):
    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(count):
        labels = blob_labels(rng, width, height, void_share=1 / 6, max_blobs=3)
        logits = rng.standard_normal((height, width), dtype=np.float32) + 1.5 * (labels == 1)
        frames.append(((1 / (1 + np.exp(-logits))).astype(np.float16), labels))
    return frames


def smiyc_binned(frames, n_frames):
    """The toolkit's procedure: per-frame fixed-bin class histograms, summed, then curve areas."""
    edges = np.linspace(0, 1, SMIYC_BINS + 1)
    true_pos_sum = np.zeros(SMIYC_BINS)
    false_pos_sum = np.zeros(SMIYC_BINS)
    n_anomaly = n_inlier = 0
    for index in range(n_frames):
        scores, labels = frames[index % len(frames)]
        roi = labels < 255
        in_roi, anomaly = scores[roi], labels[roi].astype(bool)
        anomaly_hist, _ = np.histogram(in_roi[anomaly], bins=edges, range=(0, 1))
        inlier_hist, _ = np.histogram(in_roi[~anomaly], bins=edges, range=(0, 1))
        true_pos_sum += np.cumsum(anomaly_hist[::-1])
        false_pos_sum += np.cumsum(inlier_hist[::-1])
        n_anomaly += int(anomaly.sum())
        n_inlier += int((~anomaly).sum())
    tpr, fpr = true_pos_sum / n_anomaly, false_pos_sum / n_inlier
    predicted = true_pos_sum + false_pos_sum
    precision = np.where(predicted < 10, 1.0, true_pos_sum / np.maximum(predicted, 1))
    recall = np.where(n_anomaly < 10, 1.0, tpr)
    return {
        "auprc": float(np.trapezoid(precision, recall)),
        "fpr95": float(fpr[np.argmax(tpr >= 0.95)]),
        "auroc": float(np.trapezoid(tpr, fpr)),
    }


def diffeel_metrics(frames, n_frames):
    metrics = PixelMetrics()
    for index in range(n_frames):
        metrics.update(*frames[index % len(frames)])
    return metrics.compute()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--distinct", type=int, default=16, help="distinct generated frames, cycled")
    parser.add_argument("--size", default="2048x1024")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    frames = make_frames(min(args.distinct, args.frames), width, height, args.seed)
    print(f"{args.frames} float16 frames of {width}x{height} ({args.frames * width * height:.3g} px), "
          f"{len(frames)} distinct maps cycled")

    check = min(2, len(frames))
    exact = diffeel_metrics(frames, check)
    scores = np.concatenate([f[0][f[1] != 255].astype(np.float64) for f in frames[:check]])
    labels = np.concatenate([f[1][f[1] != 255] for f in frames[:check]])
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    worst = max(abs(exact["auprc"] - average_precision_score(labels, scores)), abs(exact["fpr95"] - fpr[np.argmax(tpr >= 0.95)]))
    print(f"diffeel vs sklearn on the first {check} frames: max |difference| {worst:.1e} ({'exact' if worst <= 1e-9 else 'MISMATCH'})")

    start = time.perf_counter()
    ours = diffeel_metrics(frames, args.frames)
    diffeel_seconds = time.perf_counter() - start
    start = time.perf_counter()
    binned = smiyc_binned(frames, args.frames)
    smiyc_seconds = time.perf_counter() - start
    ratio = smiyc_seconds / diffeel_seconds
    print(f"diffeel (exact):        {diffeel_seconds:7.2f} s   AUPRC {ours['auprc']:.6f}  FPR95 {ours['fpr95']:.6f}  AUROC {ours['auroc']:.6f}")
    print(f"SMIYC-style 768 bins:   {smiyc_seconds:7.2f} s   AUPRC {binned['auprc']:.6f}  FPR95 {binned['fpr95']:.6f}  AUROC {binned['auroc']:.6f}")
    print(f"speed-up: {ratio:.1f}x (target ≥ {TARGET:g}x) — {'met' if ratio >= TARGET and worst <= 1e-9 else 'NOT met'}")
    return 0 if worst <= 1e-9 else 1


if __name__ == "__main__":
    sys.exit(main())
