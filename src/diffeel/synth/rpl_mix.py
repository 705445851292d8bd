"""RPL's own outlier mixing, the data of RPL's published recipe (a baseline to diffeel's placement).

Per frame, one outlier object is rescaled by a factor drawn uniformly from RPL's list (relative to
its own size), its bounding box is pasted at a uniformly random position in the frame, and only
its object pixels are written, with label ``ANOMALY_TRAIN_ID``. No road, perspective, occlusion or
illumination rule: the object may land on the sky. RPL's configuration lists 0.5 twice, so 0.5 is
drawn with probability 1/3; an object larger than the frame is centre-cropped to it, as RPL's
``center_crop_to_shape`` does.
"""

from __future__ import annotations

import cv2
import numpy as np

from ..errors import DiffeelError
from .bank import ObjectSource, tight_crop
from .compose import check_image, check_label, paste
from .placement import Placement
from .synthesizer import PastedObject, SynthesisResult, Synthesizer

RPL_SCALES = (0.25, 0.5, 0.5, 0.75, 0.1, 0.125)  # RPL's ood_train_scale_array, in its order


def _centre_crop(rgb: np.ndarray, mask: np.ndarray, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    top, left = max(0, (rgb.shape[0] - rows) // 2), max(0, (rgb.shape[1] - cols) // 2)
    box = np.s_[top : top + rows, left : left + cols]
    return rgb[box], mask[box]


class RPLMixSynthesizer(Synthesizer):
    """RPL's mixing: random scale from :data:`RPL_SCALES`, random position, object pixels pasted."""

    def __init__(self, bank: ObjectSource, objects_per_image: int = 1, scales=RPL_SCALES):
        if not callable(getattr(bank, "sample", None)):
            raise DiffeelError(f"the object source needs a sample(rng) method, got {type(bank).__name__}")
        if not scales or any(not 0 < s for s in scales):
            raise DiffeelError(f"scales must be positive factors, got {scales!r}")
        self.bank, self.objects_per_image, self.scales = bank, int(objects_per_image), tuple(float(s) for s in scales)

    def synthesize(self, image, train_ids, rng) -> SynthesisResult:
        image = check_image(image)
        train_ids = check_label(train_ids, image.shape[:2], "train_ids")
        rng = np.random.default_rng(rng)
        rows, cols = train_ids.shape
        out_image, out_labels, pasted = image.copy(), train_ids.copy(), []
        for _ in range(self.objects_per_image):
            obj = self.bank.sample(rng)
            scale = self.scales[int(rng.integers(len(self.scales)))]
            height, width = (max(1, int(side * scale)) for side in obj.rgb.shape[:2])
            rgb = cv2.resize(obj.rgb, (width, height), interpolation=cv2.INTER_LINEAR)
            mask = cv2.resize(obj.mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
            rgb, mask = _centre_crop(rgb, mask, rows, cols)
            if not mask.any():
                continue  # scaled (or cropped) away, as in RPL: nothing is pasted
            rgb, mask = tight_crop(rgb, mask)
            top = int(rng.integers(0, rows - mask.shape[0] + 1))
            left = int(rng.integers(0, cols - mask.shape[1] + 1))
            out_image, out_labels = paste(out_image, out_labels, rgb, mask, (top, left))
            placement = Placement(top, left, mask.shape[0], mask.shape[1], top + mask.shape[0] - 1)
            pasted.append(PastedObject(obj.kind, obj.source, float("nan"), placement))
        return SynthesisResult(out_image, out_labels, pasted)
