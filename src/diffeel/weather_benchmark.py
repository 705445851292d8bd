"""Adverse-weather variants of a benchmark: same frames and labels, images under one condition."""

from __future__ import annotations

import csv
import io
from pathlib import Path

from .data.benchmarks import Frame
from .data.images import IMAGE_SUFFIXES, read_image, write_image_atomic
from .errors import DiffeelError
from .report.output import atomic_output_dir


def _check(condition: str, severity: int) -> None:
    from .weather import CONDITIONS

    if condition not in CONDITIONS:
        raise DiffeelError(f"unknown condition {condition!r}; choose one of {', '.join(CONDITIONS)}")
    if not 1 <= severity <= 5:
        raise DiffeelError(f"severity must be 1..5, got {severity}")


def benchmark_variant(frames: list[Frame], condition: str, severity: int, seed: int, out, progress=True) -> int:
    """Write ``frames`` under ``condition`` as a ComsAmy-format benchmark (labels in 0/1/255)."""
    from tqdm import tqdm

    from .weather import apply_weather

    _check(condition, severity)
    if any(frame.image_path is None for frame in frames):
        raise DiffeelError("this benchmark was listed without images; give the image root with --images")
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow(["id", "weather", "landform", "anomalies", "source", "severity"])
    with atomic_output_dir(out) as staging:
        for index, frame in enumerate(tqdm(frames, desc=condition, unit="frame", disable=not progress)):
            image = apply_weather(frame.load_image(), condition, severity=severity, seed=seed + index)
            write_image_atomic(staging / "images" / f"{frame.id}.png", image)
            write_image_atomic(staging / "labels" / f"{frame.id}.png", frame.load_label())
            writer.writerow([frame.id, condition, frame.metadata.get("landform", ""), "", str(frame.image_path), severity])
        (staging / "manifest.csv").write_text(rows.getvalue())
    return len(frames)


def folder_variant(folder, condition: str, severity: int, seed: int, out, progress=True) -> int:
    """Every image of a plain folder under ``condition``, same file stems, PNG."""
    from tqdm import tqdm

    from .weather import apply_weather

    _check(condition, severity)
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffeelError(f"input folder {folder} does not exist")
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DiffeelError(f"{folder} holds no images")
    with atomic_output_dir(out) as staging:
        for index, path in enumerate(tqdm(images, desc=condition, unit="image", disable=not progress)):
            write_image_atomic(staging / f"{path.stem}.png", apply_weather(read_image(path), condition, severity=severity, seed=seed + index))
    return len(images)
