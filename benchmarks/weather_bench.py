"""The adverse-weather suite: time per condition at 2048×1024 against a baseline in the same run.

Every condition of ``diffeel.weather`` is applied to a synthetic road scene (sky, grass, a road with
lane markings, buildings, a car) on one thread; the best of a few repeats is reported in ms per
image, with the 0.5 s target. The baseline is albumentations' ``RandomFog`` / ``RandomRain`` when
albumentations imports, otherwise a plain NumPy baseline defined here: a naive fog (one float64
blend towards grey with a row-wise transmission, per-channel math, no LUTs) and naive rain (drop
streaks drawn by NumPy index arithmetic, one short line per drop). Each condition is compared with
the baseline of its kind: fog-like conditions (fog, sandstorm, blizzard, night, frost) with the fog
baseline, rain with the rain baseline.

    python benchmarks/weather_bench.py
    python benchmarks/weather_bench.py --size 1024x512 --repeats 5
    python benchmarks/weather_bench.py --sheet /tmp/weather_sheet.png   # also write a contact sheet

Exit status: 0 (a missed target is reported, not an error).
"""

from __future__ import annotations

import argparse
import time

import cv2
import numpy as np
import torch

from diffeel.geometry import Camera
from diffeel.weather import CONDITIONS, apply_weather

TARGET_SECONDS = 0.5
ROAD_HALF_WIDTH_M = 4.0
LANE_LINE_HALF_WIDTH_M = 0.08
DASH_PERIOD_M, DASH_LENGTH_M = 9.0, 3.0
BASELINE_FOG_VISIBILITY_M = 150.0
BASELINE_RAIN_DROPS = 1500
BASELINE_RAIN_LENGTH_PX = 40
SHEET_CELL = (768, 384)


def road_scene(width: int, rows: int, seed: int = 0) -> np.ndarray:
    """A synthetic daylight road: sky gradient, buildings and trees, grass, a marked road, a car."""
    rng = np.random.default_rng(seed)
    camera = Camera.for_size(width, rows)
    horizon = camera.horizon_row
    row = np.arange(rows, dtype=np.float32)[:, None] + 0.5
    column = np.arange(width, dtype=np.float32)[None, :] + 0.5
    image = np.zeros((rows, width, 3), dtype=np.float32)

    up = np.clip(1.0 - row / horizon, 0.0, 1.0)[..., None]
    sky = np.array([0.78, 0.86, 0.95]) * (1 - up) + np.array([0.30, 0.50, 0.85]) * up
    image[:] = sky.astype(np.float32)

    depth = camera.ground_depth_at_row(row).astype(np.float32)
    lateral = (column - camera.u0) * depth / camera.fx
    ground = row > horizon
    grass = np.array([0.25, 0.45, 0.18], dtype=np.float32)
    texture = cv2.GaussianBlur(rng.standard_normal((rows, width)).astype(np.float32), (0, 0), 1.2)
    image = np.where(ground[..., None], grass * (1 + 0.25 * texture[..., None]), image)
    road = ground & (np.abs(lateral) < ROAD_HALF_WIDTH_M)
    image[road] = (np.array([0.36, 0.36, 0.37]) * (1 + 0.12 * texture[road][:, None])).astype(np.float32)
    edge = ground & (np.abs(np.abs(lateral) - (ROAD_HALF_WIDTH_M - 0.2)) < LANE_LINE_HALF_WIDTH_M)
    dash = ground & (np.abs(lateral) < LANE_LINE_HALF_WIDTH_M) & ((depth % DASH_PERIOD_M) < DASH_LENGTH_M)
    image[edge | dash] = 0.9

    base = int(horizon)
    x = 0
    while x < width:  # a skyline of buildings and trees standing on the horizon
        block = int(rng.uniform(0.03, 0.09) * width)
        if abs(x + block / 2 - camera.u0) > 0.12 * width:
            height = int(rng.uniform(0.04, 0.16) * rows)
            if rng.random() < 0.35:
                centre = (x + block // 2, base - height // 2)
                cv2.ellipse(image, centre, (block // 2, height // 2 + 1), 0, 0, 360, (0.15, 0.32, 0.12), -1)
            else:
                tone = rng.uniform(0.35, 0.7)
                colour = (tone, tone * rng.uniform(0.85, 1.0), tone * rng.uniform(0.75, 1.0))
                cv2.rectangle(image, (x, base - height), (x + block - 2, base + 1), colour, -1)
                for wy in range(base - height + 4, base - 4, max(4, rows // 60)):  # windows
                    cv2.line(image, (x + 3, wy), (x + block - 5, wy), (0.2, 0.22, 0.28), max(1, rows // 300))
        x += block

    car_depth, car_lateral = 22.0, -2.0
    car_row = camera.row_at_depth(car_depth)
    car_column = camera.lateral_to_column(car_lateral, car_depth)
    car_width = camera.fx * 1.8 / car_depth
    car_height = camera.pixel_height(1.5, car_row)
    top_left = (int(car_column - car_width / 2), int(car_row - car_height))
    cv2.rectangle(image, top_left, (int(car_column + car_width / 2), int(car_row)), (0.55, 0.08, 0.08), -1)
    cv2.rectangle(image, (top_left[0] + int(car_width * 0.15), top_left[1] + int(car_height * 0.1)),
                  (int(car_column + car_width * 0.35), int(car_row - car_height * 0.55)), (0.15, 0.18, 0.22), -1)
    return (np.clip(image, 0.0, 1.0) * 255 + 0.5).astype(np.uint8)


def naive_fog(image: np.ndarray, seed: int) -> np.ndarray:
    """Baseline: float64 blend towards grey with a per-row transmission, everything in NumPy."""
    rows = image.shape[0]
    camera = Camera.for_size(image.shape[1], rows)
    depth = camera.ground_depth_at_row(np.arange(rows) + 0.5)
    transmitted = np.exp(-2.996 / BASELINE_FOG_VISIBILITY_M * depth)[:, None, None]
    airlight = np.full(3, 0.8)
    foggy = image / 255.0 * transmitted + airlight * (1 - transmitted)
    return np.clip(np.round(foggy * 255), 0, 255).astype(np.uint8)


def naive_rain(image: np.ndarray, seed: int) -> np.ndarray:
    """Baseline: slanted drop streaks drawn with NumPy index arithmetic, then a float64 blend."""
    rng = np.random.default_rng(seed)
    rows, width = image.shape[:2]
    streaks = np.zeros((rows, width), dtype=np.float64)
    starts_row = rng.integers(0, rows, BASELINE_RAIN_DROPS)
    starts_column = rng.integers(0, width, BASELINE_RAIN_DROPS)
    steps = np.arange(BASELINE_RAIN_LENGTH_PX)
    streak_rows = np.clip(starts_row[:, None] + steps, 0, rows - 1)
    streak_columns = np.clip(starts_column[:, None] + steps // 3, 0, width - 1)
    streaks[streak_rows, streak_columns] = 1.0
    streaks = np.maximum(streaks, np.roll(streaks, 1, axis=1))  # two pixels thick
    rainy = image / 255.0 * 0.8 + 0.1
    rainy = rainy * (1 - 0.6 * streaks[..., None]) + 0.85 * 0.6 * streaks[..., None]
    return np.clip(np.round(rainy * 255), 0, 255).astype(np.uint8)


def baselines() -> tuple[str, dict]:
    """(name, {"fog": fn(image, seed), "rain": fn(image, seed)}): albumentations if it imports."""
    try:
        import albumentations as albu
    except ImportError:  # not installed, or a dependency missing (albumentations 2 needs pydantic)
        return "plain NumPy (naive fog blend + NumPy rain-streak drawing)", {"fog": naive_fog, "rain": naive_rain}
    fog = albu.RandomFog(fog_coef_range=(0.5, 0.5), p=1.0)
    rain = albu.RandomRain(p=1.0)
    return f"albumentations {albu.__version__} RandomFog / RandomRain", {
        "fog": lambda image, seed: fog(image=image)["image"],
        "rain": lambda image, seed: rain(image=image)["image"],
    }


def best_time(function, repeats: int) -> float:
    best = float("inf")
    for repeat in range(repeats):
        start = time.perf_counter()
        function(repeat)
        best = min(best, time.perf_counter() - start)
    return best


def contact_sheet(image: np.ndarray, path: str, severity: int = 3, seed: int = 0) -> None:
    """Every condition at ``severity`` side by side, labelled, written to ``path``."""
    cells = []
    for condition in CONDITIONS:
        weathered = apply_weather(image, condition, severity=severity, seed=seed)
        cell = cv2.resize(weathered, SHEET_CELL, interpolation=cv2.INTER_AREA)
        label = f"{condition} (severity {severity})" if condition != "clear" else "clear"
        cv2.putText(cell, label, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (0, 0, 0), 4, cv2.LINE_AA)
        cv2.putText(cell, label, (10, 30), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (255, 255, 255), 2, cv2.LINE_AA)
        cells.append(cell)
    legend = np.full_like(cells[0], 32)
    for line_number, line in enumerate((f"{image.shape[1]}x{image.shape[0]} synthetic road scene", f"seed {seed}",
                                        "each cell downscaled for the sheet")):
        cv2.putText(legend, line, (10, 40 + 36 * line_number), cv2.FONT_HERSHEY_SIMPLEX, 0.8, (220, 220, 220), 2,
                    cv2.LINE_AA)
    cells.append(legend)
    grid = np.concatenate([np.concatenate(cells[i:i + 2], axis=1) for i in range(0, len(cells), 2)], axis=0)
    cv2.imwrite(path, cv2.cvtColor(grid, cv2.COLOR_RGB2BGR))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="2048x1024", help="WIDTHxROWS (default 2048x1024)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--severity", type=int, default=3)
    parser.add_argument("--sheet", help="also write a contact sheet of all conditions to this PNG")
    args = parser.parse_args(argv)
    width, rows = (int(part) for part in args.size.lower().split("x"))
    cv2.setNumThreads(1)
    torch.set_num_threads(1)

    image = road_scene(width, rows)
    baseline_name, baseline = baselines()
    baseline_seconds = {kind: best_time(lambda seed, fn=fn: fn(image, seed), args.repeats)
                        for kind, fn in baseline.items()}
    print(f"image {width}x{rows}, severity {args.severity}, one thread, best of {args.repeats}")
    print(f"baseline: {baseline_name}")
    for kind, seconds in baseline_seconds.items():
        print(f"  baseline {kind:<9} {seconds * 1000:8.1f} ms")
    print(f"{'condition':<10} {'ms/image':>9} {'vs baseline':>22}  target < {TARGET_SECONDS * 1000:.0f} ms")
    for condition in CONDITIONS:
        seconds = best_time(lambda seed, condition=condition: apply_weather(image, condition, args.severity, seed),
                            args.repeats)
        kind = "rain" if condition == "rain" else "fog"
        ratio = seconds / baseline_seconds[kind]
        verdict = "meets" if seconds < TARGET_SECONDS else "MISSES"
        print(f"{condition:<10} {seconds * 1000:9.1f} {ratio:9.2f}x {kind + ' baseline':<12}  {verdict}")
    if args.sheet:
        contact_sheet(image, args.sheet, args.severity)
        print(f"contact sheet: {args.sheet}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
