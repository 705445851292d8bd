"""Cutting a generated object out of its image: U²-Net saliency, or GrabCut without weights.

    >>> extractor = SalientExtractor(U2NET().eval())   # weights loaded with load_strict
    >>> result = extractor.extract(rgb)                # ExtractionResult(mask, reason, probability)
    >>> result.reason                                  # None (accepted), "empty", "border" or "too_small"

U²-Net pre- and postprocessing follow the official test script (``u2net_test.py`` and
``data_loader.py`` of xuebinqin/U-2-Net, which pins scikit-image 0.14 and reads images with
``skimage.io``):

- ``RescaleT(320)``: ``skimage.transform.resize(image, (320, 320), mode='constant')``: the image is
  squashed (aspect ratio not kept) to 320×320; uint8 becomes float64 in 0..1 (``x * (1/255)``);
  bilinear sampling at pixel centres (source coordinate ``(i + 0.5) · in/out − 0.5``) with no
  anti-aliasing (scikit-image 0.14 defaulted ``anti_aliasing`` to False); taps outside the image read
  0 (``mode='constant'``, ``cval=0``), which darkens the outer row or column when a side is
  *enlarged*; the result is clipped to the input's range, pixels exactly 0 kept when the input's
  minimum is above 0. :func:`u2net_preprocess` reproduces every step in float64.
- ``ToTensorLab(flag=0)``: divide by the resized image's own maximum (not by 255), then per channel
  ``(x - mean) / std`` with ImageNet's mean (0.485, 0.456, 0.406) and std (0.229, 0.224, 0.225);
  the float64 tensor is cast to float32 for the network.
- output: the first (fused) of the seven maps, min-max normalised over the 320×320 map
  (``normPRED``), times 255 as a Pillow ``F`` image converted to RGB (values truncated to 8 bits),
  resized to the original size with Pillow's ``BILINEAR`` (which filters when shrinking).
  :func:`u2net_postprocess` runs these same Pillow calls and returns the 8-bit values / 255.

Departures, both for degenerate input only: an all-black image is not divided by its maximum 0
(the official script produces NaN), and a constant fused map gives an all-zero probability (the
official min-max divides 0 by 0).

The mask is then cleaned (:func:`clean_mask`: threshold, largest 8-connected component, holes
filled) and judged (:func:`rejection_reason`). A rejected object is reported with its reason,
never dropped silently: :meth:`SalientExtractor.extract` returns it and the bank builder records it.
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import nn

from ..errors import DiffeelError
from .compose import check_image

U2NET_SIZE = 320
U2NET_MEAN = (0.485, 0.456, 0.406)
U2NET_STD = (0.229, 0.224, 0.225)
REJECTION_REASONS = ("empty", "border", "too_small")
DEFAULT_THRESHOLD = 0.5  # probability > 0.5 ⇔ 8-bit value > 127, the bank's alpha threshold
DEFAULT_MIN_AREA = 16  # pixels: a largest component below this is speckle, the mask is empty
DEFAULT_MIN_AREA_SHARE = 0.01  # the object must cover at least 1 % of its image
DEFAULT_BORDER_MARGIN = 2  # pixels: an object reaching the two outermost rows/columns is cut
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


def _check_rgb(rgb, name: str = "image") -> np.ndarray:
    rgb = check_image(rgb, name)
    if rgb.shape[0] == 0 or rgb.shape[1] == 0:
        raise DiffeelError(f"{name} is empty (shape {rgb.shape})")
    return rgb


def _interpolation_taps(length: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """For ``size`` output samples over ``length`` input samples: the lower tap index and the weight
    of the upper tap, at pixel centres (``(i + 0.5) · length / size − 0.5``)."""
    coordinates = (np.arange(size, dtype=np.float64) + 0.5) * (length / size) - 0.5
    lower = np.floor(coordinates)
    return lower.astype(np.intp), coordinates - lower


def _gather(image: np.ndarray, index: np.ndarray, axis: int) -> np.ndarray:
    """``image`` taken at ``index`` along ``axis``, 0 where the index falls outside the image."""
    inside = (index >= 0) & (index < image.shape[axis])
    taken = np.take(image, np.clip(index, 0, image.shape[axis] - 1), axis=axis)
    shape = [1] * image.ndim
    shape[axis] = index.size
    return taken * inside.reshape(shape)


def squash_resize(rgb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``skimage.transform.resize(rgb, size, mode='constant')`` of scikit-image 0.14 (order 1, no
    anti-aliasing, clip): ``(H, W, C)`` uint8 → ``(rows, cols, C)`` float64 in 0..1.

    Each output pixel is scikit-image's bilinear sum: the two column taps of the upper and of the
    lower row, then the two rows (same operation order, so the float64 values agree to rounding).
    Only the rows that are read are converted to float.
    """
    rows, cols = size
    row_low, row_weight = _interpolation_taps(rgb.shape[0], rows)
    col_low, col_weight = _interpolation_taps(rgb.shape[1], cols)

    def along_columns(row_index: np.ndarray) -> np.ndarray:
        lines = _gather(rgb, row_index, 0).astype(np.float64) * (1.0 / 255)  # img_as_float of uint8
        weight = col_weight[None, :, None]
        return (1 - weight) * _gather(lines, col_low, 1) + weight * _gather(lines, col_low + 1, 1)

    weight = row_weight[:, None, None]
    out = (1 - weight) * along_columns(row_low) + weight * along_columns(row_low + 1)
    low, high = rgb.min() * (1.0 / 255), rgb.max() * (1.0 / 255)
    if low > 0:  # cval 0 lies outside the input's range: scikit-image keeps exact zeros
        zeros = out == 0
        np.clip(out, low, high, out=out)
        out[zeros] = 0
    else:
        np.clip(out, low, high, out=out)
    return out


def u2net_preprocess(rgb: np.ndarray) -> torch.Tensor:
    """An ``(H, W, 3)`` uint8 RGB image → the network input ``(1, 3, 320, 320)`` float32, as the
    official test does: squash to 320×320, divide by the image's maximum, ImageNet mean / std."""
    rgb = _check_rgb(rgb)
    image = squash_resize(rgb, (U2NET_SIZE, U2NET_SIZE))
    peak = np.max(image)
    if peak > 0:  # the official script divides by 0 (NaN) for an all-black image
        image = image / peak
    normalised = (image - np.asarray(U2NET_MEAN)) / np.asarray(U2NET_STD)
    return torch.from_numpy(np.ascontiguousarray(normalised.transpose(2, 0, 1))).float()[None]


def u2net_postprocess(fused, size: tuple[int, int]) -> np.ndarray:
    """The fused map of one image (``(1, 1, h, w)``, any shape with h·w values in a single plane) →
    a float32 probability ``(height, width)`` = ``size`` in [0, 1], as the official test writes
    its PNG: min-max normalised, truncated to 8 bits, Pillow bilinear to the original size, / 255."""
    if not isinstance(fused, torch.Tensor):
        fused = torch.as_tensor(np.asarray(fused))
    plane = fused.detach().to("cpu", torch.float32)
    while plane.ndim > 2 and plane.shape[0] == 1:
        plane = plane[0]
    if plane.ndim != 2 or plane.numel() == 0:
        raise DiffeelError(f"the fused map must hold one (h, w) plane, got shape {list(fused.shape)}")
    try:
        height, width = (int(v) for v in size)
    except (TypeError, ValueError):
        raise DiffeelError(f"size must be (height, width), got {size!r}") from None
    if height < 1 or width < 1:
        raise DiffeelError(f"size must be positive, got {size!r}")
    if not torch.isfinite(plane).all():
        raise DiffeelError("the fused map holds NaN or infinite values")
    low, high = plane.min(), plane.max()
    if not high > low:  # a constant map: the official min-max divides 0 by 0
        return np.zeros((height, width), dtype=np.float32)
    normalised = ((plane - low) / (high - low)).numpy()
    eight_bit = Image.fromarray(normalised * 255).convert("RGB").resize((width, height), resample=Image.BILINEAR)
    return np.asarray(eight_bit)[..., 0].astype(np.float32) / 255


def clean_mask(probability: np.ndarray, threshold: float = DEFAULT_THRESHOLD, min_area: int = DEFAULT_MIN_AREA) -> np.ndarray:
    """``probability > threshold``, reduced to its largest 8-connected component with the holes
    filled, as a bool mask. A largest component of fewer than ``min_area`` pixels leaves the mask
    empty (all False)."""
    probability = np.asarray(probability)
    if probability.ndim != 2 or probability.dtype.kind not in "fiub":
        raise DiffeelError(f"the probability map must be a 2-D numeric array, got shape {probability.shape} "
                           f"and dtype {probability.dtype}")
    if probability.dtype.kind == "f" and not np.isfinite(probability).all():
        raise DiffeelError("the probability map holds NaN or infinite values")
    foreground = probability > threshold
    labels, count = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    if count == 0:
        return np.zeros(probability.shape, dtype=bool)
    areas = np.bincount(labels.ravel(), minlength=count + 1)
    areas[0] = 0
    largest = int(np.argmax(areas))
    if areas[largest] < min_area:
        return np.zeros(probability.shape, dtype=bool)
    return ndimage.binary_fill_holes(labels == largest)


def rejection_reason(mask: np.ndarray, *, min_area_share: float = DEFAULT_MIN_AREA_SHARE,
                     border_margin: int = DEFAULT_BORDER_MARGIN) -> str | None:
    """Why a cleaned mask is not a usable object, or None when it is.

    - ``"empty"``: nothing survived the thresholding;
    - ``"border"``: the object is cut by the image border: a mask pixel lies in the outer
      ``border_margin`` rows or columns (0 turns this check off, e.g. for tightly cropped objects);
    - ``"too_small"``: the mask covers less than ``min_area_share`` of the image.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2 or mask.dtype != bool:
        raise DiffeelError(f"the mask must be a 2-D bool array, got shape {mask.shape} and dtype {mask.dtype}")
    if not mask.any():
        return "empty"
    m = border_margin
    if m > 0 and (mask[:m].any() or mask[-m:].any() or mask[:, :m].any() or mask[:, -m:].any()):
        return "border"
    if mask.mean() < min_area_share:
        return "too_small"
    return None


def grabcut_mask(rgb: np.ndarray, *, iterations: int = 5, border: int | None = None, max_side: int = 400,
                 min_area: int = DEFAULT_MIN_AREA, seed: int = 0) -> np.ndarray:
    """The object of ``rgb`` without learned weights: GrabCut from a border-colour background model.

    The background model: the colours (CIE Lab) of a strip of ``border`` pixels around the image
    (default 5 % of the shorter side, at least 1) clustered by k-means (4 clusters); clusters holding
    at least 10 % of the strip are background colours, with a tolerance of 1.5 × the 90th percentile
    of their members' distances (at least 12). GrabCut starts from a mask: pixels within tolerance
    of a background colour are background (definitely so on the strip, probably inside), every other
    pixel - on the strip too, so that an object cut by the border stays visible to the rejection
    check - probably foreground. The result is cleaned as :func:`clean_mask` does. Images are worked
    on at most ``max_side`` pixels on their longer side and the mask is resized back. ``seed`` seeds
    OpenCV's random generator of the calling thread (k-means, GrabCut's GMM initialisation).
    """
    rgb = _check_rgb(rgb)
    height, width = rgb.shape[:2]
    scale = min(1.0, max_side / max(height, width))
    work = rgb if scale == 1.0 else cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                                               interpolation=cv2.INTER_AREA)
    rows, cols = work.shape[:2]
    strip_width = border if border is not None else max(1, round(0.05 * min(rows, cols)))
    empty = np.zeros((height, width), dtype=bool)
    if min(rows, cols) <= 2 * strip_width:
        return empty
    strip = np.zeros((rows, cols), dtype=bool)
    strip[:strip_width], strip[-strip_width:], strip[:, :strip_width], strip[:, -strip_width:] = True, True, True, True

    lab = cv2.cvtColor(work, cv2.COLOR_RGB2LAB).astype(np.float32)
    samples = lab[strip]
    cv2.setRNGSeed(seed)
    clusters = min(4, len(samples))
    criteria = (cv2.TERM_CRITERIA_EPS + cv2.TERM_CRITERIA_MAX_ITER, 20, 0.5)
    _, assignment, centres = cv2.kmeans(samples, clusters, None, criteria, 3, cv2.KMEANS_PP_CENTERS)
    assignment = assignment.ravel()
    shares = np.bincount(assignment, minlength=clusters) / len(samples)
    background = centres[shares >= 0.1]
    member_distance = np.linalg.norm(samples - centres[assignment], axis=1)[np.isin(assignment, np.nonzero(shares >= 0.1)[0])]
    tolerance = max(12.0, 1.5 * float(np.percentile(member_distance, 90)))
    distance = np.min(np.linalg.norm(lab[:, :, None, :] - background[None, None], axis=3), axis=2)
    like_background = distance <= tolerance

    init = np.full((rows, cols), cv2.GC_PR_FGD, dtype=np.uint8)
    init[like_background] = cv2.GC_PR_BGD
    init[like_background & strip] = cv2.GC_BGD
    if not (init == cv2.GC_PR_FGD).any() or (init == cv2.GC_PR_FGD).all():
        return empty
    background_model, foreground_model = np.zeros((1, 65), np.float64), np.zeros((1, 65), np.float64)
    cv2.grabCut(cv2.cvtColor(work, cv2.COLOR_RGB2BGR), init, None, background_model, foreground_model,
                iterations, cv2.GC_INIT_WITH_MASK)
    foreground = ((init == cv2.GC_FGD) | (init == cv2.GC_PR_FGD)).astype(np.float32)
    if scale != 1.0:
        foreground = cv2.resize(foreground, (width, height), interpolation=cv2.INTER_LINEAR)
    return clean_mask(foreground, 0.5, min_area)


@dataclass(frozen=True, eq=False)
class ExtractionResult:
    """One image's cut-out: ``mask`` (bool, the image's size; None when nothing survived),
    ``reason`` (None when accepted, else one of :data:`REJECTION_REASONS`), ``probability``
    (U²-Net's float map at the image's size in [0, 1]; None with GrabCut). A rejected result keeps
    its mask for inspection: use the mask only when ``reason`` is None."""

    mask: np.ndarray | None
    reason: str | None
    probability: np.ndarray | None = None

    @property
    def accepted(self) -> bool:
        return self.reason is None


def _fused_map(output) -> torch.Tensor:
    """The fused map of a U²-Net output: the first of the tuple (or the tensor itself)."""
    if isinstance(output, (tuple, list)) and output:
        output = output[0]
    if not isinstance(output, torch.Tensor) or output.ndim != 4 or output.shape[1] != 1:
        shape = f" of shape {list(output.shape)}" if isinstance(output, torch.Tensor) else ""
        raise DiffeelError(f"the saliency model returned {type(output).__name__}{shape}; "
                           "expected (N, 1, H, W) maps, or a tuple whose first item is the fused map")
    return output


class SalientExtractor:
    """Object masks from generated images, with U²-Net (``model``) or, without weights, GrabCut.

    ``model``: an ``nn.Module`` taking :func:`u2net_preprocess`'s input and returning the fused
    map first (:class:`~diffeel.models.u2net.U2NET` / ``U2NETP``; moved to ``device`` and put in
    eval mode), or None for :func:`grabcut_mask`.
    The probability is thresholded at ``threshold`` and cleaned (:func:`clean_mask`); the result is
    rejected (:func:`rejection_reason`) when empty, cut by the border (within ``border_margin``
    pixels; 0 disables) or smaller than ``min_area_share`` of the image.

    Called as a function (the synthesizer's mask extractor) it returns the bool mask and raises
    :class:`DiffeelError` naming the reason when the object is rejected.
    """

    def __init__(self, model: nn.Module | None = None, device="cpu", threshold: float = DEFAULT_THRESHOLD,
                 min_area_share: float = DEFAULT_MIN_AREA_SHARE, border_margin: int = DEFAULT_BORDER_MARGIN,
                 min_area: int = DEFAULT_MIN_AREA, batch_size: int = 8):
        if model is not None and not isinstance(model, nn.Module):
            raise DiffeelError(f"the saliency model must be a torch.nn.Module or None (GrabCut), got {type(model).__name__}")
        if not isinstance(threshold, numbers.Real) or not 0 <= threshold < 1:
            raise DiffeelError(f"threshold must be a probability in [0, 1), got {threshold!r}")
        if not isinstance(min_area_share, numbers.Real) or not 0 <= min_area_share < 1:
            raise DiffeelError(f"min_area_share must be in [0, 1), got {min_area_share!r}")
        for name, value, lowest in (("border_margin", border_margin, 0), ("min_area", min_area, 1), ("batch_size", batch_size, 1)):
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < lowest:
                raise DiffeelError(f"{name} must be a whole number of at least {lowest}, got {value!r}")
        try:
            self.device = torch.device(device)
        except (RuntimeError, TypeError):
            raise DiffeelError(f"device {device!r} is not a torch device") from None
        self.model = None if model is None else model.to(self.device).eval()
        self.threshold = float(threshold)
        self.min_area_share = float(min_area_share)
        self.border_margin = int(border_margin)
        self.min_area = int(min_area)
        self.batch_size = int(batch_size)

    @property
    def method(self) -> str:
        return "grabcut" if self.model is None else "u2net"

    def _judge(self, mask: np.ndarray, probability: np.ndarray | None) -> ExtractionResult:
        reason = rejection_reason(mask, min_area_share=self.min_area_share, border_margin=self.border_margin)
        return ExtractionResult(None if reason == "empty" else mask, reason, probability)

    def extract(self, rgb: np.ndarray) -> ExtractionResult:
        """The object of one ``(H, W, 3)`` uint8 image (see :class:`ExtractionResult`)."""
        return self.extract_many([rgb])[0]

    def extract_many(self, images: Sequence[np.ndarray]) -> list[ExtractionResult]:
        """:meth:`extract` for each image, U²-Net running on batches of ``batch_size`` images."""
        images = [_check_rgb(image, f"image {index}") for index, image in enumerate(images)]
        if self.model is None:
            return [self._judge(grabcut_mask(image, min_area=self.min_area), None) for image in images]
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start:start + self.batch_size]
            batch = torch.cat([u2net_preprocess(image) for image in chunk]).to(self.device)
            with torch.inference_mode():
                fused = _fused_map(self.model(batch))
            if fused.shape[0] != len(chunk):
                raise DiffeelError(f"the saliency model returned {fused.shape[0]} maps for {len(chunk)} images")
            for index, image in enumerate(chunk):
                probability = u2net_postprocess(fused[index:index + 1], image.shape[:2])
                results.append(self._judge(clean_mask(probability, self.threshold, self.min_area), probability))
        return results

    def __call__(self, rgb: np.ndarray) -> np.ndarray:
        """The bool object mask of ``rgb``; :class:`DiffeelError` when the object is rejected."""
        result = self.extract(rgb)
        if result.reason is not None:
            raise DiffeelError(f"the salient object extractor ({self.method}) rejected the object: {result.reason}")
        return result.mask


def make_extractor(kind: str, weights=None, device="cpu", **options) -> SalientExtractor:
    """The extractor ``kind`` (``u2net``, ``u2netp`` or ``grabcut``); U²-Net needs its released weights."""
    if kind == "grabcut":
        if weights is not None:
            raise DiffeelError("the grabcut extractor takes no weights; drop --extractor-weights or choose u2net / u2netp")
        return SalientExtractor(None, device=device, **options)
    if kind not in ("u2net", "u2netp"):
        raise DiffeelError(f"unknown extractor {kind!r}; choose u2net, u2netp or grabcut")
    if weights is None:
        raise DiffeelError(f"the {kind} extractor needs its weights (--extractor-weights {kind}.pth, the official release); "
                           "without weights use grabcut")
    from ..models import create_model

    return SalientExtractor(create_model(kind, checkpoint=weights), device=device, **options)
