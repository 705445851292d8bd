"""The recipes of the demo: ``closed`` (the host), ``rpl`` (RPL's loss) and ``rpl+eel`` (Eq. 8).

- ``closed``: train the small DeepLabV3+ on inlier images (cross-entropy, void ignored).
- ``rpl``: freeze it; train the RPL residual module on copy-pasted images (Eq. 1) with RPL's
  objective: CE to the frozen prediction + entropy-MSE + 0.05 · mean ReLU(logsumexp) on anomalies.
- ``rpl+eel``: the same with Eq. 8: ``consistency_loss + 0.05 · eel_loss``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import losses
from ..data.images import read_image, read_label
from ..errors import DiffeelError
from ..labels import NUM_CLASSES, VOID
from ..models import RPLModel, SmallDeepLab
from .loop import step_generator

RESIDUAL_HEAD_LR_MULTIPLIER = 10  # RPL trains atten_aspp_final with 10× the learning rate


class TrainingImages:
    """The training split of a world (images + train ids) in memory, and per-step batches."""

    def __init__(self, folder, synthesizer=None, photometric: bool = True):
        folder = Path(folder)
        images = sorted((folder / "images").glob("*.png"))
        if not images:
            raise DiffeelError(f"{folder / 'images'} holds no training images")
        self.images = np.stack([read_image(p) for p in images])
        self.labels = np.stack([read_label(folder / "labels" / p.name) for p in images]).astype(np.uint8)
        self.synthesizer = synthesizer
        self.photometric = photometric

    def batch(self, seed: int, step: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
        rng = step_generator(seed, step)
        images, labels = [], []
        for index in rng.integers(len(self.images), size=size):
            image, label = self.images[index], self.labels[index]
            if rng.random() < 0.5:
                image, label = image[:, ::-1], label[:, ::-1]
            if self.synthesizer is not None:
                image, label = self.synthesizer(np.ascontiguousarray(image), np.ascontiguousarray(label), rng)
            if self.photometric:
                image = photometric_jitter(image, rng)
            images.append(np.ascontiguousarray(image))
            labels.append(np.ascontiguousarray(label))
        images_tensor = torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).float().div_(255)
        return images_tensor, torch.from_numpy(np.stack(labels)).long()


def photometric_jitter(image: np.ndarray, rng) -> np.ndarray:
    """Standard segmentation augmentation: brightness, contrast, colour gains, blur and noise.

    Generic photometric jitter (no weather model): it keeps a small model from relying on exact
    colours, as large models trained on real data learn to.
    """
    import cv2

    pixels = image.astype(np.float32) / 255
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.6, 1.3) + mean * rng.uniform(0.5, 1.3)
    pixels *= rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    if rng.random() < 0.3:
        pixels = cv2.GaussianBlur(pixels, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        pixels += rng.normal(0, rng.uniform(0.01, 0.05), size=pixels.shape).astype(np.float32)
    return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)


def closed_loss(model, images, labels) -> dict:
    """Cross-entropy on the inlier classes; void and anything else (pasted anomalies) ignored."""
    targets = torch.where(labels < NUM_CLASSES, labels, torch.full_like(labels, VOID))
    return {"total": F.cross_entropy(model(images), targets, ignore_index=VOID)}


def residual_loss(kind: str, inlier_entropy: str = "confident"):
    def loss(model, images, labels) -> dict:
        out1, out2 = model(images)
        anomaly_mask, inlier_mask = losses.split_train_labels(labels)
        if kind == "rpl":
            return losses.rpl_baseline_total_loss(out2, out1, anomaly_mask, inlier_mask)
        return losses.rpl_eel_total_loss(out2, out1, anomaly_mask, inlier_mask, inlier_entropy=inlier_entropy)

    return loss


def closed_model(seed: int):
    torch.manual_seed(seed)
    model = SmallDeepLab()
    return model, [{"params": list(model.parameters())}]


def residual_model(host: torch.nn.Module, seed: int, lr: float):
    torch.manual_seed(seed)
    model = RPLModel(host)
    head = list(model.residual_block.atten_aspp_final.parameters())
    rest = [p for name, p in model.residual_block.named_parameters() if not name.startswith("atten_aspp_final")]
    return model, [{"params": rest}, {"params": head, "lr": lr * RESIDUAL_HEAD_LR_MULTIPLIER}]


RECIPES = ("closed", "rpl", "rpl+eel")
