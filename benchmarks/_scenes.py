"""Synthetic label maps shared by the metric benchmarks: a void band, inliers, anomaly blobs."""

from __future__ import annotations

import numpy as np


def blob_labels(rng: np.random.Generator, width: int, height: int, void_share: float, max_blobs: int) -> np.ndarray:
    """0 inlier, 255 void (the top ``void_share`` of the rows), 1 on 1..``max_blobs`` elliptic
    anomaly blobs below the horizon (centre rows 55–90 %, radius 1–5 % of the width)."""
    rows, cols = np.ogrid[:height, :width]
    labels = np.zeros((height, width), dtype=np.uint8)
    labels[: int(height * void_share)] = 255
    for _ in range(rng.integers(1, max_blobs + 1)):
        centre_row, centre_col = rng.uniform(0.55, 0.9) * height, rng.uniform(0.2, 0.8) * width
        radius = rng.uniform(0.01, 0.05) * width
        labels[((rows - centre_row) / (0.7 * radius)) ** 2 + ((cols - centre_col) / radius) ** 2 <= 1] = 1
    return labels
