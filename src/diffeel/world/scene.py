"""Procedural road scenes with exact labels and metric depth.

A scene is a flat road seen by the Cityscapes camera (:class:`~diffeel.geometry.Camera`). Every
ground pixel knows its depth and lateral position, so the road, lane marks, sidewalks and terrain
are painted per pixel with perspective-correct texture; objects (buildings, trees, poles, signs,
cars, people, anomalies) are sprites scaled by the ground-plane model and composited through a
depth buffer, so nearer objects cover farther ones and the label of every pixel is the class of
whatever was drawn there last — exact by construction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

from ..geometry import SKY_DEPTH, Camera
from ..labels import TRAIN_ID, VOID
from . import shapes

BACKDROP_DEPTH = 400.0
ON_ROAD_HEIGHT_SHARE = (0.2, 0.9)
MIN_ANOMALY_DEPTH = 2.5  # on-screen height of on-road anomalies, as a share of the image


@dataclass(frozen=True)
class Landform:
    name: str
    lanes: int
    lane_width: float
    sidewalk: float  # metres each side (0: none)
    side_class: str  # what lies beyond the road: terrain or vegetation
    sky: tuple  # (top colour, horizon colour)
    road: tuple
    side: tuple
    backdrop: str  # "buildings" | "trees" | "hills" | "none"
    objects: dict  # object kind → expected count per 100 m of road side
    traffic: float  # expected vehicles ahead


LANDFORMS = {
    form.name: form
    for form in (
        Landform("highway", 4, 3.6, 0, "terrain", ((0.35, 0.55, 0.85), (0.75, 0.82, 0.9)), (0.33, 0.33, 0.34), (0.45, 0.5, 0.3), "hills",
                 {"pole": 4, "sign": 1.5, "fence": 1, "tree": 1}, 3),
        Landform("urban", 2, 3.2, 3.0, "terrain", ((0.45, 0.6, 0.85), (0.8, 0.82, 0.85)), (0.3, 0.3, 0.31), (0.4, 0.45, 0.3), "buildings",
                 {"building": 7, "pole": 3, "light": 2, "sign": 2, "person": 4, "tree": 2, "wall": 1}, 2),
        Landform("country", 2, 3.0, 0, "terrain", ((0.4, 0.6, 0.9), (0.8, 0.85, 0.88)), (0.36, 0.35, 0.33), (0.42, 0.5, 0.25), "hills",
                 {"tree": 3, "fence": 1.5, "pole": 1.5, "sign": 0.8}, 1),
        Landform("forest", 2, 3.0, 0, "vegetation", ((0.4, 0.58, 0.82), (0.72, 0.8, 0.82)), (0.3, 0.3, 0.29), (0.16, 0.3, 0.1), "trees",
                 {"conifer": 14, "tree": 6, "sign": 0.6}, 1),
        Landform("polar", 2, 3.2, 0, "terrain", ((0.55, 0.68, 0.85), (0.88, 0.9, 0.93)), (0.38, 0.38, 0.4), (0.9, 0.92, 0.95), "hills",
                 {"pole": 2, "sign": 0.8, "conifer": 1}, 0.6),
        Landform("grassland", 2, 3.1, 0, "terrain", ((0.3, 0.55, 0.9), (0.78, 0.85, 0.9)), (0.34, 0.34, 0.33), (0.45, 0.6, 0.22), "none",
                 {"fence": 2, "pole": 1, "sign": 0.5, "tree": 0.5}, 0.8),
        Landform("desert", 2, 3.3, 0, "terrain", ((0.45, 0.62, 0.88), (0.9, 0.85, 0.75)), (0.4, 0.37, 0.34), (0.85, 0.7, 0.45), "hills",
                 {"pole": 1.5, "sign": 0.6}, 0.7),
    )
}

# real sizes (height, width) in metres of the inlier sprites
SIZES = {
    "car": ((1.4, 1.6), (1.7, 1.9)), "truck": ((3.0, 3.6), (2.4, 2.5)), "person": ((1.6, 1.9), (0.5, 0.6)),
    "pole": ((4.0, 7.0), (0.15, 0.22)), "tree": ((5.0, 9.0), (3.0, 5.0)), "conifer": ((8.0, 16.0), (3.0, 4.5)),
    "building": ((8.0, 20.0), (8.0, 16.0)), "wall": ((1.0, 2.0), (4.0, 10.0)),
}


@dataclass
class PlacedAnomaly:
    name: str
    family: str
    depth: float
    lateral: float
    instance: int
    on_road: bool


@dataclass
class Scene:
    image: np.ndarray  # (H, W, 3) uint8
    train_ids: np.ndarray  # (H, W) uint8, VOID where nothing countable
    depth: np.ndarray  # (H, W) float32 metres
    instances: np.ndarray  # (H, W) int32: 0 background/ground, k = k-th drawn sprite
    anomalies: list[PlacedAnomaly] = field(default_factory=list)
    landform: str = "urban"


class _Canvas:
    """Colour, train-id, depth and instance buffers with depth-tested sprite compositing."""

    def __init__(self, height: int, width: int):
        self.rgb = np.zeros((height, width, 3), np.float32)
        self.train_ids = np.full((height, width), VOID, np.uint8)
        self.depth = np.full((height, width), np.inf, np.float32)
        self.instances = np.zeros((height, width), np.int32)
        self.count = 0

    def paint(self, where: np.ndarray, colour: np.ndarray, train_id: int, depth) -> None:
        self.rgb[where] = colour
        self.train_ids[where] = train_id
        self.depth[where] = depth if np.isscalar(depth) else depth[where]

    def sprite(self, sprite: shapes.Sprite, foot_x: float, foot_y: float, depth: float, train_id: int) -> int | None:
        """Place a sprite's foot at (foot_x, foot_y); draw where it is nearer than what is there."""
        height, width = sprite.mask.shape
        x0 = int(round(foot_x - sprite.foot[0]))
        y0 = int(round(foot_y - sprite.foot[1]))
        rows, cols = self.train_ids.shape
        ys, xs = slice(max(y0, 0), min(y0 + height, rows)), slice(max(x0, 0), min(x0 + width, cols))
        if ys.start >= ys.stop or xs.start >= xs.stop:
            return None
        local = sprite.mask[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
        visible = local & (depth < self.depth[ys, xs])
        if not visible.any():
            return None
        self.count += 1
        self.rgb[ys, xs][visible] = sprite.rgb[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0][visible]
        self.train_ids[ys, xs][visible] = train_id
        self.depth[ys, xs][visible] = depth
        self.instances[ys, xs][visible] = self.count
        return self.count


def _noise(rng, size: int = 256, blur: float = 1.0) -> np.ndarray:
    noise = rng.normal(0, 1, (size, size)).astype(np.float32)
    pad = int(3 * blur) + 1  # blur a wrapped copy so that the texture tiles without seams
    wrapped = cv2.GaussianBlur(np.pad(noise, pad, mode="wrap"), (0, 0), blur)[pad:-pad, pad:-pad]
    return wrapped / max(float(wrapped.std()), 1e-6)


def _ground_texture(noise: np.ndarray, lateral: np.ndarray, depth: np.ndarray, scale: float) -> np.ndarray:
    """Sample a tiling noise at road-plane coordinates: texture that shrinks with distance."""
    size = noise.shape[0]
    u = np.mod(lateral * scale, size).astype(np.float32)
    v = np.mod(depth * scale, size).astype(np.float32)
    return cv2.remap(noise, u, v, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_WRAP)


def render_scene(landform: str, seed, size=(512, 256), anomalies=(), anomaly_on_road=None) -> Scene:
    """Render one scene. ``anomalies`` lists anomaly kind names to place (see shapes.ANOMALY_KINDS);
    ``anomaly_on_road`` gives, per anomaly, whether it must stand on the road (default: all)."""
    form = LANDFORMS[landform]
    rng = np.random.default_rng(seed)
    width, height = size
    camera = Camera.for_size(width, height)
    canvas = _Canvas(height, width)
    horizon = camera.horizon_row
    rows = np.arange(height, dtype=np.float32)[:, None] + 0.5
    cols = np.arange(width, dtype=np.float32)[None, :] + 0.5

    # sky: vertical gradient with soft clouds
    top, low = (np.asarray(c, np.float32) for c in form.sky)
    sky_t = np.clip(rows / max(horizon, 1), 0, 1)[..., None]
    clouds = cv2.resize(rng.random((4, 8)).astype(np.float32), (width, height), interpolation=cv2.INTER_CUBIC)
    sky = top * (1 - sky_t) + low * sky_t + 0.12 * np.clip(clouds - 0.5, 0, 1)[..., None] * (1 - sky_t)
    canvas.paint(np.ones((height, width), bool), np.broadcast_to(sky, (height, width, 3))[np.ones((height, width), bool)],
                 TRAIN_ID["sky"], SKY_DEPTH)

    # ground: road, lane marks, sidewalks and sides, painted per pixel from (lateral, depth)
    ground = np.broadcast_to(rows > horizon + 0.5, (height, width))
    depth = np.broadcast_to(camera.ground_depth_at_row(rows).astype(np.float32), (height, width))
    lateral = (cols - camera.u0) * depth / camera.fx
    camera_lane = rng.integers(form.lanes)
    road_half = form.lanes * form.lane_width / 2
    offset = (camera_lane + 0.5) * form.lane_width - road_half  # road centre relative to the camera
    relative = lateral + offset
    noise = _noise(rng)
    fine = _ground_texture(noise, relative, depth, 6.0)
    coarse = _ground_texture(_noise(rng, blur=6.0), relative, depth, 0.8)
    fade = np.clip(depth / 120.0, 0, 1)[..., None]  # aerial perspective towards the horizon

    def shade(base, texture_amount):
        colour = np.asarray(base, np.float32) * (1 + texture_amount * fine[..., None] + 0.5 * texture_amount * coarse[..., None])
        return np.clip(colour * (1 - 0.5 * fade) + low * 0.5 * fade, 0, 1)

    on_road = ground & (np.abs(relative) <= road_half)
    canvas.paint(ground, shade(form.side, 0.25)[ground], TRAIN_ID[form.side_class], depth)
    if form.sidewalk:
        walk = ground & ~on_road & (np.abs(relative) <= road_half + form.sidewalk)
        canvas.paint(walk, shade((0.62, 0.6, 0.58), 0.12)[walk], TRAIN_ID["sidewalk"], depth)
    road_colour = shade(form.road, 0.12)
    marks = np.zeros_like(on_road)
    for boundary in range(1, form.lanes):
        position = boundary * form.lane_width - road_half
        dash = (depth % 9.0) < 3.0 if boundary != form.lanes // 2 or form.lanes > 2 else True
        marks |= on_road & (np.abs(relative - position) < 0.08) & dash
    marks |= on_road & (road_half - np.abs(relative) < 0.25) & (np.abs(relative) < road_half - 0.1)
    road_colour[marks] = np.clip(0.85 * (1 - 0.4 * fade[marks]) + 0.1 * fine[marks][:, None], 0, 1)
    canvas.paint(on_road, road_colour[on_road], TRAIN_ID["road"], depth)

    # backdrop at the horizon
    _backdrop(canvas, form, rng, horizon, width)

    # roadside objects and traffic, far to near (the depth test makes order irrelevant for labels)
    def place(kind: str, lateral_position: float, object_depth: float):
        sizes = SIZES[kind]
        real_height = rng.uniform(*sizes[0])
        real_width = rng.uniform(*sizes[1])
        foot_y = camera.row_at_depth(object_depth)
        foot_x = camera.lateral_to_column(lateral_position - offset, object_depth)
        pixel_height = int(round(camera.fy * real_height / object_depth))
        pixel_width = int(round(camera.fx * real_width / object_depth))
        if pixel_height < 2 or pixel_width < 1 or not -pixel_width < foot_x < width + pixel_width:
            return
        pixel_height, pixel_width = min(pixel_height, 4 * height), min(pixel_width, 4 * width)
        if kind == "pole":
            canvas.sprite(shapes.pole(pixel_width, pixel_height, rng), foot_x, foot_y, object_depth, TRAIN_ID["pole"])
            head = max(2, int(round(camera.fx * 0.7 / object_depth)))
            if rng.random() < 0.5:
                canvas.sprite(shapes.traffic_sign(head, head, rng), foot_x, foot_y - pixel_height * 0.85, object_depth - 0.05, TRAIN_ID["traffic sign"])
            return
        builders = {
            "car": (shapes.car, "car"), "truck": (shapes.truck, "truck"), "person": (shapes.person, "person"),
            "tree": (lambda w, h, r: shapes.tree(w, h, r), "vegetation"), "conifer": (lambda w, h, r: shapes.tree(w, h, r, conifer=True), "vegetation"),
            "building": (shapes.building, "building"), "wall": (shapes.wall, "wall"),
        }
        build, class_name = builders[kind]
        canvas.sprite(build(pixel_width, pixel_height, rng), foot_x, foot_y, object_depth, TRAIN_ID[class_name])

    edge = road_half + form.sidewalk
    for kind, per_100m in form.objects.items():
        for _ in range(rng.poisson(per_100m * 1.2)):
            side = rng.choice([-1, 1])
            object_depth = rng.uniform(8 if kind in ("tree", "conifer", "building", "pole") else 4, 120)
            if kind == "fence":
                _fence(canvas, camera, rng, side * (edge + rng.uniform(0.3, 1.5)) - offset, object_depth, rng.uniform(15, 60))
                continue
            if kind in ("light", "sign"):
                _pole_with_head(canvas, camera, rng, side * (edge + rng.uniform(0.3, 1.2)) - offset, object_depth, kind)
                continue
            setback = {"building": (2.0, 8.0), "tree": (1.5, 12.0), "conifer": (1.0, 15.0), "person": (0.3, max(form.sidewalk - 0.3, 0.5)),
                       "wall": (0.5, 3.0), "pole": (0.3, 1.0)}.get(kind, (0.5, 3.0))
            lateral_position = side * (road_half + (form.sidewalk if kind != "person" else 0) + rng.uniform(*setback))
            place(kind, lateral_position, object_depth)
    for _ in range(rng.poisson(form.traffic)):
        lane = rng.integers(form.lanes)
        place("truck" if rng.random() < 0.2 else "car", (lane + 0.5) * form.lane_width - road_half + rng.normal(0, 0.2), rng.uniform(10, 90))

    placed = []
    on_road_flags = list(anomaly_on_road) if anomaly_on_road is not None else [True] * len(anomalies)
    for name, must_be_on_road in zip(anomalies, on_road_flags):
        kind = shapes.ANOMALY_KINDS[name]
        real_height = rng.uniform(*kind.height_range)
        if must_be_on_road:  # a hazard ahead, framed by the camera (ComsAmy's photos are)
            share = rng.uniform(*ON_ROAD_HEIGHT_SHARE)
            object_depth = max(camera.fy * real_height / (share * height), MIN_ANOMALY_DEPTH)
        else:
            object_depth = rng.uniform(15, 60)
        pixel_height = max(3, int(round(camera.fy * real_height / object_depth)))
        pixel_width = max(3, int(round(pixel_height * kind.aspect * rng.uniform(0.85, 1.15))))
        if must_be_on_road:
            # the foot's lateral position: on the road, and in view with at least half the object
            half_width = pixel_width / 2 * object_depth / camera.fx
            in_view = ((0 - camera.u0) * object_depth / camera.fx + offset, (width - camera.u0) * object_depth / camera.fx + offset)
            low, high = max(-road_half + 0.6, in_view[0] + half_width / 2), min(road_half - 0.6, in_view[1] - half_width / 2)
            lateral_position = rng.uniform(low, high) if low < high else rng.uniform(-road_half + 0.6, road_half - 0.6)
        else:
            lateral_position = rng.choice([-1, 1]) * (edge + rng.uniform(6, 15))
        sprite = shapes.anomaly_sprite(name, pixel_width, pixel_height, rng)
        foot_x = camera.lateral_to_column(lateral_position - offset, object_depth)
        instance = canvas.sprite(sprite, foot_x, camera.row_at_depth(object_depth), object_depth, VOID)
        if instance is not None:
            placed.append(PlacedAnomaly(name, kind.family, object_depth, lateral_position, instance, bool(must_be_on_road)))

    image = (np.clip(canvas.rgb, 0, 1) * 255 + 0.5).astype(np.uint8)
    return Scene(image, canvas.train_ids, canvas.depth.astype(np.float32), canvas.instances, placed, landform)


def _backdrop(canvas: _Canvas, form: Landform, rng, horizon: float, width: int) -> None:
    """A silhouette band just above the horizon: skyline, tree line or hills."""
    if form.backdrop == "none":
        return
    height = canvas.train_ids.shape[0]
    columns = np.arange(width)
    if form.backdrop == "hills":
        profile = sum(rng.uniform(0.3, 1.0) * np.sin(columns / width * np.pi * f + rng.uniform(0, 6)) for f in (1.3, 3.1, 7.7))
        top = horizon - (0.03 + 0.02 * profile) * height
        colour, train_id = np.asarray(form.side, np.float32) * 0.7 + np.asarray(form.sky[1]) * 0.3, TRAIN_ID["terrain"]
    elif form.backdrop == "trees":
        profile = cv2.resize(rng.random((1, max(width // 6, 2))).astype(np.float32), (width, 1), interpolation=cv2.INTER_LINEAR)[0]
        top = horizon - (0.06 + 0.08 * profile) * height
        colour, train_id = np.asarray((0.12, 0.22, 0.1), np.float32), TRAIN_ID["vegetation"]
    else:
        blocks = np.repeat(rng.uniform(0.04, 0.16, max(width // 20, 2)), 20)[:width]
        blocks = np.pad(blocks, (0, max(0, width - len(blocks))), mode="edge")
        top = horizon - blocks * height
        colour, train_id = np.asarray((0.55, 0.56, 0.6), np.float32), TRAIN_ID["building"]
    rows = np.arange(height)[:, None]
    band = (rows >= top[None, :]) & (rows <= horizon + 1)
    texture = 1 + 0.08 * rng.normal(size=band.shape).astype(np.float32)[..., None]
    colours = np.clip(colour * texture, 0, 1)
    canvas.paint(band, colours[band], train_id, BACKDROP_DEPTH)


def _fence(canvas: _Canvas, camera: Camera, rng, lateral: float, near: float, length: float) -> None:
    """A fence (or guard rail) parallel to the road from ``near`` to ``near + length`` metres."""
    height = rng.uniform(0.8, 1.3)
    colour = np.asarray((0.55, 0.5, 0.45) if rng.random() < 0.5 else (0.7, 0.72, 0.75), np.float32)
    for depth in np.arange(near + length, near, -0.5):  # far to near slices, depth-tested
        x = camera.lateral_to_column(lateral, depth)
        y = camera.row_at_depth(depth)
        h = max(1, int(round(camera.fy * height / depth)))
        w = max(1, int(round(abs(camera.fx * lateral * 0.5 / depth - camera.fx * lateral * 0.5 / (depth + 0.5))) + 1))
        post = (depth % 2.5) < 0.5
        rgb = np.empty((h, w, 3), np.float32)
        rgb[:] = colour * (0.75 if post else 1.0)
        mask = np.ones((h, w), bool)
        if not post:
            mask[int(h * 0.35) : int(h * 0.55)] = False  # a gap between the rails
        canvas.sprite(shapes.Sprite(rgb, mask, (w / 2, h - 1)), x, y, depth, TRAIN_ID["fence"])


def _pole_with_head(canvas: _Canvas, camera: Camera, rng, lateral: float, depth: float, kind: str) -> None:
    pole_height = rng.uniform(3.0, 5.5)
    x, y = camera.lateral_to_column(lateral, depth), camera.row_at_depth(depth)
    h = int(round(camera.fy * pole_height / depth))
    w = max(1, int(round(camera.fx * 0.15 / depth)))
    if h < 3:
        return
    canvas.sprite(shapes.pole(w, h, rng), x, y, depth, TRAIN_ID["pole"])
    if kind == "light":
        head_h = max(3, int(round(camera.fy * 0.9 / depth)))
        sprite = shapes.traffic_light(max(2, head_h // 3 + 1), head_h, rng)
        canvas.sprite(sprite, x, y - h + head_h, depth - 0.05, TRAIN_ID["traffic light"])
    else:
        side = max(2, int(round(camera.fy * 0.7 / depth)))
        canvas.sprite(shapes.traffic_sign(side, side, rng), x, y - h + side, depth - 0.05, TRAIN_ID["traffic sign"])
