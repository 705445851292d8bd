"""Cityscapes training frames in the official layout, read as RGB images and train-id maps.

| file | path under ``root`` |
|---|---|
| image | ``leftImg8bit/{split}/{city}/{city}_{seq}_{frame}_leftImg8bit.png`` |
| label | ``gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelTrainIds.png`` (preferred) |
| label | ``gtFine/{split}/{city}/{city}_{seq}_{frame}_gtFine_labelIds.png`` (when no train-id file) |

``labelTrainIds`` files are what Cityscapes' ``createTrainIdLabelImgs.py`` writes; without them the
``labelIds`` are mapped through :func:`~diffeel.labels.label_id_to_train_id_table` (unlisted ids
become void), so an unprepared download works as it is.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffeelError
from ..labels import NUM_CLASSES, VOID, label_id_to_train_id_table, shown_values
from .images import check_label_size, read_image, read_label

IMAGE_SUFFIX = "_leftImg8bit.png"
TRAIN_IDS_SUFFIX = "_gtFine_labelTrainIds.png"
LABEL_IDS_SUFFIX = "_gtFine_labelIds.png"
LABEL_KINDS = ("train_ids", "label_ids")


@dataclass(frozen=True)
class CityscapesFrame:
    """One training frame; ``label_kind`` says whether the label file holds train ids or label ids."""

    id: str
    image_path: Path
    label_path: Path
    label_kind: str  # "train_ids" | "label_ids"

    def __post_init__(self):
        if self.label_kind not in LABEL_KINDS:
            raise DiffeelError(f"frame {self.id}: label_kind must be one of {', '.join(LABEL_KINDS)}, "
                               f"got {self.label_kind!r}")


def _splits(folder: Path) -> str:
    names = sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return ", ".join(names) if names else "none"


def list_cityscapes(root: str | os.PathLike, split: str = "train") -> list[CityscapesFrame]:
    """The frames of one split, sorted by id (``{city}_{seq}_{frame}``).

    Every frame's label file is located now, so a half-extracted download fails before training.
    """
    root = Path(root)
    if not root.is_dir():
        raise DiffeelError(f"Cityscapes root {root} does not exist")
    images = root / "leftImg8bit" / split
    if not images.is_dir():
        raise DiffeelError(f"Cityscapes image folder {images} does not exist "
                           f"(splits under {root / 'leftImg8bit'}: {_splits(root / 'leftImg8bit')})")
    labels = root / "gtFine" / split
    if not labels.is_dir():
        raise DiffeelError(f"Cityscapes label folder {labels} does not exist "
                           f"(splits under {root / 'gtFine'}: {_splits(root / 'gtFine')})")
    frames = []
    for image in sorted(images.glob(f"*/*{IMAGE_SUFFIX}")):
        frame_id = image.name[: -len(IMAGE_SUFFIX)]
        city = labels / image.parent.name
        train_ids, label_ids = city / f"{frame_id}{TRAIN_IDS_SUFFIX}", city / f"{frame_id}{LABEL_IDS_SUFFIX}"
        if train_ids.is_file():
            frames.append(CityscapesFrame(frame_id, image, train_ids, "train_ids"))
        elif label_ids.is_file():
            frames.append(CityscapesFrame(frame_id, image, label_ids, "label_ids"))
        else:
            raise DiffeelError(f"Cityscapes frame {frame_id} has no label: neither {train_ids} nor {label_ids} exists")
    if not frames:
        raise DiffeelError(f"no Cityscapes frames found under {images} (expected <city>/<city>_<seq>_<frame>{IMAGE_SUFFIX})")
    return sorted(frames, key=lambda frame: frame.id)


def read_cityscapes_frame(frame: CityscapesFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb, train_ids)``: a ``(H, W, 3)`` uint8 image and a ``(H, W)`` uint8 map of 0..18 and 255."""
    rgb = read_image(frame.image_path)
    label = read_label(frame.label_path)
    if label.size and (int(label.min()) < 0 or int(label.max()) > 255):
        bad = int(label.min()) if int(label.min()) < 0 else int(label.max())
        raise DiffeelError(f"label {frame.label_path} contains the value {bad}, outside 0..255")
    label = label.astype(np.uint8, copy=False)
    if frame.label_kind == "label_ids":
        train_ids = np.take(label_id_to_train_id_table(), label)
    else:
        train_ids = label
        unknown = np.unique(train_ids[(train_ids >= NUM_CLASSES) & (train_ids != VOID)])
        if unknown.size:
            raise DiffeelError(f"label {frame.label_path} contains train ids {shown_values(unknown)}, "
                               f"outside 0..{NUM_CLASSES - 1} and {VOID} (void)")
    check_label_size(rgb, train_ids, frame.image_path, frame.label_path)
    return rgb, np.ascontiguousarray(train_ids)
