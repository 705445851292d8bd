"""Exact streaming pixel metrics vs scikit-learn, measured in the same run.

Builds synthetic 2048×1024 score maps (anomaly blobs on the road, a void band, noisy scores),
feeds them frame by frame to ``diffeel.metrics.PixelMetrics`` and times it against sklearn's
``average_precision_score`` + ``roc_curve`` (AUPRC, FPR95, AUROC) on the same pixels.

sklearn must hold every pixel at once (and sorts them), so by default it runs on a subsample of
frames that fits comfortably in memory; its time is then scaled linearly to the full pixel count,
which *favours* sklearn (its cost grows as n log n). On the subsample both are computed and must
agree to 1e-9. Peak memory is the peak resident memory of a fresh process over 25 % and 100 % of the frames,
minus what it held before its first update.

    python benchmarks/metrics_bench.py                      # 1e8 px per dtype (default)
    python benchmarks/metrics_bench.py --pixels 2e9 --sklearn-pixels 2e7   # the 1000-frame scenario
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import numpy as np
from _memory import peak_resident_bytes, resident_bytes
from _scenes import blob_labels
from sklearn.metrics import average_precision_score, roc_curve

from diffeel.metrics import PixelMetrics

TARGETS = {"float16": 50.0, "float32": 5.0}


def make_layouts(width: int, height: int, count: int, seed: int) -> list[np.ndarray]:
    """A few label maps: void band at the top, inlier elsewhere, elliptic anomaly blobs below the horizon."""
    rng = np.random.default_rng(seed)
    return [blob_labels(rng, width, height, void_share=1 / 8, max_blobs=4) for _ in range(count)]


def make_frame(layout: np.ndarray, index: int, seed: int, dtype) -> np.ndarray:
    rng = np.random.default_rng((seed, index))
    scores = rng.standard_normal(layout.shape, dtype=np.float32)
    scores += 1.5 * (layout == 1)
    return (1.0 / (1.0 + np.exp(-scores))).astype(dtype)  # in (0, 1), like a probability map


def frames(n_frames: int, layouts, seed: int, dtype):
    for index in range(n_frames):
        layout = layouts[index % len(layouts)]
        yield make_frame(layout, index, seed, dtype), layout


def run_diffeel(n_frames, layouts, seed, dtype):
    metrics = PixelMetrics()
    elapsed = 0.0
    for index, (scores, labels) in enumerate(frames(n_frames, layouts, seed, dtype), start=1):
        start = time.perf_counter()
        metrics.update(scores, labels)
        if index == n_frames:
            result = metrics.compute()
        elapsed += time.perf_counter() - start
    return result, elapsed, metrics.state_nbytes


def probe_memory(n_frames, layouts, seed, dtype) -> None:
    """Run in a fresh process: print resident memory before the first update and the peak after."""
    metrics = PixelMetrics()
    baseline = None
    for scores, labels in frames(n_frames, layouts, seed, dtype):
        if baseline is None:
            baseline = resident_bytes()  # interpreter, numpy, torch and one input frame
            with open("/proc/self/clear_refs", "w") as stream:
                stream.write("5")  # reset the peak (VmHWM) so that set-up does not count
        metrics.update(scores, labels)
    metrics.compute()
    print(json.dumps({"baseline": baseline, "peak": peak_resident_bytes(), "state": metrics.state_nbytes}))


def measure_memory(n_frames, args, dtype_name) -> dict:
    command = [sys.executable, __file__, "--probe-frames", str(n_frames), "--dtypes", dtype_name,
               "--size", args.size, "--seed", str(args.seed)]
    output = subprocess.run(command, capture_output=True, text=True, check=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def run_sklearn(n_frames, layouts, seed, dtype):
    scores, labels = [], []
    for frame_scores, frame_labels in frames(n_frames, layouts, seed, dtype):
        valid = frame_labels != 255
        scores.append(frame_scores[valid])
        labels.append(frame_labels[valid])
    scores, labels = np.concatenate(scores), np.concatenate(labels)
    start = time.perf_counter()
    auprc = average_precision_score(labels, scores)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fpr95 = fpr[np.argmax(tpr >= 0.95)]
    auroc = float(np.trapezoid(tpr, fpr))
    elapsed = time.perf_counter() - start
    return {"auprc": auprc, "fpr95": fpr95, "auroc": auroc}, elapsed


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pixels", type=float, default=1e8, help="pixels per dtype for diffeel (default 1e8)")
    parser.add_argument("--sklearn-pixels", type=float, default=2e7, help="pixels sklearn evaluates (default 2e7)")
    parser.add_argument("--size", default="2048x1024", help="frame size WxH (default 2048x1024)")
    parser.add_argument("--dtypes", default="float16,float32", help="comma-separated score dtypes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    parser.add_argument("--probe-frames", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    width, height = (int(v) for v in args.size.lower().split("x"))
    frame_pixels = width * height
    n_frames = max(1, round(args.pixels / frame_pixels))
    n_sklearn = max(1, min(n_frames, round(args.sklearn_pixels / frame_pixels)))
    layouts = make_layouts(width, height, 8, args.seed)
    if args.probe_frames:
        probe_memory(args.probe_frames, layouts, args.seed, np.dtype(args.dtypes))
        return 0
    print(f"frames: {n_frames} of {width}x{height} ({n_frames * frame_pixels:.3g} px) per dtype; "
          f"sklearn on the first {n_sklearn} ({n_sklearn * frame_pixels:.3g} px), time scaled linearly "
          f"to {n_frames} frames (favours sklearn: it sorts, n log n)")
    ok = True
    for dtype_name in args.dtypes.split(","):
        dtype = np.dtype(dtype_name)
        small_result, _, _ = run_diffeel(n_sklearn, layouts, args.seed, dtype)
        reference, sklearn_seconds = run_sklearn(n_sklearn, layouts, args.seed, dtype)
        worst = max(abs(small_result[k] - reference[k]) for k in reference)
        full_result, diffeel_seconds, state_bytes = run_diffeel(n_frames, layouts, args.seed, dtype)
        sklearn_scaled = sklearn_seconds * n_frames / n_sklearn
        ratio = sklearn_scaled / diffeel_seconds
        exact = worst <= 1e-9
        ok &= exact and ratio >= TARGETS.get(dtype_name, 0)
        print(f"\n[{dtype_name}] diffeel {diffeel_seconds:.2f} s for {n_frames} frames "
              f"({diffeel_seconds / n_frames * 1e3:.0f} ms/frame); sklearn {sklearn_seconds:.2f} s for "
              f"{n_sklearn} frames → {sklearn_scaled:.1f} s scaled")
        print(f"[{dtype_name}] speed-up vs sklearn: {ratio:.1f}x (target ≥ {TARGETS.get(dtype_name, 0):g}x)")
        print(f"[{dtype_name}] max |diffeel - sklearn| over AUPRC/FPR95/AUROC on {n_sklearn} frames: "
              f"{worst:.2e} ({'exact' if exact else 'MISMATCH'})")
        print(f"[{dtype_name}] full run: AUPRC {full_result['auprc']:.6f}  FPR95 {full_result['fpr95']:.6f}  "
              f"AUROC {full_result['auroc']:.6f}  ({full_result['n_pixels']:,} non-void px)")
        print(f"[{dtype_name}] count state after {n_frames} frames: {state_bytes / 2**20:.1f} MiB")
        if not args.no_memory:
            shown = []
            for fraction in (0.25, 1.0):
                frames_run = max(1, round(n_frames * fraction))
                memory = measure_memory(frames_run, args, dtype_name)
                shown.append(f"{frames_run} frames: peak RSS {memory['peak'] / 2**20:.0f} MiB = "
                             f"{memory['baseline'] / 2**20:.0f} MiB before the first update + "
                             f"{(memory['peak'] - memory['baseline']) / 2**20:.0f} MiB")
            print(f"[{dtype_name}] memory, fresh process per run: " + "; ".join(shown))
    print("\nall targets met" if ok else "\nsome target NOT met")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
