"""Training samples: augmentation of one frame, and Cityscapes in epochs split between processes.

Every random choice made for a sample comes from a generator seeded by what the sample *is*
(``seed``, epoch, image index), never by which process draws it or when: a run on N processes
sees exactly the global batches of a run on one, and a resumed run exactly those it would have
seen. Epoch ``e``'s order is :class:`torch.utils.data.DistributedSampler`'s shuffle for ``e``
(``drop_last``); with W processes and global batch B, process r takes B / W frames of each global
batch, and the W shares together are the single-process batch.
"""

from __future__ import annotations

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler

from ..data.cityscapes import list_cityscapes, read_cityscapes_frame
from ..errors import DiffeelError
from ..labels import VOID


def photometric_jitter(image: np.ndarray, rng) -> np.ndarray:
    """Standard segmentation augmentation: brightness, contrast, colour gains, blur and noise.

    Generic photometric jitter (no weather model): it keeps a small model from relying on exact
    colours, as large models trained on real data learn to.
    """
    pixels = image.astype(np.float32) / 255
    mean = pixels.mean()
    pixels = (pixels - mean) * rng.uniform(0.6, 1.3) + mean * rng.uniform(0.5, 1.3)
    pixels *= rng.uniform(0.85, 1.15, size=3).astype(np.float32)
    if rng.random() < 0.3:
        pixels = cv2.GaussianBlur(pixels, (0, 0), rng.uniform(0.5, 1.5))
    if rng.random() < 0.3:
        pixels += rng.normal(0, rng.uniform(0.01, 0.05), size=pixels.shape).astype(np.float32)
    return (np.clip(pixels, 0, 1) * 255 + 0.5).astype(np.uint8)


def _window_start(size: int, window: int, rng, keep: tuple[int, int] | None) -> int:
    """A random start of a ``window`` in ``size``; with ``keep`` = (first, end), among the starts
    whose window holds ``[first, end)``, or centred on it when it is longer than the window."""
    if keep is None:
        return int(rng.integers(0, size - window + 1))
    first, end = keep
    low, high = max(0, end - window), min(first, size - window)
    if low <= high:
        return int(rng.integers(low, high + 1))
    return int(np.clip((first + end - window) // 2, 0, size - window))


def random_crop(image: np.ndarray, label: np.ndarray, crop, rng, keep=None) -> tuple[np.ndarray, np.ndarray]:
    """A ``crop`` = (height, width) window at a random position; smaller frames are padded first
    (image 0, label void), as RPL's ``random_crop_pad_to_shape`` does. ``keep`` = (top, left,
    height, width): a box the window must hold (as much of it as fits)."""
    rows, cols = max(crop[0], image.shape[0]), max(crop[1], image.shape[1])
    if (rows, cols) != image.shape[:2]:
        image = np.pad(image, ((0, rows - image.shape[0]), (0, cols - image.shape[1]), (0, 0)))
        label = np.pad(label, ((0, rows - label.shape[0]), (0, cols - label.shape[1])), constant_values=VOID)
    box_top, box_left, box_height, box_width = keep if keep is not None else (None,) * 4
    top = _window_start(rows, crop[0], rng, None if keep is None else (box_top, box_top + box_height))
    left = _window_start(cols, crop[1], rng, None if keep is None else (box_left, box_left + box_width))
    return image[top : top + crop[0], left : left + crop[1]], label[top : top + crop[0], left : left + crop[1]]


def _visible_box(placement, shape: tuple[int, int]) -> tuple[int, int, int, int]:
    """A pasted object's box (top, left, height, width), clipped to the frame."""
    top, left = max(0, placement.top), max(0, placement.left)
    bottom, right = min(shape[0], placement.top + placement.height), min(shape[1], placement.left + placement.width)
    return top, left, max(1, bottom - top), max(1, right - left)


def augment_frame(image, label, rng, *, crop=None, synthesizer=None, paste_probability: float = 1.0,
                  paste_before_crop: bool = False, crop_around_anomaly: bool = False,
                  photometric: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """One training sample: horizontal flip (p = 0.5), random crop, pasted anomalies (with
    ``paste_probability``; on the full frame when ``paste_before_crop``, so that placement sees the
    camera's whole view), photometric jitter. Draws from ``rng`` in that order.

    ``crop_around_anomaly`` (with ``paste_before_crop``): the crop holds one pasted object, drawn
    from those pasted, as RPL's crops always hold theirs (it pastes into the crop); a frame where
    nothing could be placed is cropped at random."""
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if crop and not paste_before_crop:
        image, label = random_crop(image, label, crop, rng)
    keep = None
    # the draw is skipped when every frame is pasted, so such runs keep their random stream
    if synthesizer is not None and (paste_probability >= 1 or rng.random() < paste_probability):
        image, label = np.ascontiguousarray(image), np.ascontiguousarray(label)
        if crop and paste_before_crop and crop_around_anomaly:
            result = synthesizer.synthesize(image, label, rng)  # where the objects went
            image, label = result.image, result.labels
            if result.objects:
                chosen = result.objects[int(rng.integers(len(result.objects)))]
                keep = _visible_box(chosen.placement, label.shape)
        else:
            image, label = synthesizer(image, label, rng)
    if crop and paste_before_crop:
        image, label = random_crop(image, label, crop, rng, keep)
    if photometric:
        image = photometric_jitter(image, rng)
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class CityscapesTraining(Dataset):
    """Cityscapes' ``train`` split as augmented samples; item ``(epoch, index)`` → (image uint8
    ``(3, H, W)``, train ids ``(H, W)`` int64 with ``ANOMALY_TRAIN_ID`` where objects were pasted)."""

    def __init__(self, root, seed: int, *, split: str = "train", crop=None, synthesizer=None, paste_probability: float = 1.0,
                 paste_before_crop: bool = False, crop_around_anomaly: bool = False, photometric: bool = False):
        self.frames = list_cityscapes(root, split)
        self.seed = seed
        self.options = {"crop": crop, "synthesizer": synthesizer, "paste_probability": paste_probability,
                        "paste_before_crop": paste_before_crop, "crop_around_anomaly": crop_around_anomaly,
                        "photometric": photometric}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = item
        image, label = read_cityscapes_frame(self.frames[index])
        options = dict(self.options)
        if hasattr(options["synthesizer"], "for_epoch"):  # its objects may change with the epoch (RPL's COCO proxy set)
            options["synthesizer"] = options["synthesizer"].for_epoch(epoch)
        image, label = augment_frame(image, label, np.random.default_rng([self.seed, epoch, index]), **options)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label.astype(np.int64))


class EpochBatches:
    """This process's share of each global batch from step ``start`` on, as ``[(epoch, index), …]``.

    ``len(dataset) // batch_size`` steps make an epoch (RPL: 2975 // 8 = 371).
    """

    def __init__(self, size: int, batch_size: int, steps: int, seed: int, start: int = 0, rank: int = 0, world_size: int = 1):
        if batch_size % world_size:
            raise DiffeelError(f"the global batch of {batch_size} does not split evenly over {world_size} processes")
        self.steps_per_epoch = size // batch_size
        if self.steps_per_epoch < 1:
            raise DiffeelError(f"{size} training frames are fewer than one batch of {batch_size}")
        self.local_batch = batch_size // world_size
        self.sampler = DistributedSampler(range(size), num_replicas=world_size, rank=rank, shuffle=True, seed=seed, drop_last=True)
        self.steps, self.start = steps, start

    def __len__(self) -> int:
        return max(0, self.steps - self.start)

    def epoch_order(self, epoch: int) -> list[int]:
        """This process's frame indices for ``epoch``: every W-th of the epoch's shuffle, from its rank on."""
        self.sampler.set_epoch(epoch)
        return list(self.sampler)

    def __iter__(self):
        epoch, order = None, []
        for step in range(self.start, self.steps):
            if step // self.steps_per_epoch != epoch:
                epoch = step // self.steps_per_epoch
                order = self.epoch_order(epoch)
            k = step % self.steps_per_epoch
            yield [(epoch, index) for index in order[k * self.local_batch : (k + 1) * self.local_batch]]
