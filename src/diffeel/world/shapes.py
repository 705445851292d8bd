"""Sprites: objects drawn into a small canvas as (colour, mask), then placed in a scene.

A sprite is drawn at its on-screen size with OpenCV primitives, shaded with a vertical light
gradient and a little texture noise. Inlier classes (cars, people, poles, trees, …) and the two
anomaly families share this machinery so that they differ in shape and colour, not in rendering.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np


@dataclass
class Sprite:
    rgb: np.ndarray  # (h, w, 3) float32 in 0..1
    mask: np.ndarray  # (h, w) bool
    foot: tuple[float, float]  # (x, y) of the ground contact point inside the sprite, pixels


def _canvas(width: int, height: int):
    return np.zeros((height, width, 3), np.float32), np.zeros((height, width), np.uint8)


def _shade(rgb: np.ndarray, mask: np.ndarray, rng, texture: float = 0.06, light: float = 0.25) -> np.ndarray:
    """Light from above (brighter top), darker bottom, plus fine texture noise."""
    height = rgb.shape[0]
    gradient = (1 + light / 2) - light * np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    noise = rng.normal(0, texture, size=rgb.shape[:2]).astype(np.float32)[..., None]
    return np.clip(rgb * gradient * (1 + noise), 0, 1) * mask[..., None]


def _poly(mask, rgb, points, colour):
    points = np.round(np.asarray(points, np.float32)).astype(np.int32)
    cv2.fillPoly(mask, [points], 1)
    cv2.fillPoly(rgb, [points], tuple(float(c) for c in colour))


def _ellipse(mask, rgb, centre, axes, colour, angle=0.0):
    centre = tuple(int(round(c)) for c in centre)
    axes = tuple(max(1, int(round(a))) for a in axes)
    cv2.ellipse(mask, centre, axes, angle, 0, 360, 1, -1)
    cv2.ellipse(rgb, centre, axes, angle, 0, 360, tuple(float(c) for c in colour), -1)


def _rect(mask, rgb, x0, y0, x1, y1, colour):
    _poly(mask, rgb, [(x0, y0), (x1, y0), (x1, y1), (x0, y1)], colour)


def _finish(rgb, mask, rng, foot, **shade) -> Sprite:
    boolean = mask.astype(bool)
    return Sprite(_shade(rgb, boolean, rng, **shade), boolean, foot)


def _jitter(colour, rng, amount=0.08):
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3), 0, 1)


# ---- inlier classes ------------------------------------------------------------------------


CAR_COLOURS = [(0.75, 0.75, 0.78), (0.1, 0.1, 0.12), (0.55, 0.08, 0.08), (0.12, 0.2, 0.45), (0.85, 0.85, 0.82), (0.35, 0.36, 0.38)]


def car(width: int, height: int, rng) -> Sprite:
    """Rear view of a car: body, glass cabin, wheels, tail lights."""
    rgb, mask = _canvas(width, height)
    body = _jitter(CAR_COLOURS[rng.integers(len(CAR_COLOURS))], rng, 0.04)
    w, h = width, height
    _rect(mask, rgb, 0.08 * w, 0.78 * h, 0.28 * w, h - 1, (0.05, 0.05, 0.05))
    _rect(mask, rgb, 0.72 * w, 0.78 * h, 0.92 * w, h - 1, (0.05, 0.05, 0.05))
    _poly(mask, rgb, [(0, 0.9 * h), (0, 0.45 * h), (0.12 * w, 0.38 * h), (0.88 * w, 0.38 * h), (w - 1, 0.45 * h), (w - 1, 0.9 * h)], body)
    _poly(mask, rgb, [(0.16 * w, 0.4 * h), (0.26 * w, 0.02 * h), (0.74 * w, 0.02 * h), (0.84 * w, 0.4 * h)], body * 0.9)
    _poly(mask, rgb, [(0.22 * w, 0.36 * h), (0.3 * w, 0.08 * h), (0.7 * w, 0.08 * h), (0.78 * w, 0.36 * h)], (0.12, 0.16, 0.2))
    _rect(mask, rgb, 0.04 * w, 0.5 * h, 0.16 * w, 0.6 * h, (0.8, 0.05, 0.05))
    _rect(mask, rgb, 0.84 * w, 0.5 * h, 0.96 * w, 0.6 * h, (0.8, 0.05, 0.05))
    _rect(mask, rgb, 0.38 * w, 0.62 * h, 0.62 * w, 0.72 * h, (0.9, 0.9, 0.85))
    return _finish(rgb, mask, rng, (w / 2, h - 1), light=0.3)


def truck(width: int, height: int, rng) -> Sprite:
    rgb, mask = _canvas(width, height)
    w, h = width, height
    box = _jitter([(0.8, 0.8, 0.78), (0.2, 0.35, 0.6), (0.7, 0.55, 0.2)][rng.integers(3)], rng, 0.04)
    _rect(mask, rgb, 0.1 * w, 0.85 * h, 0.3 * w, h - 1, (0.05, 0.05, 0.05))
    _rect(mask, rgb, 0.7 * w, 0.85 * h, 0.9 * w, h - 1, (0.05, 0.05, 0.05))
    _rect(mask, rgb, 0, 0, w - 1, 0.88 * h, box)
    _rect(mask, rgb, 0.02 * w, 0.7 * h, 0.98 * w, 0.76 * h, box * 0.6)
    _rect(mask, rgb, 0.49 * w, 0.05 * h, 0.51 * w, 0.68 * h, box * 0.7)
    return _finish(rgb, mask, rng, (w / 2, h - 1), texture=0.03)


def person(width: int, height: int, rng) -> Sprite:
    rgb, mask = _canvas(width, height)
    w, h = width, height
    skin = _jitter((0.85, 0.65, 0.5), rng, 0.1)
    shirt = _jitter(rng.uniform(0.1, 0.9, 3), rng, 0.05)
    trousers = _jitter((0.15, 0.18, 0.3), rng, 0.08)
    _rect(mask, rgb, 0.3 * w, 0.55 * h, 0.48 * w, h - 1, trousers)
    _rect(mask, rgb, 0.52 * w, 0.55 * h, 0.7 * w, h - 1, trousers)
    _poly(mask, rgb, [(0.2 * w, 0.2 * h), (0.8 * w, 0.2 * h), (0.75 * w, 0.58 * h), (0.25 * w, 0.58 * h)], shirt)
    _rect(mask, rgb, 0.08 * w, 0.22 * h, 0.2 * w, 0.52 * h, shirt * 0.9)
    _rect(mask, rgb, 0.8 * w, 0.22 * h, 0.92 * w, 0.52 * h, shirt * 0.9)
    _ellipse(mask, rgb, (0.5 * w, 0.1 * h), (0.17 * w, 0.09 * h), skin)
    return _finish(rgb, mask, rng, (w / 2, h - 1), light=0.15)


def pole(width: int, height: int, rng) -> Sprite:
    rgb, mask = _canvas(width, height)
    _rect(mask, rgb, 0, 0, width - 1, height - 1, _jitter((0.5, 0.5, 0.52), rng, 0.05))
    return _finish(rgb, mask, rng, (width / 2, height - 1), texture=0.02)


def traffic_sign(width: int, height: int, rng) -> Sprite:
    rgb, mask = _canvas(width, height)
    w, h = width, height
    if rng.random() < 0.5:
        _ellipse(mask, rgb, (w / 2, h / 2), (w / 2 - 0.5, h / 2 - 0.5), (0.85, 0.1, 0.1))
        _ellipse(mask, rgb, (w / 2, h / 2), (w * 0.36, h * 0.36), (0.95, 0.95, 0.95))
    else:
        _rect(mask, rgb, 0, 0, w - 1, h - 1, (0.1, 0.3, 0.75))
        _rect(mask, rgb, 0.15 * w, 0.3 * h, 0.85 * w, 0.7 * h, (0.95, 0.95, 0.95))
    return _finish(rgb, mask, rng, (w / 2, h - 1), texture=0.02, light=0.1)


def traffic_light(width: int, height: int, rng) -> Sprite:
    rgb, mask = _canvas(width, height)
    w, h = width, height
    _rect(mask, rgb, 0, 0, w - 1, h - 1, (0.08, 0.08, 0.08))
    lit = rng.integers(3)
    for index, colour in enumerate([(0.9, 0.1, 0.1), (0.95, 0.7, 0.1), (0.1, 0.85, 0.3)]):
        glow = np.asarray(colour) * (1.0 if index == lit else 0.25)
        _ellipse(mask, rgb, (w / 2, (index + 0.5) * h / 3), (w * 0.3, h * 0.12), glow)
    return _finish(rgb, mask, rng, (w / 2, h - 1), texture=0.02, light=0.05)


def tree(width: int, height: int, rng, conifer: bool = False) -> Sprite:
    """Trunk and canopy (Cityscapes labels both as vegetation)."""
    rgb, mask = _canvas(width, height)
    w, h = width, height
    green = _jitter((0.2, 0.4, 0.12) if not conifer else (0.1, 0.28, 0.14), rng, 0.05)
    _rect(mask, rgb, 0.44 * w, 0.55 * h, 0.56 * w, h - 1, (0.3, 0.2, 0.12))
    if conifer:
        for tier in range(4):
            top = 0.02 * h + tier * 0.17 * h
            _poly(mask, rgb, [(w / 2, top), (0.5 * w + (0.2 + 0.08 * tier) * w, top + 0.3 * h), (0.5 * w - (0.2 + 0.08 * tier) * w, top + 0.3 * h)], green * (0.9 + 0.05 * tier))
    else:
        for _ in range(7):
            centre = (rng.uniform(0.25, 0.75) * w, rng.uniform(0.15, 0.45) * h)
            _ellipse(mask, rgb, centre, (rng.uniform(0.18, 0.3) * w, rng.uniform(0.12, 0.22) * h), green * rng.uniform(0.8, 1.15))
    return _finish(rgb, mask, rng, (w / 2, h - 1), texture=0.15)


def building(width: int, height: int, rng) -> Sprite:
    """A facade with a window grid."""
    rgb, mask = _canvas(width, height)
    wall = _jitter([(0.6, 0.55, 0.5), (0.7, 0.68, 0.62), (0.5, 0.42, 0.38), (0.75, 0.72, 0.65)][rng.integers(4)], rng, 0.04)
    _rect(mask, rgb, 0, 0, width - 1, height - 1, wall)
    columns, rows = max(2, width // 14), max(2, height // 18)
    for row in range(rows):
        for column in range(columns):
            x0 = (column + 0.25) * width / columns
            y0 = (row + 0.25) * height / rows
            _rect(mask, rgb, x0, y0, x0 + 0.5 * width / columns, y0 + 0.45 * height / rows, (0.18, 0.22, 0.28))
    return _finish(rgb, mask, rng, (width / 2, height - 1), texture=0.04, light=0.15)


def wall(width: int, height: int, rng) -> Sprite:
    rgb, mask = _canvas(width, height)
    _rect(mask, rgb, 0, 0, width - 1, height - 1, _jitter((0.62, 0.6, 0.56), rng, 0.04))
    return _finish(rgb, mask, rng, (width / 2, height - 1), texture=0.1)


# ---- anomaly families -----------------------------------------------------------------------
# "animals" (test only) and "debris" (training only): disjoint shapes and palettes, unlike any
# inlier class. Real-height priors (m): synthesis.md's where it gives them (dog, cow, tyre); lost cargo
# spans piles and pallets up to a metre or more, so the debris priors reach that far.

ANIMAL_COATS = {
    "cow": [(0.95, 0.95, 0.92), (0.12, 0.1, 0.1)],
    "horse": [(0.42, 0.26, 0.14), (0.2, 0.12, 0.08)],
    "deer": [(0.6, 0.42, 0.25), (0.85, 0.75, 0.6)],
    "dog": [(0.78, 0.6, 0.35), (0.3, 0.2, 0.12)],
    "sheep": [(0.9, 0.88, 0.8), (0.2, 0.18, 0.16)],
    "boar": [(0.28, 0.22, 0.18), (0.15, 0.12, 0.1)],
}


def animal(kind: str, width: int, height: int, rng) -> Sprite:
    """Side view: body ellipse, four legs, neck and head, coat patches."""
    rgb, mask = _canvas(width, height)
    w, h = width, height
    coat, patch = (np.asarray(c) for c in ANIMAL_COATS[kind])
    leg_top, body_y = 0.55 * h, 0.45 * h
    for x in (0.22, 0.32, 0.62, 0.72):
        _rect(mask, rgb, x * w, leg_top, (x + 0.06) * w, h - 1, coat * 0.8)
    _ellipse(mask, rgb, (0.47 * w, body_y), (0.33 * w, 0.2 * h), coat)
    facing = 1 if rng.random() < 0.5 else -1
    head_x = 0.5 * w + facing * 0.36 * w
    _poly(mask, rgb, [(0.5 * w + facing * 0.2 * w, 0.35 * h), (head_x, 0.12 * h), (head_x, 0.3 * h), (0.5 * w + facing * 0.24 * w, 0.5 * h)], coat)
    _ellipse(mask, rgb, (head_x + facing * 0.04 * w, 0.16 * h), (0.09 * w, 0.08 * h), coat * 0.95)
    if kind in ("cow", "dog", "sheep", "deer"):
        for _ in range(rng.integers(2, 5)):
            centre = (rng.uniform(0.25, 0.7) * w, rng.uniform(0.35, 0.55) * h)
            patch_mask = np.zeros_like(mask)
            _ellipse(patch_mask, rgb, centre, (rng.uniform(0.05, 0.12) * w, rng.uniform(0.04, 0.08) * h), patch)
    if kind == "deer":
        _poly(mask, rgb, [(head_x, 0.1 * h), (head_x - 0.06 * w, 0.0), (head_x + 0.06 * w, 0.0)], (0.35, 0.25, 0.15))
    return _finish(rgb, mask, rng, (w / 2, h - 1), texture=0.12)


def debris(kind: str, width: int, height: int, rng) -> Sprite:
    """Lost cargo and junk: boxes, tyres, barrels, rocks, crates, sacks — often in odd colours."""
    rgb, mask = _canvas(width, height)
    w, h = width, height
    odd = rng.random() < 0.5  # painted or wrapped cargo: any colour, not just the natural one
    if kind == "box":
        colour = rng.uniform(0.1, 0.95, 3) if odd else _jitter((0.72, 0.55, 0.32), rng, 0.05)
        _poly(mask, rgb, [(0, 0.25 * h), (0.7 * w, 0.25 * h), (0.7 * w, h - 1), (0, h - 1)], colour)
        _poly(mask, rgb, [(0.7 * w, 0.25 * h), (w - 1, 0), (w - 1, 0.75 * h), (0.7 * w, h - 1)], colour * 0.75)
        _poly(mask, rgb, [(0, 0.25 * h), (0.3 * w, 0), (w - 1, 0), (0.7 * w, 0.25 * h)], colour * 1.15)
        _rect(mask, rgb, 0.3 * w, 0.25 * h, 0.4 * w, h - 1, (0.8, 0.75, 0.6))
    elif kind == "tyre":
        _ellipse(mask, rgb, (w / 2, h / 2), (w / 2 - 0.5, h / 2 - 0.5), (0.06, 0.06, 0.07))
        _ellipse(mask, rgb, (w / 2, h / 2), (w * 0.3, h * 0.3), (0.25, 0.25, 0.27))
        _ellipse(mask, rgb, (w / 2, h / 2), (w * 0.18, h * 0.18), (0.55, 0.55, 0.58))
    elif kind == "barrel":
        colour = rng.uniform(0.1, 0.95, 3) if odd else _jitter([(0.1, 0.3, 0.7), (0.8, 0.3, 0.05), (0.2, 0.5, 0.2)][rng.integers(3)], rng, 0.03)
        _rect(mask, rgb, 0, 0.06 * h, w - 1, 0.94 * h, colour)
        _ellipse(mask, rgb, (w / 2, 0.06 * h), (w / 2 - 0.5, 0.06 * h), colour * 1.2)
        _ellipse(mask, rgb, (w / 2, 0.94 * h), (w / 2 - 0.5, 0.06 * h), colour * 0.8)
        for y in (0.33, 0.66):
            _rect(mask, rgb, 0, y * h, w - 1, (y + 0.04) * h, colour * 0.6)
    elif kind == "rock":
        points = [(w / 2 + np.cos(a) * w / 2 * rng.uniform(0.7, 1), h * 0.55 + np.sin(a) * h * 0.45 * rng.uniform(0.7, 1))
                  for a in np.linspace(0, 2 * np.pi, 11)[:-1]]
        _poly(mask, rgb, points, _jitter((0.45, 0.43, 0.4), rng, 0.05))
    elif kind == "crate":
        colour = rng.uniform(0.1, 0.95, 3) if odd else _jitter((0.55, 0.38, 0.2), rng, 0.05)
        _rect(mask, rgb, 0, 0, w - 1, h - 1, colour)
        for y in np.linspace(0.1, 0.9, 4):
            _rect(mask, rgb, 0, y * h, w - 1, y * h + max(1, 0.03 * h), colour * 0.55)
        cv2.line(rgb, (0, 0), (w - 1, h - 1), tuple(float(c) for c in colour * 0.6), max(1, w // 12))
    else:  # sack
        sack = rng.uniform(0.1, 0.95, 3) if odd else _jitter((0.8, 0.78, 0.7), rng, 0.04)
        _ellipse(mask, rgb, (w / 2, 0.6 * h), (w / 2 - 0.5, 0.4 * h), sack)
        _ellipse(mask, rgb, (w / 2, 0.2 * h), (w * 0.2, 0.2 * h), _jitter((0.75, 0.72, 0.62), rng, 0.04))
    return _finish(rgb, mask, rng, (w / 2, h - 1), texture=0.1)


@dataclass(frozen=True)
class AnomalyKind:
    family: str
    name: str
    height_range: tuple[float, float]  # metres
    aspect: float  # width / height on screen


ANOMALY_KINDS = {
    kind.name: kind
    for kind in (
        AnomalyKind("animals", "cow", (1.3, 1.5), 1.6),
        AnomalyKind("animals", "horse", (1.5, 1.7), 1.5),
        AnomalyKind("animals", "deer", (1.0, 1.3), 1.3),
        AnomalyKind("animals", "dog", (0.4, 0.8), 1.4),
        AnomalyKind("animals", "sheep", (0.7, 0.9), 1.4),
        AnomalyKind("animals", "boar", (0.7, 0.9), 1.6),
        AnomalyKind("debris", "box", (0.4, 1.0), 1.3),
        AnomalyKind("debris", "tyre", (0.6, 1.1), 1.0),
        AnomalyKind("debris", "barrel", (0.8, 0.95), 0.65),
        AnomalyKind("debris", "rock", (0.5, 1.2), 1.4),
        AnomalyKind("debris", "crate", (0.6, 1.4), 1.2),
        AnomalyKind("debris", "sack", (0.5, 0.9), 1.1),
    )
}
FAMILIES = {"animals": "test", "debris": "train"}  # which split each family belongs to


def anomaly_sprite(name: str, width: int, height: int, rng) -> Sprite:
    kind = ANOMALY_KINDS[name]
    return animal(name, width, height, rng) if kind.family == "animals" else debris(name, width, height, rng)
