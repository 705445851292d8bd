"""A pinhole camera over a flat road: horizon, ground depth and perspective-correct object sizes.

Defaults are Cityscapes' camera at 2048×1024 (fx 2262.52, fy 2265.30, u0 1096.98, v0 513.14,
1.22 m above the road, pitched 0.038 rad down); :meth:`Camera.for_size` scales the intrinsics to
any resolution. The horizon lies at ``v_h = v0 - fy·tan(pitch)`` (row ≈ 427 at 1024 rows); a
ground point seen at row ``v`` below it is at depth ``≈ height·fy / (v - v_h)``, and an object of
real height ``h`` standing there is ``≈ h·(v - v_h) / height`` pixels tall.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

SKY_DEPTH = 1000.0  # metres assigned above the horizon: "far" for fog and scattering


@dataclass(frozen=True)
class Camera:
    fx: float = 2262.52
    fy: float = 2265.30
    u0: float = 1096.98
    v0: float = 513.14
    height: float = 1.22
    pitch: float = 0.038
    width: int = 2048
    rows: int = 1024

    @classmethod
    def for_size(cls, width: int, rows: int) -> "Camera":
        """The Cityscapes camera with intrinsics scaled to ``width × rows``."""
        base = cls()
        sx, sy = width / base.width, rows / base.rows
        return replace(base, fx=base.fx * sx, fy=base.fy * sy, u0=base.u0 * sx, v0=base.v0 * sy, width=width, rows=rows)

    @property
    def horizon_row(self) -> float:
        return self.v0 - self.fy * math.tan(self.pitch)

    def ground_depth_at_row(self, row) -> np.ndarray:
        """Depth (m) of the road seen at image row(s) below the horizon; SKY_DEPTH above it."""
        below = np.asarray(row, dtype=np.float64) - self.horizon_row
        with np.errstate(divide="ignore"):
            depth = np.where(below > 0, self.height * self.fy / np.maximum(below, 1e-9), SKY_DEPTH)
        return np.minimum(depth, SKY_DEPTH)

    def ground_depth_map(self) -> np.ndarray:
        """A ``(rows, width)`` float32 depth map of the flat road model (sky far)."""
        column = self.ground_depth_at_row(np.arange(self.rows) + 0.5).astype(np.float32)
        return np.repeat(column[:, None], self.width, axis=1)

    def pixel_height(self, real_height: float, foot_row: float) -> float:
        """Image height (px) of an object ``real_height`` m tall standing on the road at ``foot_row``."""
        return max(0.0, real_height * (foot_row - self.horizon_row) / self.height)

    def row_at_depth(self, depth: float) -> float:
        """The image row where the road is ``depth`` metres away."""
        return self.horizon_row + self.height * self.fy / depth

    def lateral_to_column(self, lateral: float, depth: float) -> float:
        """Image column of a road point ``lateral`` m right of the camera axis at ``depth`` m."""
        return self.u0 + self.fx * lateral / depth
