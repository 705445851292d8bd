"""Label conventions, named once.

Evaluation labels on disk use 0 = inlier, 1 = anomaly, 255 = void (the SegmentMeIfYouCan and
Fishyscapes convention). Training labels use Cityscapes train ids with 255 = void and
``ANOMALY_TRAIN_ID`` for pasted anomalies (Eq. 1's ``P``; 254 as in RPL, PEBAL and Mask2Anomaly, so
data prepared for them keeps working, where the paper's example uses 20).
"""

from __future__ import annotations

from typing import NamedTuple

VOID = 255
ANOMALY_TRAIN_ID = 254
INLIER = 0
ANOMALY = 1
EVAL_LABEL_VALUES = (INLIER, ANOMALY, VOID)


class CityscapesClass(NamedTuple):
    train_id: int
    label_id: int
    name: str
    color: tuple[int, int, int]


CITYSCAPES_CLASSES: tuple[CityscapesClass, ...] = (
    CityscapesClass(0, 7, "road", (128, 64, 128)),
    CityscapesClass(1, 8, "sidewalk", (244, 35, 232)),
    CityscapesClass(2, 11, "building", (70, 70, 70)),
    CityscapesClass(3, 12, "wall", (102, 102, 156)),
    CityscapesClass(4, 13, "fence", (190, 153, 153)),
    CityscapesClass(5, 17, "pole", (153, 153, 153)),
    CityscapesClass(6, 19, "traffic light", (250, 170, 30)),
    CityscapesClass(7, 20, "traffic sign", (220, 220, 0)),
    CityscapesClass(8, 21, "vegetation", (107, 142, 35)),
    CityscapesClass(9, 22, "terrain", (152, 251, 152)),
    CityscapesClass(10, 23, "sky", (70, 130, 180)),
    CityscapesClass(11, 24, "person", (220, 20, 60)),
    CityscapesClass(12, 25, "rider", (255, 0, 0)),
    CityscapesClass(13, 26, "car", (0, 0, 142)),
    CityscapesClass(14, 27, "truck", (0, 0, 70)),
    CityscapesClass(15, 28, "bus", (0, 60, 100)),
    CityscapesClass(16, 31, "train", (0, 80, 100)),
    CityscapesClass(17, 32, "motorcycle", (0, 0, 230)),
    CityscapesClass(18, 33, "bicycle", (119, 11, 32)),
)
NUM_CLASSES = len(CITYSCAPES_CLASSES)
CLASS_NAMES: tuple[str, ...] = tuple(c.name for c in CITYSCAPES_CLASSES)
TRAIN_ID = {c.name: c.train_id for c in CITYSCAPES_CLASSES}


def label_id_to_train_id_table():
    """A 256-entry lookup table from Cityscapes ``labelIds`` to train ids (unlisted ids → VOID)."""
    import numpy as np

    table = np.full(256, VOID, dtype=np.uint8)
    for cls in CITYSCAPES_CLASSES:
        table[cls.label_id] = cls.train_id
    return table


def train_id_palette():
    """A 256×3 uint8 colour table for train-id maps; void black, pasted anomalies white."""
    import numpy as np

    palette = np.zeros((256, 3), dtype=np.uint8)
    for cls in CITYSCAPES_CLASSES:
        palette[cls.train_id] = cls.color
    palette[ANOMALY_TRAIN_ID] = (255, 255, 255)
    return palette
