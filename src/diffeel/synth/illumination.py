"""Illumination matching: partial Reinhard colour transfer in Lab toward the object's surroundings.

Reinhard et al. (2001) give the object the mean and standard deviation of a target per Lab channel:
``out = (x - μ_obj)·σ_tgt/σ_obj + μ_tgt``. The target here is the *ring*, a band of background
pixels around the placement box, so the object takes on the local brightness and colour cast (a
shadowed road, dusk, a tinted scene).

``strength`` (default 0.6) moves the statistics only part of the way: ``μ_tgt = μ_obj +
s·(μ_ring - μ_obj)`` and likewise for σ. A full transfer (``s = 1``) would give the object the
road's own colour distribution: a red crate on grey asphalt would turn grey, and an anomaly
camouflaged as road is both unrealistic and not what the model should learn to find. Partial
transfer keeps part of the object's colour identity while removing the tell-tale brightness jump
that a copy-paste seam otherwise shows. The σ ratio is clamped to ``[1/4, 4]`` so a nearly flat
object or ring cannot blow up noise.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import DiffeelError
from .compose import check_image, check_mask
from .placement import Placement

DEFAULT_STRENGTH = 0.6
RING_SHARE = 0.5  # ring width as a share of the box's longer side
MIN_RING_PX = 3
MAX_STD_RATIO = 4.0


def to_lab(rgb: np.ndarray) -> np.ndarray:
    """uint8 RGB → float32 Lab (L in 0..100)."""
    return cv2.cvtColor(rgb.astype(np.float32) / 255.0, cv2.COLOR_RGB2Lab)


def from_lab(lab: np.ndarray) -> np.ndarray:
    rgb = cv2.cvtColor(lab.astype(np.float32), cv2.COLOR_Lab2RGB)
    return np.clip(np.rint(rgb * 255.0), 0, 255).astype(np.uint8)


def ring_window(shape: tuple[int, int], placement: Placement, ring_share: float = RING_SHARE,
                min_ring_px: int = MIN_RING_PX) -> tuple[tuple[slice, slice], np.ndarray]:
    """The ring around the placement box: a window of the image and a boolean mask over that window."""
    rows, cols = shape
    margin = max(int(min_ring_px), round(ring_share * max(placement.height, placement.width)))
    r0, r1 = max(0, placement.top - margin), min(rows, placement.bottom + margin)
    c0, c1 = max(0, placement.left - margin), min(cols, placement.right + margin)
    ring = np.ones((max(0, r1 - r0), max(0, c1 - c0)), dtype=bool)
    ring[max(0, placement.top - r0):max(0, placement.bottom - r0), max(0, placement.left - c0):max(0, placement.right - c0)] = False
    return np.s_[r0:r1, c0:c1], ring


def ring_mask(shape: tuple[int, int], placement: Placement, ring_share: float = RING_SHARE,
              min_ring_px: int = MIN_RING_PX) -> np.ndarray:
    """Boolean ``(H, W)`` mask of the band around the placement box (clipped to the image)."""
    window, ring = ring_window(shape, placement, ring_share, min_ring_px)
    full = np.zeros(shape, dtype=bool)
    full[window] = ring
    return full


def match_illumination(object_rgb, object_mask, image, placement: Placement, strength: float = DEFAULT_STRENGTH, *,
                       ring_share: float = RING_SHARE, exclude=None) -> np.ndarray:
    """The object's colours moved toward the Lab statistics of the ring around ``placement``.

    ``object_rgb`` (h, w, 3) uint8 and ``object_mask`` (h, w) bool must already have the placement's
    size. ``exclude`` (optional ``(H, W)`` bool) removes pixels from the ring, e.g. earlier pasted
    objects. Pixels outside the mask are returned unchanged; an empty ring returns a copy.
    """
    object_rgb = check_image(object_rgb, "object_rgb")
    object_mask = check_mask(object_mask, object_rgb.shape[:2])
    image = check_image(image)
    if not 0.0 <= strength <= 1.0:
        raise DiffeelError(f"strength must be between 0 and 1, got {strength}")
    if object_rgb.shape[:2] != (placement.height, placement.width):
        raise DiffeelError(f"the object is {object_rgb.shape[1]}×{object_rgb.shape[0]} but the placement is "
                           f"{placement.width}×{placement.height}")
    result = object_rgb.copy()
    window, ring = ring_window(image.shape[:2], placement, ring_share)  # only the window is converted
    if exclude is not None:
        ring &= ~np.asarray(exclude, dtype=bool)[window]
    if strength == 0.0 or not ring.any() or not object_mask.any():
        return result

    ring_lab = to_lab(image[window])[ring].astype(np.float64)
    object_lab = to_lab(object_rgb)
    pixels = object_lab[object_mask].astype(np.float64)
    mean_obj, std_obj = pixels.mean(axis=0), pixels.std(axis=0)
    mean_ring, std_ring = ring_lab.mean(axis=0), ring_lab.std(axis=0)
    mean_target = mean_obj + strength * (mean_ring - mean_obj)
    std_target = std_obj + strength * (std_ring - std_obj)
    ratio = np.where(std_obj > 1e-6, std_target / np.maximum(std_obj, 1e-6), 1.0)
    ratio = np.clip(ratio, 1.0 / MAX_STD_RATIO, MAX_STD_RATIO)
    moved = (pixels - mean_obj) * ratio + mean_target
    moved[:, 0] = np.clip(moved[:, 0], 0.0, 100.0)
    object_lab[object_mask] = moved.astype(np.float32)
    result[object_mask] = from_lab(object_lab)[object_mask]
    return result
