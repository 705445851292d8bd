"""Tiny benchmark folders in the real layouts, written by the tests themselves."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SIZE = (24, 16)  # (width, height)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format="PNG")
    return path


def write_image(path: Path, rng, image_format: str | None = None) -> Path:
    """An RGB image; ``image_format`` lets the content disagree with the extension."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = rng.integers(0, 256, size=(SIZE[1], SIZE[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path, format=image_format or Image.registered_extensions()[path.suffix.lower()])
    return path


def random_eval_label(rng, anomaly_value=1, void_value=255, void=True) -> np.ndarray:
    label = np.zeros((SIZE[1], SIZE[0]), dtype=np.uint8)
    top = rng.integers(2, 8)
    left = rng.integers(2, 14)
    label[top : top + 5, left : left + 6] = anomaly_value
    if void:
        label[:2] = void_value
    return label


def road_anomaly(root: Path, rng, count=3) -> dict[str, np.ndarray]:
    """RoadAnomaly (Lis et al.): frames/{name}.jpg + frames/{name}.labels/labels_semantic.png, 2 = anomaly."""
    truth = {}
    for index in range(count):
        name = f"animals{index:02d}_road"
        write_image(root / "frames" / f"{name}.jpg", rng)
        label = random_eval_label(rng, anomaly_value=2, void=False)
        write_png(root / "frames" / f"{name}.labels" / "labels_semantic.png", label)
        truth[name] = np.where(label == 2, 1, 0).astype(np.uint8)
    return truth


def smiyc(root: Path, rng, track="dataset_AnomalyTrack", ids=("validation0000", "validation0001"), suffix=".jpg"):
    truth = {}
    for frame_id in ids:
        write_image(root / track / "images" / f"{frame_id}{suffix}", rng)
        label = random_eval_label(rng)
        write_png(root / track / "labels_masks" / f"{frame_id}_labels_semantic.png", label)
        write_png(root / track / "labels_masks" / f"{frame_id}_labels_semantic_color.png", np.dstack([label] * 3))
        truth[frame_id] = label
    return truth


def fishyscapes_laf(root: Path, rng, count=2):
    truth = {}
    for index in range(count):
        frame_id = f"{index:04d}_04_Maurener_Weg_8_000000_{index:06d}"
        label = random_eval_label(rng)
        write_png(root / f"{frame_id}_labels.png", label)
        truth[frame_id] = label
    return truth


def fishyscapes_static(root: Path, rng, cityscapes: Path | None = None, count=2):
    truth = {}
    for index in range(count):
        city_id = f"frankfurt_000000_{index:06d}"
        frame_id = f"{index:04d}_{city_id}"
        label = random_eval_label(rng)
        write_png(root / f"{frame_id}_labels.png", label)
        overlay = np.zeros((SIZE[1], SIZE[0], 3), dtype=np.int16)
        overlay[label == 1] = 300  # clipped to 255 on top of any image
        np.savez(root / f"{frame_id}_rgb.npz", rgb=overlay)
        if cityscapes is not None:
            write_image(cityscapes / "leftImg8bit" / "val" / "frankfurt" / f"{city_id}_leftImg8bit.png", rng)
        truth[frame_id] = label
    return truth


def lost_and_found(root: Path, rng, scenes=("02_Hanns_Klemm_Str_44", "04_Maurener_Weg_8")):
    truth = {}
    for scene in scenes:
        frame_id = f"{scene}_000000_000100"
        write_image(root / "leftImg8bit" / "test" / scene / f"{frame_id}_leftImg8bit.png", rng)
        stored = random_eval_label(rng, anomaly_value=7, void_value=0)
        stored[stored == 0] = 0
        stored[(stored != 7) & (np.arange(SIZE[1])[:, None] >= 2)] = 1  # free-space road
        write_png(root / "gtCoarse" / "test" / scene / f"{frame_id}_gtCoarse_labelIds.png", stored)
        truth[frame_id] = np.select([stored == 0, stored == 1], [255, 0], 1).astype(np.uint8)
    return truth


def comsamy(root: Path, rng, weathers=("clear", "fog", "night", "clear"), manifest="csv"):
    truth = {}
    rows = []
    for index, weather in enumerate(weathers):
        frame_id = f"scene{index:03d}"
        write_image(root / "images" / f"{frame_id}.jpg", rng)
        label = random_eval_label(rng)
        write_png(root / "labels" / f"{frame_id}.png", label)
        truth[frame_id] = label
        rows.append({"id": frame_id, "weather": weather, "landform": "urban" if index % 2 else "desert", "anomalies": "cow|tyre"})
    if manifest == "csv":
        lines = ["id,weather,landform,anomalies"] + [f"{r['id']},{r['weather']},{r['landform']},{r['anomalies']}" for r in rows]
        (root / "manifest.csv").write_text("\n".join(lines) + "\n")
    else:
        import json

        (root / "manifest.json").write_text(json.dumps(rows))
    return truth


def write_scores(folder: Path, truth: dict, rng, dtype=np.float32, fmt="npy") -> dict[str, np.ndarray]:
    """Informative noisy scores per frame in the requested file format."""
    folder.mkdir(parents=True, exist_ok=True)
    scores = {}
    for frame_id, label in truth.items():
        score = (rng.normal(size=label.shape) + 1.5 * (label == 1)).astype(dtype)
        scores[frame_id] = score
        if fmt == "npy":
            np.save(folder / f"{frame_id}.npy", score)
        elif fmt == "npz":
            np.savez(folder / f"{frame_id}.npz", scores=score)
        elif fmt == "hdf5":
            import h5py

            with h5py.File(folder / f"{frame_id}.hdf5", "w") as handle:
                handle["value"] = score
    return scores
