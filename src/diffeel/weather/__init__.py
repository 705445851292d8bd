"""The adverse-weather suite: physically motivated, seeded weather for road-scene images.

Conditions (``CONDITIONS``), each at severity 1 (light) to 5 (extreme):

- ``clear``: the image unchanged (a copy).
- ``rain``: motion-blurred streak layers at a seeded wind angle, rain haze, overcast light, a wet
  road (darker, Fresnel mirror image) and drops on the lens.
- ``night``: re-lit in linear RGB by a dim bluish sky, street lamps and low beams (inverse-square
  light), glare halos around the sources, shot and read noise.
- ``frost``: ice film and dendrites growing in from the borders, desaturated, blue-white cast.
- ``fog``: Koschmieder scattering ``I = J·t + A·(1 - t)``, ``t = exp(-β·d)``, grey airlight.
- ``blizzard``: white short-visibility scattering plus wind-driven snow at four depths.
- ``sandstorm``: scattering with blue attenuated most, sand-coloured airlight, blowing grains.

Depth ``d`` comes from the caller (metres, ``(H, W)``) or from the flat-road model of
:class:`diffeel.geometry.Camera` scaled to the image (sky above the horizon is far).

    >>> foggy = apply_weather(image, "fog", severity=4, seed=7)
"""

from __future__ import annotations

import numbers

import numpy as np

from diffeel.errors import DiffeelError
from diffeel.geometry import Camera
from diffeel.weather._common import Scene, depth_or_ground, to_uint8
from diffeel.weather.atmosphere import fog, sandstorm
from diffeel.weather.ice import frost
from diffeel.weather.precipitation import blizzard, rain
from diffeel.weather.relighting import night

__all__ = ["CONDITIONS", "SEVERITIES", "WeatherError", "apply_weather"]

CONDITIONS = ("clear", "rain", "night", "frost", "fog", "blizzard", "sandstorm")
SEVERITIES = (1, 2, 3, 4, 5)

_RENDERERS = {
    "rain": rain,
    "night": night,
    "frost": frost,
    "fog": fog,
    "blizzard": blizzard,
    "sandstorm": sandstorm,
}


class WeatherError(DiffeelError, ValueError):
    """A bad argument to :func:`apply_weather` (a ``ValueError`` and a ``DiffeelError``)."""


def _check_image(image) -> np.ndarray:
    if not isinstance(image, np.ndarray) or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 \
            or image.shape[0] == 0 or image.shape[1] == 0:
        shape = getattr(image, "shape", None)
        dtype = getattr(image, "dtype", type(image).__name__)
        raise WeatherError(f"The image must be an (H, W, 3) uint8 RGB array, got shape {shape} and dtype {dtype}.")
    return image


def _check_condition(condition) -> str:
    if condition not in CONDITIONS:
        raise WeatherError(f"Unknown weather condition {condition!r}; choose one of {', '.join(CONDITIONS)}.")
    return condition


def _check_severity(severity) -> int:
    if isinstance(severity, bool) or not isinstance(severity, numbers.Integral) or int(severity) not in SEVERITIES:
        raise WeatherError(f"The severity must be an integer from 1 to 5, got {severity!r}.")
    return int(severity)


def _check_depth(depth, rows: int, width: int):
    if depth is None:
        return None
    shape = getattr(depth, "shape", None)
    if shape != (rows, width):
        raise WeatherError(f"The depth map must have the image's shape ({rows}, {width}), got {shape}.")
    if not (np.issubdtype(depth.dtype, np.floating) or np.issubdtype(depth.dtype, np.integer)):
        raise WeatherError(f"The depth map must hold numbers (metres), got dtype {depth.dtype}.")
    return depth


def apply_weather(image: np.ndarray, condition: str, severity: int = 3, seed=0, depth=None) -> np.ndarray:
    """``image`` (an (H, W, 3) uint8 RGB array) under ``condition`` at ``severity`` 1..5.

    ``seed`` seeds ``np.random.default_rng``: the same seed gives a bit-identical result, another
    seed other random layers (streaks, flakes, lights, crystals, density). ``depth`` is an optional
    (H, W) metric depth map in metres; non-finite or non-positive entries count as far (sky).
    Without it the flat-road model of ``Camera.for_size(W, H)`` is used. Returns a new uint8 array
    of the image's shape. Raises :class:`WeatherError` (a ``ValueError``) on bad arguments.
    """
    image = _check_image(image)
    condition = _check_condition(condition)
    severity = _check_severity(severity)
    rows, width = image.shape[:2]
    depth = _check_depth(depth, rows, width)
    if condition == "clear":
        return image.copy()
    camera = Camera.for_size(width, rows)
    scene = Scene(np.ascontiguousarray(image), depth_or_ground(depth, camera), camera)
    rendered = _RENDERERS[condition](scene, severity, np.random.default_rng(seed))
    return to_uint8(rendered)
