"""Adverse-weather variants of a benchmark: same frames and labels, images under one condition."""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from ..data.benchmarks import Frame
from ..data.images import IMAGE_SUFFIXES, read_image, write_image_atomic
from ..errors import DiffeelError
from ..report.output import atomic_output_dir


def _check(condition: str, severity: int) -> None:
    from ..weather import CONDITIONS

    if condition not in CONDITIONS:
        raise DiffeelError(f"unknown condition {condition!r}; choose one of {', '.join(CONDITIONS)}")
    if not 1 <= severity <= 5:
        raise DiffeelError(f"severity must be 1..5, got {severity}")


def _refuse_overlap(out, sources) -> None:
    """An output that is, holds or lies inside the input would overwrite what it reads."""
    out = Path(out).resolve()
    for source in sources:
        source = Path(source).resolve()
        if source == out or out in source.parents or source in out.parents:
            raise DiffeelError(f"--out {out} overlaps the input {source}; write the variant to a folder outside it")


# manifest columns of a variant; every other metadata field of the frames follows them
VARIANT_COLUMNS = ("id", "weather", "landform", "anomalies", "source", "source_weather", "severity")


def _manifest_value(value) -> str:
    return "|".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def benchmark_variant(frames: list[Frame], condition: str, severity: int, seed: int, out, progress=True, inputs=()) -> int:
    """Write ``frames`` under ``condition`` as a ComsAmy-format benchmark (labels in 0/1/255).

    The manifest keeps each frame's metadata (landform, anomalies, scene, …); ``source`` is the
    original image's path relative to ``out`` and ``source_weather`` its original weather. ``out``
    may not be, hold or lie inside a folder of the frames or any of ``inputs`` (the benchmark root).
    """
    from tqdm import tqdm

    from ..weather import apply_weather

    _check(condition, severity)
    if any(frame.image_path is None for frame in frames):
        raise DiffeelError("this benchmark was listed without images; give the image root with --images")
    _refuse_overlap(out, {*inputs, *(path.parent for frame in frames for path in (frame.image_path, frame.label_path))})
    extra = sorted({k for frame in frames for k in frame.metadata} - set(VARIANT_COLUMNS))
    rows = io.StringIO()
    writer = csv.writer(rows)
    writer.writerow([*VARIANT_COLUMNS, *extra])
    out_folder = Path(out).resolve()
    with atomic_output_dir(out) as staging:
        for index, frame in enumerate(tqdm(frames, desc=condition, unit="frame", disable=not progress)):
            image = apply_weather(frame.load_image(), condition, severity=severity, seed=seed + index)
            write_image_atomic(staging / "images" / f"{frame.id}.png", image)
            write_image_atomic(staging / "labels" / f"{frame.id}.png", frame.load_label())
            values = {**frame.metadata, "id": frame.id, "weather": condition, "severity": severity,
                      "source": os.path.relpath(Path(frame.image_path).resolve(), out_folder),
                      "source_weather": frame.metadata.get("weather", "")}
            writer.writerow([_manifest_value(values.get(column, "")) for column in (*VARIANT_COLUMNS, *extra)])
        (staging / "manifest.csv").write_text(rows.getvalue())
    return len(frames)


def folder_variant(folder, condition: str, severity: int, seed: int, out, progress=True) -> int:
    """Every image of a plain folder under ``condition``, same file stems, PNG."""
    from tqdm import tqdm

    from ..weather import apply_weather

    _check(condition, severity)
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffeelError(f"input folder {folder} does not exist")
    _refuse_overlap(out, [folder])
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise DiffeelError(f"{folder} holds no images")
    with atomic_output_dir(out) as staging:
        for index, path in enumerate(tqdm(images, desc=condition, unit="image", disable=not progress)):
            write_image_atomic(staging / f"{path.stem}.png", apply_weather(read_image(path), condition, severity=severity, seed=seed + index))
    return len(images)
