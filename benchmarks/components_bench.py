"""Component-level metrics: the fast core vs the per-component reference, in the same run.

Builds synthetic frames (default 20 of 1024×512): a void band at the top, several elliptic
anomalies below the horizon, and scores made of smoothed noise (a different grain per frame) plus
a blurred bump on the anomalies, so the thresholded prediction has many components of all sizes.
Both implementations get the same prediction, ground-truth and void masks; their per-component
sIoU and PPV arrays must be identical, bit for bit. The fast path is also timed end to end through
``ComponentMetrics.update`` (input checks and thresholding included).

    python benchmarks/components_bench.py
    python benchmarks/components_bench.py --frames 5 --size 2048x1024 --tracks obstacle

Exit status: 1 if the two implementations disagree, 0 otherwise (also when the speed target is
missed; that is reported).
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from scipy import ndimage

from diffeel.labels import ANOMALY, VOID
from diffeel.metrics.components import (
    TRACKS,
    ComponentMetrics,
    component_stats,
    metrics_from_components,
    reference_component_stats,
)

SPEED_UP_TARGET = 10.0
THRESHOLD = 1.5  # in units of the noise's standard deviation: ~7 % of inlier pixels pass
ANOMALY_BUMP = 2.5  # added to the scores on anomalies, so most of them are found
NOISE_GRAINS = (1.5, 2.5, 4.0)  # Gaussian smoothing sigmas (px): small to large noise blobs


def make_frame(width: int, height: int, index: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 scores, uint8 labels) of one synthetic frame."""
    rng = np.random.default_rng((seed, index))
    rows, cols = np.ogrid[:height, :width]
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[: height // 8] = VOID
    for _ in range(rng.integers(3, 9)):
        centre_row, centre_col = rng.uniform(0.5, 0.95) * height, rng.uniform(0.05, 0.95) * width
        radius = rng.uniform(0.003, 0.04) * width  # from a few pixels (voided by min_gt) to large
        labels[((rows - centre_row) / (0.7 * radius)) ** 2 + ((cols - centre_col) / radius) ** 2 <= 1] = ANOMALY
    grain = NOISE_GRAINS[index % len(NOISE_GRAINS)]
    noise = ndimage.gaussian_filter(rng.standard_normal((height, width), dtype=np.float32), grain)
    noise /= noise.std()
    bump = ndimage.gaussian_filter((labels == ANOMALY).astype(np.float32), 2.0)
    return noise + ANOMALY_BUMP * bump, labels


def timed(function, *args):
    start = time.perf_counter()
    result = function(*args)
    return result, time.perf_counter() - start


def run_track(track: str, frames) -> bool:
    sizes = TRACKS[track]
    all_masks = [(scores >= THRESHOLD, labels == ANOMALY, labels == VOID) for scores, labels in frames]
    n_found = sum(ndimage.label(pred & ~void, structure=np.ones((3, 3)))[1] for pred, _, void in all_masks)

    # Each implementation runs over all frames in its own loop, as in an evaluation run, so
    # neither is timed with caches just flushed by the other.
    fast_siou, fast_ppv, reference_siou, reference_ppv = [], [], [], []
    fast_seconds = reference_seconds = update_seconds = 0.0
    for masks in all_masks:
        (siou, ppv), seconds = timed(component_stats, *masks, sizes.min_pred, sizes.min_gt)
        fast_seconds += seconds
        fast_siou.append(siou)
        fast_ppv.append(ppv)
    for masks in all_masks:
        (siou, ppv), seconds = timed(reference_component_stats, *masks, sizes.min_pred, sizes.min_gt)
        reference_seconds += seconds
        reference_siou.append(siou)
        reference_ppv.append(ppv)
    metrics = ComponentMetrics(track)
    for scores, labels in frames:
        update_seconds += timed(metrics.update, scores, labels, THRESHOLD)[1]

    identical = all(
        np.array_equal(fast, reference)
        for fast, reference in zip(fast_siou + fast_ppv, reference_siou + reference_ppv)
    )
    result = metrics.compute()
    identical &= result == metrics_from_components(
        np.concatenate(reference_siou), np.concatenate(reference_ppv), len(frames)
    )
    ratio = reference_seconds / fast_seconds
    per_frame = 1e3 / len(frames)
    print(f"\n[{track}] min_pred {sizes.min_pred} px, min_gt {sizes.min_gt} px; "
          f"{n_found / len(frames):.0f} predicted components per frame before size filtering")
    print(f"[{track}] fast core {fast_seconds:.2f} s ({fast_seconds * per_frame:.1f} ms/frame); "
          f"reference {reference_seconds:.2f} s ({reference_seconds * per_frame:.0f} ms/frame); "
          f"ComponentMetrics.update {update_seconds * per_frame:.1f} ms/frame")
    print(f"[{track}] speed-up: {ratio:.1f}x (target ≥ {SPEED_UP_TARGET:g}x): "
          + ("target met" if ratio >= SPEED_UP_TARGET else "target NOT met"))
    print(f"[{track}] per-component sIoU/PPV arrays and metrics: "
          + ("identical" if identical else "MISMATCH between fast and reference"))
    print(f"[{track}] sIoU {result['siou']:.4f}  PPV {result['ppv']:.4f}  mean F1 {result['mean_f1']:.4f}  "
          f"({result['n_gt_components']} GT, {result['n_pred_components']} predicted components)")
    return identical


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=20, help="number of frames (default 20)")
    parser.add_argument("--size", default="1024x512", help="frame size WxH (default 1024x512)")
    parser.add_argument("--tracks", default="anomaly,obstacle", help="comma-separated tracks")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    width, height = (int(value) for value in args.size.lower().split("x"))
    frames = [make_frame(width, height, index, args.seed) for index in range(args.frames)]
    print(f"{args.frames} frames of {width}x{height}, threshold {THRESHOLD} on smoothed-noise scores")
    agreements = [run_track(track, frames) for track in args.tracks.split(",")]  # run every track
    identical = all(agreements)
    print("\nfast and reference agree exactly" if identical else "\nfast and reference DIFFER")
    return 0 if identical else 1


if __name__ == "__main__":
    sys.exit(main())
