"""The adverse-weather suite: each condition's physical signature, determinism, shapes and errors."""

import cv2
import numpy as np
import pytest
from scipy import ndimage

from diffeel.errors import DiffeelError
from diffeel.geometry import Camera
from diffeel.weather import CONDITIONS, apply_weather

WIDTH, ROWS = 256, 128
RANDOM_CONDITIONS = [c for c in CONDITIONS if c != "clear"]
HORIZON = Camera.for_size(WIDTH, ROWS).horizon_row  # ≈ 53 at 128 rows


def luminance(image: np.ndarray) -> np.ndarray:
    return image.astype(np.float64) @ np.array([0.2126, 0.7152, 0.0722])


def textured_image(seed: int = 0, width: int = WIDTH, rows: int = ROWS, colourful: bool = False) -> np.ndarray:
    """Random 4×4-pixel blocks, equally contrasted in every row: contrast loss shows wherever it happens."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(30, 226, size=(rows // 4 + 1, width // 4 + 1, 3 if colourful else 1))
    image = np.repeat(np.repeat(blocks, 4, axis=0), 4, axis=1)[:rows, :width]
    return np.broadcast_to(image, (rows, width, 3)).astype(np.uint8).copy()


def flat_image(value: int, width: int = WIDTH, rows: int = ROWS) -> np.ndarray:
    return np.full((rows, width, 3), value, dtype=np.uint8)


def test_clear_is_an_identity_copy():
    image = textured_image(colourful=True)
    result = apply_weather(image, "clear", severity=5, seed=3)
    assert np.array_equal(result, image)
    assert not np.shares_memory(result, image)


@pytest.mark.parametrize("condition", CONDITIONS)
@pytest.mark.parametrize("width, rows", [(97, 61), (61, 97), (2048, 1024)])
def test_shape_and_dtype_are_kept(condition, width, rows):
    image = textured_image(width=width, rows=rows, colourful=True)
    result = apply_weather(image, condition)
    assert result.shape == image.shape and result.dtype == np.uint8
    assert (condition == "clear") == np.array_equal(result, image)


@pytest.mark.parametrize("condition", RANDOM_CONDITIONS)
def test_higher_severity_changes_the_image_more(condition):
    image = textured_image(colourful=True)
    change = [np.abs(apply_weather(image, condition, s, seed=1).astype(float) - image).mean() for s in (1, 3, 5)]
    assert change[0] < change[1] < change[2], change


@pytest.mark.parametrize("condition", RANDOM_CONDITIONS)
def test_same_seed_is_bit_identical_and_another_seed_differs(condition):
    image = textured_image(colourful=True)
    first = apply_weather(image, condition, 3, seed=11)
    assert np.array_equal(first, apply_weather(image, condition, 3, seed=11))
    assert np.abs(first.astype(int) - apply_weather(image, condition, 3, seed=12)).mean() > 0.5


def test_night_is_dark_blue_with_light_glows_and_sensor_noise():
    image = flat_image(128)
    clear_luminance = luminance(image).mean()
    night_by_severity = [apply_weather(image, "night", s, seed=0) for s in (1, 3, 5)]
    means = [luminance(night).mean() for night in night_by_severity]
    assert means[1] < 0.35 * clear_luminance, means  # default severity
    assert means[0] > means[1] > means[2]
    night = night_by_severity[1].astype(float)
    sky = night[: int(HORIZON) - 2]
    assert sky[..., 2].mean() > 1.3 * sky[..., 0].mean()  # blue cast of the night sky (input is neutral)
    assert luminance(sky).max() > 200  # street-lamp glows above the horizon (input is mid-grey)
    assert (luminance(sky) > 150).mean() < 0.05  # ... which are points, not a bright sky
    glow_free = np.median(luminance(sky))
    assert glow_free < 40
    flat_patch = luminance(night[: int(HORIZON) - 2])
    assert np.std(flat_patch[np.abs(flat_patch - glow_free) < 15]) > 0.3  # shot and read noise


def test_fog_lowers_contrast_with_severity_and_more_far_than_near():
    image = textured_image()
    contrast = luminance(image).std()
    stds = [luminance(apply_weather(image, "fog", s, seed=0)).std() for s in range(1, 6)]
    assert all(a > b for a, b in zip([contrast] + stds, stds)), (contrast, stds)

    foggy = luminance(apply_weather(image, "fog", 3, seed=0))
    clear = luminance(image)
    far_rows = slice(int(HORIZON) + 2, int(HORIZON) + 12)  # road tens of metres away
    near_rows = slice(ROWS - 16, ROWS)  # road a few metres in front
    far_kept = foggy[far_rows].std() / clear[far_rows].std()
    near_kept = foggy[near_rows].std() / clear[near_rows].std()
    assert far_kept < 0.6 * near_kept, (far_kept, near_kept)
    assert foggy[: int(HORIZON) - 2].std() < 0.05 * clear[: int(HORIZON) - 2].std()  # sky: all airlight


def test_an_explicit_depth_map_is_used_where_it_differs():
    image = textured_image()
    ground = Camera.for_size(WIDTH, ROWS).ground_depth_map()
    default = apply_weather(image, "fog", 3, seed=4)
    assert np.array_equal(apply_weather(image, "fog", 3, seed=4, depth=ground), default)

    near_left = ground.copy()
    near_left[:, : WIDTH // 2] = 5.0  # a wall 5 m away fills the left half
    result = apply_weather(image, "fog", 3, seed=4, depth=near_left)
    left, right = slice(0, WIDTH // 2 - 8), slice(WIDTH // 2 + 8, WIDTH)
    assert np.array_equal(result[:, right], default[:, right])
    upper = slice(0, int(HORIZON))
    error_near = np.abs(result[upper, left].astype(float) - image[upper, left]).mean()
    error_default = np.abs(default[upper, left].astype(float) - image[upper, left]).mean()
    assert error_near < 0.25 * error_default  # a near wall keeps its texture, the far sky did not


def test_invalid_depth_entries_count_as_far():
    image = textured_image()
    far = np.full((ROWS, WIDTH), 1000.0)
    invalid = far.copy()
    invalid[::3] = 0.0
    invalid[1::3] = np.nan
    assert np.array_equal(apply_weather(image, "fog", 2, seed=0, depth=invalid),
                          apply_weather(image, "fog", 2, seed=0, depth=far))


def test_sandstorm_turns_the_scene_yellow_brown():
    image = textured_image()

    def yellowness(result):
        result = result.astype(float)
        return ((result[..., 0] + result[..., 1]) / 2 - result[..., 2]).mean()

    assert abs(yellowness(image)) < 1
    sand = [yellowness(apply_weather(image, "sandstorm", s, seed=0)) for s in (1, 3, 5)]
    assert sand[0] > 25 and sand[0] < sand[1] < sand[2], sand
    assert abs(yellowness(apply_weather(image, "fog", 3, seed=0))) < 10  # fog's airlight is grey
    red, green, blue = apply_weather(image, "sandstorm", 3, seed=0)[: int(HORIZON)].reshape(-1, 3).mean(0)
    assert red > green > blue


def gradient_orientation(image: np.ndarray) -> tuple[float, float]:
    """(coherence, dominant gradient orientation in degrees mod 180) of the luminance gradients.

    The gradient-magnitude-weighted orientation histogram's doubled-angle mean resultant: 1 when
    every edge shares one orientation, 0 for isotropic texture or for equal horizontal and vertical
    edges.
    """
    grey = luminance(image).astype(np.float32)
    gx, gy = cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)
    resultant = ((gx + 1j * gy) ** 2).sum()
    return abs(resultant) / (gx**2 + gy**2).sum(), np.degrees(np.angle(resultant)) / 2 % 180


def test_rain_adds_streaks_of_one_orientation_that_depends_on_the_seed():
    image = flat_image(70)
    sky = slice(0, int(HORIZON) - 4)  # above the wet road: only streaks (and a few drops) here
    orientations = [gradient_orientation(apply_weather(image, "rain", 3, seed=seed)[sky]) for seed in range(4)]
    coherences = [coherence for coherence, _ in orientations]
    tilts = [(angle + 90) % 180 - 90 for _, angle in orientations]  # 0 = horizontal gradient, vertical streak
    assert min(coherences) > 0.5, coherences
    assert all(abs(tilt) <= 30 for tilt in tilts), tilts  # streaks within 30° of vertical
    assert max(tilts) - min(tilts) >= 8, tilts  # the wind angle is seeded
    assert gradient_orientation(textured_image()[sky])[0] < 0.1  # blocks: as many vertical as horizontal edges
    assert gradient_orientation(apply_weather(image, "frost", 3, seed=0)[sky])[0] < 0.2  # crystals point anywhere


def test_rain_darkens_the_wet_road_below_the_horizon():
    image = flat_image(128)
    uniform_depth = np.full((ROWS, WIDTH), 10.0)  # the same haze everywhere: only the road differs
    rainy = luminance(apply_weather(image, "rain", 3, seed=0, depth=uniform_depth))
    above = np.median(rainy[: int(HORIZON) - 4])
    below = np.median(rainy[int(HORIZON) + 12:])
    assert below < above - 10, (above, below)
    foggy = luminance(apply_weather(image, "fog", 3, seed=0, depth=uniform_depth))
    assert abs(np.median(foggy[: int(HORIZON) - 4]) - np.median(foggy[int(HORIZON) + 12:])) < 3


def bright_particles(image: np.ndarray) -> np.ndarray:
    """Areas of connected bright spots standing out of their 9×9 surroundings (white top-hat)."""
    grey = luminance(image)
    top_hat = grey - ndimage.grey_opening(grey, size=(9, 9))
    labels, _ = ndimage.label(top_hat > 20)
    return np.bincount(labels.ravel())[1:]


def test_blizzard_whitens_and_adds_many_small_bright_flakes():
    image = flat_image(60)
    blizzard = apply_weather(image, "blizzard", 3, seed=0)
    assert luminance(blizzard).mean() > luminance(image).mean() + 80
    flakes = bright_particles(blizzard)
    assert flakes.size >= 30 and np.median(flakes) < 40, (flakes.size, np.median(flakes) if flakes.size else None)
    assert bright_particles(apply_weather(image, "fog", 5, seed=0)).size == 0  # fog alone has no flakes


def test_frost_is_strongest_at_the_borders_cold_and_desaturated():
    image = textured_image(colourful=True)
    frosty = apply_weather(image, "frost", 3, seed=0)
    change = np.abs(frosty.astype(float) - image).mean(axis=2)
    border = np.ones((ROWS, WIDTH), dtype=bool)
    border[ROWS // 10: -ROWS // 10, WIDTH // 10: -WIDTH // 10] = False
    centre = change[ROWS * 3 // 8: ROWS * 5 // 8, WIDTH * 3 // 8: WIDTH * 5 // 8]
    assert change[border].mean() > 2.5 * centre.mean(), (change[border].mean(), centre.mean())

    def saturation(result):
        result = result.astype(float)
        return (result.max(axis=2) - result.min(axis=2)).mean()

    middle = (slice(ROWS // 3, 2 * ROWS // 3), slice(WIDTH // 3, 2 * WIDTH // 3))
    assert saturation(frosty[middle]) < 0.8 * saturation(image[middle])
    def blue_minus_red(result):
        return (result[..., 2].astype(float) - result[..., 0]).mean()

    assert blue_minus_red(frosty[middle]) > blue_minus_red(image[middle]) + 5  # cold cast
    inner = (slice(ROWS // 5, -ROWS // 5), slice(WIDTH // 5, -WIDTH // 5))
    creep = [np.abs(apply_weather(image, "frost", s, seed=0)[inner].astype(float) - image[inner]).mean()
             for s in (1, 5)]
    assert creep[0] < 0.5 * creep[1], creep  # with severity the frost grows inwards


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"condition": "snow"}, r"Unknown weather condition 'snow'; choose one of clear, rain, night"),
        ({"condition": None}, r"Unknown weather condition None"),
        ({"severity": 0}, r"severity must be an integer from 1 to 5, got 0\."),
        ({"severity": 6}, r"severity must be an integer from 1 to 5, got 6\."),
        ({"severity": 2.0}, r"severity must be an integer from 1 to 5, got 2\.0\."),
        ({"severity": True}, r"severity must be an integer from 1 to 5, got True\."),
        ({"severity": "3"}, r"severity must be an integer from 1 to 5, got '3'\."),
        ({"image": np.zeros((8, 8, 3), np.float32)},
         r"image must be an \(H, W, 3\) uint8 RGB array, got shape \(8, 8, 3\) and dtype float32\."),
        ({"image": np.zeros((8, 8), np.uint8)}, r"image must be an \(H, W, 3\) uint8 RGB array, got shape \(8, 8\)"),
        ({"image": np.zeros((8, 8, 4), np.uint8)}, r"got shape \(8, 8, 4\)"),
        ({"image": np.zeros((0, 8, 3), np.uint8)}, r"got shape \(0, 8, 3\)"),
        ({"image": [[[0, 0, 0]]]}, r"image must be an \(H, W, 3\) uint8 RGB array, got shape None and dtype list"),
        ({"depth": np.ones((8, 9))}, r"depth map must have the image's shape \(8, 8\), got \(8, 9\)\."),
        ({"depth": np.ones(8)}, r"depth map must have the image's shape \(8, 8\), got \(8,\)\."),
        ({"depth": np.full((8, 8), "far")}, r"depth map must hold numbers \(metres\), got dtype <U3\."),
    ],
)
def test_bad_arguments_raise_value_error_with_a_clear_message(kwargs, message):
    arguments = {"image": np.zeros((8, 8, 3), np.uint8), "condition": "fog", "severity": 3, "depth": None}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message) as raised:
        apply_weather(**arguments)
    assert isinstance(raised.value, DiffeelError)
