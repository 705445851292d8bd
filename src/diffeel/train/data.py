"""Training samples: augmentation of one frame, and Cityscapes (or CamVid) in epochs split between processes.

Every random choice made for a sample comes from a generator seeded by what the sample *is*
(``seed``, epoch, image index), never by which process draws it or when: a run on N processes
sees exactly the global batches of a run on one, and a resumed run exactly those it would have
seen. Epoch ``e``'s order is :class:`torch.utils.data.DistributedSampler`'s shuffle for ``e``
(``drop_last``); with W processes and global batch B, process r takes B / W frames of each global
batch, and the W shares together are the single-process batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset, DistributedSampler

from ..data.camvid import list_camvid, read_camvid_frame
from ..data.images import image_files, read_image, read_label
from ..data.cityscapes import list_cityscapes, read_cityscapes_frame
from ..errors import DiffeelError
from ..models.mask2anomaly_inference import official_resize_shape
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


@dataclass(frozen=True)
class SSDColour:
    """The draws of one SSD colour augmentation; None skips that step."""

    brightness: float | None  # added to every channel, in -32..32
    contrast_first: bool  # contrast before saturation and hue, or after them
    contrast: float | None  # factor in 0.5..1.5
    saturation: float | None  # factor of the HSV saturation, in 0.5..1.5
    hue: int | None  # shift of OpenCV's hue (0..179), in -18..18


def draw_ssd_colour(rng) -> SSDColour:
    """Each step with probability 1/2 (and the order of contrast with a coin), as detectron2's
    ``ColorAugSSDTransform`` with its default ranges draws them."""
    brightness = float(rng.uniform(-32, 32)) if rng.random() < 0.5 else None
    contrast_first = bool(rng.random() < 0.5)
    contrast = float(rng.uniform(0.5, 1.5)) if rng.random() < 0.5 else None
    saturation = float(rng.uniform(0.5, 1.5)) if rng.random() < 0.5 else None
    hue = int(rng.integers(-18, 19)) if rng.random() < 0.5 else None
    return SSDColour(brightness, contrast_first, contrast, saturation, hue)


def _affine_uint8(values: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    """``values·alpha + beta`` in float32, clipped to 0..255 and truncated to uint8, as the SSD code converts."""
    return np.clip(values.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def ssd_colour(image: np.ndarray, draws: SSDColour) -> np.ndarray:
    """detectron2's SSD colour augmentation (Mask2Former's ``COLOR_AUG_SSD``) of an RGB uint8 image:
    brightness; then contrast, saturation, hue, or saturation, hue, contrast; saturation and hue in
    OpenCV's 8-bit HSV (hue modulo 180)."""
    image = np.ascontiguousarray(image)
    if draws.brightness is not None:
        image = _affine_uint8(image, beta=draws.brightness)

    def contrast(pixels):
        return pixels if draws.contrast is None else _affine_uint8(pixels, alpha=draws.contrast)

    def saturation_and_hue(pixels):
        if draws.saturation is not None:
            hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)
            hsv[:, :, 1] = _affine_uint8(hsv[:, :, 1], alpha=draws.saturation)
            pixels = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        if draws.hue is not None:
            hsv = cv2.cvtColor(pixels, cv2.COLOR_RGB2HSV)
            hsv[:, :, 0] = (hsv[:, :, 0].astype(int) + draws.hue) % 180
            pixels = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
        return pixels

    return saturation_and_hue(contrast(image)) if draws.contrast_first else contrast(saturation_and_hue(image))


def resize_shortest_edge(image: np.ndarray, label: np.ndarray, short_sides, max_size: int, rng):
    """Multi-scale training resize (detectron2's ``ResizeShortestEdge``, ``choice`` sampling): one
    of ``short_sides`` drawn, the image resized bilinearly with PIL, the labels nearest. Returns
    the image, the labels and the scale factors (rows, columns)."""
    short_side = int(short_sides[int(rng.integers(len(short_sides)))])
    height, width = official_resize_shape(label.shape[0], label.shape[1], short_side, max_size)  # detectron2's rule
    scale = (height / label.shape[0], width / label.shape[1])
    if (height, width) != label.shape:
        image = np.asarray(Image.fromarray(np.ascontiguousarray(image)).resize((width, height), Image.BILINEAR))
        label = np.asarray(Image.fromarray(np.ascontiguousarray(label)).resize((width, height), Image.NEAREST))
    return image, label, scale


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


def _scale_and_crop(image, label, rng, crop, resize, keep=None):
    """The multi-scale resize (``resize`` = (short sides, max size), or None) and the crop, the box
    to ``keep`` scaled with the image."""
    if resize is not None:
        image, label, (row_scale, col_scale) = resize_shortest_edge(image, label, resize[0], resize[1], rng)
        if keep is not None:
            top, left, height, width = keep
            keep = (int(top * row_scale), int(left * col_scale), max(1, round(height * row_scale)), max(1, round(width * col_scale)))
    if crop:
        image, label = random_crop(image, label, crop, rng, keep)
    return image, label


def augment_frame(image, label, rng, *, crop=None, synthesizer=None, paste_probability: float = 1.0,
                  paste_before_crop: bool = False, crop_around_anomaly: bool = False, resize=None,
                  photometric: str | bool = "none") -> tuple[np.ndarray, np.ndarray]:
    """One training sample: horizontal flip (p = 0.5), multi-scale resize (``resize`` = (short
    sides, max size), detectron2's ``ResizeShortestEdge``) and random crop, pasted anomalies (with
    ``paste_probability``; on the full frame, before the resize and crop, when
    ``paste_before_crop``, so that placement sees the camera's whole view), colour augmentation
    (``photometric``: ``"jitter"``, ``"ssd"`` or ``"none"``). Draws from ``rng`` in that order.

    ``crop_around_anomaly`` (with ``paste_before_crop``): the crop holds one pasted object, drawn
    from those pasted, as RPL's crops always hold theirs (it pastes into the crop); a frame where
    nothing could be placed is cropped at random."""
    if rng.random() < 0.5:
        image, label = image[:, ::-1], label[:, ::-1]
    if not paste_before_crop:
        image, label = _scale_and_crop(image, label, rng, crop, resize)
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
    if paste_before_crop:
        image, label = _scale_and_crop(image, label, rng, crop, resize, keep)
    if photometric is True or photometric == "jitter":
        image = photometric_jitter(image, rng)
    elif photometric == "ssd":
        image = ssd_colour(image, draw_ssd_colour(rng))
    return np.ascontiguousarray(image), np.ascontiguousarray(label)


class CityscapesTraining(Dataset):
    """Cityscapes' ``train`` split as augmented samples; item ``(epoch, index)`` → (image uint8
    ``(3, H, W)``, train ids ``(H, W)`` int64 with ``ANOMALY_TRAIN_ID`` where objects were pasted)."""

    list_frames = staticmethod(list_cityscapes)
    read_frame = staticmethod(read_cityscapes_frame)

    def __init__(self, root, seed: int, *, split: str = "train", crop=None, synthesizer=None, paste_probability: float = 1.0,
                 paste_before_crop: bool = False, crop_around_anomaly: bool = False, resize=None, photometric: str = "none"):
        self.frames = self.list_frames(root, split)
        self.seed = seed
        self.options = {"crop": crop, "synthesizer": synthesizer, "paste_probability": paste_probability,
                        "paste_before_crop": paste_before_crop, "crop_around_anomaly": crop_around_anomaly,
                        "resize": resize, "photometric": photometric}

    def __len__(self) -> int:
        return len(self.frames)

    def __getitem__(self, item: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = item
        image, label = self.read_frame(self.frames[index])
        options = dict(self.options)
        if hasattr(options["synthesizer"], "for_epoch"):  # its objects may change with the epoch (RPL's COCO proxy set)
            options["synthesizer"] = options["synthesizer"].for_epoch(epoch)
        image, label = augment_frame(image, label, np.random.default_rng([self.seed, epoch, index]), **options)
        return torch.from_numpy(image).permute(2, 0, 1), torch.from_numpy(label.astype(np.int64))


class CamVidTraining(CityscapesTraining):
    """CamVid's ``train`` split (SegNet's layout) as augmented samples, labels in Cityscapes train
    ids: the items and options of :class:`CityscapesTraining`."""

    list_frames = staticmethod(list_camvid)
    read_frame = staticmethod(read_camvid_frame)


@dataclass(frozen=True)
class PseudoLabelledFrame:
    id: str
    image_path: Path
    label_path: Path


def list_pseudo_labelled(root, split: str = "train") -> list[PseudoLabelledFrame]:
    """The images of ``root.images`` that have a label of the same stem in ``root.labels`` (train ids
    written by :func:`diffeel.train.recipes.write_pseudo_labels`)."""
    frames = [PseudoLabelledFrame(path.stem, path, Path(root.labels) / f"{path.stem}.png") for path in image_files(root.images)]
    return [frame for frame in frames if frame.label_path.is_file()]


def read_pseudo_labelled(frame: PseudoLabelledFrame) -> tuple[np.ndarray, np.ndarray]:
    image, label = read_image(frame.image_path), read_label(frame.label_path)
    if image.shape[:2] != label.shape:
        raise DiffeelError(f"{frame.label_path} is not the size of {frame.image_path}; remove the pseudo_labels folder to redo it")
    return image, label


@dataclass(frozen=True)
class PseudoLabelledFolder:
    """Unlabelled road images and the folder of their host-predicted train ids."""

    images: Path
    labels: Path


class ImageFolderTraining(CityscapesTraining):
    """Any folder of road images as augmented samples, each with the frozen host's own prediction as
    its train ids (inlier classes for the consistency term, road for placement)."""

    list_frames = staticmethod(list_pseudo_labelled)
    read_frame = staticmethod(read_pseudo_labelled)


INLIER_DATASETS = {"cityscapes": CityscapesTraining, "camvid": CamVidTraining, "images": ImageFolderTraining}


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
