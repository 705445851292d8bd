"""Night: a daylight scene re-lit by a dim bluish sky, street lamps and headlights, seen by a noisy sensor.

Lights live in the level camera frame of :mod:`diffeel.geometry`: ``x`` metres right of the camera
axis, ``h`` metres above the road, ``z`` metres ahead. A scene point at image column ``u``, row
``v`` and depth ``d`` is at ``x = (u - u0)·d/fx``, ``h = height - (v - v_h)·d/fy`` (exactly on the
road for the flat-road depth model).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from diffeel.weather._common import Scene, by_severity, linear_to_srgb

NIGHT_EXPOSURE = (0.08, 0.05, 0.03, 0.02, 0.012)  # share of the daylight exposure left
NIGHT_SKY_TINT = np.array([0.35, 0.55, 1.0], dtype=np.float32)  # moonlit sky: blue, red dim (Purkinje)

STREET_LAMP_LINEAR = {
    "sodium": np.array([1.0, 0.45, 0.12], dtype=np.float32),
    "led": np.array([1.0, 0.93, 0.80], dtype=np.float32),
}
HEADLIGHT_LINEAR = np.array([1.0, 0.96, 0.88], dtype=np.float32)
TAIL_LIGHT_LINEAR = np.array([1.0, 0.03, 0.02], dtype=np.float32)

LAMP_HEIGHT_M = (7.0, 8.5)
LAMP_SIDE_OFFSET_M = (6.0, 7.5)
LAMP_SPACING_M = (25.0, 35.0)
LAMP_FIRST_M = (9.0, 18.0)
LAMP_LAST_M = 130.0
LAMP_FOOT_IRRADIANCE = 0.10  # under a lamp, relative to daylight (1.0)
LAMP_HEAD_SIZE_M = 0.4
HEADLIGHT_HEIGHT_M = 0.65
HEADLIGHT_HALF_SPACING_M = 0.75
TAIL_LIGHT_HEIGHT_M = 0.9
TAIL_LIGHT_SIZE_M = 0.12
HEADLIGHT_SIZE_M = 0.2
ONCOMING_LANE_M = (-4.5, -3.0)
OWN_LANE_M = (-0.4, 0.4)
CAR_DEPTH_M = (18.0, 110.0)

# Ego low beams: a wide, horizontally cut-off cone from both headlights of the camera car.
EGO_BEAM_IRRADIANCE_AT_8M = 0.06  # on the road 8 m ahead in the beam centre, relative to daylight
EGO_BEAM_HALF_WIDTH_RAD = 0.35
EGO_BEAM_CUTOFF_RAD = 0.012  # rays rising above -0.012 rad are cut off (low beam)
SURFACE_COS_FLOOR = 0.25  # non-road surfaces (unknown normal) still catch some light
LIGHT_SATURATION = 0.5  # irradiance roll-off: E → E·S / (E + S) (the camera's highlight knee)

# Glare around a light source: a Moffat-shaped point-spread function of lens and air scatter.
GLARE_RADIUS_PX = 22.0
GLARE_EXPONENT = 1.4
GLARE_REFERENCE_DEPTH_M = 12.0  # a source this close gets the full glare amplitude
GLARE_AMPLITUDE = 0.9
CORE_RADIANCE = 6.0  # light source cores saturate the sensor
CORE_SATURATED_RADII = float(np.sqrt(2 * np.log(CORE_RADIANCE)))  # a Gaussian of peak 6 stays ≥ 1 out to 1.9 σ
MIN_CORE_PX = 1.2

# Sensor: photon shot noise (Poisson, as a Gaussian of variance signal/full well) and read noise.
FULL_WELL_ELECTRONS = 3000.0
READ_NOISE = 0.0025  # linear units of full scale


@dataclass(frozen=True)
class Light:
    x: float
    h: float
    z: float
    colour: np.ndarray
    size_m: float
    glare: float  # relative glare amplitude (tail lights are weaker than headlights)


def scene_points(scene: Scene) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, h, z) in metres of every layer pixel (see the module docstring)."""
    camera = scene.camera
    columns, rows = scene.layer_pixel_grid()
    depth = scene.layer_depth
    x = (columns - camera.u0) * depth / camera.fx
    h = camera.height - (rows - camera.horizon_row) * depth / camera.fy
    return x.astype(np.float32), h.astype(np.float32), depth


def street_lamps(rng: np.random.Generator) -> list[Light]:
    """Lamps on one or both sides of the road, evenly spaced from near to far."""
    colour = STREET_LAMP_LINEAR["sodium" if rng.random() < 0.6 else "led"]
    sides = [-1.0, 1.0] if rng.random() < 0.6 else [rng.choice([-1.0, 1.0])]
    height = rng.uniform(*LAMP_HEIGHT_M)
    lamps = []
    for side in sides:
        offset = side * rng.uniform(*LAMP_SIDE_OFFSET_M)
        spacing = rng.uniform(*LAMP_SPACING_M)
        depth = rng.uniform(*LAMP_FIRST_M)
        while depth < LAMP_LAST_M:
            lamps.append(Light(offset, height, depth, colour, LAMP_HEAD_SIZE_M, 1.0))
            depth += spacing
    return lamps


def other_cars(rng: np.random.Generator) -> list[Light]:
    """Oncoming headlight pairs in the left lane and tail-light pairs ahead in the own lane."""
    lights = []
    for lane, colour, height, size, glare in (
        (ONCOMING_LANE_M, HEADLIGHT_LINEAR, HEADLIGHT_HEIGHT_M, HEADLIGHT_SIZE_M, 1.0),
        (OWN_LANE_M, TAIL_LIGHT_LINEAR, TAIL_LIGHT_HEIGHT_M, TAIL_LIGHT_SIZE_M, 0.35),
    ):
        for _ in range(rng.integers(1, 3)):
            centre, depth = rng.uniform(*lane), rng.uniform(*CAR_DEPTH_M)
            for side in (-1.0, 1.0):
                lights.append(Light(centre + side * HEADLIGHT_HALF_SPACING_M, height, depth, colour, size, glare))
    return lights


def lamp_irradiance(points, lamps: list[Light]) -> np.ndarray:
    """Inverse-square irradiance ``E = I·cos θ / r²`` from isotropic lamps (layer size, RGB)."""
    x, h, z = points
    total = np.zeros(z.shape + (3,), dtype=np.float32)
    for lamp in lamps:
        intensity = LAMP_FOOT_IRRADIANCE * lamp.h**2  # so that E = LAMP_FOOT_IRRADIANCE at the foot
        drop = lamp.h - h
        distance_sq = (x - lamp.x) ** 2 + drop**2 + (z - lamp.z) ** 2 + 0.25
        cosine = np.maximum(drop / np.sqrt(distance_sq), SURFACE_COS_FLOOR)
        total += (intensity * cosine / distance_sq)[..., None] * lamp.colour
    return total


def ego_beam_irradiance(points) -> np.ndarray:
    """Low-beam irradiance from the camera car's two headlights (inverse square, cut-off cone)."""
    x, h, z = points
    reference = 8.0
    reference_cos = HEADLIGHT_HEIGHT_M / np.hypot(reference, HEADLIGHT_HEIGHT_M)
    intensity = EGO_BEAM_IRRADIANCE_AT_8M * (reference**2 + HEADLIGHT_HEIGHT_M**2) / reference_cos / 2
    total = np.zeros(z.shape, dtype=np.float32)
    ahead = np.maximum(z, 0.1)
    for lamp_x in (-HEADLIGHT_HALF_SPACING_M, HEADLIGHT_HALF_SPACING_M):
        drop = HEADLIGHT_HEIGHT_M - h
        horizontal = np.hypot(x - lamp_x, ahead)
        distance_sq = horizontal**2 + drop**2
        elevation = -np.arctan2(drop, horizontal)
        cut_off = np.clip((-EGO_BEAM_CUTOFF_RAD - elevation) / EGO_BEAM_CUTOFF_RAD, 0.0, 1.0)
        spread = np.exp(-((np.arctan2(x - lamp_x, ahead) / EGO_BEAM_HALF_WIDTH_RAD) ** 2))
        cosine = np.maximum(drop / np.sqrt(distance_sq), SURFACE_COS_FLOOR)
        total += intensity * spread * cut_off * cosine / distance_sq
    total *= z > 0
    return total[..., None] * HEADLIGHT_LINEAR


def glare_layer(scene: Scene, lights: list[Light]) -> np.ndarray:
    """Additive radiance of the visible light sources: a saturated core plus a Moffat halo each."""
    camera = scene.camera
    rows, width = scene.layer_shape
    to_layer = width / scene.width
    columns, row_coords = scene.layer_pixel_grid()
    columns, row_coords = columns * to_layer, row_coords * to_layer
    glare_radius = max(1.0, GLARE_RADIUS_PX * scene.scale * to_layer)
    total = np.zeros((rows, width, 3), dtype=np.float32)
    for light in lights:
        column = (camera.u0 + camera.fx * light.x / light.z) * to_layer
        row = (camera.horizon_row + (camera.height - light.h) * camera.fy / light.z) * to_layer
        distance_sq = (columns - column) ** 2 + (row_coords - row) ** 2
        core_radius = max(MIN_CORE_PX * min(1.0, 4 * to_layer),
                          camera.fx * light.size_m / light.z * to_layer / 2)
        core_sigma = core_radius / CORE_SATURATED_RADII  # the saturated disc spans ≈ core_radius
        closeness = min(1.0, (GLARE_REFERENCE_DEPTH_M / light.z) ** 2)
        glare = GLARE_AMPLITUDE * light.glare * closeness**0.5  # distant glare is dimmer, not smaller
        radial = (CORE_RADIANCE * np.exp(-distance_sq / (2 * core_sigma**2))
                  + glare * (1.0 + distance_sq / glare_radius**2) ** -GLARE_EXPONENT)
        total += radial[..., None] * light.colour
    return total


def night(scene: Scene, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Night by re-lighting in linear RGB, then a photon-noise sensor model.

    The daylight radiance is taken as reflectance under unit light. Night light is a dim bluish sky
    (exposure 8 % → 1.2 % with severity, tinted towards blue) plus artificial light: street lamps
    (seeded positions, sodium or LED) and the camera car's low beams, with inverse-square
    irradiance ``E = I·cos θ / r²`` on the points of the depth map. Visible sources (lamps,
    oncoming headlights, tail lights) add a saturated core and a Moffat-profile glare halo. The
    sensor adds shot noise (Poisson, variance ∝ signal) and Gaussian read noise, then the result is
    encoded back to sRGB.
    """
    exposure = by_severity(NIGHT_EXPOSURE, severity)
    lamps = street_lamps(rng)
    cars = other_cars(rng)
    points = scene_points(scene)
    artificial = lamp_irradiance(points, lamps) + ego_beam_irradiance(points)
    artificial = artificial * LIGHT_SATURATION / (artificial + LIGHT_SATURATION)
    irradiance = scene.upsample(exposure * NIGHT_SKY_TINT + artificial)
    radiance = scene.linear * irradiance + scene.upsample(glare_layer(scene, lamps + cars))

    signal = np.clip(radiance, 0.0, 1.0)
    noise_std = np.sqrt(signal * np.float32(1 / FULL_WELL_ELECTRONS) + np.float32(READ_NOISE**2))
    noisy = signal + noise_std * rng.standard_normal(signal.shape, dtype=np.float32)
    return linear_to_srgb(noisy)
