"""Writing the embedded world to disk: a ComsAmy-format test benchmark and a training split.

Layout under ``--out``::

    world.json                      settings (a rerun must use the same ones)
    test/images/{id}.png            every weather and landform, unseen anomalies (animals)
    test/labels/{id}.png            0 inlier, 1 anomaly, 255 void (ComsAmy rules)
    test/manifest.csv               id, weather, landform, anomalies, seed, severity
    train/images/{id}.png           clear weather, no anomalies
    train/labels/{id}.png           Cityscapes train ids, 255 void
    train/depth/{id}.npy            metric depth, float16
    train/manifest.csv              id, landform, seed
    train/objects/{kind}_{k}.png    RGBA cut-outs of the training anomaly family (debris)
    train/objects/objects.csv       file, kind, family, min_height_m, max_height_m

Every frame has its own seed derived from (world seed, split, index), so the output does not
depend on ``--jobs`` or on which frames already exist. Files are written through temporary names,
and a rerun skips frames whose files are all present: an interrupted run resumes.
"""

from __future__ import annotations

import csv
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..data.arrays import save_array_atomic
from ..data.benchmarks import ADVERSE_WEATHERS, LANDFORMS, WEATHERS
from ..data.images import write_image_atomic
from ..errors import DiffeelError
from ..labels import ANOMALY, INLIER, VOID
from ..parallel import run_chunks, split, worker_count
from . import shapes
from .scene import Scene, render_scene

ANIMALS = [k.name for k in shapes.ANOMALY_KINDS.values() if k.family == "animals"]
DEBRIS = [k.name for k in shapes.ANOMALY_KINDS.values() if k.family == "debris"]
MIN_ANOMALY_SHARE = 0.0004  # smaller anomalies do not matter in a collision: void (ComsAmy rule 3)
OBJECT_HEIGHT_PX = 96
OBJECTS_PER_KIND = 12
COMSAMY_CLEAR_ADVERSE = (250, 218)  # images per condition in ComsAmy (paper, Sec. III)
WORLD_FORMAT = 2  # bumped whenever the rendering changes, so that old worlds are not mixed in


@dataclass(frozen=True)
class FramePlan:
    split: str
    index: int
    id: str
    landform: str
    weather: str
    severity: int
    seed: int
    anomalies: tuple[str, ...] = ()
    on_road: tuple[bool, ...] = ()


def frame_seed(world_seed: int, split: str, index: int) -> int:
    return int(np.random.SeedSequence([world_seed, {"test": 1, "train": 2, "objects": 3, "objects-animals": 4}[split], index]).generate_state(1)[0])


def comsamy_clear_frames(per_weather: int) -> int:
    """Clear frames that give ComsAmy's clear : adverse ratio (250 : 218 images) next to
    ``per_weather`` frames of each of the six adverse weathers."""
    return round(per_weather * len(ADVERSE_WEATHERS) * COMSAMY_CLEAR_ADVERSE[0] / COMSAMY_CLEAR_ADVERSE[1])


def plan_test(world_seed: int, per_weather: int, clear: int | None = None) -> list[FramePlan]:
    """``per_weather`` frames per adverse weather and ``clear`` clear ones (default: ComsAmy's
    ratio, :func:`comsamy_clear_frames`); landforms rotate so weathers × landforms stay balanced."""
    clear = comsamy_clear_frames(per_weather) if clear is None else clear
    plans = []
    for weather_index, weather in enumerate(WEATHERS):
        for k in range(clear if weather == "clear" else per_weather):
            index = len(plans)
            seed = frame_seed(world_seed, "test", index)
            rng = np.random.default_rng(seed)
            n_road = int(rng.integers(1, 3))
            n_off = int(rng.random() < 0.4)
            names = tuple(str(n) for n in rng.choice(ANIMALS, n_road + n_off))
            plans.append(FramePlan(
                "test", index, f"{weather}_{index:04d}", LANDFORMS[(weather_index + k) % len(LANDFORMS)], weather,
                0 if weather == "clear" else int(rng.integers(1, 4)), seed, names, (True,) * n_road + (False,) * n_off,
            ))
    return plans


def plan_train(world_seed: int, count: int) -> list[FramePlan]:
    return [
        FramePlan("train", i, f"train_{i:05d}", LANDFORMS[i % len(LANDFORMS)], "clear", 0, frame_seed(world_seed, "train", i))
        for i in range(count)
    ]


def evaluation_label(scene: Scene) -> np.ndarray:
    """ComsAmy labels: an anomaly on the road and large enough is 1; other anomalies void; rest 0."""
    label = np.full(scene.instances.shape, INLIER, np.uint8)
    min_pixels = MIN_ANOMALY_SHARE * label.size
    for anomaly in scene.anomalies:
        pixels = scene.instances == anomaly.instance
        label[pixels] = ANOMALY if anomaly.on_road and pixels.sum() >= min_pixels else VOID
    return label


def render_test_frame(plan: FramePlan, size) -> tuple[np.ndarray, np.ndarray, Scene]:
    """(weathered image, label) of a test frame; rerolls the layout until an anomaly counts."""
    from ..weather import apply_weather

    for attempt in range(20):
        scene = render_scene(plan.landform, [plan.seed, attempt], size, plan.anomalies, plan.on_road)
        label = evaluation_label(scene)
        if (label == ANOMALY).any():
            break
    else:  # pragma: no cover - the placement rules make this practically impossible
        raise DiffeelError(f"could not place a visible anomaly in frame {plan.id}")
    image = apply_weather(scene.image, plan.weather, severity=max(plan.severity, 1), seed=plan.seed, depth=scene.depth)
    return image, label, scene


def _frame_files(root: Path, plan: FramePlan) -> list[Path]:
    split = root / plan.split
    files = [split / "images" / f"{plan.id}.png", split / "labels" / f"{plan.id}.png"]
    return files + ([split / "depth" / f"{plan.id}.npy"] if plan.split == "train" else [])


def write_frame(root: str, plan: FramePlan, size: tuple[int, int]) -> bool:
    """Render and write one frame unless all its files exist; True if it was written."""
    root = Path(root)
    files = _frame_files(root, plan)
    if all(f.exists() for f in files):
        return False
    if plan.split == "test":
        image, label, _ = render_test_frame(plan, size)
        write_image_atomic(files[0], image)
        write_image_atomic(files[1], label)
    else:
        scene = render_scene(plan.landform, plan.seed, size)
        write_image_atomic(files[0], scene.image)
        write_image_atomic(files[1], scene.train_ids)
        save_array_atomic(files[2], scene.depth.astype(np.float16))
    return True


def _write_text_atomic(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def _manifest(plans: list[FramePlan], fields: list[str]) -> str:
    stream = io.StringIO()
    writer = csv.writer(stream)
    writer.writerow(fields)
    for plan in plans:
        values = asdict(plan)
        values["anomalies"] = "|".join(name for name, road in zip(plan.anomalies, plan.on_road) if road)
        writer.writerow([values[f] for f in fields])
    return stream.getvalue()


def write_objects(root: Path, world_seed: int) -> int:
    """RGBA cut-outs of the training anomaly family for copy-paste synthesis."""
    return write_object_bank(root / "train" / "objects", world_seed, "debris")


def write_object_bank(folder: Path, world_seed: int, family: str = "debris") -> int:
    """An object bank (RGBA cut-outs and ``objects.csv``) of one anomaly family of the world:
    ``debris`` (the training family) or ``animals`` (the unseen one). Returns the object count."""
    kinds = {"debris": DEBRIS, "animals": ANIMALS}
    if family not in kinds:
        raise DiffeelError(f"unknown anomaly family {family!r}; choose debris or animals")
    stream_name = "objects" if family == "debris" else f"objects-{family}"  # the debris bank stays as worlds made it
    rows = []
    for k, name in enumerate(name for name in kinds[family] for _ in range(OBJECTS_PER_KIND)):
        rng = np.random.default_rng(frame_seed(world_seed, stream_name, k))
        kind = shapes.ANOMALY_KINDS[name]
        width = max(3, int(round(OBJECT_HEIGHT_PX * kind.aspect * rng.uniform(0.85, 1.15))))
        sprite = shapes.anomaly_sprite(name, width, OBJECT_HEIGHT_PX, rng)
        rgba = np.dstack([(sprite.rgb * 255 + 0.5).astype(np.uint8), sprite.mask.astype(np.uint8) * 255])
        file = f"{name}_{k:03d}.png"
        if not (folder / file).exists():
            write_image_atomic(folder / file, rgba)
        rows.append([file, name, kind.family, *kind.height_range])
    stream = io.StringIO()
    csv.writer(stream).writerows([["file", "kind", "family", "min_height_m", "max_height_m"], *rows])
    _write_text_atomic(folder / "objects.csv", stream.getvalue())
    return len(rows)


WORLD_FOLDERS = ("", "test", "train", "test/images", "test/labels", "train/images", "train/labels", "train/depth", "train/objects")


def _read_settings(marker: Path) -> dict:
    """The settings an earlier run recorded in world.json; a damaged file is an error."""
    try:
        settings = json.loads(marker.read_text())
        if not isinstance(settings, dict):
            raise ValueError("not an object")
        for key in ("seed", "per_weather", "train", "format"):
            if not isinstance(settings.get(key), int):
                raise ValueError(f"no whole-number {key!r}")
        if not (isinstance(settings.get("size"), list) and len(settings["size"]) == 2):
            raise ValueError("no size")
        if settings.get("clear") is not None and not isinstance(settings["clear"], int):
            raise ValueError("clear is not a whole number")
    except (OSError, ValueError, UnicodeDecodeError) as error:
        raise DiffeelError(f"{marker} is damaged ({error}); remove the folder or choose another --out") from None
    return settings


def _planned_files(root: Path, plans: list[FramePlan]) -> set[Path]:
    """Every file the plans write: frames and the manifests of the splits that have frames."""
    return {path for plan in plans for path in _frame_files(root, plan)} | {root / plan.split / "manifest.csv" for plan in plans}


def make_world(out, per_weather: int = 10, train: int = 200, size=(512, 256), seed: int = 0, jobs: int = 1,
               progress: bool = True, clear: int | None = None) -> dict:
    """Write (or finish writing) the world under ``out``; returns counts of written/kept frames.

    ``out`` must be new, empty or a world (it has ``world.json``); only files this world wrote are
    ever removed, and one run at a time may write it (a second one fails at once).
    """
    from tqdm import tqdm

    from ..report.output import check_output_dir, exclusive_lock

    for name, value in (("per_weather", per_weather), ("train", train), ("seed", seed), ("clear", clear)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 0):
            raise DiffeelError(f"{name} must be a whole number of at least 0, got {value!r}")
    jobs = worker_count(jobs)
    root = check_output_dir(out, allowed=None)
    if root.is_dir() and any(root.iterdir()) and not (root / "world.json").is_file():
        raise DiffeelError(f"--out {root} is not empty and holds no world (no world.json); choose an empty or new folder")
    settings = {"seed": seed, "size": list(size), "per_weather": per_weather, "clear": clear, "train": train, "format": WORLD_FORMAT}
    root.parent.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(root.parent / f".{root.name}.lock", f"the world {root}"):
        marker = root / "world.json"
        previous_plans: list[FramePlan] = []
        if marker.exists():
            previous = _read_settings(marker)
            if {k: previous.get(k) for k in ("seed", "size", "format")} != {k: settings[k] for k in ("seed", "size", "format")}:
                raise DiffeelError(f"{root} holds a world made with other settings ({marker.name}); choose another --out")
            previous_plans = plan_test(seed, previous["per_weather"], previous.get("clear")) + plan_train(seed, previous["train"])
        test_plans, train_plans = plan_test(seed, per_weather, clear), plan_train(seed, train)
        plans = test_plans + train_plans
        # Frames an earlier run planned and this one does not go first, while world.json still
        # names that run: an interrupted cleanup is finished by the next run.
        for path in sorted(_planned_files(root, previous_plans) - _planned_files(root, plans)):
            path.unlink(missing_ok=True)
        root.mkdir(parents=True, exist_ok=True)
        _write_text_atomic(marker, json.dumps(settings, indent=2) + "\n")
        for folder in WORLD_FOLDERS:  # temporaries of an interrupted run (our own names only)
            for stale in (root / folder).glob(".*.tmp"):
                stale.unlink()

        chunks = split(plans, jobs * 4) if jobs > 1 else [plans]
        with tqdm(total=len(plans), desc="world", unit="frame", disable=not progress) as bar:
            written = sum(sum(part) for part in run_chunks(_write_chunk, chunks, (str(root), tuple(size)), jobs, bar))
        for split_name, split_plans, fields in (("test", test_plans, ["id", "weather", "landform", "anomalies", "seed", "severity"]),
                                                ("train", train_plans, ["id", "landform", "seed"])):
            if split_plans:
                _write_text_atomic(root / split_name / "manifest.csv", _manifest(split_plans, fields))
        n_objects = write_objects(root, seed)
    return {"written": written, "kept": len(plans) - written, "test": len(test_plans), "train": len(train_plans), "objects": n_objects,
            "clear": sum(plan.weather == "clear" for plan in test_plans)}


def _write_chunk(plans: list[FramePlan], root: str, size: tuple[int, int], progress=None) -> list[bool]:
    results = []
    for plan in plans:
        results.append(write_frame(root, plan, size))
        if progress is not None:
            progress.update(1)
    return results
