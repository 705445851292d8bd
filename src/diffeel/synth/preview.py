"""A contact sheet of an object bank: prompt → generated image → cut-out mask → pasted result."""

from __future__ import annotations

import textwrap
from pathlib import Path

import cv2
import numpy as np

from ..data.images import read_image
from ..errors import DiffeelError
from .bank import BankObject, ObjectBank, read_cutout, read_records

TILE = 224
GREY = 96


def _fit(image: np.ndarray, width: int = TILE, height: int = TILE) -> np.ndarray:
    """``image`` scaled to fit a tile, centred on grey."""
    tile = np.full((height, width, 3), GREY, np.uint8)
    scale = min(width / image.shape[1], height / image.shape[0])
    new_w, new_h = max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale))
    resized = cv2.resize(image, (new_w, new_h), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    top, left = (height - new_h) // 2, (width - new_w) // 2
    tile[top : top + new_h, left : left + new_w] = resized
    return tile


def _text(lines: list[str], width: int = TILE, height: int = TILE) -> np.ndarray:
    tile = np.full((height, width, 3), 255, np.uint8)
    row = 22
    for line in lines:
        for part in textwrap.wrap(line, 26) or [""]:
            cv2.putText(tile, part, (8, row), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (20, 20, 20), 1, cv2.LINE_AA)
            row += 20
    return tile


def _mask_in_image(bank: Path, record: dict, mask: np.ndarray) -> np.ndarray:
    """The cut-out's mask, white on black, where it was cut from the drawn image (the cut-out alone
    when the record has no box, as CSV banks)."""
    if record.get("image") and record.get("box"):
        top, left, height, width = record["box"]
        rows, cols = read_image(bank / record["image"]).shape[:2]
        canvas = np.zeros((rows, cols), bool)
        canvas[top : top + height, left : left + width] = mask
        mask = canvas
    return np.repeat(mask[..., None].astype(np.uint8) * 255, 3, axis=2)


def _entries(bank: Path) -> list[dict]:
    """Records of a generated bank; for a CSV bank, one pseudo-record per listed object."""
    records = read_records(bank)
    if records:
        return records
    import csv

    table = bank / "objects.csv"
    if not table.is_file():
        raise DiffeelError(f"object bank {bank} has neither objects*.jsonl records nor objects.csv")
    with open(table, newline="", encoding="utf-8") as stream:
        return [{"id": Path(row["file"]).stem, "prompt": row.get("kind", ""), "status": "ok", "file": row["file"],
                 "height_range": [float(row["min_height_m"]), float(row["max_height_m"])], "object": row.get("kind", "object")}
                for row in csv.DictReader(stream)]


def contact_sheet(bank, frames=None, make_synthesizer=None, *, rows: int = 6, seed: int = 0) -> np.ndarray:
    """One row per object (the first ``rows``): its prompt and status, the generated image, the cut-out
    over grey with its mask, and — with ``frames`` and ``make_synthesizer(ObjectBank) -> synthesizer``
    — the object pasted into a frame."""
    bank = Path(bank)
    lines = []
    for index, record in enumerate(_entries(bank)[:rows]):
        status = record["status"]
        cells = [_text([record.get("prompt", ""), f"seed {record.get('seed', '-')}", f"status: {status}"])]
        cells.append(_fit(read_image(bank / record["image"])) if record.get("image") else _text(["(no generated image)"]))
        pasted = _text(["(no frames given)"] if frames else ["(give frames for a paste)"])
        if status == "ok":
            rgb, mask = read_cutout(bank / record["file"])
            cells.append(_fit(np.where(mask[..., None], rgb, GREY).astype(np.uint8)))
            cells.append(_fit(_mask_in_image(bank, record, mask)))
            if frames and make_synthesizer is not None:
                obj = BankObject(rgb, mask, record.get("object", "object"), tuple(record["height_range"]), record["file"])
                image, train_ids = frames[index % len(frames)].load()
                result = make_synthesizer(ObjectBank([obj])).synthesize(image, train_ids, np.random.default_rng([seed, index]))
                pasted = _fit(result.image) if result.objects else _text(["(no place on the road)"])
        else:
            cells += [_text([f"rejected: {status}"]), _text([""])]
        cells.append(pasted)
        lines.append(np.concatenate(cells, axis=1))
    if not lines:
        raise DiffeelError(f"object bank {bank} holds no objects to show")
    header = np.concatenate([_text([title], height=32) for title in ("prompt", "generated", "cut-out", "mask", "pasted")], axis=1)
    return np.concatenate([header, *lines], axis=0)
