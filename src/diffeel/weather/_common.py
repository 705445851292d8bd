"""Shared pieces of the weather conditions: the scene, colour spaces, scattering, noise and streaks.

Sizes are given in pixels of a 2048-pixel-wide image (``REFERENCE_WIDTH``) and scaled to the image
at hand, so a 256-pixel-wide thumbnail gets the same look as the full frame. Smooth layers (light,
fog density, masks) are computed at most ``LAYER_MAX_WIDTH`` pixels wide and upsampled: they have
no fine detail, and that keeps every condition far below the time budget.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import cv2
import numpy as np

from diffeel.geometry import SKY_DEPTH, Camera

REFERENCE_WIDTH = 2048
REFERENCE_ROWS = 1024
LAYER_MAX_WIDTH = 512
KOSCHMIEDER_CONTRAST = 2.996  # -ln(0.05): visibility is where 5 % of the contrast is left
HORIZON_SOFTNESS_PX = 3.0  # the road mask fades in over a few rows below the horizon


def srgb_to_linear(srgb: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB decoding of values in [0, 1]."""
    srgb = np.clip(srgb, 0.0, 1.0)
    return np.where(srgb <= 0.04045, srgb / 12.92, ((srgb + 0.055) / 1.055) ** 2.4).astype(np.float32)


def linear_to_srgb(linear: np.ndarray) -> np.ndarray:
    """IEC 61966-2-1 sRGB encoding; values outside [0, 1] are clipped first (the sensor saturates)."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear ** (1 / 2.4) - 0.055).astype(np.float32)


_LINEAR_OF_CODE = srgb_to_linear(np.arange(256, dtype=np.float32) / 255.0)


def srgb_colour_to_linear(colour: tuple[float, float, float]) -> np.ndarray:
    return srgb_to_linear(np.asarray(colour, dtype=np.float32))


def to_uint8(srgb: np.ndarray) -> np.ndarray:
    """Round float sRGB in [0, 1] to uint8 (out-of-range values clip)."""
    return cv2.convertScaleAbs(np.clip(srgb, 0.0, 1.0), alpha=255.0)


def luminance(rgb: np.ndarray) -> np.ndarray:
    """Rec. 709 luma weights over the last axis."""
    return rgb @ np.asarray([0.2126, 0.7152, 0.0722], dtype=np.float32)


def channel_spread(rgb: np.ndarray) -> np.ndarray:
    """max - min over the colour channels (a cheap saturation); faster than reducing the last axis."""
    red, green, blue = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    return np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)


def by_severity(table, severity: int):
    """The entry of a five-entry per-severity table."""
    return table[severity - 1]


def resize(layer: np.ndarray, width: int, rows: int, interpolation=cv2.INTER_LINEAR) -> np.ndarray:
    if layer.shape[1] == width and layer.shape[0] == rows:
        return layer
    return cv2.resize(layer, (width, rows), interpolation=interpolation)


@dataclass
class Scene:
    """One image with its depth and camera: what every condition starts from."""

    image: np.ndarray  # (H, W, 3) uint8 sRGB
    depth: np.ndarray  # (H, W) float32 metres, SKY_DEPTH where unknown or sky
    camera: Camera

    @property
    def rows(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]

    @property
    def scale(self) -> float:
        """Image width relative to the reference width: multiply reference pixel sizes by it."""
        return self.width / REFERENCE_WIDTH

    @property
    def reference_area(self) -> float:
        """Image area in units of the reference frame once scaled to the reference width.

        Counts of streaks, flakes and crystals are given per reference frame and multiplied by
        this, so the coverage does not change with resolution (only with aspect ratio).
        """
        return (self.rows / self.scale) / REFERENCE_ROWS

    @cached_property
    def srgb(self) -> np.ndarray:
        return self.image.astype(np.float32) * np.float32(1 / 255)

    @cached_property
    def linear(self) -> np.ndarray:
        return _LINEAR_OF_CODE[self.image]

    @cached_property
    def layer_shape(self) -> tuple[int, int]:
        """(rows, width) of the smooth layers: at most LAYER_MAX_WIDTH wide, same aspect."""
        factor = max(1.0, self.width / LAYER_MAX_WIDTH)
        return max(1, round(self.rows / factor)), max(1, round(self.width / factor))

    def upsample(self, layer: np.ndarray) -> np.ndarray:
        """A smooth layer brought to the image size (bilinear)."""
        return resize(layer, self.width, self.rows)

    def downsample(self, image: np.ndarray) -> np.ndarray:
        """An image-sized array brought to the layer size (area averaging)."""
        rows, width = self.layer_shape
        return resize(image, width, rows, interpolation=cv2.INTER_AREA)

    @cached_property
    def layer_depth(self) -> np.ndarray:
        """The depth map at the layer size. Nearest neighbour: averaging sky with road is no depth."""
        rows, width = self.layer_shape
        return resize(self.depth, width, rows, interpolation=cv2.INTER_NEAREST)

    @cached_property
    def road_weight(self) -> np.ndarray:
        """(H, 1) float32: 1 on rows below the horizon (the ground), 0 above, soft across it."""
        below = np.arange(self.rows, dtype=np.float32) + 0.5 - self.camera.horizon_row
        return np.clip(below / (HORIZON_SOFTNESS_PX * max(self.scale, 0.25)), 0.0, 1.0)[:, None]

    def layer_pixel_grid(self) -> tuple[np.ndarray, np.ndarray]:
        """Image-pixel (column, row) coordinates of the layer pixel centres, as (1, w) and (h, 1)."""
        rows, width = self.layer_shape
        columns = (np.arange(width, dtype=np.float32) + 0.5) * (self.width / width)
        row_coords = (np.arange(rows, dtype=np.float32) + 0.5) * (self.rows / rows)
        return columns[None, :], row_coords[:, None]


def transmission(depth: np.ndarray, extinction) -> np.ndarray:
    """Beer-Lambert transmission ``exp(-β·d)``; with a per-channel β the result gets a channel axis."""
    extinction = np.asarray(extinction, dtype=np.float32)
    if extinction.ndim == 0:
        return np.exp(-extinction * depth)
    return np.exp(-depth[..., None] * extinction)


def extinction_for_visibility(visibility_m: float) -> float:
    """Koschmieder: the extinction coefficient β (1/m) that leaves 5 % contrast at ``visibility_m``."""
    return KOSCHMIEDER_CONTRAST / visibility_m


def scatter(radiance: np.ndarray, transmitted: np.ndarray, airlight: np.ndarray) -> np.ndarray:
    """Koschmieder's atmospheric scattering ``I = J·t + A·(1 - t)`` (linear RGB).

    Computed as ``A + (J - A)·t`` in place: three passes over the image instead of five.
    """
    if transmitted.ndim == 2:
        transmitted = transmitted[..., None]
    scattered = radiance - airlight
    scattered *= transmitted
    scattered += airlight
    return scattered


def forward_scatter_blur(scene: Scene, radiance: np.ndarray, transmitted: np.ndarray, sigma_px: float) -> np.ndarray:
    """Blur that grows as transmission falls: light scattered by a small angle still reaches the camera.

    The blurred copy is made at the layer size (cheap) and mixed in with weight ``1 - t``.
    """
    width = scene.layer_shape[1]
    layer_sigma = max(0.5, sigma_px * scene.scale * width / scene.width)
    blurred = scene.upsample(cv2.GaussianBlur(scene.downsample(radiance), (0, 0), layer_sigma))
    if transmitted.ndim == 2:
        transmitted = transmitted[..., None]
    return blurred + (radiance - blurred) * transmitted


def fractal_noise(rng: np.random.Generator, rows: int, width: int, cell_px: float, octaves: int = 3,
                  stretch: float = 1.0) -> np.ndarray:
    """Smooth value noise of zero mean and about unit std: octaves of upsampled random grids.

    ``cell_px`` is the grain of the coarsest octave in output pixels; ``stretch`` > 1 elongates the
    grain horizontally (wind-blown dust and snow).
    """
    total = np.zeros((rows, width), dtype=np.float32)
    weight_sum = 0.0
    for octave in range(octaves):
        cell = max(1.0, cell_px / 2**octave)
        grid_rows = max(2, math.ceil(rows / cell) + 1)
        grid_width = max(2, math.ceil(width / (cell * stretch)) + 1)
        grid = rng.standard_normal((grid_rows, grid_width), dtype=np.float32)
        amplitude = 0.5**octave
        total += amplitude * cv2.resize(grid, (width, rows), interpolation=cv2.INTER_CUBIC)
        weight_sum += amplitude**2
    total *= np.float32(1 / math.sqrt(weight_sum))
    return total


def streak_kernel(length_px: float, angle_deg: float, thickness_px: float = 1.0) -> np.ndarray:
    """A line of ``length_px`` at ``angle_deg`` from vertical, peak 1, faded towards both ends.

    Convolving isolated points with it draws motion-blurred streaks; it is not normalised, so a
    streak keeps the intensity of its point (a drop's brightness, not its energy, is what shows).
    """
    length_px = max(1.0, length_px)
    size = math.ceil(length_px + 2 * thickness_px) | 1
    centre = size // 2
    angle = math.radians(angle_deg)
    direction = np.array([math.sin(angle), math.cos(angle)])  # (x, y), y pointing down
    half = direction * (length_px - 1) / 2
    kernel = np.zeros((size, size), dtype=np.float32)
    shift = 4  # sub-pixel end points for cv2.line
    start = np.round((centre - half) * 2**shift).astype(int)
    end = np.round((centre + half) * 2**shift).astype(int)
    cv2.line(kernel, tuple(start), tuple(end), 1.0, max(1, round(thickness_px)), cv2.LINE_AA, shift)
    coords = np.arange(size, dtype=np.float32) - centre
    along = (coords[None, :] * direction[0] + coords[:, None] * direction[1]) / max(length_px / 2, 0.5)
    fade = np.clip(1.0 - along**2, 0.0, 1.0) ** 0.5  # elliptic fade: streak ends thin out
    return kernel * fade.astype(np.float32)


def streak_layer(rng: np.random.Generator, rows: int, width: int, count: int, kernel: np.ndarray,
                 intensity: tuple[float, float]) -> np.ndarray:
    """Isolated random points of random intensity convolved with ``kernel`` (streaks or flakes).

    Points are scattered over a margin around the canvas too, so streaks cut by the image border
    look the same everywhere.
    """
    margin = kernel.shape[0] // 2 + 1
    canvas = np.zeros((rows + 2 * margin, width + 2 * margin), dtype=np.float32)
    count = int(count * canvas.size / max(rows * width, 1))
    row_idx = rng.integers(0, canvas.shape[0], count)
    col_idx = rng.integers(0, canvas.shape[1], count)
    canvas[row_idx, col_idx] = rng.uniform(intensity[0], intensity[1], count).astype(np.float32)
    streaks = cv2.filter2D(canvas, -1, kernel, borderType=cv2.BORDER_CONSTANT)
    return streaks[margin:margin + rows, margin:margin + width]


def depth_or_ground(depth: np.ndarray | None, camera: Camera) -> np.ndarray:
    """The given metric depth (non-finite or non-positive values → far) or the flat-road model."""
    if depth is None:
        return camera.ground_depth_map()
    depth = np.asarray(depth, dtype=np.float32)
    with np.errstate(invalid="ignore"):
        valid = np.isfinite(depth) & (depth > 0)
    return np.where(valid, np.minimum(depth, SKY_DEPTH), SKY_DEPTH).astype(np.float32)
