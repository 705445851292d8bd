"""Benchmark loaders: each lists the frames of a benchmark as (id, image, label, metadata).

Every loader validates the layout before anything is evaluated and fails with one sentence naming
the first missing or unexpected file. Labels are mapped to 0 inlier / 1 anomaly / 255 void by the
benchmark's :class:`~diffeel.labels.LabelMapping`; images are decoded by content.

| name | layout under ``--root`` |
|---|---|
| ``smiyc-anomaly`` | ``dataset_AnomalyTrack/{images/{id}.jpg, labels_masks/{id}_labels_semantic.png}`` |
| ``smiyc-obstacle`` | ``dataset_ObstacleTrack/{images/{id}.webp, labels_masks/{id}_labels_semantic.png}`` |
| ``fs-laf`` | ``{NNNN}_{laf id}_labels.png`` (images from ``--images`` = a LostAndFound root, optional) |
| ``fs-static`` | ``{NNNN}_{cityscapes id}_labels.png`` and ``_rgb.npz`` (images need ``--images`` = Cityscapes root) |
| ``road-anomaly`` | ``frames/{name}.jpg`` and ``frames/{name}.labels/labels_semantic.png`` (2 = anomaly) |
| ``laf`` | ``leftImg8bit/test/{scene}/{id}_leftImg8bit.png``, ``gtCoarse/test/{scene}/{id}_gtCoarse_labelIds.png`` |
| ``comsamy`` | ``images/``, ``labels/`` (same stem, 0/1/255) and ``manifest.csv`` or ``manifest.json`` |
| ``folder`` | ``{images}/{stem}.*`` and ``{labels}/{stem}.*`` (same stem), with ``--label-map`` |
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import DiffeelError
from ..labels import LabelMapping
from .images import IMAGE_SUFFIXES, read_image, read_label

WEATHERS = ("clear", "rain", "night", "frost", "fog", "blizzard", "sandstorm")
ADVERSE_WEATHERS = WEATHERS[1:]
LANDFORMS = ("highway", "urban", "country", "forest", "polar", "grassland", "desert")
# Every weather name a loader can emit, and its condition. ``snow`` is RoadObstacle21's snowstorm
# scenes (falling snow, snow-covered road): adverse, though not one of ComsAmy's seven names.
WEATHER_CONDITIONS = {"clear": "clear", **{weather: "adverse" for weather in ADVERSE_WEATHERS}, "snow": "adverse"}


def weather_condition(weather: str) -> str:
    """``"clear"`` or ``"adverse"`` for a weather name; an unknown name is an error, never a guess."""
    try:
        return WEATHER_CONDITIONS[weather]
    except (KeyError, TypeError):
        raise DiffeelError(f"weather {weather!r} is neither clear nor one of the adverse conditions "
                           f"({', '.join(w for w in WEATHER_CONDITIONS if w != 'clear')})") from None


@dataclass
class Frame:
    """One evaluation frame. ``image_path`` may be None where a benchmark ships labels only,
    ``label_path`` None for a test frame whose labels are withheld (SegmentMeIfYouCan's)."""

    id: str
    label_path: Path | None
    image_path: Path | None = None
    metadata: dict = field(default_factory=dict)
    label_mapping: LabelMapping = field(default_factory=LabelMapping)
    overlay_path: Path | None = None  # Fishyscapes Static: an integer overlay added to the image

    def load_label(self) -> np.ndarray:
        """The label map in 0/1/255."""
        if self.label_path is None:
            raise DiffeelError(f"frame {self.id} has no label (a test frame: its labels are withheld)")
        try:
            return self.label_mapping.apply(read_label(self.label_path))
        except ValueError as error:
            raise DiffeelError(f"{self.label_path}: {error}") from None

    def load_image(self) -> np.ndarray:
        if self.image_path is None:
            raise DiffeelError(f"frame {self.id} has no image (give the image root with --images)")
        image = read_image(self.image_path)
        if self.overlay_path is not None:
            with np.load(self.overlay_path) as archive:
                overlay = archive["rgb"].astype(np.int32)
            image = np.clip(image.astype(np.int32) + overlay, 0, 255).astype(np.uint8)
        return image


def _require_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DiffeelError(f"{what} folder {path} does not exist")
    return path


def _files_by_stem(folder: Path, suffixes=IMAGE_SUFFIXES) -> dict[str, Path]:
    """Files of a folder by stem; two files with one stem (a.png, a.jpg) are an error."""
    found: dict[str, Path] = {}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix.lower() in suffixes and not path.name.startswith("."):
            if path.stem in found:
                raise DiffeelError(f"{folder} holds two files named {path.stem!r}: {found[path.stem].name} and {path.name}")
            found[path.stem] = path
    return found


def _no_frames(root: Path, pattern: str) -> DiffeelError:
    return DiffeelError(f"no labelled frames found under {root} (expected {pattern})")


# ---- SegmentMeIfYouCan ------------------------------------------------------------------------


def _smiyc(root: Path, track_dir: str, metadata_of: Callable[[str], dict], unlabelled: bool = False) -> list[Frame]:
    """A SegmentMeIfYouCan track's labelled frames; with ``unlabelled``, every image of the track
    (as the toolkit lists its datasets), the test frames without a label (``label_path`` None)."""
    root = Path(root)
    track = root if root.name == track_dir else root / track_dir
    images = _require_dir(track / "images", "image")
    labels = _require_dir(track / "labels_masks", "label")
    image_files = _files_by_stem(images)
    suffix = "_labels_semantic"
    label_files = {}
    for path in sorted(labels.iterdir()):
        if path.name.endswith(f"{suffix}.png"):  # *_labels_semantic_color.png are visualisations
            frame_id = path.name[: -len(f"{suffix}.png")]
            if frame_id not in image_files:
                raise DiffeelError(f"label {path} has no image {frame_id}.* in {images}")
            label_files[frame_id] = path
    ids = sorted(image_files) if unlabelled else sorted(label_files)
    frames = [Frame(i, label_files.get(i), image_files[i], metadata_of(i)) for i in ids]
    if not frames:
        raise _no_frames(track, f"labels_masks/<id>{suffix}.png") if not unlabelled else DiffeelError(f"no images found in {images}")
    return frames


def load_smiyc_anomaly(root, unlabelled: bool = False, **_) -> list[Frame]:
    return _smiyc(root, "dataset_AnomalyTrack", lambda frame_id: {"weather": "clear"}, unlabelled)


def _obstacle_metadata(frame_id: str) -> dict:
    scene = frame_id.split("_", 1)[0]
    weather = "snow" if scene.startswith("snowstorm") else "night" if scene == "driveway" else "clear"
    return {"scene": scene, "weather": weather}


def load_smiyc_obstacle(root, unlabelled: bool = False, **_) -> list[Frame]:
    return _smiyc(root, "dataset_ObstacleTrack", _obstacle_metadata, unlabelled)


# ---- Fishyscapes --------------------------------------------------------------------------------


def _find_image(image_root: Path | None, pattern: str) -> Path | None:
    if image_root is None:
        return None
    matches = sorted(Path(image_root).glob(pattern))
    if not matches:
        raise DiffeelError(f"no image matching {pattern} under {image_root}")
    return matches[0]


def load_fs_laf(root, images=None, **_) -> list[Frame]:
    root = _require_dir(Path(root), "label")
    frames = []
    for path in sorted(root.glob("*_labels.png")):
        frame_id = path.name[: -len("_labels.png")]
        laf_id = frame_id.split("_", 1)[1] if "_" in frame_id else frame_id
        image = _find_image(images, f"leftImg8bit/*/*/{laf_id}_leftImg8bit.png")
        frames.append(Frame(frame_id, path, image, {"weather": "clear", "scene": laf_id.rsplit("_", 2)[0]}))
    if not frames:
        raise _no_frames(root, "<NNNN>_<laf id>_labels.png")
    return frames


def load_fs_static(root, images=None, **_) -> list[Frame]:
    root = _require_dir(Path(root), "label")
    frames = []
    for path in sorted(root.glob("*_labels.png")):
        frame_id = path.name[: -len("_labels.png")]
        overlay = root / f"{frame_id}_rgb.npz"
        if images is not None and not overlay.is_file():
            raise DiffeelError(f"label {path} has no overlay {overlay.name}")
        city_id = frame_id.split("_", 1)[1] if "_" in frame_id else frame_id
        image = _find_image(images, f"leftImg8bit/val/*/{city_id}_leftImg8bit.png")
        frames.append(Frame(frame_id, path, image, {"weather": "clear"}, overlay_path=overlay if image else None))
    if not frames:
        raise _no_frames(root, "<NNNN>_<cityscapes id>_labels.png")
    return frames


# ---- RoadAnomaly and LostAndFound -------------------------------------------------------------

ROAD_ANOMALY_MAPPING = LabelMapping({0: 0, 2: 1})  # Lis et al.: 2 = anomaly, no void
# LostAndFound labelIds: 0 outside the free space (void), 1 road, 2..43 obstacles. The non-hazard
# ids (lying marker pole 31, lying post 33, post stand 34, small/squared timber 36/37, wheel cap 38,
# thin wood 39) are void, as in the label table of RPL, PEBAL and Meta-OoD ("Random non-hazards").
# The SegmentMeIfYouCan toolkit counts them as anomalies: --label-map 0:255,1:0,*:1 reproduces that.
LOST_AND_FOUND_NON_HAZARDS = (31, 33, 34, 36, 37, 38, 39)
LOST_AND_FOUND_MAPPING = LabelMapping({0: 255, 1: 0, **{i: 255 for i in LOST_AND_FOUND_NON_HAZARDS}, "*": 1})
# The SegmentMeIfYouCan toolkit's LostAndFound classes: road (1) is the inlier, ids 2..200 anomalies,
# everything else (0 outside the free space) outside its region of interest.
LOST_AND_FOUND_TOOLKIT_MAPPING = LabelMapping({1: 0, **{i: 1 for i in range(2, 201)}, "*": 255})


def load_road_anomaly(root, **_) -> list[Frame]:
    folder = _require_dir(Path(root) / "frames", "frames")
    frames = []
    for label_dir in sorted(folder.glob("*.labels")):
        name = label_dir.name[: -len(".labels")]
        label = label_dir / "labels_semantic.png"
        if not label.is_file():
            raise DiffeelError(f"{label} does not exist")
        images = [p for p in folder.glob(f"{name}.*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not images:
            raise DiffeelError(f"label {label} has no image {name}.* in {folder}")
        frames.append(Frame(name, label, images[0], {"weather": "clear"}, ROAD_ANOMALY_MAPPING))
    if not frames:
        raise _no_frames(folder, "<name>.labels/labels_semantic.png")
    return frames


# The SegmentMeIfYouCan toolkit's selections of LostAndFound's 1203 test frames (its LostAndFound-testValid
# and -testNoKnown): positions, in frame-id order, of frames whose labels are empty, and the prefixes
# of sequences with known objects (children, bicycles). testNoKnown is its obstacle track's LostAndFound.
LOST_AND_FOUND_TEST_FRAMES = 1203
LOST_AND_FOUND_INVALID_POSITIONS = (17, 37, 55, 72, 91, 110, 129, 153, 174, 197, 218, 353, 490, 618, 686, 792, 793)
LOST_AND_FOUND_KNOWN_OBJECTS = ("15_Rechbergstr_Deckenpfronn", "01_Hanns_Klemm_Str_45_000006", "01_Hanns_Klemm_Str_45_000007",
                                "10_Schlossberg_9_000004")
LOST_AND_FOUND_SUBSETS = ("testValid", "testNoKnown")


def _toolkit_subset(frames: list[Frame], subset: str) -> list[Frame]:
    """The toolkit's ``subset`` of LostAndFound's test frames (which needs all of them: it leaves
    frames out by position)."""
    if subset not in LOST_AND_FOUND_SUBSETS:
        raise DiffeelError(f"LostAndFound subset {subset!r} is none of {', '.join(LOST_AND_FOUND_SUBSETS)}")
    if len(frames) != LOST_AND_FOUND_TEST_FRAMES:
        raise DiffeelError(f"the {subset} selection leaves out frames by their position among LostAndFound's "
                           f"{LOST_AND_FOUND_TEST_FRAMES} test frames; this copy holds {len(frames)}")
    frames = sorted(frames, key=lambda frame: frame.id)
    invalid = set(LOST_AND_FOUND_INVALID_POSITIONS)
    kept = [frame for position, frame in enumerate(frames) if position not in invalid]
    if subset == "testNoKnown":
        kept = [frame for frame in kept if not frame.id.startswith(LOST_AND_FOUND_KNOWN_OBJECTS)]
    return kept


def load_lost_and_found(root, split: str = "test", label_map=None, subset: str | None = None, **_) -> list[Frame]:
    """LostAndFound's ``split``; ``subset`` (test split only) one of the SegmentMeIfYouCan toolkit's
    selections: ``testValid`` or ``testNoKnown``."""
    root = Path(root)
    mapping = label_map if isinstance(label_map, LabelMapping) else LabelMapping(label_map) if label_map else LOST_AND_FOUND_MAPPING
    labels = _require_dir(root / "gtCoarse" / split, "label")
    images = _require_dir(root / "leftImg8bit" / split, "image")
    frames = []
    for path in sorted(labels.glob("*/*_gtCoarse_labelIds.png")):
        frame_id = path.name[: -len("_gtCoarse_labelIds.png")]
        image = images / path.parent.name / f"{frame_id}_leftImg8bit.png"
        if not image.is_file():
            raise DiffeelError(f"label {path} has no image {image}")
        frames.append(Frame(frame_id, path, image, {"weather": "clear", "scene": path.parent.name}, mapping))
    if not frames:
        raise _no_frames(labels, "<scene>/<id>_gtCoarse_labelIds.png")
    return _toolkit_subset(frames, subset) if subset else frames


# ---- ComsAmy-style manifests and plain folders ----------------------------------------------


def read_manifest(path: Path) -> list[dict]:
    """Rows of a ComsAmy manifest (CSV or JSON list): id, weather, landform, anomalies, …"""
    try:
        if path.suffix.lower() == ".json":
            rows = json.loads(path.read_text())
            if isinstance(rows, dict):
                rows = rows.get("frames", rows.get("images"))
            if not isinstance(rows, list):
                raise DiffeelError(f"{path} must hold a list of frames")
        else:
            with open(path, newline="") as stream:
                rows = list(csv.DictReader(stream))
    except (OSError, json.JSONDecodeError, csv.Error, UnicodeDecodeError) as error:
        raise DiffeelError(f"{path} could not be read as a manifest ({type(error).__name__})") from error
    if not rows:
        raise DiffeelError(f"{path} lists no frames")
    seen: dict[str, int] = {}
    for number, row in enumerate(rows, start=1):
        if not isinstance(row, dict) or not str(row.get("id") or "").strip():
            raise DiffeelError(f"{path}: frame {number} has no id")
        frame_id = str(row["id"])
        if frame_id in seen:
            raise DiffeelError(f"{path}: frame {frame_id} is listed twice (rows {seen[frame_id]} and {number}); each frame may appear once")
        seen[frame_id] = number
        weather = row.get("weather")
        if weather in (None, ""):
            raise DiffeelError(f"{path}: frame {frame_id} has no weather; write one of {', '.join(WEATHERS)} (clear for good weather)")
        if weather not in WEATHERS:
            raise DiffeelError(f"{path}: frame {frame_id} has weather {weather!r}, not one of {', '.join(WEATHERS)}")
        landform = row.get("landform")
        if landform not in (None, "") and landform not in LANDFORMS:
            raise DiffeelError(f"{path}: frame {row['id']} has landform {landform!r}, not one of {', '.join(LANDFORMS)}")
        anomalies = row.get("anomalies", [])
        if isinstance(anomalies, str):
            anomalies = [a for a in anomalies.replace(";", "|").split("|") if a]
        row["anomalies"] = anomalies
    return rows


def load_comsamy(root, **_) -> list[Frame]:
    root = Path(root)
    manifests = [root / name for name in ("manifest.csv", "manifest.json") if (root / name).is_file()]
    if not manifests:
        raise DiffeelError(f"{root} has no manifest.csv or manifest.json")
    images = _files_by_stem(_require_dir(root / "images", "image"))
    labels = _files_by_stem(_require_dir(root / "labels", "label"))
    frames = []
    for row in read_manifest(manifests[0]):
        frame_id = str(row["id"])
        if frame_id not in labels:
            raise DiffeelError(f"manifest frame {frame_id} has no label {frame_id}.* in {root / 'labels'}")
        if frame_id not in images:
            raise DiffeelError(f"manifest frame {frame_id} has no image {frame_id}.* in {root / 'images'}")
        metadata = {k: v for k, v in row.items() if k != "id" and v not in (None, "")}
        frames.append(Frame(frame_id, labels[frame_id], images[frame_id], metadata))
    listed = {f.id for f in frames}
    unlisted = sorted(set(labels) - listed)
    if unlisted:
        raise DiffeelError(f"label {labels[unlisted[0]].name} is not in the manifest {manifests[0].name}")
    return frames


def load_folder(root, images="images", labels="labels_masks", label_map=None, **_) -> list[Frame]:
    root = Path(root)
    label_files = _files_by_stem(_require_dir(root / labels, "label"))
    image_dir = root / images
    image_files = _files_by_stem(image_dir) if image_dir.is_dir() else {}
    mapping = label_map if isinstance(label_map, LabelMapping) else LabelMapping(label_map)
    frames = []
    for stem, label in label_files.items():
        if image_files and stem not in image_files:
            raise DiffeelError(f"label {label} has no image {stem}.* in {image_dir}")
        frames.append(Frame(stem, label, image_files.get(stem), {}, mapping))
    if image_files and set(image_files) - set(label_files):
        extra = sorted(set(image_files) - set(label_files))[0]
        raise DiffeelError(f"image {image_files[extra]} has no label {extra}.* in {root / labels}")
    if not frames:
        raise _no_frames(root / labels, "<stem>.png")
    return frames


BENCHMARKS: dict[str, Callable[..., list[Frame]]] = {
    "smiyc-anomaly": load_smiyc_anomaly,
    "smiyc-obstacle": load_smiyc_obstacle,
    "fs-laf": load_fs_laf,
    "fs-static": load_fs_static,
    "road-anomaly": load_road_anomaly,
    "laf": load_lost_and_found,
    "comsamy": load_comsamy,
    "folder": load_folder,
}

# Display names in the paper's column order (Table III).
DISPLAY_NAMES = {
    "fs-laf": "FS L&F",
    "fs-static": "FS Static",
    "smiyc-anomaly": "SMIYC-Anomaly",
    "smiyc-obstacle": "SMIYC-Obstacle",
    "road-anomaly": "RoadAnomaly",
    "laf": "LostAndFound",
    "comsamy": "ComsAmy",
    "folder": "folder",
}

# The metadata fields results are grouped by unless asked otherwise (diffeel eval --group-by).
DEFAULT_GROUP_BY = {"comsamy": ("weather", "landform"), "smiyc-obstacle": ("weather", "scene"), "laf": ("scene",)}

# Benchmarks whose layout carries a fixed label coding that --label-map may replace.
LABEL_MAP_BENCHMARKS = ("folder", "laf")


def load_benchmark(name: str, root, **options) -> list[Frame]:
    """The frames of benchmark ``name`` under ``root`` (options: images, labels, label_map, split).

    Every frame's weather (where a loader sets one) is checked to be clear or adverse.
    """
    if name not in BENCHMARKS:
        raise DiffeelError(f"unknown benchmark {name!r}; choose one of {', '.join(BENCHMARKS)}")
    if not Path(root).is_dir():
        raise DiffeelError(f"benchmark root {root} does not exist")
    if options.get("label_map") is not None and name not in LABEL_MAP_BENCHMARKS:
        raise DiffeelError(f"--label-map applies to the {' and '.join(LABEL_MAP_BENCHMARKS)} benchmarks, not {name} (its labels are fixed)")
    frames = BENCHMARKS[name](Path(root), **{k: v for k, v in options.items() if v is not None})
    for frame in frames:
        if "weather" in frame.metadata:
            weather_condition(frame.metadata["weather"])
    return frames
