"""Synthesized training pairs on disk (``diffeel synth paste``): frames + an object bank → images
and train-id labels with ``ANOMALY_TRAIN_ID`` where objects were pasted (Eq. 1).

Frames come with Cityscapes train ids (placement needs to know where the road is): Cityscapes'
``train`` split, CamVid's (mapped to train ids), a world's training split, or an image folder with
a label folder of train ids.
Frame ``i`` is synthesized with a generator seeded by ``(seed, i)``, so a rerun writes the same
pairs and an interrupted run resumes where it stopped (each file is written atomically).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..data.images import IMAGE_SUFFIXES, read_image, read_label, write_image_atomic
from ..errors import DiffeelError
from ..labels import NUM_CLASSES, VOID


@dataclass(frozen=True)
class LabelledFrame:
    id: str
    load: Callable[[], tuple[np.ndarray, np.ndarray]]  # () -> (rgb uint8, train ids uint8)


def _checked(rgb: np.ndarray, train_ids: np.ndarray, where) -> tuple[np.ndarray, np.ndarray]:
    if rgb.shape[:2] != train_ids.shape:
        raise DiffeelError(f"{where}: image and label sizes differ ({rgb.shape[1]}x{rgb.shape[0]} vs {train_ids.shape[1]}x{train_ids.shape[0]})")
    unknown = np.unique(train_ids[(train_ids >= NUM_CLASSES) & (train_ids != VOID)])
    if unknown.size:
        raise DiffeelError(f"{where}: label values {', '.join(map(str, unknown[:5]))} are not Cityscapes train ids (0..18, 255)")
    return rgb, train_ids.astype(np.uint8)


def labelled_frames(*, cityscapes=None, world=None, images=None, labels=None, split: str = "train",
                    camvid=None) -> list[LabelledFrame]:
    """Frames with train ids from exactly one source."""
    if sum(x is not None for x in (cityscapes, camvid, world, images)) != 1:
        raise DiffeelError("give the frames to paste into: --cityscapes, --camvid, --world, or --images with --labels "
                           "(train ids), one of them")
    if camvid is not None:
        from ..data.camvid import list_camvid, read_camvid_frame

        return [LabelledFrame(f.id, lambda f=f: read_camvid_frame(f)) for f in list_camvid(camvid, split)]
    if cityscapes is not None:
        from ..data.cityscapes import list_cityscapes, read_cityscapes_frame

        return [LabelledFrame(f.id, lambda f=f: read_cityscapes_frame(f)) for f in list_cityscapes(cityscapes, split)]
    if world is not None:
        images, labels = Path(world) / "train" / "images", Path(world) / "train" / "labels"
        if not images.is_dir():
            raise DiffeelError(f"{world} is not a world (no train/images); make one with diffeel world make")
    if labels is None:
        raise DiffeelError("--images needs --labels: a folder of Cityscapes train-id label maps with the same names "
                           "(placement needs to know where the road is)")
    images, labels = Path(images), Path(labels)
    for folder in (images, labels):
        if not folder.is_dir():
            raise DiffeelError(f"folder {folder} does not exist")
    label_files = {p.stem: p for p in labels.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    frames = []
    for image in sorted(p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES):
        if image.stem not in label_files:
            raise DiffeelError(f"image {image.name} has no label map in {labels}")
        label = label_files[image.stem]
        frames.append(LabelledFrame(image.stem, lambda i=image, lab=label: _checked(read_image(i), read_label(lab), i)))
    if not frames:
        raise DiffeelError(f"no images in {images}")
    return frames


def write_pairs(frames: list[LabelledFrame], synthesizer, out, *, seed: int = 0, limit: int | None = None,
                settings: dict | None = None, progress: bool = True) -> dict:
    """``out/images/{id}.png``, ``out/labels/{id}.png`` and ``out/pastes.jsonl`` (what went where)
    for the first ``limit`` frames; frames already written are kept. ``settings`` (recorded in
    ``pairs_config.json``) must match those of the pairs already there."""
    from tqdm import tqdm

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DiffeelError(f"--out {out} is an existing file")
    config_path, config = out / "pairs_config.json", {**(settings or {}), "seed": seed}
    if config_path.exists() and json.loads(config_path.read_text()) != config:
        raise DiffeelError(f"{out} holds pairs made with other settings; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    frames = frames[:limit] if limit else frames
    records_path = out / "pastes.jsonl"
    records = {}
    if records_path.exists():
        for line in records_path.read_text().splitlines():
            try:
                record = json.loads(line)
                records[record["id"]] = record
            except (ValueError, KeyError, TypeError):
                continue  # a line cut short by an interruption: that frame is simply written again
    counts = {"written": 0, "kept": 0, "objects": 0}
    with tqdm(total=len(frames), desc="pairs", unit="frame", disable=not progress) as bar:
        for index, frame in enumerate(frames):
            image_path, label_path = out / "images" / f"{frame.id}.png", out / "labels" / f"{frame.id}.png"
            if frame.id in records and image_path.exists() and label_path.exists():
                counts["kept"] += 1
                bar.update(1)
                continue
            rgb, train_ids = frame.load()
            result = synthesizer.synthesize(rgb, train_ids, np.random.default_rng([seed, index]))
            write_image_atomic(image_path, result.image)
            write_image_atomic(label_path, result.labels)
            records[frame.id] = {"id": frame.id, "objects": [{"kind": p.kind, "source": p.source, "box": [
                p.placement.top, p.placement.left, p.placement.height, p.placement.width]} for p in result.objects]}
            with open(records_path, "a", encoding="utf-8") as stream:  # the frame's files exist before its record
                stream.write(json.dumps(records[frame.id]) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            counts["written"] += 1
            counts["objects"] += len(result.objects)
            bar.update(1)
    return counts
