"""Benchmark statistics (Table I / Figure 2): sizes, anomaly share, components, where anomalies lie."""

from __future__ import annotations

from collections import Counter

import cv2
import numpy as np

from ..labels import ANOMALY, VOID
from .benchmarks import Frame

HEATMAP_SIZE = (128, 64)  # (width, height): frames of any resolution are averaged on one grid


def benchmark_stats(frames: list[Frame], progress: bool = True) -> tuple[dict, dict]:
    """Plain statistics and the raw material for plots (heat map, per-frame shares, sizes)."""
    from tqdm import tqdm

    resolutions: Counter = Counter()
    heatmap = np.zeros(HEATMAP_SIZE[::-1], dtype=np.float64)
    anomaly_percent, component_sizes = [], []
    totals = Counter()
    for frame in tqdm(frames, desc="statistics", unit="frame", disable=not progress):
        label = frame.load_label()
        height, width = label.shape
        resolutions[f"{width}x{height}"] += 1
        anomaly = (label == ANOMALY).astype(np.uint8)
        valid = int((label != VOID).sum())
        totals["pixels"] += label.size
        totals["void"] += label.size - valid
        totals["anomaly"] += int(anomaly.sum())
        anomaly_percent.append(100.0 * anomaly.sum() / valid if valid else 0.0)
        count, _, stats, _ = cv2.connectedComponentsWithStats(anomaly, connectivity=8)
        component_sizes.extend(int(a) for a in stats[1:, cv2.CC_STAT_AREA])
        heatmap += cv2.resize(anomaly.astype(np.float32), HEATMAP_SIZE, interpolation=cv2.INTER_AREA) > 0
    n_frames = len(frames)
    sizes = np.array(component_sizes) if component_sizes else np.zeros(0)
    stats = {
        "n_frames": n_frames,
        "resolutions": dict(resolutions.most_common()),
        "anomaly_pixel_percent": 100.0 * totals["anomaly"] / max(totals["pixels"] - totals["void"], 1),
        "void_pixel_percent": 100.0 * totals["void"] / max(totals["pixels"], 1),
        "frames_without_anomaly": int(sum(1 for p in anomaly_percent if p == 0)),
        "n_components": int(len(sizes)),
        "component_size_quantiles": {
            q: float(np.quantile(sizes, float(q))) for q in ("0.1", "0.25", "0.5", "0.75", "0.9")
        } if len(sizes) else {},
        "metadata": _metadata_counts(frames),
    }
    material = {"heatmap": heatmap / max(n_frames, 1), "anomaly_percent": anomaly_percent, "component_sizes": component_sizes}
    return stats, material


def _metadata_counts(frames: list[Frame]) -> dict:
    counts: dict[str, Counter] = {}
    for frame in frames:
        for name, value in frame.metadata.items():
            for item in value if isinstance(value, list) else [value]:
                counts.setdefault(name, Counter())[str(item)] += 1
    return {name: dict(counter.most_common()) for name, counter in counts.items()}


def stats_markdown(name: str, stats: dict) -> str:
    lines = [
        f"# {name}: statistics",
        "",
        "| frames | resolutions | anomaly px % (non-void) | void px % | frames without anomaly | components | median component px |",
        "|---:|---|---:|---:|---:|---:|---:|",
        f"| {stats['n_frames']} | {', '.join(f'{r} ×{n}' for r, n in stats['resolutions'].items())} "
        f"| {stats['anomaly_pixel_percent']:.2f} | {stats['void_pixel_percent']:.2f} | {stats['frames_without_anomaly']} "
        f"| {stats['n_components']} | {stats['component_size_quantiles'].get('0.5', float('nan')):.0f} |",
    ]
    for field_name, counts in stats["metadata"].items():
        lines += ["", f"{field_name}: " + ", ".join(f"{value} ({count})" for value, count in counts.items())]
    return "\n".join(lines) + "\n"
