"""Anomaly synthesis for training: object source → mask extractor → placement → blender → Eq. 1.

The stages are separate so the paper's components plug in one at a time (``method.md``,
"Synthesized anomalous training data"):

1. object source, ``sample(rng) -> BankObject``: :class:`~diffeel.synth.bank.ObjectBank` here; a
   Stable Diffusion generator later.
2. mask extractor, ``extractor(rgb) -> bool mask``: optional; by default the object's own mask (the
   cut-out's alpha). U^2-Net or a GrabCut fallback later.
3. placement: :func:`~diffeel.synth.placement.find_placement` (drivable area, perspective size).
4. blender, ``blender(image, object_rgb, object_mask, placement) -> object_rgb``: returns the
   object's pixels to paste, already resized to the placement; :class:`IlluminationBlender`
   (Reinhard in Lab) here, DoveNet later (compose, harmonize, crop the box back out).
5. :func:`~diffeel.synth.compose.paste`, Eq. 1, always last, so the label map is exact whatever the
   blender did.
"""

from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Protocol

import cv2
import numpy as np

from ..errors import DiffeelError
from ..geometry import Camera
from .bank import BankObject, ObjectSource, tight_crop
from .compose import check_image, check_label, check_mask, paste
from .illumination import DEFAULT_STRENGTH, match_illumination, ring_window, to_lab
from .placement import DRIVABLE, MIN_HEIGHT_PX, OCCLUDERS, Placement, label_member, find_placement, footprint_columns

PLACEMENT_SEARCHES = ("first", "best")
APPEARANCE_SCALE = 100.0  # Lab distances in units of the L* range


def placement_scorer(train_ids: np.ndarray, image_lab: np.ndarray, object_lab_pixels: np.ndarray, drivable=DRIVABLE):
    """``score(placement)`` for the placement search: road support minus appearance distance.

    - road support: the share of drivable pixels in the band under the object's footprint (its
      middle columns, from the foot row down a quarter of the box height): an object well inside the
      road scores 1, one at a road edge less;
    - appearance distance: between the object's Lab mean and standard deviation and those of the ring
      around its box (the spec's illumination score), ``(|Δμ| + |Δσ|) / 100``: a place whose light
      and colour the object already shares needs less harmonization.

    Perspective height is not scored: :func:`~diffeel.synth.placement.find_placement` only offers
    boxes of the ground-plane height at their row.
    """
    object_mean, object_std = object_lab_pixels.mean(axis=0), object_lab_pixels.std(axis=0)
    rows = train_ids.shape[0]

    def score(placement: Placement) -> float:
        a, b = footprint_columns(placement.width)
        band = train_ids[placement.foot_row:min(rows, placement.foot_row + max(2, placement.height // 4)),
                         placement.left + a:placement.left + b]
        support = float(label_member(band, drivable).mean()) if band.size else 1.0
        window, ring = ring_window(train_ids.shape, placement)
        ring_lab = image_lab[window][ring].astype(np.float64)
        if not len(ring_lab):
            return support
        distance = np.linalg.norm(ring_lab.mean(axis=0) - object_mean) + np.linalg.norm(ring_lab.std(axis=0) - object_std)
        return support - float(distance) / APPEARANCE_SCALE

    return score


MaskExtractor = Callable[[np.ndarray], np.ndarray]


class Blender(Protocol):
    def __call__(self, image: np.ndarray, object_rgb: np.ndarray, object_mask: np.ndarray,
                 placement: Placement) -> np.ndarray: ...


@dataclass(frozen=True)
class IlluminationBlender:
    """Partial Reinhard colour transfer toward the ring around the box (:func:`match_illumination`)."""

    strength: float = DEFAULT_STRENGTH

    def __call__(self, image, object_rgb, object_mask, placement):
        return match_illumination(object_rgb, object_mask, image, placement, self.strength)


def keep_colours(image, object_rgb, object_mask, placement):
    """The identity blender: paste the object as it is."""
    return object_rgb


@dataclass(frozen=True)
class PastedObject:
    """What was pasted where: enough to reproduce or audit a synthesized frame."""

    kind: str
    source: str
    real_height: float
    placement: Placement


@dataclass
class SynthesisResult:
    image: np.ndarray
    labels: np.ndarray
    objects: list[PastedObject] = field(default_factory=list)


def resize_object(rgb: np.ndarray, mask: np.ndarray, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """An object resized to ``height × width``: colours with ``INTER_AREA``, the mask nearest-neighbour.

    Colours are averaged with the mask as weight (resize ``rgb·mask`` and ``mask``, divide), so the
    undefined pixels outside the mask (black in most RGBA files) do not darken the object's rim.
    """
    weight = mask.astype(np.float32)
    weighted = cv2.resize(rgb.astype(np.float32) * weight[..., None], (width, height), interpolation=cv2.INTER_AREA)
    coverage = cv2.resize(weight, (width, height), interpolation=cv2.INTER_AREA)
    plain = cv2.resize(rgb, (width, height), interpolation=cv2.INTER_AREA).astype(np.float32)
    weighted = weighted.reshape(height, width, 3)
    coverage = coverage.reshape(height, width, 1)
    colours = np.where(coverage > 1e-3, weighted / np.maximum(coverage, 1e-3), plain.reshape(height, width, 3))
    new_rgb = np.clip(np.rint(colours), 0, 255).astype(np.uint8)
    new_mask = cv2.resize(mask.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST).astype(bool)
    return new_rgb, new_mask.reshape(height, width)


def camera_for(camera: Camera | None, width: int, rows: int) -> Camera:
    """``camera`` with intrinsics rescaled to ``width × rows`` (the Cityscapes camera when None)."""
    if camera is None:
        return Camera.for_size(width, rows)
    if (camera.width, camera.rows) == (width, rows):
        return camera
    sx, sy = width / camera.width, rows / camera.rows
    return replace(camera, fx=camera.fx * sx, fy=camera.fy * sy, u0=camera.u0 * sx, v0=camera.v0 * sy,
                   width=width, rows=rows)


class Synthesizer(ABC):
    """Turns a clean training frame into one with pasted anomalies (label ``ANOMALY_TRAIN_ID``)."""

    def __call__(self, image, train_ids, rng) -> tuple[np.ndarray, np.ndarray]:
        result = self.synthesize(image, train_ids, rng)
        return result.image, result.labels

    @abstractmethod
    def synthesize(self, image, train_ids, rng) -> SynthesisResult:
        """Like calling the synthesizer, but also reports what was pasted where."""

    def for_epoch(self, epoch: int) -> "Synthesizer":
        """This synthesizer over its object source's objects of ``epoch``, for a source whose pool
        changes every epoch (one with ``for_epoch``, like RPL's COCO proxy set); itself otherwise."""
        source_for_epoch = getattr(getattr(self, "bank", None), "for_epoch", None)
        if source_for_epoch is None:
            return self
        view = copy.copy(self)
        view.bank = source_for_epoch(epoch)
        return view


class CopyPasteSynthesizer(Synthesizer):
    """Copy-paste synthesis (Eq. 1) of ``objects_per_image`` objects from an object source.

    ``objects_per_image`` is an int or an inclusive range ``(low, high)`` drawn per frame.
    ``camera`` defaults to the Cityscapes camera scaled to each image (a camera for another size is
    rescaled). ``harmonize``: True for :class:`IlluminationBlender`, False to paste as is, or any
    blender callable. ``extractor``: optional mask extractor replacing the source's masks.

    Objects that find no placement are skipped (a frame without road comes back unchanged).
    Placements are chosen on the original label map, then pasted far to near (foot row ascending),
    so a nearer object covers a farther one where they overlap. ``search``: ``"first"`` takes the
    first valid random candidate, ``"best"`` the best of them by :func:`placement_scorer`.
    """

    def __init__(self, bank: ObjectSource, objects_per_image: int | tuple[int, int] = 1, camera: Camera | None = None,
                 harmonize: bool | Blender = True, *, extractor: MaskExtractor | None = None, drivable=DRIVABLE,
                 avoid=OCCLUDERS, attempts: int = 50, min_height_px: int = MIN_HEIGHT_PX, search: str = "first"):
        if not callable(getattr(bank, "sample", None)):
            raise DiffeelError(f"the object source needs a sample(rng) method, got {type(bank).__name__}")
        low, high = (objects_per_image, objects_per_image) if np.isscalar(objects_per_image) else objects_per_image
        if int(low) != low or int(high) != high or not 0 <= low <= high:
            raise DiffeelError(f"objects_per_image must be a count or a range (low, high) with 0 <= low <= high, "
                               f"got {objects_per_image!r}")
        self.bank = bank
        self.count_range = (int(low), int(high))
        self.camera = camera
        if harmonize is True:
            self.blender: Blender = IlluminationBlender()
        elif harmonize is False or harmonize is None:
            self.blender = keep_colours
        elif callable(harmonize):
            self.blender = harmonize
        else:
            raise DiffeelError(f"harmonize must be True, False or a blender callable, got {harmonize!r}")
        self.extractor = extractor
        self.drivable = tuple(drivable)
        self.avoid = tuple(avoid)
        self.attempts = int(attempts)
        self.min_height_px = int(min_height_px)
        if search not in PLACEMENT_SEARCHES:
            raise DiffeelError(f"search must be one of {', '.join(PLACEMENT_SEARCHES)}, got {search!r}")
        self.search = search

    # stage 1 + 2: an object and its mask, cropped tightly
    def draw_object(self, rng: np.random.Generator) -> tuple[BankObject, np.ndarray, np.ndarray]:
        obj = self.bank.sample(rng)
        mask = obj.mask if self.extractor is None else check_mask(self.extractor(obj.rgb), obj.rgb.shape[:2],
                                                                  "extracted mask")
        if not mask.any():
            return obj, obj.rgb[:0, :0], mask[:0, :0]
        rgb, mask = tight_crop(obj.rgb, mask)
        return obj, rgb, mask

    # stage 3
    def place(self, train_ids, aspect: float, real_height: float, camera: Camera, rng, score=None) -> Placement | None:
        return find_placement(train_ids, aspect, real_height, camera, rng, self.drivable, self.attempts,
                              avoid=self.avoid, min_height_px=self.min_height_px, score=score)

    # stage 4
    def blend(self, image, object_rgb, object_mask, placement: Placement) -> np.ndarray:
        blended = check_image(self.blender(image, object_rgb, object_mask, placement), "blended object")
        if blended.shape != object_rgb.shape:
            raise DiffeelError(f"the blender returned shape {blended.shape} for an object of shape {object_rgb.shape}")
        return blended

    def synthesize(self, image, train_ids, rng) -> SynthesisResult:
        image = check_image(image)
        train_ids = check_label(train_ids, image.shape[:2], "train_ids")
        rng = np.random.default_rng(rng)
        rows, cols = train_ids.shape
        camera = camera_for(self.camera, cols, rows)

        low, high = self.count_range
        count = low if low == high else int(rng.integers(low, high + 1))
        image_lab = to_lab(image) if self.search == "best" and count else None
        planned = []
        for _ in range(count):
            obj, rgb, mask = self.draw_object(rng)
            if not mask.any():
                continue
            real_height = float(rng.uniform(*obj.height_range))
            aspect = mask.shape[1] / mask.shape[0]
            score = None
            if image_lab is not None:
                score = placement_scorer(train_ids, image_lab, to_lab(rgb)[mask], self.drivable)
            placement = self.place(train_ids, aspect, real_height, camera, rng, score)
            if placement is None:
                continue
            rgb, mask = resize_object(rgb, mask, placement.height, placement.width)
            if mask.any():
                planned.append((placement, rgb, mask, PastedObject(obj.kind, obj.source, real_height, placement)))

        planned.sort(key=lambda item: item[0].foot_row)  # far to near; stable for equal rows
        out_image, out_labels = image.copy(), train_ids.copy()
        for placement, rgb, mask, _ in planned:
            rgb = self.blend(out_image, rgb, mask, placement)
            out_image, out_labels = paste(out_image, out_labels, rgb, mask, (placement.top, placement.left))
        return SynthesisResult(out_image, out_labels, [item[3] for item in planned])


__all__ = [
    "Blender", "CopyPasteSynthesizer", "IlluminationBlender", "MaskExtractor", "PastedObject", "placement_scorer",
    "SynthesisResult", "Synthesizer", "camera_for", "keep_colours", "resize_object",
]
