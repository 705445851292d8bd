"""Label conventions, named once.

Evaluation labels on disk use 0 = inlier, 1 = anomaly, 255 = void (the SegmentMeIfYouCan and
Fishyscapes convention). Training labels use Cityscapes train ids with 255 = void and
``ANOMALY_TRAIN_ID`` for pasted anomalies (Eq. 1's ``P``; 254 as in RPL, PEBAL and Mask2Anomaly, so
data prepared for them keeps working, where the paper's example uses 20).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

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
    table = np.full(256, VOID, dtype=np.uint8)
    for cls in CITYSCAPES_CLASSES:
        table[cls.label_id] = cls.train_id
    return table


def train_id_palette():
    """A 256×3 uint8 colour table for train-id maps; void black, pasted anomalies white."""
    palette = np.zeros((256, 3), dtype=np.uint8)
    for cls in CITYSCAPES_CLASSES:
        palette[cls.train_id] = cls.color
    palette[ANOMALY_TRAIN_ID] = (255, 255, 255)
    return palette


UNMAPPED = 2  # marker in lookup tables: a stored value with no mapping (an error when met)


def shown_values(values, limit: int = 8) -> str:
    """The first ``limit`` of ``values`` for an error message, ``…`` when there are more."""
    values = list(values)
    return ", ".join(str(v) for v in values[:limit]) + (", …" if len(values) > limit else "")


class LabelMapping:
    """Maps stored label values to evaluation labels 0 (inlier), 1 (anomaly), 255 (void).

    ``{2: 1, 0: 0, "*": 255}`` or ``LabelMapping.parse("2:1,0:0,*:255")``. Values not mapped keep
    their meaning if they are 0, 1 or 255; anything else is an error unless ``"*"`` maps it.
    """

    MAX_VALUE = (1 << 16) - 1

    def __init__(self, mapping=None):
        mapping = dict(mapping or {})
        default = mapping.pop("*", None)
        for source, target in mapping.items():
            if isinstance(source, bool) or not isinstance(source, (int, np.integer)) or not 0 <= source <= self.MAX_VALUE:
                raise ValueError(f"label_map keys must be integers in 0..{self.MAX_VALUE} or '*', got {source!r}")
            self._check_target(target)
        if default is not None:
            self._check_target(default)
        self.mapping = {int(k): int(v) for k, v in mapping.items()}
        self.default = default
        self._tables: dict[int, np.ndarray] = {}

    @staticmethod
    def _check_target(target) -> None:
        if target not in EVAL_LABEL_VALUES:
            raise ValueError(f"label_map targets must be 0, 1 or 255, got {target!r}")

    @classmethod
    def parse(cls, text: str) -> "LabelMapping":
        mapping = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            source, sep, target = item.partition(":")
            if not sep:
                raise ValueError(f"label map entry {item!r} is not of the form value:target")
            try:
                key = "*" if source.strip() == "*" else int(source)
                mapping[key] = int(target)
            except ValueError:
                raise ValueError(f"label map entry {item!r} is not of the form value:target") from None
        return cls(mapping)

    @property
    def is_identity(self) -> bool:
        return not self.mapping and self.default is None

    def table(self, size: int) -> np.ndarray:
        """A lookup table over stored values ``0..size-1``; ``UNMAPPED`` where nothing applies."""
        if size not in self._tables:
            table = np.full(size, UNMAPPED if self.default is None else self.default, dtype=np.uint8)
            if self.default is None:
                for value in EVAL_LABEL_VALUES:
                    if value < size:
                        table[value] = value
            for source, target in self.mapping.items():
                if source < size:
                    table[source] = target
            self._tables[size] = table
        return self._tables[size]

    def apply(self, labels: np.ndarray) -> np.ndarray:
        """Stored labels → uint8 evaluation labels; a ValueError names unmapped values."""
        labels = np.asarray(labels)
        if labels.dtype.kind == "b":
            return labels.astype(np.uint8)
        if labels.dtype.kind not in "iu":
            raise ValueError(f"label maps must hold integers, got dtype {labels.dtype}")
        if labels.size and (int(labels.min()) < 0 or int(labels.max()) > self.MAX_VALUE):
            bad = int(labels.min()) if int(labels.min()) < 0 else int(labels.max())
            raise ValueError(f"label map contains the value {bad}, outside 0..{self.MAX_VALUE}")
        small = labels.dtype == np.uint8 or (labels.size and int(labels.max()) < 256)
        labels = labels.astype(np.uint8 if small else np.intp, copy=False)
        mapped = np.take(self.table(256 if small else self.MAX_VALUE + 1), labels)
        if (mapped == UNMAPPED).any():
            bad = np.unique(labels[mapped == UNMAPPED])
            raise ValueError(
                f"label map contains values outside {{0, 1, 255}} with no mapping for them: {shown_values(bad)} "
                "(give a label map, e.g. 2:1,*:255)"
            )
        return mapped
