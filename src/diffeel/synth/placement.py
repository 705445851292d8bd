"""Where an object goes: a contact point on the drivable area, sized by the flat-road camera model.

An object of real height ``h`` standing on the road at image row ``v`` is
``camera.pixel_height(h, v)`` pixels tall (``synthesis.md``, "Perspective scale"); its width follows
from the cut-out's aspect ratio. The contact (foot) point is the bottom-centre of the box. A
placement is accepted when

- the contact point is a drivable pixel below the horizon,
- the box lies entirely inside the image and is at least ``min_height_px`` tall,
- the footprint, the middle ``footprint`` share (60 %) of the box's bottom row, is all drivable,
- the box covers no pixel of an ``avoid`` class (by default the Cityscapes "things": person …
  bicycle). A label map has no depth order, so an object pasted over a car could end up in front of
  a car that is nearer to the camera; the spec forbids that, and refusing any overlap is the safe
  reading. Pass ``avoid=()`` to allow it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..errors import DiffeelError
from ..geometry import Camera
from ..labels import TRAIN_ID

DRIVABLE = (TRAIN_ID["road"],)
OCCLUDERS = tuple(TRAIN_ID[name] for name in ("person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle"))
MIN_HEIGHT_PX = 4
FOOTPRINT_SHARE = 0.6


@dataclass(frozen=True)
class Placement:
    """An object box: rows ``top .. top+height-1``, columns ``left .. left+width-1``.

    ``foot_row`` is the box's bottom row, where the object touches the road.
    """

    top: int
    left: int
    height: int
    width: int
    foot_row: int

    @property
    def bottom(self) -> int:
        """One past the last row."""
        return self.top + self.height

    @property
    def right(self) -> int:
        """One past the last column."""
        return self.left + self.width

    @property
    def foot_col(self) -> int:
        return self.left + self.width // 2

    @property
    def slices(self) -> tuple[slice, slice]:
        return np.s_[self.top:self.bottom, self.left:self.right]


def footprint_columns(width: int, share: float = FOOTPRINT_SHARE) -> tuple[int, int]:
    """Column range ``[a, b)`` (relative to the box) of the middle ``share`` of a box ``width`` wide."""
    margin = math.floor((1.0 - share) / 2.0 * width)
    return margin, width - margin


def box_size(camera: Camera, real_height: float, foot_row, aspect: float) -> tuple[np.ndarray, np.ndarray]:
    """Box ``(height, width)`` in pixels for an object standing at ``foot_row`` (scalar or array).

    The row is measured at the pixel centre (``foot_row + 0.5``), as in ``Camera.ground_depth_map``.
    """
    foot = np.asarray(foot_row, dtype=np.float64)
    height = np.rint(np.maximum(0.0, real_height * (foot + 0.5 - camera.horizon_row) / camera.height)).astype(np.int64)
    width = np.maximum(1, np.rint(aspect * height)).astype(np.int64)
    return height, width


def label_member(labels: np.ndarray, ids) -> np.ndarray:
    """``np.isin(labels, ids)``; a lookup table for uint8 maps (several times faster)."""
    if labels.dtype == np.uint8:
        table = np.zeros(256, dtype=bool)
        table[[i for i in np.atleast_1d(ids) if 0 <= i < 256]] = True
        return table[labels]
    return np.isin(labels, ids)


def find_placement(train_ids, object_aspect: float, real_height: float, camera: Camera, rng: np.random.Generator,
                   drivable=DRIVABLE, attempts: int = 50, *, avoid=OCCLUDERS, min_height_px: int = MIN_HEIGHT_PX,
                   footprint: float = FOOTPRINT_SHARE, score=None) -> Placement | None:
    """A valid :class:`Placement` for an object, or None when none is found.

    Candidate contact points are drawn (without replacement, at most ``attempts``) from the drivable
    pixels whose box fits the image for geometric reasons alone (the object is tall enough to see,
    its box stays inside the image, its height the ground-plane perspective's at that row); each is
    then checked for its footprint and for ``avoid`` classes. Without ``score`` the first that
    passes is returned; with ``score(placement) -> float`` every candidate that passes is scored and
    the best returned (the first of equals): the paper's search for an optimal placement. None when
    the map has no such pixel (no road, a road too small or only near the horizon) or every attempt
    failed.
    """
    train_ids = np.asarray(train_ids)
    if train_ids.ndim != 2:
        raise DiffeelError(f"train_ids must be an (H, W) label map, got shape {train_ids.shape}")
    rows, cols = train_ids.shape
    if (camera.width, camera.rows) != (cols, rows):
        raise DiffeelError(f"the camera is for {camera.width}×{camera.rows} images but the label map is {cols}×{rows} "
                           "(use Camera.for_size)")
    if not (object_aspect > 0 and math.isfinite(object_aspect)) or not (real_height > 0 and math.isfinite(real_height)):
        raise DiffeelError(f"object aspect and real height must be positive, got {object_aspect!r} and {real_height!r}")

    row_index = np.arange(rows)
    heights, widths = box_size(camera, real_height, row_index, object_aspect)
    row_ok = (heights >= max(1, min_height_px)) & (row_index - heights + 1 >= 0) & (widths <= cols)
    usable_rows = np.flatnonzero(row_ok)
    if usable_rows.size == 0:
        return None
    first = usable_rows[0]  # heights grow with the row, so the usable rows are the bottom band ...
    half = widths[first:, None] // 2
    col_index = np.arange(cols)[None, :]
    usable = label_member(train_ids[first:], drivable)
    usable &= row_ok[first:, None]  # ... except where the box grows taller than the image
    usable &= col_index >= half  # left >= 0
    usable &= col_index <= cols - widths[first:, None] + half  # left + width <= cols
    candidates = np.flatnonzero(usable) + first * cols
    if candidates.size == 0:
        return None

    drivable_set = np.asarray(drivable)
    avoid_set = np.asarray(avoid)
    tries = rng.choice(candidates.size, size=min(int(attempts), candidates.size), replace=False)
    best, best_score = None, -math.inf
    for flat in candidates[tries]:
        foot_row, foot_col = divmod(int(flat), cols)
        height, width = int(heights[foot_row]), int(widths[foot_row])
        top, left = foot_row - height + 1, foot_col - width // 2
        a, b = footprint_columns(width, footprint)
        if not label_member(train_ids[foot_row, left + a:left + b], drivable_set).all():
            continue
        if avoid_set.size and label_member(train_ids[top:foot_row + 1, left:left + width], avoid_set).any():
            continue
        placement = Placement(top, left, height, width, foot_row)
        if score is None:
            return placement
        value = float(score(placement))
        if value > best_score:
            best, best_score = placement, value
    return best
