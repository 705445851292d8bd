"""Harmonization blenders: DoveNet around the placement box, Poisson blending, and a chain of stages.

Every class here is a blender (``blender(image, object_rgb, object_mask, placement) -> object_rgb``,
see :mod:`diffeel.synth.synthesizer`): it returns new colours for the object's pixels in the
placement box and never touches the label map. Eq. 1 (:func:`~diffeel.synth.compose.paste`) runs
after it and pastes exactly the mask's pixels, so the labels are those of a plain copy-paste whatever
a blender does. Pixels outside the mask are returned unchanged (they are not pasted anyway).

:class:`DoveNetBlender`, per object:

1. a context window around the box: a square of ``context`` (2) × the box's longer side, centred on
   the box, shifted to stay inside the image and clipped to it where the image is smaller;
2. the composite in that window (the scene with the object's mask pixels pasted) and the mask;
3. both squashed to 256×256 as the official test does (``PIL`` bilinear for the composite, nearest
   for the mask, so it stays in {0, 1}); the composite scaled to [-1, 1];
4. the generator in eval mode under ``torch.inference_mode`` on ``device``, its output composed
   through the mask, ``out·mask + comp·(1 - mask)`` (the official forward does not compose);
5. back to the window's size: with ``keep_detail`` (default) the generator's *change*
   (composed − composite at 256×256) is resized and added to the full-resolution composite, so
   texture finer than the 256 grid survives; without it the composed 256×256 image itself is
   resized back (blurred where the window was larger than 256);
6. the box's mask pixels, moved ``strength`` of the way from the object's colours to those.

Optionally (``poisson=True``) :func:`poisson_blend` then clones the result into the scene.

:class:`ChainBlender` runs stages in order, skipping those given as None; :func:`make_blender`
builds the documented order, illumination (Reinhard in Lab) → DoveNet → Poisson, with every
stage switchable (``make_blender(illumination=False, dovenet=None)`` is the ablation
"w/o harmonization").
"""

from __future__ import annotations

import os
from collections.abc import Callable

import cv2
import numpy as np
import torch
from PIL import Image

from ..errors import DiffeelError
from ..models.dovenet import INPUT_SIZE, compose, load_dovenet
from .compose import check_image, check_mask
from .placement import Placement
from .synthesizer import Blender, IlluminationBlender

DEFAULT_CONTEXT = 2.0
POISSON_MARGIN = 2  # pixels of scene kept around the box for the Poisson boundary


def _check_box(object_rgb, object_mask, placement: Placement) -> tuple[np.ndarray, np.ndarray]:
    object_rgb = check_image(object_rgb, "object_rgb")
    object_mask = check_mask(object_mask, object_rgb.shape[:2])
    if object_rgb.shape[:2] != (placement.height, placement.width):
        raise DiffeelError(f"the object is {object_rgb.shape[1]}×{object_rgb.shape[0]} but the placement is "
                           f"{placement.width}×{placement.height}")
    return object_rgb, object_mask


def visible_box(shape: tuple[int, int], placement: Placement) -> tuple[slice, slice, slice, slice] | None:
    """The part of the placement box inside an image of ``shape``: (image rows, image cols, object
    rows, object cols) slices, or None when the box lies entirely outside."""
    rows, cols = shape
    r0, r1 = max(placement.top, 0), min(placement.bottom, rows)
    c0, c1 = max(placement.left, 0), min(placement.right, cols)
    if r0 >= r1 or c0 >= c1:
        return None
    return (slice(r0, r1), slice(c0, c1), slice(r0 - placement.top, r1 - placement.top),
            slice(c0 - placement.left, c1 - placement.left))


def context_window(shape: tuple[int, int], placement: Placement, context: float = DEFAULT_CONTEXT) -> tuple[slice, slice]:
    """A window of the image around the placement box: a square ``context`` × the box's longer side,
    centred on the box, shifted to stay inside the image, clipped where the image is smaller; it
    always holds the visible part of the box."""
    rows, cols = shape
    side = max(placement.height, placement.width)
    size = max(side, int(round(context * side)))

    def span(start: int, length: int, limit: int) -> tuple[int, int]:
        low = int(round(start + length / 2 - size / 2))
        low = min(max(low, 0), max(limit - size, 0))
        high = min(low + size, limit)
        return min(low, max(start, 0)), max(high, min(start + length, limit))

    r0, r1 = span(placement.top, placement.height, rows)
    c0, c1 = span(placement.left, placement.width, cols)
    return slice(r0, r1), slice(c0, c1)


def _resize_float(array: np.ndarray, width: int, height: int) -> np.ndarray:
    """A float (h, w, 3) array resized: bilinear when enlarging, area averaging when shrinking."""
    shrinking = width * height < array.shape[0] * array.shape[1]
    interpolation = cv2.INTER_AREA if shrinking else cv2.INTER_LINEAR
    return cv2.resize(array, (width, height), interpolation=interpolation).reshape(height, width, -1)


def _device(device) -> torch.device:
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as error:
        raise DiffeelError(f"unknown device {device!r} ({error})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DiffeelError(f"device {device} was requested but CUDA is not available")
    return device


def poisson_blend(image, object_rgb, object_mask, placement: Placement, *, mixed: bool = False) -> np.ndarray:
    """The object's mask pixels after Poisson cloning it into the scene (``cv2.seamlessClone``,
    ``NORMAL_CLONE``, or ``MIXED_CLONE`` with ``mixed``): the object keeps its gradients and meets
    the scene's colours at the mask's boundary.

    OpenCV refuses masks that reach the border of the destination, so the box is cloned into a
    crop of the scene with ``POISSON_MARGIN`` pixels around it, padded by edge replication where the
    box touches or overhangs the image border. Should OpenCV still fail, the object is returned
    unchanged. Pixels outside the mask are returned unchanged.
    """
    image = check_image(image)
    object_rgb, object_mask = _check_box(object_rgb, object_mask, placement)
    result = object_rgb.copy()
    box = visible_box(image.shape[:2], placement)
    if box is None:
        return result
    rows, cols, obj_rows, obj_cols = box
    visible = object_mask[obj_rows, obj_cols]
    if not visible.any():
        return result
    m = POISSON_MARGIN
    r0, r1 = max(rows.start - m, 0), min(rows.stop + m, image.shape[0])
    c0, c1 = max(cols.start - m, 0), min(cols.stop + m, image.shape[1])
    pads = (m - (rows.start - r0), m - (r1 - rows.stop), m - (cols.start - c0), m - (c1 - cols.stop))
    dst = cv2.copyMakeBorder(np.ascontiguousarray(image[r0:r1, c0:c1]), *pads, cv2.BORDER_REPLICATE)
    inner = np.s_[m:m + visible.shape[0], m:m + visible.shape[1]]
    src = dst.copy()
    src[inner][visible] = object_rgb[obj_rows, obj_cols][visible]
    mask = np.zeros(dst.shape[:2], np.uint8)
    mask[inner][visible] = 255
    x, y, w, h = cv2.boundingRect(mask)
    center = (x + w // 2, y + h // 2)  # OpenCV places the mask's bounding box here: same spot as in src
    try:
        cloned = cv2.seamlessClone(src, dst, mask, center, cv2.MIXED_CLONE if mixed else cv2.NORMAL_CLONE)
    except cv2.error:
        return result
    result[obj_rows, obj_cols][visible] = cloned[inner][visible]
    return result


class PoissonBlender:
    """:func:`poisson_blend` as a blender stage; ``enabled=False`` returns the object unchanged."""

    def __init__(self, enabled: bool = True, *, mixed: bool = False):
        self.enabled = bool(enabled)
        self.mixed = bool(mixed)

    def __call__(self, image, object_rgb, object_mask, placement):
        if not self.enabled:
            return _check_box(object_rgb, object_mask, placement)[0].copy()
        return poisson_blend(image, object_rgb, object_mask, placement, mixed=self.mixed)

    def __repr__(self) -> str:
        return f"PoissonBlender(enabled={self.enabled}, mixed={self.mixed})"


class DoveNetBlender:
    """DoveNet harmonization of the pasted object (the module docstring lists the steps).

    ``generator``: a :class:`~diffeel.models.dovenet.DoveNetGenerator` (or any module with the same
    ``(comp, mask) -> output`` call), or None to load ``checkpoint`` (the released
    ``latest_net_G.pth``) with ``ngf`` (64). The generator is moved to ``device`` and put in eval
    mode (running batch-norm statistics, no dropout: deterministic, unlike the official test script,
    which runs it in train mode).

    ``strength`` in [0, 1] moves the object's pixels that share of the way to DoveNet's (1 = all);
    ``enabled=False`` or ``strength=0`` returns the object unchanged (no generator call).
    ``context`` (≥ 1) is the window side as a multiple of the box's longer side. ``keep_detail``:
    add DoveNet's resized change to the full-resolution object (default) instead of replacing the
    object by the resized 256×256 result. ``poisson=True`` finishes with :func:`poisson_blend`.
    """

    def __init__(self, generator: Callable | None = None, *, checkpoint: str | os.PathLike | None = None, ngf: int = 64,
                 device="cpu", strength: float = 1.0, enabled: bool = True, context: float = DEFAULT_CONTEXT,
                 keep_detail: bool = True, poisson: bool = False, allow_pickle: bool = False):
        if not 0.0 <= strength <= 1.0:
            raise DiffeelError(f"strength must be between 0 and 1, got {strength}")
        if not context >= 1.0:
            raise DiffeelError(f"context must be at least 1 (the window holds the box), got {context}")
        self.device = _device(device)
        if generator is None:
            if checkpoint is None:
                raise DiffeelError("DoveNetBlender needs a generator or a checkpoint (e.g. DoveNet's latest_net_G.pth)")
            generator = load_dovenet(checkpoint, ngf=ngf, device=self.device, allow_pickle=allow_pickle)
        elif checkpoint is not None:
            raise DiffeelError("give DoveNetBlender either a generator or a checkpoint, not both")
        if not callable(generator):
            raise DiffeelError(f"the DoveNet generator must be callable, got {type(generator).__name__}")
        if isinstance(generator, torch.nn.Module):
            generator = generator.to(self.device).eval()
        self.generator = generator
        self.strength = float(strength)
        self.enabled = bool(enabled)
        self.context = float(context)
        self.keep_detail = bool(keep_detail)
        self.poisson = bool(poisson)

    def __repr__(self) -> str:
        return (f"DoveNetBlender({type(self.generator).__name__}, device={str(self.device)!r}, strength={self.strength}, "
                f"enabled={self.enabled}, context={self.context}, keep_detail={self.keep_detail}, poisson={self.poisson})")

    def harmonize_window(self, comp: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """A composite window ``(h, w, 3)`` uint8 and its mask ``(h, w)`` bool → the harmonized window,
        float32 RGB in 0..255 at ``(h, w)`` (equal to ``comp`` outside the mask, up to the resize)."""
        height, width = mask.shape
        square = (INPUT_SIZE, INPUT_SIZE)
        comp_small = np.array(Image.fromarray(comp).resize(square, Image.BILINEAR))
        mask_small = np.array(Image.fromarray(mask.astype(np.uint8) * 255).resize(square, Image.NEAREST)) > 127
        comp_t = torch.from_numpy(comp_small).permute(2, 0, 1)[None].float()
        comp_t = comp_t.div(255).sub(0.5).div(0.5)  # the official ToTensor + Normalize((0.5,) * 3, (0.5,) * 3)
        mask_t = torch.from_numpy(mask_small)[None, None].float()
        if isinstance(self.generator, torch.nn.Module):
            self.generator.eval()
        with torch.inference_mode():
            comp_t, mask_t = comp_t.to(self.device), mask_t.to(self.device)
            composed = compose(self.generator(comp_t, mask_t), comp_t, mask_t)
            composed = composed[0].float().add(1).mul(255 / 2).clamp(0, 255).permute(1, 2, 0).cpu().numpy()
        if self.keep_detail:
            change = composed - comp_small.astype(np.float32)
            return comp.astype(np.float32) + _resize_float(change, width, height)
        return _resize_float(composed, width, height)

    def __call__(self, image, object_rgb, object_mask, placement):
        image = check_image(image)
        object_rgb, object_mask = _check_box(object_rgb, object_mask, placement)
        result = object_rgb.copy()
        box = visible_box(image.shape[:2], placement) if self.enabled and self.strength > 0 else None
        if box is not None and object_mask[box[2], box[3]].any():
            rows, cols, obj_rows, obj_cols = box
            visible = object_mask[obj_rows, obj_cols]
            win_rows, win_cols = context_window(image.shape[:2], placement, self.context)
            comp = image[win_rows, win_cols].copy()
            mask = np.zeros(comp.shape[:2], bool)
            inner = np.s_[rows.start - win_rows.start:rows.stop - win_rows.start,
                          cols.start - win_cols.start:cols.stop - win_cols.start]
            comp[inner][visible] = object_rgb[obj_rows, obj_cols][visible]
            mask[inner] = visible
            harmonized = self.harmonize_window(comp, mask)[inner][visible]
            original = object_rgb[obj_rows, obj_cols][visible].astype(np.float32)
            moved = original + self.strength * (harmonized - original)
            result[obj_rows, obj_cols][visible] = np.clip(np.rint(moved), 0, 255).astype(np.uint8)
        if self.poisson and self.enabled:
            result = poisson_blend(image, result, object_mask, placement)
        return result


class ChainBlender:
    """Blender stages run in order, each on the previous stage's object colours; stages given as
    None are skipped (an empty chain pastes the object as it is)."""

    def __init__(self, *stages: Blender | None):
        for stage in stages:
            if stage is not None and not callable(stage):
                raise DiffeelError(f"every blender stage must be callable, got {type(stage).__name__}")
        self.stages = tuple(stage for stage in stages if stage is not None)

    def __call__(self, image, object_rgb, object_mask, placement):
        for stage in self.stages:
            blended = check_image(stage(image, object_rgb, object_mask, placement), "blended object")
            if blended.shape != object_rgb.shape:
                raise DiffeelError(f"blender stage {type(stage).__name__} returned shape {blended.shape} "
                                   f"for an object of shape {object_rgb.shape}")
            object_rgb = blended
        return object_rgb

    def __repr__(self) -> str:
        return f"ChainBlender({', '.join(map(repr, self.stages))})"


def make_blender(*, illumination: bool | float = True, dovenet=None, poisson: bool = False, device="cpu",
                 ngf: int = 64, strength: float = 1.0) -> ChainBlender:
    """The harmonization chain in its documented order: illumination → DoveNet → Poisson.

    ``illumination``: True (Reinhard in Lab at the default strength), a strength in [0, 1], or False.
    ``dovenet``: None/False (off), a checkpoint path, a generator module, or a ready
    :class:`DoveNetBlender`; ``device``, ``ngf`` and ``strength`` apply to the first two.
    ``poisson``: finish with :class:`PoissonBlender`.
    """
    stages: list[Blender | None] = []
    if illumination is True:
        stages.append(IlluminationBlender())
    elif illumination is not False and illumination is not None:
        stages.append(IlluminationBlender(float(illumination)))
    if isinstance(dovenet, DoveNetBlender):
        stages.append(dovenet)
    elif isinstance(dovenet, (str, os.PathLike)):
        stages.append(DoveNetBlender(checkpoint=dovenet, ngf=ngf, device=device, strength=strength))
    elif dovenet is not None and dovenet is not False:
        stages.append(DoveNetBlender(dovenet, device=device, strength=strength))
    if poisson:
        stages.append(PoissonBlender())
    return ChainBlender(*stages)


def harmonize(image, object_rgb, object_mask, placement: Placement, generator=None, *,
              checkpoint: str | os.PathLike | None = None, **options) -> np.ndarray:
    """One-off DoveNet harmonization: ``DoveNetBlender(generator, checkpoint=..., **options)``
    applied once. For many objects build the blender once (loading the checkpoint is the slow part)."""
    return DoveNetBlender(generator, checkpoint=checkpoint, **options)(image, object_rgb, object_mask, placement)


__all__ = [
    "ChainBlender", "DoveNetBlender", "PoissonBlender", "context_window", "harmonize", "make_blender",
    "poisson_blend", "visible_box",
]
