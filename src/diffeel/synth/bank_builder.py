"""Building an object bank: plan → draw (diffusion) → cut out (salient extractor) → records and PNGs.

A bank folder holds ``objects.jsonl`` (or, when built in K shards, ``objects-IIIII-of-KKKKK.jsonl``
per shard, so that shards never write one file; readers take them all), ``generated/{id}.png`` (the
drawn image) and, for accepted objects, ``objects/{id}.png`` (the RGBA cut-out, cropped to its
mask). One JSON record per planned object: ``id``, ``prompt``, ``object``, ``category``,
``background``, ``seed``, ``height_range``, ``status`` (``"ok"`` or the rejection reason),
``file`` (the cut-out, relative to the bank) and ``box`` (where it was cut, ``[top, left, height,
width]`` in the drawn image) when ok, ``image``, ``model``, ``settings``.

Consistency at any interruption: the PNGs of an object are written (atomically) before its
record line is appended, so a record always has its files; a rerun drops a torn last line,
deletes this shard's PNGs that no record claims, and draws only the objects without a record.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..data.images import write_image_atomic
from ..errors import DiffeelError
from .bank import read_record_file, read_records, tight_crop
from .generate import ObjectPlan

def records_name(shard: tuple[int, int]) -> str:
    part, parts = shard
    return "objects.jsonl" if parts == 1 else f"objects-{part:05d}-of-{parts:05d}.jsonl"


def _prepare_shard(bank: Path, shard: tuple[int, int], plans: list[ObjectPlan]) -> set[str]:
    """Repair this shard's record file after an interruption; return the ids already done."""
    path = bank / records_name(shard)
    done: set[str] = set()
    if path.exists():
        records, torn = read_record_file(path)
        if torn:
            temporary = path.with_name(f".{path.name}.tmp")
            temporary.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
            os.replace(temporary, path)
        done = {r["id"] for r in records}
    others = {r["id"] for r in read_records(bank)} - done
    mine = {plan.id for plan in plans}
    if others & mine:
        raise DiffeelError(f"{bank} already records object {sorted(others & mine)[0]} in another record file; "
                           "build a bank with one sharding (the same K) throughout")
    for folder in ("objects", "generated"):
        for file in (bank / folder).glob("*.png") if (bank / folder).is_dir() else []:
            if file.stem in mine and file.stem not in done:
                file.unlink()  # drawn but never recorded: the interruption came before its record
    return done


def cutout_rgba(rgb: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, list[int]]:
    """An RGBA image of the object cropped to its mask (alpha 255 on the object, 0 elsewhere), and
    the crop's box ``[top, left, height, width]`` in the drawn image."""
    rows, cols = np.nonzero(mask.any(axis=1))[0], np.nonzero(mask.any(axis=0))[0]
    box = [int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)]
    rgb, mask = tight_crop(rgb, mask)
    return np.dstack([rgb, np.where(mask, 255, 0).astype(np.uint8)]), box


def build_object_bank(bank, plans: list[ObjectPlan], draw, extractor, *, shard: tuple[int, int] = (0, 1), batch: int = 1,
                      provenance: dict | None = None, progress: bool = True) -> dict:
    """Draw, cut out and record every plan without a record yet.

    ``draw(plans) -> list of (H, W, 3) uint8`` images; ``extractor.extract(rgb)`` returns an object
    with ``mask`` (bool, or None) and ``reason`` (None when accepted). Returns counts.
    """
    from tqdm import tqdm

    bank = Path(bank)
    if bank.exists() and not bank.is_dir():
        raise DiffeelError(f"--out {bank} is an existing file, not a bank folder")
    bank.mkdir(parents=True, exist_ok=True)
    existing = read_records(bank)
    if provenance and existing:
        changed = sorted(key for key in provenance if existing[0].get(key) != provenance[key])
        if changed:
            raise DiffeelError(f"{bank} holds objects made with another {' and '.join(changed)}; use another --out "
                               "(a bank keeps one model and one set of settings)")
    done = _prepare_shard(bank, shard, plans)
    remaining = [plan for plan in plans if plan.id not in done]
    counts = {"planned": len(plans), "kept": len(plans) - len(remaining), "ok": 0, "rejected": 0}
    with open(bank / records_name(shard), "a", encoding="utf-8") as records, \
            tqdm(total=len(plans), initial=counts["kept"], desc="objects", unit="object", disable=not progress) as bar:
        for start in range(0, len(remaining), batch):
            chunk = remaining[start : start + batch]
            for plan, image in zip(chunk, draw(chunk)):
                result = extractor.extract(image)
                record = {"id": plan.id, "prompt": plan.prompt, "object": plan.object, "category": plan.category,
                          "background": plan.background, "seed": plan.seed, "height_range": list(plan.height_range),
                          "status": "ok" if result.reason is None else result.reason, "image": f"generated/{plan.id}.png",
                          **(provenance or {})}
                write_image_atomic(bank / record["image"], image)
                if result.reason is None:
                    cutout, record["box"] = cutout_rgba(image, result.mask)
                    record["file"] = f"objects/{plan.id}.png"
                    write_image_atomic(bank / record["file"], cutout)
                records.write(json.dumps(record) + "\n")
                records.flush()
                os.fsync(records.fileno())
                counts["ok" if result.reason is None else "rejected"] += 1
                bar.update(1)
    return counts
