"""COCO images as the outlier source of RPL, selected as in Meta-OoD's COCO preparation.

Layout under ``root``: ``annotations/instances_{split}.json`` and ``{split}/{file_name}``.

Facts from Meta-OoD's COCO preparation (robin-chan/meta-ood, ``preparation/prepare_coco_segmentation.py``
with the constants of ``src/dataset/coco.py``), which RPL's ``rpl.code/dataset/training/coco.py``
reads unchanged:

- an image is dropped when any of its annotations, crowd ones included, belongs to a category that
  Cityscapes also has: person, bicycle, car, motorcycle, bus, truck, traffic light, stop sign
  (looked up by name; ``train`` is not among them although Cityscapes has a train class);
- an image is kept only if its height and its width are both at least 480 pixels (as the
  annotation file states them);
- there is no per-instance size threshold: every annotation of a kept image, crowd ones included,
  is rasterised with pycocotools' ``annToMask`` and the masks are unioned (a pixel-wise maximum);
- the mask is 254 on that union and 0 everywhere else, saved as
  ``annotations/ood_seg_train2017/{image id:012d}.png``; images with no annotation at all still get
  an (all-zero) mask.

RPL shuffles those masks and keeps ``proxy_size`` of them: 5000 when none is given, but its
Cityscapes–COCO mix (``rpl.code/dataset/cityscapes_coco.py``) passes the number of Cityscapes
training frames (2975); Meta-OoD keeps a tenth of that number. RPL builds that mix anew in every
epoch (``get_mix_loader`` inside its epoch loop), so each epoch draws another 2975 of the ~46.7k
filtered images, and each frame pastes one of them drawn uniformly; over 40 epochs it sees most of
the set. :meth:`CocoOutliers.for_epoch` does the same, seeded by ``(seed, epoch)``.

Here nothing is written to disk: the filtered index is built once from the annotation file (not
from the image folder, so a missing image is reported when drawn) and each object is decoded when
drawn. An image left with no instance holds no outlier pixel, so it is dropped rather than kept
empty; ``min_instance_area`` (0, Meta-OoD's choice, keeps every instance) compares the annotation's
``area``; ``limit`` (a number of images) or ``pool`` (a share of them) keeps a seeded subset for
every epoch; ``proxy_size`` draws each epoch's proxy set from what is kept.
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from pycocotools.coco import COCO

from ..data.images import read_image
from ..errors import DiffeelError
from .bank import BankObject, tight_crop

# COCO category ids of the classes Meta-OoD excludes for overlapping Cityscapes classes.
COCO_CITYSCAPES_OVERLAP: tuple[int, ...] = (
    1,   # person
    2,   # bicycle
    3,   # car
    4,   # motorcycle
    6,   # bus
    8,   # truck
    10,  # traffic light
    13,  # stop sign
)
MIN_IMAGE_SIZE = 480  # Meta-OoD's COCO.min_image_size, on both height and width
MIN_INSTANCE_AREA = 0  # Meta-OoD unions every instance, however small
RPL_PROXY_SIZE = 5000  # RPL's default number of COCO images when no proxy size is given

REQUIRED_FIELDS = ("images", "annotations", "categories")
IMAGE_FIELDS = ("id", "file_name", "height", "width")
ANNOTATION_FIELDS = ("segmentation", "area", "image_id", "category_id")
CATEGORY_FIELDS = ("id", "name")


@dataclass(frozen=True)
class _Image:
    """A kept image: where it is, its size, and the segmentations of its kept instances."""

    id: int
    file_name: str
    height: int
    width: int
    kind: str
    segmentations: tuple


def _load_json(path: Path) -> dict:
    try:
        with open(path, encoding="utf-8") as stream:
            data = json.load(stream)
    except json.JSONDecodeError as error:
        raise DiffeelError(f"COCO annotations {path} are not valid JSON (line {error.lineno}: {error.msg})") from None
    except (OSError, UnicodeDecodeError) as error:
        raise DiffeelError(f"COCO annotations {path} could not be read ({type(error).__name__})") from error
    if not isinstance(data, dict):
        raise DiffeelError(f"COCO annotations {path} hold a {type(data).__name__}, not an object with "
                           f"{', '.join(REQUIRED_FIELDS)}")
    for name in REQUIRED_FIELDS:
        if name not in data:
            raise DiffeelError(f"COCO annotations {path} lack the field {name!r}")
        if not isinstance(data[name], list):
            raise DiffeelError(f"COCO annotations {path}: the field {name!r} is not a list")
    return data


def _check_fields(path: Path, what: str, number: int, item, fields: Iterable[str]) -> None:
    if not isinstance(item, dict):
        raise DiffeelError(f"COCO annotations {path}: {what} {number} is not an object")
    for name in fields:
        if name not in item:
            label = f"{what} {number}" + (f" (id {item['id']})" if "id" in item else "")
            raise DiffeelError(f"COCO annotations {path}: {label} lacks the field {name!r}")


def _number(path: Path, what: str, value, integer: bool = False):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not float(value).is_integer()):
        raise DiffeelError(f"COCO annotations {path}: {what} is {value!r}, not a {'whole ' if integer else ''}number")
    return int(value) if integer else float(value)


def _silent_coco(images: list[dict]):
    """A pycocotools index over ``images`` only; it rasterises segmentations to image size."""
    coco = COCO()
    coco.dataset = {"images": images, "annotations": [], "categories": []}
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools narrates to stdout
        coco.createIndex()
    return coco


class CocoOutliers:
    """COCO objects for copy-paste: each item is one image's union of kept instances, cropped tightly.

    Implements the object-source protocol of :mod:`diffeel.synth.bank` (``sample(rng)``) and is
    indexable; ``height_range`` is the real-height prior (metres) given to every object.
    """

    def __init__(self, root: str | os.PathLike, split: str = "train2017", *,
                 min_instance_area: float = MIN_INSTANCE_AREA, min_image_size: int = MIN_IMAGE_SIZE,
                 exclude: Iterable[int] = COCO_CITYSCAPES_OVERLAP, height_range: tuple[float, float] = (0.3, 2.0),
                 limit: int | None = None, pool: float = 1.0, proxy_size: int | None = None, seed: int = 0):
        root = Path(root)
        if not root.is_dir():
            raise DiffeelError(f"COCO root {root} does not exist")
        self.annotation_path = root / "annotations" / f"instances_{split}.json"
        if not self.annotation_path.is_file():
            raise DiffeelError(f"COCO annotations {self.annotation_path} do not exist "
                               f"(expected <root>/annotations/instances_{split}.json)")
        self.image_dir = root / split
        try:
            low, high = (float(v) for v in height_range)
        except (TypeError, ValueError):
            low = high = math.nan
        if not (math.isfinite(low) and math.isfinite(high) and 0 < low <= high):
            raise DiffeelError(f"height_range {tuple(height_range)!r} is invalid (need 0 < min <= max, in metres)")
        for name, value in (("limit", limit), ("proxy_size", proxy_size)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1):
                raise DiffeelError(f"{name} must be a positive whole number of images or None, got {value!r}")
        if not 0 < pool <= 1:
            raise DiffeelError(f"pool must be a share in (0, 1], got {pool!r}")
        self.proxy_size, self.seed = proxy_size, seed
        self.height_range = (low, high)
        self.min_instance_area = float(min_instance_area)
        self.min_image_size = int(min_image_size)
        try:
            self.exclude = tuple(sorted({int(c) for c in exclude}))
        except (TypeError, ValueError):
            raise DiffeelError(f"exclude must list COCO category ids, got {exclude!r}") from None

        images = self._filter(_load_json(self.annotation_path))
        if pool < 1:
            limit = min(limit or len(images), max(1, round(pool * len(images))))
        if limit is not None and limit < len(images):
            # A prefix of one seeded permutation: the subsets of a seed are nested.
            keep = np.random.default_rng(seed).permutation(len(images))[:limit]
            images = [images[i] for i in sorted(keep)]
        self._images = images
        self._coco = _silent_coco([{"id": im.id, "height": im.height, "width": im.width} for im in images])

    def _filter(self, data: dict) -> list[_Image]:
        path = self.annotation_path
        categories = {}
        for number, category in enumerate(data["categories"], start=1):
            _check_fields(path, "category", number, category, CATEGORY_FIELDS)
            categories[_number(path, f"category {number}'s id", category["id"], integer=True)] = str(category["name"])
        sizes, names = {}, {}
        for number, image in enumerate(data["images"], start=1):
            _check_fields(path, "image", number, image, IMAGE_FIELDS)
            image_id = _number(path, f"image {number}'s id", image["id"], integer=True)
            sizes[image_id] = (_number(path, f"image {image_id}'s height", image["height"], integer=True),
                               _number(path, f"image {image_id}'s width", image["width"], integer=True))
            names[image_id] = str(image["file_name"])
        excluded_images, kept = set(), {}
        excluded_categories = set(self.exclude)
        for number, annotation in enumerate(data["annotations"], start=1):
            _check_fields(path, "annotation", number, annotation, ANNOTATION_FIELDS)
            image_id = _number(path, f"annotation {number}'s image_id", annotation["image_id"], integer=True)
            category_id = _number(path, f"annotation {number}'s category_id", annotation["category_id"], integer=True)
            area = _number(path, f"annotation {number}'s area", annotation["area"])
            if image_id not in sizes:
                raise DiffeelError(f"COCO annotations {path}: annotation {number} refers to image id {image_id}, "
                                   "which is not among the images")
            if category_id not in categories:
                raise DiffeelError(f"COCO annotations {path}: annotation {number} refers to category id "
                                   f"{category_id}, which is not among the categories")
            if not isinstance(annotation["segmentation"], (list, dict)):
                raise DiffeelError(f"COCO annotations {path}: annotation {number}'s segmentation is neither "
                                   "polygons nor RLE")
            # Meta-OoD drops the image for any annotation of an excluded class, crowd ones included.
            if category_id in excluded_categories:
                excluded_images.add(image_id)
            elif area >= self.min_instance_area:
                kept.setdefault(image_id, []).append((area, categories[category_id], annotation["segmentation"]))
        images = []
        for image_id in sorted(kept):
            height, width = sizes[image_id]
            if image_id in excluded_images or height < self.min_image_size or width < self.min_image_size:
                continue
            instances = kept[image_id]
            kind = max(instances, key=lambda item: item[0])[1]  # the first of the largest on ties
            images.append(_Image(image_id, names[image_id], height, width, kind,
                                 tuple(segmentation for _, _, segmentation in instances)))
        if not images:
            excluded = ", ".join(str(c) for c in self.exclude) or "none"
            raise DiffeelError(f"no COCO image in {path} is left after filtering (at least {self.min_image_size} px "
                               f"high and wide, instances of area >= {self.min_instance_area:g}, no category "
                               f"among {excluded})")
        return images

    def __len__(self) -> int:
        return len(self._images)

    @property
    def file_names(self) -> list[str]:
        """The kept images' file names, in index order."""
        return [image.file_name for image in self._images]

    def mask(self, index: int) -> np.ndarray:
        """The full-image outlier mask (bool, height × width of the annotation) of item ``index``."""
        image = self._images[index]
        union = np.zeros((image.height, image.width), dtype=bool)
        for segmentation in image.segmentations:
            try:
                with warnings.catch_warnings():
                    # pycocotools' decoder predates NumPy 2's copy keyword; the decoded mask is right.
                    warnings.filterwarnings("ignore", message=r"__array__ implementation", category=DeprecationWarning)
                    union |= self._coco.annToMask({"image_id": image.id, "segmentation": segmentation}).astype(bool)
            except Exception as error:  # pycocotools raises bare Exception for malformed polygons
                raise DiffeelError(f"COCO annotations {self.annotation_path}: a segmentation of image {image.id} "
                                   f"could not be decoded ({type(error).__name__})") from None
        return union

    def __getitem__(self, index: int) -> BankObject:
        image = self._images[index]
        path = self.image_dir / image.file_name
        if not path.is_file():
            raise DiffeelError(f"COCO image {path} listed in {self.annotation_path} does not exist")
        rgb = read_image(path)
        if rgb.shape[:2] != (image.height, image.width):
            raise DiffeelError(f"COCO image {path} is {rgb.shape[1]}x{rgb.shape[0]} but {self.annotation_path} "
                               f"says {image.width}x{image.height}")
        mask = self.mask(index)
        if not mask.any():
            raise DiffeelError(f"COCO image {path}: its kept instances cover no pixel in {self.annotation_path}")
        rgb, mask = tight_crop(rgb, mask)
        return BankObject(rgb, mask, image.kind, self.height_range, image.file_name)

    def sample(self, rng: np.random.Generator) -> BankObject:
        """One object drawn uniformly with ``rng``."""
        return self[int(rng.integers(len(self._images)))]

    def for_epoch(self, epoch: int) -> "CocoOutliers | EpochProxySet":
        """The objects of ``epoch``: ``proxy_size`` of the kept images, the first of a permutation
        seeded by ``(seed, epoch)``, as RPL redraws its COCO proxy set every epoch (all of them
        without a ``proxy_size``, or when it is not smaller)."""
        if self.proxy_size is None or self.proxy_size >= len(self):
            return self
        order = np.random.default_rng([self.seed, epoch]).permutation(len(self))
        return EpochProxySet(self, order[: self.proxy_size])


class EpochProxySet:
    """One epoch's COCO proxy set: some of a :class:`CocoOutliers`' images, drawn from uniformly."""

    def __init__(self, outliers: CocoOutliers, indices: np.ndarray):
        self.outliers, self.indices = outliers, np.asarray(indices)

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, index: int) -> BankObject:
        return self.outliers[int(self.indices[index])]

    @property
    def file_names(self) -> list[str]:
        names = self.outliers.file_names
        return [names[i] for i in self.indices]

    def sample(self, rng: np.random.Generator) -> BankObject:
        """One object of this epoch's set, drawn uniformly with ``rng``."""
        return self[int(rng.integers(len(self.indices)))]
