"""Decoding images and label maps by their content, whatever their extension says.

Public benchmarks contain files whose extension lies (a ``.png`` that is a JPEG): Pillow identifies
the format from the bytes, so we never dispatch on the file name.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ..errors import DiffeelError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


def _open(path: str | os.PathLike) -> Image.Image:
    path = Path(path)
    if not path.is_file():
        raise DiffeelError(f"{path} does not exist")
    try:
        image = Image.open(path)
        image.load()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        raise DiffeelError(f"{path} is not a readable image ({type(error).__name__})") from error
    return image


def read_image(path: str | os.PathLike) -> np.ndarray:
    """An RGB image as a ``(H, W, 3)`` uint8 array."""
    return np.asarray(_open(path).convert("RGB"))


def read_label(path: str | os.PathLike) -> np.ndarray:
    """A label map as stored: palette indices for palette PNGs, raw values for grey or 16-bit.

    A colour (RGB) file is not a label map; we refuse it rather than guess a colour coding.
    """
    image = _open(path)
    if image.mode in ("L", "P"):
        return np.asarray(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        return np.asarray(image).astype(np.int32)
    if image.mode == "1":
        return np.asarray(image).astype(np.uint8)
    raise DiffeelError(f"{path} is a {image.mode} image, not a single-channel label map")


def check_label_size(rgb: np.ndarray, label: np.ndarray, image_path, label_path, what: str = "image") -> None:
    """An image and its label map of one size, or one sentence naming both files."""
    if rgb.shape[:2] != label.shape:
        raise DiffeelError(f"{what} {image_path} is {rgb.shape[1]}x{rgb.shape[0]} but its label "
                           f"{label_path} is {label.shape[1]}x{label.shape[0]}")


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """``(width, height)`` read from the header only."""
    path = Path(path)
    try:
        with Image.open(path) as image:
            return image.size
    except (UnidentifiedImageError, OSError) as error:
        raise DiffeelError(f"{path} is not a readable image ({type(error).__name__})") from error


def write_image_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write a uint8 image (PNG unless the suffix says otherwise) through a temporary file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        Image.fromarray(array).save(temporary, format=Image.registered_extensions().get(path.suffix.lower(), "PNG"))
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def image_files(folder) -> list[Path]:
    """The image files of ``folder`` (by suffix, hidden files skipped), sorted; one sentence when
    the folder does not exist or holds none."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DiffeelError(f"image folder {folder} does not exist")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not files:
        raise DiffeelError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {folder}")
    return files

