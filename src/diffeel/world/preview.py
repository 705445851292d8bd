"""A contact sheet of the world: each weather on another landform, with its labels."""

from __future__ import annotations

import cv2
import numpy as np

from ..data.benchmarks import LANDFORMS, WEATHERS
from ..labels import ANOMALY, VOID, train_id_palette
from .make import FramePlan, frame_seed, render_test_frame


def _caption(tile: np.ndarray, text: str) -> np.ndarray:
    tile = tile.copy()
    scale = max(0.35, tile.shape[0] / 420)
    cv2.putText(tile, text, (6, int(18 * scale / 0.45)), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(tile, text, (6, int(18 * scale / 0.45)), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), 1, cv2.LINE_AA)
    return tile


def contact_sheet(seed: int = 0, size=(384, 192)) -> np.ndarray:
    """Rows: the seven weathers (each on a different landform). Columns: the image, its semantic
    layout in Cityscapes colours (anomalies red, void anomalies white), and the evaluation label
    over the clear scene (anomaly red, void grey)."""
    palette = train_id_palette()
    rows = []
    for index, weather in enumerate(WEATHERS):
        landform = LANDFORMS[index % len(LANDFORMS)]
        plan = FramePlan("test", index, weather, landform, weather, 3 if weather != "clear" else 0,
                         frame_seed(seed, "test", 10_000 + index), ("cow", "deer"), (True, False))
        image, label, scene = render_test_frame(plan, size)
        semantic = palette[scene.train_ids]
        semantic[label == ANOMALY] = (255, 0, 0)
        semantic[label == VOID] = (255, 255, 255)
        overlay = scene.image.astype(np.float32) * 0.6
        overlay[label == ANOMALY] = (255, 40, 40)
        overlay[label == VOID] = (160, 160, 160)
        rows.append(np.concatenate([
            _caption(image, f"{weather} / {landform}"),
            _caption(semantic, "semantic layout"),
            _caption(overlay.astype(np.uint8), "label: anomaly red, void grey"),
        ], axis=1))
    return np.concatenate(rows, axis=0)
