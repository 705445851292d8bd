"""Anomaly scores of the Mask2Anomaly host from its outputs: Eq. 3 (default), the energy / entropy /
EEL scores of the mask-wise logits (Eqs. 4–6), and the official evaluation script's score.

Outputs are the model's dict: ``"pred_logits"`` ``(N, Q, C+1)`` (last = "no object"),
``"pred_masks"`` ``(N, Q, h, w)`` mask logits at ``1/mask_stride`` (4) of the padded input, and
``"image_size"``: the unpadded input size ``(H, W)`` (one pair for the batch, or one per image);
without it the input is taken as unpadded. The padding is at the bottom and right.

Every map here is made the way Mask2Former's semantic inference makes it: mask logits upsampled
bilinearly (``align_corners=False``) to the padded input, sigmoid, combined with per-query class
weights, the padding cut off, and the map resized bilinearly to the requested size.

Two class weightings (:data:`~diffeel.scores.MASK_CLASS_WEIGHTS`): Eq. 3's MSP and the official
score weight the masks with the class probabilities, ``Σ_q softmax(c_q)[:C]·sigmoid(m_q)``
(``"softmax"``, Mask2Former's semantic map). The mask-wise logits of energy, entropy and EEL are
the paper's ``y_hat = c^T·Sigmoid(m)`` with the raw class logits, ``Σ_q c_q[:C]·sigmoid(m_q)``
(``"raw"``, the default; method.md), used directly as the logits of Eq. 4 and Eq. 5; the softmaxed
form stays available as an ablation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..labels import NUM_CLASSES
from ..scores import MASK_CLASS_WEIGHTS, all_scores, mask_class_weights, mask_logits
from .loading import forward_precision

__all__ = [
    "OFFICIAL_SCRIPT",
    "OFFICIAL_MIN_SCORE",
    "OFFICIAL_KEPT_CLASSES",
    "MASK_SCORES",
    "semantic_map",
    "mask_wise_logits",
    "mask_wise_maps",
    "eq3_score",
    "mask_scores",
    "official_kept_queries",
    "official_single_score",
    "official_score_from_outputs",
    "official_resize_shape",
    "official_resize",
    "official_anomaly_score",
]

OFFICIAL_SCRIPT = "anomaly_inference"  # the option name: Mask2Anomaly's anomaly_utils/anomaly_inference.py
OFFICIAL_MIN_SCORE = 0.95  # a query is kept when its top class probability exceeds this
OFFICIAL_KEPT_CLASSES = range(2, 11)  # building, wall, fence, pole, traffic light, traffic sign, vegetation, terrain, sky
MASK_SCORES = ("mask_msp", "energy", "entropy", "eel")
_QUERY_CHUNK = 16  # queries upsampled at once (bounds memory at large inputs)


def semantic_map(pred_logits, pred_masks):
    """``Σ_q softmax(c_q)[:C] · sigmoid(m_q)``: ``(N, Q, C+1), (N, Q, h, w) → (N, C, h, w)``.

    Not normalised (queries overlap, so values can exceed 1). Unbatched ``(Q, C+1), (Q, h, w)``
    gives ``(C, h, w)``; torch or numpy in, the same kind out.
    """
    if getattr(pred_logits, "ndim", None) == 2:
        return mask_logits(pred_logits[None], pred_masks[None], "softmax")[0]
    return mask_logits(pred_logits, pred_masks, "softmax")


def _image_sizes(outputs: Mapping, batch: int, padded: tuple[int, int]) -> list[tuple[int, int]]:
    size = outputs.get("image_size")
    if size is None:
        return [padded] * batch
    if isinstance(size, torch.Tensor):
        size = size.tolist()
    size = list(size)
    if len(size) == 2 and all(isinstance(v, (int, np.integer)) for v in size):
        pairs = [(int(size[0]), int(size[1]))] * batch
    else:
        pairs = [(int(h), int(w)) for h, w in size]
    if len(pairs) != batch:
        raise ValueError(f"{len(pairs)} image sizes for a batch of {batch}")
    for pair in pairs:
        if pair[0] > padded[0] or pair[1] > padded[1] or min(pair) < 1:
            raise ValueError(f"image_size {pair} does not fit the padded input {padded}")
    return pairs


def check_mask_outputs(outputs: Mapping, num_classes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``(pred_logits, pred_masks)`` of a mask model's outputs, shapes checked (and the class count,
    C + 1 with the no-object class, when ``num_classes`` is given)."""
    if "pred_logits" not in outputs or "pred_masks" not in outputs:
        raise ValueError("model outputs need 'pred_logits' (N, Q, C+1) and 'pred_masks' (N, Q, h, w)")
    logits, masks = outputs["pred_logits"], outputs["pred_masks"]
    if logits.dim() != 3 or masks.dim() != 4 or logits.shape[:2] != masks.shape[:2]:
        raise ValueError(f"expected pred_logits (N, Q, C+1) and pred_masks (N, Q, h, w), got "
                         f"{tuple(logits.shape)} and {tuple(masks.shape)}")
    if num_classes is not None and logits.shape[-1] != num_classes + 1:
        raise ValueError(f"pred_logits has {logits.shape[-1]} classes; expected {num_classes} + 1 (no object)")
    return logits, masks


def _check(outputs: Mapping, mask_stride: int) -> tuple[torch.Tensor, torch.Tensor, list[tuple[int, int]]]:
    logits, masks = check_mask_outputs(outputs)
    logits, masks = logits.detach().float(), masks.detach().float()
    padded = (mask_stride * masks.shape[-2], mask_stride * masks.shape[-1])
    return logits, masks, _image_sizes(outputs, logits.shape[0], padded)


def _upsampled_sigmoid(masks: torch.Tensor, padded: tuple[int, int]) -> torch.Tensor:
    """``(K, h, w)`` mask logits → sigmoid of their bilinear upsampling to ``padded``."""
    if tuple(masks.shape[-2:]) != padded:
        masks = F.interpolate(masks[None], size=padded, mode="bilinear", align_corners=False)[0]
    return torch.sigmoid(masks)


def _image_maps(logits: torch.Tensor, masks: torch.Tensor, image_size: tuple[int, int], output_size: tuple[int, int],
                mask_stride: int, kept: torch.Tensor | None = None, class_weights: Sequence[str] = ("softmax",)) -> torch.Tensor:
    """One image's ``(W·C [+ K], H_out, W_out)`` maps: the class map of each weighting in
    ``class_weights`` (``W`` of them, in that order) and, for ``kept`` queries,
    ``score_q · sigmoid(m_q)``, computed on the padded input, cropped and resized. The sigmoid
    masks are upsampled once for all weightings."""
    padded = (mask_stride * masks.shape[-2], mask_stride * masks.shape[-1])
    probs = F.softmax(logits, dim=-1)
    classes = torch.cat([mask_class_weights(logits, weighting) for weighting in class_weights], dim=1)
    semantic = torch.zeros((classes.shape[1], *padded), dtype=probs.dtype, device=probs.device)
    for start in range(0, masks.shape[0], _QUERY_CHUNK):
        chunk = _upsampled_sigmoid(masks[start : start + _QUERY_CHUNK], padded)
        semantic += torch.einsum("qc,qhw->chw", classes[start : start + _QUERY_CHUNK], chunk)
    maps = [semantic]
    if kept is not None and len(kept):
        scores = probs[kept].amax(dim=-1)
        maps.append(scores.view(-1, 1, 1) * _upsampled_sigmoid(masks[kept], padded))
    result = torch.cat(maps)[:, : image_size[0], : image_size[1]]
    if tuple(result.shape[-2:]) != tuple(output_size):
        result = F.interpolate(result[None], size=tuple(output_size), mode="bilinear", align_corners=False)[0]
    return result


def _output_size(size: Sequence[int]) -> tuple[int, int]:
    height, width = (int(v) for v in size)
    if height < 1 or width < 1:
        raise ValueError(f"output size must be positive, got {tuple(size)}")
    return height, width


def mask_wise_maps(outputs: Mapping, image_size: Sequence[int], mask_stride: int = 4,
                   class_weights: Sequence[str] = MASK_CLASS_WEIGHTS) -> dict[str, torch.Tensor]:
    """``{weighting: (N, C, H, W) class map}`` at ``image_size`` (the size of the image the scores
    are for) for each weighting of ``class_weights`` (``"raw"``: the mask-wise logits;
    ``"softmax"``: Eq. 3's map), from one pass over the queries (see the module doc)."""
    class_weights = tuple(dict.fromkeys(class_weights))
    unknown = [weighting for weighting in class_weights if weighting not in MASK_CLASS_WEIGHTS]
    if unknown or not class_weights:
        raise ValueError(f"class_weights must name some of {', '.join(MASK_CLASS_WEIGHTS)}, got {class_weights!r}")
    logits, masks, sizes = _check(outputs, mask_stride)
    size = _output_size(image_size)
    maps = torch.stack([_image_maps(logits[b], masks[b], sizes[b], size, mask_stride, class_weights=class_weights)
                        for b in range(logits.shape[0])])
    return dict(zip(class_weights, maps.chunk(len(class_weights), dim=1)))


def mask_wise_logits(outputs: Mapping, image_size: Sequence[int], mask_stride: int = 4, class_weights: str = "raw") -> torch.Tensor:
    """The mask-wise logits ``y_hat = Σ_q c_q[:C]·sigmoid(m_q)`` ``(N, C, H, W)`` at ``image_size``
    (``class_weights="softmax"``: Eq. 3's class map instead)."""
    return mask_wise_maps(outputs, image_size, mask_stride, (class_weights,))[class_weights]


def eq3_score(outputs: Mapping, image_size: Sequence[int], mask_stride: int = 4) -> torch.Tensor:
    """Mask-wise MSP, Eq. 3, ``1 - max_c Σ_q softmax(c_q)_c·sigmoid(m_q)`` at ``image_size`` →
    ``(N, H, W)`` (the default Mask2Anomaly score; no extra channels, no flip)."""
    return 1.0 - mask_wise_logits(outputs, image_size, mask_stride, "softmax").amax(dim=1)


def mask_scores(outputs: Mapping, image_size: Sequence[int], alpha: float = 1.0, mask_stride: int = 4,
                names: Sequence[str] = MASK_SCORES, class_weights: str = "raw") -> dict[str, torch.Tensor]:
    """Scores of a mask model's outputs at ``image_size``, each ``(N, H, W)``, higher = more
    anomalous: ``mask_msp`` (Eq. 3, softmaxed class weights) and, on the mask-wise logits
    (``class_weights``, raw by default), ``energy`` (Eq. 4, ``-logsumexp y_hat``), ``entropy``
    (Eq. 5, of ``softmax(y_hat)``) and ``eel`` (Eq. 6, ``α·H - E``)."""
    unknown = [name for name in names if name not in MASK_SCORES]
    if unknown:
        raise ValueError(f"unknown mask score {unknown[0]!r}; choose from {', '.join(MASK_SCORES)}")
    logit_scores = [name for name in names if name != "mask_msp"]
    needed = [class_weights] * bool(logit_scores) + ["softmax"] * ("mask_msp" in names)
    if not needed:
        return {}
    class_maps = mask_wise_maps(outputs, image_size, mask_stride, needed)
    maps = all_scores(class_maps[class_weights], alpha=alpha) if logit_scores else {}
    if "mask_msp" in names:
        maps["mask_msp"] = 1.0 - class_maps["softmax"].amax(dim=1)
    return {name: maps[name] for name in names}


# ---------------------------------------------------------------------------------------------
# the official script's score


def official_kept_queries(class_logits: torch.Tensor, num_classes: int = NUM_CLASSES) -> torch.Tensor:
    """Indices of the queries whose top class (over all C+1) is one of 2..10 with probability > 0.95."""
    scores, classes = F.softmax(class_logits.float(), dim=-1).max(dim=-1)
    keep = (classes != num_classes) & (scores > OFFICIAL_MIN_SCORE)
    keep &= (classes >= OFFICIAL_KEPT_CLASSES.start) & (classes < OFFICIAL_KEPT_CLASSES.stop)
    return torch.nonzero(keep).flatten()


def official_single_score(outputs: Mapping, image_size: Sequence[int], mask_stride: int = 4) -> torch.Tensor:
    """The official script's score of one forward pass (batch of 1) at ``image_size`` → ``(H, W)``.

    Channels: the C semantic channels and K extra ``score_q·sigmoid(m_q)`` channels of the kept
    queries (:func:`official_kept_queries`), all cropped and resized. Score ``1 - max`` over all
    ``C + K`` channels (the script's ``[0:19]`` slice hits a size-1 batch axis); when ``K > 1``,
    pixels where the largest extra channel is ≥ 0.5 are set to 0. (An extra channel never exceeds
    its class's semantic channel, which contains the same term plus the other queries' shares, and
    cropping and bilinear resizing keep that order; so the max equals Eq. 3's and only the zeroing
    rule and the flip average make the official score differ from Eq. 3.)
    """
    logits, masks, sizes = _check(outputs, mask_stride)
    if logits.shape[0] != 1:
        raise ValueError(f"the official score takes one image at a time, got a batch of {logits.shape[0]}")
    num_classes = logits.shape[-1] - 1
    kept = official_kept_queries(logits[0], num_classes)
    maps = _image_maps(logits[0], masks[0], sizes[0], _output_size(image_size), mask_stride, kept)
    score = 1.0 - maps.amax(dim=0)
    if len(kept) > 1:
        score = score * (maps[num_classes:].amax(dim=0) < 0.5)
    return score


def official_score_from_outputs(outputs: Mapping, flipped_outputs: Mapping | None, image_size: Sequence[int],
                                mask_stride: int = 4) -> np.ndarray:
    """The official script's anomaly score ``(H, W)`` float32 from the outputs on the image and on
    its left-right flip: ``(s(image) + fliplr(s(flipped))) / 2``, each ``s`` from
    :func:`official_single_score` at ``image_size`` (the original image size).
    ``flipped_outputs=None`` skips the flip average (not the official score)."""
    score = official_single_score(outputs, image_size, mask_stride).cpu().numpy()
    if flipped_outputs is not None:
        flipped = official_single_score(flipped_outputs, image_size, mask_stride).cpu().numpy()
        score = (np.flip(flipped, axis=1) + score) / 2.0
    return np.ascontiguousarray(score, dtype=np.float32)


def official_resize_shape(height: int, width: int, short_side: int = 1024, max_side: int = 2048) -> tuple[int, int]:
    """Detectron2's ``ResizeShortestEdge`` size (at test time, and for each short side training
    draws): the short side to ``short_side``, scaled down if the long side would exceed
    ``max_side``, each side rounded half up."""
    scale = short_side / min(height, width)
    new_height, new_width = (short_side, scale * width) if height < width else (scale * height, short_side)
    if max(new_height, new_width) > max_side:
        shrink = max_side / max(new_height, new_width)
        new_height, new_width = new_height * shrink, new_width * shrink
    return int(new_height + 0.5), int(new_width + 0.5)


def _model_device(model) -> torch.device:
    if isinstance(model, torch.nn.Module):
        for tensor in model.parameters():
            return tensor.device
        for tensor in model.buffers():
            return tensor.device
    return torch.device("cpu")


def official_resize(rgb: np.ndarray, short_side: int = 1024, max_side: int = 2048) -> np.ndarray:
    """An ``(H, W, 3)`` uint8 image resized as the official evaluation does: PIL bilinear to
    :func:`official_resize_shape`."""
    height, width = official_resize_shape(rgb.shape[0], rgb.shape[1], short_side, max_side)
    if (height, width) == rgb.shape[:2]:
        return np.ascontiguousarray(rgb)
    return np.asarray(Image.fromarray(np.ascontiguousarray(rgb)).resize((width, height), Image.BILINEAR))


def _forward_resized(model: Callable, image_bgr: np.ndarray, short_side: int, max_side: int, precision: str) -> Mapping:
    resized = official_resize(image_bgr[:, :, ::-1], short_side, max_side)
    tensor = torch.from_numpy(resized.astype(np.float32).transpose(2, 0, 1).copy())[None]
    device = _model_device(model)
    with torch.no_grad(), forward_precision(device, precision):
        return model(tensor.to(device))


def official_anomaly_score(model: Callable, image_bgr: np.ndarray, *, short_side: int = 1024, max_side: int = 2048,
                           mask_stride: int = 4, precision: str = "float32") -> np.ndarray:
    """Mask2Anomaly's ``anomaly_utils/anomaly_inference.py`` score of one image → ``(H, W)`` float32.

    ``image_bgr``: ``(H, W, 3)`` uint8, BGR as OpenCV / detectron2 read it. For the image and for
    its left-right flip: BGR → RGB, PIL bilinear resize (short side ``short_side``, long side at
    most ``max_side``), ``model(x)`` with ``x`` ``(1, 3, h, w)`` float32 RGB in 0–255 on the model's
    device (the model normalises and pads, and returns ``pred_logits``, ``pred_masks`` and
    ``image_size``); then :func:`official_score_from_outputs` at ``(H, W)``, in float32. Call
    ``model.eval()`` first; gradients are off here. ``precision``: the forward's
    (:func:`~diffeel.models.loading.forward_precision`); the official script runs float32.
    """
    image = np.asarray(image_bgr)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an (H, W, 3) BGR image, got shape {image.shape}")
    if image.dtype != np.uint8:
        raise TypeError(f"expected a uint8 image (PIL resizes it), got {image.dtype}")
    outputs = _forward_resized(model, image, short_side, max_side, precision)
    flipped_outputs = _forward_resized(model, np.fliplr(image), short_side, max_side, precision)
    return official_score_from_outputs(outputs, flipped_outputs, image.shape[:2], mask_stride)
