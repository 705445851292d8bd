"""Frost: ice crystals grown on the windscreen or lens, thickest at the borders."""

from __future__ import annotations

import math

import cv2
import numpy as np

from diffeel.weather._common import Scene, by_severity, fractal_noise, luminance

# The frost edge: frost covers the frame where the border distance (a superellipse norm: 1 at the
# middle of each edge, 0 at the centre) exceeds this, with a ragged, noisy front.
FROST_FRONT = (0.92, 0.82, 0.70, 0.58, 0.45)
FROST_FRONT_WIDTH = 0.35
FROST_FRONT_RAGGEDNESS = 0.18
FROST_FRONT_GRAIN_PX = 260.0
BORDER_NORM_POWER = 4.0
FROST_HAZE = 0.45  # opacity of the frozen film itself, before crystals
CRYSTAL_OPACITY = 0.75
CRYSTALS = (500, 900, 1400, 2000, 2700)  # dendrites per reference frame
CRYSTAL_LENGTH_PX = (12.0, 70.0)
CRYSTAL_BRANCHES = 3  # side branches per needle side
CRYSTAL_BRANCH_ANGLE = math.pi / 3  # ice is hexagonal: side branches leave at 60°
CRYSTAL_RENDER_WIDTH = 1024
CRYSTAL_BRANCH_SHARE = 0.35  # a side branch is this share of its needle, less towards the tips
CRYSTAL_GLOW_PX = 2.0  # ice scatters light around each needle
CRYSTAL_GLOW_GAIN = 1.5
CANDIDATES_PER_CRYSTAL = 2.5  # rejection sampling keeps about the mean cover's share of them
SUBPIXEL_BITS = 4  # cv2 drawing with fixed-point end points
FROST_GRAIN_OPACITY = 0.12  # fine speckle of rime between the needles
FROST_DIFFUSION_PX = 9.0  # light through the frozen film is scattered: the view behind it blurs
FROST_SRGB = np.array([0.86, 0.93, 1.0], dtype=np.float32)
FROST_DESATURATION = (0.15, 0.25, 0.35, 0.45, 0.55)
COLD_CAST = np.array([0.92, 0.98, 1.06], dtype=np.float32)


def border_coverage(scene: Scene, severity: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w) layer-size frost cover in [0, 1]: 0 in the centre, 1 at the borders, ragged front."""
    rows, width = scene.layer_shape
    x = np.linspace(-1.0, 1.0, width, dtype=np.float32)[None, :]
    y = np.linspace(-1.0, 1.0, rows, dtype=np.float32)[:, None]
    border = (np.abs(x) ** BORDER_NORM_POWER + np.abs(y) ** BORDER_NORM_POWER) ** (1 / BORDER_NORM_POWER)
    grain = FROST_FRONT_GRAIN_PX * scene.scale * width / scene.width
    border = border + FROST_FRONT_RAGGEDNESS * fractal_noise(rng, rows, width, grain, octaves=4)
    front = by_severity(FROST_FRONT, severity)
    cover = np.clip((border - front) / FROST_FRONT_WIDTH, 0.0, 1.0)
    return cover * cover * (3.0 - 2.0 * cover)  # smoothstep


def dendrites(scene: Scene, cover: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Ice needles with 60° side branches, seeded where frost covers the frame (rejection sampling)."""
    width = min(scene.width, CRYSTAL_RENDER_WIDTH)
    rows = max(1, round(scene.rows * width / scene.width))
    to_render = width / scene.width
    canvas = np.zeros((rows, width), dtype=np.float32)
    candidates = int(by_severity(CRYSTALS, severity) * scene.reference_area * CANDIDATES_PER_CRYSTAL)
    u, v = rng.random(candidates), rng.random(candidates)
    cover_at = cover[(v * cover.shape[0]).astype(int), (u * cover.shape[1]).astype(int)]
    keep = rng.random(candidates) < cover_at
    u, v = u[keep] * width, v[keep] * rows
    count = u.size
    if count == 0:
        return canvas
    length = rng.uniform(*CRYSTAL_LENGTH_PX, count) * scene.scale * to_render
    heading = rng.uniform(0, math.pi, count)
    brightness = rng.uniform(0.35, 1.0, count)
    segments = [(u - np.cos(heading) * length / 2, v - np.sin(heading) * length / 2,
                 u + np.cos(heading) * length / 2, v + np.sin(heading) * length / 2)]
    for branch in range(1, CRYSTAL_BRANCHES + 1):
        along = (branch / (CRYSTAL_BRANCHES + 1) - 0.5) * length
        base_u, base_v = u + np.cos(heading) * along, v + np.sin(heading) * along
        branch_length = length * CRYSTAL_BRANCH_SHARE * (1.0 - abs(branch / (CRYSTAL_BRANCHES + 1) - 0.5))
        for side in (-1.0, 1.0):
            angle = heading + side * CRYSTAL_BRANCH_ANGLE
            segments.append((base_u, base_v, base_u + np.cos(angle) * branch_length,
                             base_v + np.sin(angle) * branch_length))
    for level in (0.4, 0.6, 0.8, 1.0):  # cv2 draws one colour per call: bucket the brightness
        chosen = (brightness <= level) & (brightness > level - 0.2)
        if not chosen.any():
            continue
        lines = [np.stack([np.stack([x0[chosen], y0[chosen]], -1), np.stack([x1[chosen], y1[chosen]], -1)], 1)
                 for x0, y0, x1, y1 in segments]
        polylines = list(np.round(np.concatenate(lines) * 2**SUBPIXEL_BITS).astype(np.int32))
        cv2.polylines(canvas, polylines, False, level, 1, cv2.LINE_AA, SUBPIXEL_BITS)
    glow = cv2.GaussianBlur(canvas, (0, 0), max(0.5, CRYSTAL_GLOW_PX * scene.scale * to_render))
    return scene.upsample(np.clip(canvas + CRYSTAL_GLOW_GAIN * glow, 0.0, 1.0))


def frost(scene: Scene, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Frost on the glass: a frozen film and ice dendrites strongest at the borders, cold and pale.

    Frost forms first where the glass is coldest, at the frame and edges, so cover grows from the
    border inwards with a ragged (noise-displaced) front. The film scatters light (the view behind
    it blurs and whitens, like frosted glass) and carries hexagonal-ice dendrites: needles with
    side branches at 60°. Cold light and ice lower the saturation and give a blue-white cast.
    """
    srgb = scene.srgb
    grey = luminance(srgb)[..., None]
    srgb = (grey + (srgb - grey) * (1.0 - by_severity(FROST_DESATURATION, severity))) * COLD_CAST

    cover = border_coverage(scene, severity, rng)
    crystals = dendrites(scene, cover, severity, rng)
    rows, width = scene.layer_shape
    speckle = np.clip(fractal_noise(rng, rows, width, 3.0, octaves=2), 0.0, None)
    diffusion_sigma = max(0.5, FROST_DIFFUSION_PX * scene.scale * width / scene.width)
    diffused = cv2.GaussianBlur(scene.downsample(srgb), (0, 0), diffusion_sigma)
    cover_full = scene.upsample(cover)
    film = scene.upsample(cover * (FROST_HAZE + FROST_GRAIN_OPACITY * speckle))
    srgb = srgb + (scene.upsample(diffused) - srgb) * cover_full[..., None]
    opacity = np.clip(film + CRYSTAL_OPACITY * crystals * cover_full, 0.0, 1.0)[..., None]
    return srgb + (FROST_SRGB - srgb) * opacity
