"""Eq. 1 of the paper: pasting one object crop into an image and its label map."""

from __future__ import annotations

import operator

import numpy as np

from ..errors import DiffeelError
from ..labels import ANOMALY_TRAIN_ID


def _check_offset(offset) -> tuple[int, int]:
    try:
        top, left = offset
        return operator.index(top), operator.index(left)
    except (TypeError, ValueError):
        raise DiffeelError(f"offset must be a pair of integers (top, left), got {offset!r}") from None


def check_image(image, name: str = "image") -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise DiffeelError(f"{name} must be an (H, W, 3) uint8 array, got shape {image.shape} and dtype {image.dtype}")
    return image


def check_mask(mask, shape: tuple[int, ...], name: str = "object_mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise DiffeelError(f"{name} has shape {mask.shape} but the object is {tuple(shape)}")
    if mask.dtype != bool:
        if mask.dtype.kind not in "iu" or (mask.size and not np.isin(mask, (0, 1)).all()):
            raise DiffeelError(f"{name} must be a boolean (or 0/1) mask, got dtype {mask.dtype}")
        mask = mask.astype(bool)
    return mask


def check_label(label, shape: tuple[int, int], name: str = "label") -> np.ndarray:
    label = np.asarray(label)
    if label.shape != tuple(shape):
        raise DiffeelError(f"{name} has shape {label.shape} but the image is {tuple(shape)}")
    if label.dtype.kind not in "iu" or np.iinfo(label.dtype).max < ANOMALY_TRAIN_ID:
        raise DiffeelError(f"{name} must hold integers up to {ANOMALY_TRAIN_ID} (e.g. uint8), got dtype {label.dtype}")
    return label


def paste(image, label, object_rgb, object_mask, offset) -> tuple[np.ndarray, np.ndarray]:
    """Paste an object into an image and its training label map (Eq. 1 of the paper).

    With ``Pad`` the zero-padding of the ``(h, w)`` object crop to the image size at
    ``offset = (top, left)``::

        x_amy = (1 - Pad(y_out)) ⊙ x_in + Pad(y_out ⊙ x_out)
        y_amy = (1 - Pad(y_out)) ⊙ y_in + Pad(y_out) · P

    The paper prints the first factor as ``Pad(1 - y_out)``; padding ``1 - y_out`` with zeros would
    black out the whole image outside the object box, so the factor is read as the complement of the
    padded mask (equivalently: ``1 - y_out`` padded with ones). ``P`` is ``ANOMALY_TRAIN_ID`` = 254,
    not the paper's example 20: the decision in ``method.md`` (254 is what RPL, PEBAL and
    Mask2Anomaly use, so data prepared for them keeps working).

    ``offset`` may be negative and the object may hang over any edge: the part outside the image is
    clipped. ``image`` is ``(H, W, 3)`` uint8, ``label`` ``(H, W)`` integers, ``object_rgb``
    ``(h, w, 3)`` uint8 and ``object_mask`` ``(h, w)`` bool. The mask is binary, so Eq. 1 is a
    per-pixel selection and the result is exact (no rounding). Inputs are never modified; the
    returned arrays are new.
    """
    image = check_image(image)
    label = check_label(label, image.shape[:2])
    object_rgb = check_image(object_rgb, "object_rgb")
    object_mask = check_mask(object_mask, object_rgb.shape[:2])
    top, left = _check_offset(offset)

    new_image, new_label = image.copy(), label.copy()
    rows, cols = label.shape
    h, w = object_mask.shape
    r0, r1 = max(top, 0), min(top + h, rows)
    c0, c1 = max(left, 0), min(left + w, cols)
    if r0 >= r1 or c0 >= c1:  # entirely outside: Pad(y_out) is all zeros
        return new_image, new_label
    visible = object_mask[r0 - top:r1 - top, c0 - left:c1 - left]
    new_image[r0:r1, c0:c1][visible] = object_rgb[r0 - top:r1 - top, c0 - left:c1 - left][visible]
    new_label[r0:r1, c0:c1][visible] = ANOMALY_TRAIN_ID
    return new_image, new_label
