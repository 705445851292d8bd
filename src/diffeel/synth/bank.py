"""The object source of copy-paste synthesis: a bank of RGBA cut-outs with real-height priors.

On disk a bank is a folder with ``objects.csv`` (columns ``file, kind, min_height_m,
max_height_m``; ``family`` and any others are ignored) and the RGBA PNGs it lists, as written by
``diffeel world make`` under ``train/objects``; or with ``objects*.jsonl`` records (one JSON
object per line, ``status`` ``"ok"`` marking the usable ones, ``file``, ``object``,
``height_range``), as ``diffeel synth objects`` writes them. The object mask is ``alpha > 127``,
cropped tightly.

Anything with a ``sample(rng) -> BankObject`` method can stand in for :class:`ObjectBank` (a
diffusion generator followed by a salient-object extractor, for example).
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DiffeelError
from .compose import check_image, check_mask

CSV_NAME = "objects.csv"
REQUIRED_COLUMNS = ("file", "kind", "min_height_m", "max_height_m")
ALPHA_THRESHOLD = 127
RECORDS_PATTERN = "objects*.jsonl"  # objects.jsonl, or one objects-IIIII-of-KKKKK.jsonl per shard


def tight_crop(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb, mask)`` cropped to the bounding box of the mask (copies); the mask must be non-empty."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    if rows.size == 0:
        raise DiffeelError("the object mask is empty")
    box = np.s_[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    return rgb[box].copy(), mask[box].copy()


@dataclass(frozen=True, eq=False)
class BankObject:
    """One object: ``rgb`` (h, w, 3) uint8, ``mask`` (h, w) bool, real height range in metres."""

    rgb: np.ndarray
    mask: np.ndarray
    kind: str
    height_range: tuple[float, float]
    source: str = ""

    def __post_init__(self):
        rgb = check_image(self.rgb, "object rgb")
        mask = check_mask(self.mask, rgb.shape[:2], "object mask")
        if not mask.any():
            raise DiffeelError(f"object {self.source or self.kind!r} has an empty mask")
        low, high = (float(v) for v in self.height_range)
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise DiffeelError(f"object {self.source or self.kind!r} has an invalid height range {self.height_range!r} "
                               "(need 0 < min <= max, in metres)")
        object.__setattr__(self, "rgb", rgb)
        object.__setattr__(self, "mask", mask)
        object.__setattr__(self, "height_range", (low, high))

    @property
    def aspect(self) -> float:
        """Width / height of the mask's bounding box."""
        rows, cols = self.mask.any(axis=1).sum(), self.mask.any(axis=0).sum()
        return float(cols) / float(rows)


class ObjectSource(Protocol):
    """The first synthesis stage: where objects come from (a bank, or a diffusion generator)."""

    def sample(self, rng: np.random.Generator) -> BankObject: ...


@dataclass(frozen=True)
class _Entry:
    """An object on disk, decoded when needed (``ObjectBank.from_folder(..., preload=False)``)."""

    path: Path
    kind: str
    height_range: tuple[float, float]

    def load(self) -> BankObject:
        rgb, mask = read_cutout(self.path)
        return BankObject(rgb, mask, self.kind, self.height_range, str(self.path))


def _open_with_alpha(path: Path) -> Image.Image:
    if not path.is_file():
        raise DiffeelError(f"object file {path} does not exist")
    try:
        image = Image.open(path)
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise DiffeelError(f"object file {path} is not a readable image ({type(error).__name__})") from error
    if "A" not in image.getbands() and "transparency" not in image.info:
        raise DiffeelError(f"object file {path} has no alpha channel (mode {image.mode}); "
                           "object cut-outs must be RGBA PNGs whose alpha marks the object")
    return image


def read_cutout(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An RGBA cut-out as ``(rgb, mask)``, mask ``alpha > 127``, both cropped tightly to the mask."""
    path = Path(path)
    image = _open_with_alpha(path)
    try:
        rgba = np.asarray(image.convert("RGBA"))
    except (OSError, ValueError) as error:
        raise DiffeelError(f"object file {path} is not a readable image ({type(error).__name__})") from error
    mask = rgba[..., 3] > ALPHA_THRESHOLD
    if not mask.any():
        raise DiffeelError(f"object file {path} has no opaque pixels (alpha > {ALPHA_THRESHOLD})")
    return tight_crop(np.ascontiguousarray(rgba[..., :3]), mask)


def read_record_file(path: Path) -> tuple[list[dict], bool]:
    """The records of one file, and whether its last line was torn (an interrupted append)."""
    records, torn = [], False
    lines = path.read_text(encoding="utf-8").split("\n")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError:
            if number == len(lines):  # the last line, without its newline: an append cut short
                torn = True
                continue
            raise DiffeelError(f"{path} line {number} is not a JSON record") from None
        if not isinstance(record, dict) or "id" not in record or "status" not in record:
            raise DiffeelError(f"{path} line {number} lacks the fields id and status")
        records.append(record)
    return records, torn


def read_records(bank) -> list[dict]:
    """Every record of a bank, from all its record files, by id (an id recorded twice is an error)."""
    bank = Path(bank)
    by_id: dict[str, dict] = {}
    for path in sorted(bank.glob(RECORDS_PATTERN)):
        for record in read_record_file(path)[0]:
            if record["id"] in by_id:
                raise DiffeelError(f"object {record['id']} is recorded twice in {bank} (two builds of different shardings?)")
            by_id[record["id"]] = record
    return [by_id[key] for key in sorted(by_id)]


def _read_records(folder: Path) -> list[_Entry]:
    entries = []
    for record in read_records(folder):
        if record["status"] != "ok":
            continue  # rejected by the extractor; the record keeps the reason
        try:
            low, high = (float(v) for v in record["height_range"])
            entries.append(_Entry(folder / record["file"], str(record.get("object") or "object"), (low, high)))
        except (KeyError, TypeError, ValueError):
            raise DiffeelError(f"object bank {folder}: record {record['id']} lacks a file or a height_range") from None
    if not entries:
        raise DiffeelError(f"object bank {folder} records no accepted object (status ok)")
    return entries


def _read_csv(folder: Path) -> list[_Entry]:
    table = folder / CSV_NAME
    if not table.is_file():
        if any(folder.glob(RECORDS_PATTERN)):
            return _read_records(folder)
        raise DiffeelError(f"object bank {folder} has no {CSV_NAME} (columns: {', '.join(REQUIRED_COLUMNS)}) "
                           "and no objects*.jsonl records")
    with open(table, newline="", encoding="utf-8") as stream:
        reader = csv.DictReader(stream)
        missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DiffeelError(f"{table} lacks the column(s) {', '.join(missing)}")
        entries = []
        for line, row in enumerate(reader, start=2):
            try:
                low, high = float(row["min_height_m"]), float(row["max_height_m"])
            except (TypeError, ValueError):
                raise DiffeelError(f"{table} line {line}: heights {row['min_height_m']!r}, {row['max_height_m']!r} "
                                   "are not numbers") from None
            if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
                raise DiffeelError(f"{table} line {line}: height range {low}..{high} m is invalid (need 0 < min <= max)")
            if not row["file"]:
                raise DiffeelError(f"{table} line {line}: the file column is empty")
            entries.append(_Entry(folder / row["file"], row["kind"] or "object", (low, high)))
    if not entries:
        raise DiffeelError(f"{table} lists no objects")
    return entries


class ObjectBank:
    """A list of :class:`BankObject`, sampled uniformly."""

    def __init__(self, objects: Sequence[BankObject]):
        self._objects: list[BankObject | _Entry] = list(objects)
        if not self._objects:
            raise DiffeelError("an object bank needs at least one object")
        for item in self._objects:
            if not isinstance(item, (BankObject, _Entry)):
                raise DiffeelError(f"an object bank holds BankObject items, got {type(item).__name__}")

    @classmethod
    def from_folder(cls, path: str | os.PathLike, *, preload: bool = True) -> ObjectBank:
        """Read ``objects.csv`` and the cut-outs it lists from ``path``.

        Every listed file is checked at once (exists, readable, has alpha). With ``preload=False``
        pixels are decoded only when an object is drawn, which keeps a paper-sized pool (tens of
        thousands of objects) out of memory; an empty alpha is then reported at that point.
        """
        folder = Path(path)
        if not folder.is_dir():
            raise DiffeelError(f"object bank folder {folder} does not exist")
        entries = _read_csv(folder)
        if preload:
            return cls([entry.load() for entry in entries])
        for entry in entries:
            _open_with_alpha(entry.path).close()
        return cls(entries)  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self._objects)

    def __getitem__(self, index: int) -> BankObject:
        item = self._objects[index]
        return item.load() if isinstance(item, _Entry) else item

    def subset(self, share: float, seed: int = 0) -> "ObjectBank":
        """A bank of ``share`` of the objects (at least one), drawn with ``seed``; the subsets of
        one seed are nested (the 25 % pool lies inside the 50 % pool), as an ablation needs."""
        if not 0 < share <= 1:
            raise DiffeelError(f"share must be in (0, 1], got {share!r}")
        order = np.random.default_rng([seed, len(self._objects)]).permutation(len(self._objects))
        keep = sorted(order[: max(1, round(share * len(self._objects)))])
        return ObjectBank([self._objects[i] for i in keep])

    @property
    def kinds(self) -> list[str]:
        return sorted({item.kind for item in self._objects})

    def sample(self, rng: np.random.Generator) -> BankObject:
        """One object drawn uniformly with ``rng``."""
        return self[int(rng.integers(len(self._objects)))]
