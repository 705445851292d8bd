"""Rain and blizzard: falling particles seen with motion blur at several depths, plus the haze they make."""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from diffeel.weather._common import (
    Scene,
    by_severity,
    channel_spread,
    extinction_for_visibility,
    forward_scatter_blur,
    fractal_noise,
    linear_to_srgb,
    resize,
    scatter,
    srgb_colour_to_linear,
    streak_kernel,
    streak_layer,
    transmission,
)


@dataclass(frozen=True)
class ParticleLayer:
    """One depth slice of falling particles, sizes in pixels at the reference width."""

    count: float  # particles per reference frame at severity 3 (scaled by severity)
    length_px: float  # motion-blur length
    thickness_px: float
    opacity: float
    render_width: int  # drawn this wide, then upsampled: near particles are coarse anyway
    defocus_px: float = 0.0  # near the lens, out of focus


PARTICLE_INTENSITY = (0.4, 1.0)  # drops and flakes differ in size and lighting

# Rain: far streaks are short, thin and many; near ones long, thick, sparse and out of focus.
RAIN_LAYERS = (
    ParticleLayer(count=6000, length_px=40, thickness_px=1, opacity=0.16, render_width=1024),
    ParticleLayer(count=1800, length_px=90, thickness_px=1, opacity=0.24, render_width=1024),
    ParticleLayer(count=350, length_px=200, thickness_px=1, opacity=0.30, render_width=512, defocus_px=3),
)
RAIN_AMOUNT = (0.35, 0.6, 1.0, 1.5, 2.2)  # particle count multiplier per severity
RAIN_ANGLE_DEG = (-25.0, 25.0)  # wind tilts the streaks away from vertical (seeded)
RAIN_LAYER_ANGLE_JITTER_DEG = 3.0
RAIN_STREAK_SRGB = (0.86, 0.88, 0.90)  # drops refract the bright sky: light grey
RAIN_VISIBILITY_M = (2000.0, 1200.0, 700.0, 400.0, 250.0)
RAIN_AIRLIGHT_SRGB = (0.62, 0.64, 0.67)
RAIN_OVERCAST = (0.85, 0.78, 0.70, 0.62, 0.55)  # daylight left under rain clouds
# Wet road: water darkens asphalt (light trapped in the film) and mirrors the sky at grazing angles.
WET_ALBEDO = (0.85, 0.75, 0.65, 0.58, 0.52)
WATER_COVER = (0.10, 0.16, 0.24, 0.32, 0.40)  # share of the road under a mirror-like water film
SEALED_SURFACE_MAX_SATURATION = 0.25  # max - min of sRGB above which a surface takes no water film
WATER_FRESNEL_R0 = 0.02  # water reflectance at normal incidence
REFLECTION_BLUR_PX = (3.0, 14.0)  # (horizontal, vertical): a rough film smears reflections downwards
LENS_DROPS = (2, 3, 5, 7, 10)
LENS_DROP_RADIUS_PX = (25.0, 70.0)
LENS_DROP_BLUR_PX = 12.0
LENS_DROP_EDGE_PX = 8.0  # the soft edge of a drop
LENS_DROP_GAIN, LENS_DROP_LIFT = 1.08, 0.03  # a drop gathers light from around it: a brighter view
LENS_DROP_RIM_SHADE = 0.2  # total internal reflection darkens the edge of a drop

BLIZZARD_VISIBILITY_M = (150.0, 100.0, 65.0, 40.0, 25.0)
BLIZZARD_AIRLIGHT_SRGB = (0.90, 0.92, 0.95)
BLIZZARD_PATCHINESS = 0.35
BLIZZARD_GUST_PX = 500.0
BLIZZARD_GUST_STRETCH = 2.5
BLIZZARD_SCATTER_BLUR_PX = 10.0
SNOW_LAYERS = (
    ParticleLayer(count=12000, length_px=8, thickness_px=2, opacity=0.55, render_width=2048),
    ParticleLayer(count=2500, length_px=20, thickness_px=3, opacity=0.75, render_width=1024),
    ParticleLayer(count=500, length_px=40, thickness_px=6, opacity=0.85, render_width=1024, defocus_px=1.5),
    ParticleLayer(count=60, length_px=80, thickness_px=12, opacity=0.9, render_width=512, defocus_px=4),
)
SNOW_AMOUNT = (0.4, 0.7, 1.0, 1.3, 1.7)
SNOW_ANGLE_DEG = (35.0, 70.0)  # blizzard wind drives flakes far from vertical (either side, seeded)
SNOW_LAYER_ANGLE_JITTER_DEG = 8.0  # gusts: each depth layer drifts a little differently
SNOW_SRGB = (0.97, 0.98, 1.0)


def particle_opacity(scene: Scene, rng: np.random.Generator, layers, amount: float, angle_deg: float,
                     angle_jitter_deg: float) -> np.ndarray:
    """(H, W) opacity of all particle layers, combined as independent occluders (1 - Π(1 - a))."""
    clear_share = np.ones((scene.rows, scene.width), dtype=np.float32)
    for layer in layers:
        width = min(scene.width, layer.render_width)
        rows = max(1, round(scene.rows * width / scene.width))
        to_layer = width / scene.width
        angle = angle_deg + rng.uniform(-angle_jitter_deg, angle_jitter_deg)
        kernel = streak_kernel(layer.length_px * scene.scale * to_layer, angle,
                               max(1.0, layer.thickness_px * scene.scale * to_layer))
        count = int(layer.count * amount * scene.reference_area)
        streaks = streak_layer(rng, rows, width, count, kernel, PARTICLE_INTENSITY)
        if layer.defocus_px:
            streaks = cv2.GaussianBlur(streaks, (0, 0), max(0.5, layer.defocus_px * scene.scale * to_layer))
        opacity = np.clip(streaks * layer.opacity, 0.0, layer.opacity)
        clear_share *= 1.0 - resize(opacity, scene.width, scene.rows)
    return 1.0 - clear_share


def wet_road_albedo(scene: Scene, severity: int) -> np.ndarray:
    """(H, 1, 1) reflectance factor: water in the pores of the asphalt traps light below the horizon."""
    return (1.0 - (1.0 - by_severity(WET_ALBEDO, severity)) * scene.road_weight)[..., None]


def water_film_reflection(scene: Scene, hazy: np.ndarray, severity: int) -> np.ndarray:
    """A Fresnel-weighted, smeared mirror image of what lies above the road, mixed into the road.

    A ground point at depth ``d`` is seen at incidence ``cos θ = height / √(height² + d²)``;
    Schlick's approximation ``R = R0 + (1 - R0)(1 - cos θ)^5`` makes the film mirror-like near the
    horizon. The mirror image of row ``v`` is row ``2·v_h - v`` (flat road). Water films form on
    sealed, grey surfaces, not on vegetation, so saturated pixels reflect less.
    """
    camera = scene.camera
    rows, width = scene.layer_shape
    to_layer = width / scene.width
    layer_row = (np.arange(rows) + 0.5) / to_layer
    mirror_rows = np.clip((2 * camera.horizon_row - layer_row) * to_layer, 0, rows - 1).astype(int)
    mirrored = scene.downsample(hazy)[mirror_rows]  # smeared anyway: mirror at the layer size
    sigma_x, sigma_y = (max(0.5, s * scene.scale * to_layer) for s in REFLECTION_BLUR_PX)
    mirrored = scene.upsample(cv2.GaussianBlur(mirrored, (0, 0), sigmaX=sigma_x, sigmaY=sigma_y))
    cos_incidence = camera.height / np.sqrt(camera.height**2 + scene.depth**2)
    fresnel = WATER_FRESNEL_R0 + (1 - WATER_FRESNEL_R0) * (1 - cos_incidence) ** 5
    sealed = np.clip(1.0 - channel_spread(scene.srgb) / SEALED_SURFACE_MAX_SATURATION, 0.0, 1.0)
    reflect = ((by_severity(WATER_COVER, severity) * scene.road_weight) * fresnel * sealed)[..., None]
    return hazy + (mirrored - hazy) * reflect


def lens_drops(scene: Scene, srgb: np.ndarray, severity: int, rng: np.random.Generator) -> np.ndarray:
    """Water drops on the lens: soft discs showing a blurred, brightened view, with a dark rim."""
    rows, width = scene.layer_shape
    to_layer = width / scene.width
    mask = np.zeros((rows, width), dtype=np.float32)
    for _ in range(by_severity(LENS_DROPS, severity)):
        radius = rng.uniform(*LENS_DROP_RADIUS_PX) * scene.scale * to_layer
        centre = (int(rng.uniform(0, width)), int(rng.uniform(0, rows)))
        axes = (max(1, round(radius)), max(1, round(radius * rng.uniform(0.75, 1.0))))
        cv2.ellipse(mask, centre, axes, rng.uniform(0, 180), 0, 360, 1.0, -1, cv2.LINE_AA)
    mask = cv2.GaussianBlur(mask, (0, 0), max(0.5, LENS_DROP_EDGE_PX * scene.scale * to_layer))
    rim = 4.0 * mask * (1.0 - mask)
    blurred = cv2.GaussianBlur(scene.downsample(srgb), (0, 0), max(0.5, LENS_DROP_BLUR_PX * scene.scale * to_layer))
    view = np.clip(blurred * LENS_DROP_GAIN + LENS_DROP_LIFT, 0.0, 1.0)
    mask, rim, view = scene.upsample(mask)[..., None], scene.upsample(rim)[..., None], scene.upsample(view)
    return (srgb + (view - srgb) * mask) * (1.0 - LENS_DROP_RIM_SHADE * rim)


def rain(scene: Scene, severity: int, rng: np.random.Generator, with_lens_drops: bool = True) -> np.ndarray:
    """Rain: streak layers, rain haze, overcast light, a wet road and (optionally) drops on the lens.

    Falling drops are motion-blurred during the exposure: seeded points convolved with a line kernel
    at the (seeded) wind angle, in three depth layers — far ones short and thin, near ones long,
    thick and out of focus (Garg & Nayar's streak model, simplified). Rain lowers contrast by
    scattering (Koschmieder, visibility 2 km → 250 m) under dimmed overcast light. Below the
    horizon the road is wet: darker, with a Fresnel-weighted mirror image (:func:`water_film_reflection`).
    """
    radiance = scene.linear * (by_severity(RAIN_OVERCAST, severity) * wet_road_albedo(scene, severity))
    transmitted = transmission(scene.depth, extinction_for_visibility(by_severity(RAIN_VISIBILITY_M, severity)))
    hazy = scatter(radiance, transmitted, srgb_colour_to_linear(RAIN_AIRLIGHT_SRGB))
    srgb = linear_to_srgb(water_film_reflection(scene, hazy, severity))

    angle = rng.uniform(*RAIN_ANGLE_DEG)
    opacity = particle_opacity(scene, rng, RAIN_LAYERS, by_severity(RAIN_AMOUNT, severity), angle,
                               RAIN_LAYER_ANGLE_JITTER_DEG)
    streak_colour = np.asarray(RAIN_STREAK_SRGB, dtype=np.float32)
    srgb += (streak_colour - srgb) * opacity[..., None]
    if with_lens_drops:
        srgb = lens_drops(scene, srgb, severity, rng)
    return srgb


def blizzard(scene: Scene, severity: int, rng: np.random.Generator) -> np.ndarray:
    """A blizzard: short-visibility white scattering plus wind-driven snow in four depth layers.

    Koschmieder scattering (``I = J·t + A·(1 - t)``, ``β = 2.996 / visibility``, 150 m → 25 m)
    towards a white airlight, with gusty (wind-stretched) density. Snowflakes are seeded points
    convolved with a rounded streak at the wind angle (35–70° from vertical): far flakes small and
    short, near flakes large, long and out of focus, composited as independent occluders.
    """
    extinction = extinction_for_visibility(by_severity(BLIZZARD_VISIBILITY_M, severity))
    rows, width = scene.layer_shape
    grain = BLIZZARD_GUST_PX * scene.scale * width / scene.width
    density = 1.0 + BLIZZARD_PATCHINESS * np.tanh(fractal_noise(rng, rows, width, grain, stretch=BLIZZARD_GUST_STRETCH))
    transmitted = transmission(scene.depth * scene.upsample(density), extinction)
    radiance = forward_scatter_blur(scene, scene.linear, transmitted, BLIZZARD_SCATTER_BLUR_PX)
    srgb = linear_to_srgb(scatter(radiance, transmitted, srgb_colour_to_linear(BLIZZARD_AIRLIGHT_SRGB)))

    angle = math.copysign(rng.uniform(*SNOW_ANGLE_DEG), rng.uniform(-1.0, 1.0))
    opacity = particle_opacity(scene, rng, SNOW_LAYERS, by_severity(SNOW_AMOUNT, severity), angle,
                               SNOW_LAYER_ANGLE_JITTER_DEG)
    srgb += (np.asarray(SNOW_SRGB, dtype=np.float32) - srgb) * opacity[..., None]
    return srgb
