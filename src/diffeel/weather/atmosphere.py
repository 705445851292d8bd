"""Fog and sandstorm: light scattered and absorbed by particles between the scene and the camera."""

from __future__ import annotations

import cv2
import numpy as np

from diffeel.weather._common import (
    Scene,
    by_severity,
    extinction_for_visibility,
    forward_scatter_blur,
    fractal_noise,
    linear_to_srgb,
    scatter,
    srgb_colour_to_linear,
    streak_kernel,
    streak_layer,
    transmission,
)

FOG_VISIBILITY_M = (400.0, 250.0, 150.0, 80.0, 40.0)
FOG_AIRLIGHT_SRGB = (0.80, 0.81, 0.83)  # overcast grey, a touch cool
FOG_PATCHINESS = 0.25  # relative swing of the fog density across the frame
FOG_PATCH_PX = 700.0  # grain of the density swing at the reference width
FOG_SCATTER_BLUR_PX = 6.0

SAND_VISIBILITY_M = (300.0, 180.0, 100.0, 60.0, 30.0)
SAND_AIRLIGHT_SRGB = (0.78, 0.58, 0.33)
# Ångström's law β(λ) ∝ λ^-α: blue is scattered more than green, green more than red.
SAND_WAVELENGTHS_NM = np.array([650.0, 550.0, 450.0], dtype=np.float32)
SAND_ANGSTROM_EXPONENT = 1.0
SAND_SUNLIGHT_PATH_FRACTION = 0.5  # sunlight crosses this share of a visibility length of dust
SAND_TURBULENCE = 0.45  # relative swing of the dust density in the wind-stretched billows
SAND_BILLOW_PX = 420.0
SAND_BILLOW_STRETCH = 3.0  # billows elongated along the (horizontal) wind
SAND_BILLOW_SHADING = 0.6
SAND_GRAIN_STREAKS = 60000  # blown-sand streaks per reference frame
SAND_GRAIN_LENGTH_PX = 60.0
SAND_GRAIN_INTENSITY = (0.3, 1.0)
SAND_GRAIN_BRIGHTNESS = 1.3  # sunlit grains, brighter than the airlight around them
SAND_GRAIN_OPACITY = (0.08, 0.11, 0.14, 0.17, 0.20)
SAND_BLUR_PX = (0.6, 0.8, 1.0, 1.3, 1.6)  # slight overall blur: fine dust softens everything
SAND_SCATTER_BLUR_PX = 8.0


def relative_density(scene: Scene, rng: np.random.Generator, patchiness: float, grain_px: float,
                     stretch: float = 1.0) -> np.ndarray:
    """(H, W) particle density relative to the mean: 1 ± ``patchiness`` in smooth seeded patches.

    Modulating β per pixel stands in for integrating an uneven density along each ray.
    """
    rows, width = scene.layer_shape
    layer_grain = grain_px * scene.scale * width / scene.width
    return scene.upsample(1.0 + patchiness * np.tanh(fractal_noise(rng, rows, width, layer_grain, stretch=stretch)))


def fog(scene: Scene, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Fog by Koschmieder's law of atmospheric scattering (linear RGB).

    ``I = J·t + A·(1 - t)`` with ``t = exp(-β·d)`` and ``β = 2.996 / visibility`` (5 % contrast
    left at the visibility distance), visibility 400 m → 40 m with severity, a grey airlight ``A``
    and depth ``d`` from the depth map or the flat-road model (sky far, so it turns to airlight).
    The density varies smoothly (seeded), and distant objects blur a little (forward scattering).
    """
    extinction = extinction_for_visibility(by_severity(FOG_VISIBILITY_M, severity))
    transmitted = transmission(scene.depth * relative_density(scene, rng, FOG_PATCHINESS, FOG_PATCH_PX), extinction)
    radiance = forward_scatter_blur(scene, scene.linear, transmitted, FOG_SCATTER_BLUR_PX)
    return linear_to_srgb(scatter(radiance, transmitted, srgb_colour_to_linear(FOG_AIRLIGHT_SRGB)))


def sandstorm(scene: Scene, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A sand or dust storm: Koschmieder scattering with wavelength-dependent extinction.

    Per channel ``t_c = exp(-β_c·d)`` with ``β_c = β·(λ_c / 550 nm)^-α`` (Ångström, α = 1), so
    blue fades first, towards a sand-coloured airlight ≈ (0.78, 0.58, 0.33). The sunlight lighting
    the scene has crossed dust as well and is reddened the same way. Turbulence: the density varies
    in wind-stretched billows, and fine blown grains streak horizontally. Fine dust also softens the
    whole image slightly.
    """
    visibility = by_severity(SAND_VISIBILITY_M, severity)
    relative_extinction = (SAND_WAVELENGTHS_NM / 550.0) ** -SAND_ANGSTROM_EXPONENT
    extinction = extinction_for_visibility(visibility) * relative_extinction
    sunlight = np.exp(-(extinction - extinction[0]) * SAND_SUNLIGHT_PATH_FRACTION * visibility)
    density = relative_density(scene, rng, SAND_TURBULENCE, SAND_BILLOW_PX, stretch=SAND_BILLOW_STRETCH)
    transmitted = transmission(scene.depth * density, extinction)
    radiance = forward_scatter_blur(scene, scene.linear * sunlight, transmitted, SAND_SCATTER_BLUR_PX)
    airlight = srgb_colour_to_linear(SAND_AIRLIGHT_SRGB)
    # Thick billows shade the dust behind them: the airlight darkens where the density is high.
    shaded_airlight = airlight * (1.0 - SAND_BILLOW_SHADING * (density - 1.0))[..., None]
    hazy = scatter(radiance, transmitted, shaded_airlight)

    grain_layer_width = min(scene.width, 2 * scene.layer_shape[1])  # grains are fine: twice the smooth-layer size
    grain_layer_rows = max(1, round(scene.rows * grain_layer_width / scene.width))
    kernel = streak_kernel(SAND_GRAIN_LENGTH_PX * scene.scale * grain_layer_width / scene.width, 90.0)
    grains = streak_layer(rng, grain_layer_rows, grain_layer_width, int(SAND_GRAIN_STREAKS * scene.reference_area),
                          kernel, SAND_GRAIN_INTENSITY)
    opacity = scene.upsample(np.clip(grains, 0.0, 1.0)) * by_severity(SAND_GRAIN_OPACITY, severity)
    hazy += (airlight * SAND_GRAIN_BRIGHTNESS - hazy) * opacity[..., None]

    srgb = linear_to_srgb(hazy)
    return cv2.GaussianBlur(srgb, (0, 0), max(0.3, by_severity(SAND_BLUR_PX, severity) * scene.scale))
