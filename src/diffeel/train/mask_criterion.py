"""Mask2Former's set criterion for the Mask2Anomaly host, its mask contrastive loss and Eq. 10.

The criterion depends only on the model's output format: a dict with ``"pred_logits"``
``(N, Q, C+1)`` (the last class is "no object"), ``"pred_masks"`` ``(N, Q, h, w)`` mask logits at
``1/mask_stride`` of the padded input, and ``"aux_outputs"``, a list of such dicts, one per earlier
decoder layer. Labels are train-id maps ``(N, H, W)``: ``0..C-1`` classes, ``VOID`` (255),
``ANOMALY_TRAIN_ID`` (254) for pasted anomalies, covering the top-left ``H × W`` of the padded
input (padding is added at the bottom and right, as the host does).

Targets (Mask2Former's semantic targets, as Mask2Anomaly's fine-tuning builds them): one binary
mask per class present in the image, classes in increasing order. Void and anomaly pixels belong
to no class, so they are 0 in every class mask: matched queries are pushed to background there
(Mask2Anomaly drops 254 from the class list; Mask2Former drops 255; neither excludes those pixels
from the mask losses). The padding is 0 in every mask too. Anomaly pixels reach the training only
through the anomaly term: the contrastive loss (``loss="m2a"``) or Eq. 7 (``loss="m2a+eel"``).

Mask losses are computed at sampled points (PointRend's uncertainty sampling: ``3 × P`` uniform
candidates, the ``0.75 · P`` with mask logit closest to 0, the rest drawn at random from the
others); ``num_points=None`` evaluates every pixel centre of the target grid instead, with no
randomness (for tests and small inputs). Pass a seeded ``torch.Generator`` for reproducible
sampling.

Batch means are pooled with :func:`diffeel.losses._pooled`, so inside
:func:`diffeel.losses.pooled_over_processes` they divide by counts over all processes (the number
of target masks, the weighted number of queries, the number of labelled pixels).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import nn

from ..errors import DiffeelError
from ..labels import NUM_CLASSES, VOID
from ..losses import EEL_WEIGHT, _pooled, eel_loss, split_train_labels
from ..models.mask2anomaly_inference import check_mask_outputs
from ..scores import MASK_CLASS_WEIGHTS, mask_logits

__all__ = [
    "MASK_LOSS_DEFAULTS",
    "CONTRASTIVE_WEIGHT",
    "HungarianMatcher",
    "SetCriterion",
    "semantic_targets",
    "point_sample",
    "uncertain_point_coords",
    "mask_contrastive_loss",
    "mask_eel_loss",
    "build_criterion",
    "mask2anomaly_loss",
]

CONTRASTIVE_WEIGHT = 1.0  # Mask2Anomaly code: OOD_WEIGHT
# Mask2Former / Mask2Anomaly settings (Mask2Anomaly's anomaly_ft.yaml and config.py) and diffeel's
# own choices; the keys a TrainConfig's ``mask_loss`` dict may set.
MASK_LOSS_DEFAULTS: dict[str, Any] = {
    "class_weight": 2.0,  # CE weight and matcher class cost
    "mask_weight": 5.0,  # point BCE weight and matcher mask cost
    "dice_weight": 5.0,  # dice weight and matcher dice cost
    "no_object_weight": 0.1,  # CE weight of the "no object" class
    "train_points": 12544,  # 112 × 112 sampled points; None = every pixel of the target grid
    "oversample_ratio": 3.0,
    "importance_sample_ratio": 0.75,
    "deep_supervision": True,  # the losses on every aux_outputs set too
    "ce_weight": 1.0,  # λ_ce of Eq. 10, multiplying the class_weight-weighted CE
    "contrastive_margin": 1.0,  # Mask2Anomaly code (its paper quotes 0.75)
    "contrastive_void_as_inlier": False,  # True: void pixels in the inlier term, as Mask2Anomaly's code
    "contrastive_resize": "padded",  # "official": the score stretched onto the labels (align_corners=True), as its code
    "anomaly_on_aux": True,  # the anomaly term on every prediction set, as Mask2Anomaly's code
    "eel_resolution": "label",  # "label": Eq. 7 at every label pixel; "mask": at the mask grid
    "eel_logits": "raw",  # the mask-wise logits of L_eel: "raw" c^T·sigmoid(m) (the paper's), "softmax" (ablation)
    "mask_stride": 4,  # pred_masks are at 1/mask_stride of the padded input
}
ANOMALY_TERMS = {"m2a-inlier": None, "m2a": "contrastive", "m2a+eel": "eel"}  # stage 1 has none


# ---------------------------------------------------------------------------------------------
# point sampling


def point_sample(values: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
    """Bilinear samples of ``values`` ``(R, K, h, w)`` at ``coords`` ``(R, P, 2)`` → ``(R, K, P)``.

    ``coords`` are ``(x, y)`` in ``[0, 1]²`` over the whole map (0 = left/top edge, 1 =
    right/bottom edge, so ``(j + 0.5) / w`` is the centre of column ``j``); outside the outermost
    pixel centres values blend with 0 (``grid_sample`` with zero padding, ``align_corners=False``),
    as PointRend's ``point_sample`` does.
    """
    grid = (2.0 * coords - 1.0).unsqueeze(2).to(values.dtype)
    return F.grid_sample(values, grid, mode="bilinear", padding_mode="zeros", align_corners=False).squeeze(3)


def _at_least_float32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor if tensor.dtype == torch.float64 else tensor.float()


def _for_image(generator, image: int):
    """The generator of one image when there is one per image, else the shared one."""
    return generator[image] if isinstance(generator, (list, tuple)) else generator


def image_generators(labels: torch.Tensor, seed: int | None = None) -> list[torch.Generator]:
    """One generator per image, seeded by ``seed`` (default: torch's current seed, which training
    sets per step) and the image's label map: the points sampled for an image do not depend on
    which other images share its batch, or on which process holds it."""
    import zlib

    base = torch.initial_seed() if seed is None else int(seed)
    generators = []
    for label in labels:
        checksum = zlib.crc32(label.detach().cpu().numpy().tobytes())
        generators.append(torch.Generator(device=labels.device).manual_seed((base * 1_000_003 + checksum) % (2**63 - 1)))
    return generators


def _uniform(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    source_device = generator.device if generator is not None else device
    return torch.rand(shape, generator=generator, device=source_device).to(device)


def _grid_centres(size: tuple[int, int], device: torch.device) -> torch.Tensor:
    """The ``(x, y)`` centres of every pixel of a ``size`` grid, row-major, ``(h·w, 2)``."""
    height, width = size
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x.reshape(-1), grid_y.reshape(-1)], dim=1)


def uncertain_point_coords(
    mask_logits_: torch.Tensor,
    num_points: int,
    oversample_ratio: float = 3.0,
    importance_sample_ratio: float = 0.75,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """PointRend's training points for ``(R, 1, h, w)`` mask logits → ``(R, num_points, 2)``.

    Draw ``int(num_points · oversample_ratio)`` uniform candidates per mask, keep the
    ``int(importance_sample_ratio · num_points)`` most uncertain (uncertainty ``-|logit|`` of the
    bilinearly sampled logit), and fill up with candidates drawn uniformly from the others.
    """
    if oversample_ratio < 1:
        raise ValueError(f"oversample_ratio must be at least 1, got {oversample_ratio}")
    if not 0 <= importance_sample_ratio <= 1:
        raise ValueError(f"importance_sample_ratio must be in [0, 1], got {importance_sample_ratio}")
    count = mask_logits_.shape[0]
    device = mask_logits_.device
    num_candidates = int(num_points * oversample_ratio)
    candidates = _uniform((count, num_candidates, 2), generator, device)
    uncertainty = -point_sample(mask_logits_, candidates)[:, 0].abs()
    num_uncertain = int(importance_sample_ratio * num_points)
    num_random = num_points - num_uncertain
    order = torch.argsort(uncertainty, dim=1, descending=True)
    chosen = order[:, :num_uncertain]
    if num_random > 0:
        others = order[:, num_uncertain:]
        draw = torch.argsort(_uniform(tuple(others.shape), generator, device), dim=1)[:, :num_random]
        chosen = torch.cat([chosen, others.gather(1, draw)], dim=1)
    return candidates.gather(1, chosen.unsqueeze(-1).expand(-1, -1, 2))


# ---------------------------------------------------------------------------------------------
# targets


def _padded_size(pred_masks: torch.Tensor, mask_stride: int) -> tuple[int, int]:
    return mask_stride * pred_masks.shape[-2], mask_stride * pred_masks.shape[-1]


def _check_labels(labels: torch.Tensor, batch: int, padded: tuple[int, int]) -> None:
    if labels.dim() != 3 or labels.shape[0] != batch:
        raise ValueError(f"expected labels (N, H, W) with N = {batch}, got {tuple(labels.shape)}")
    if labels.is_floating_point():
        raise TypeError(f"labels must be integer train ids, got {labels.dtype}")
    if labels.shape[1] > padded[0] or labels.shape[2] > padded[1]:
        raise ValueError(f"labels {tuple(labels.shape[1:])} are larger than the padded input {padded} "
                         "(mask_stride × pred_masks size)")


def semantic_targets(
    labels: torch.Tensor, num_classes: int = NUM_CLASSES, padded_size: tuple[int, int] | None = None
) -> list[dict[str, torch.Tensor]]:
    """Per image, ``{"labels": (T,) int64, "masks": (T, Hp, Wp) bool}``: one mask per class present.

    Classes are the ids ``0..num_classes-1`` present, in increasing order (Mask2Former's semantic
    targets). ``VOID``, ``ANOMALY_TRAIN_ID`` and any other id give no target and are 0 in every
    mask; masks are zero-padded at the bottom/right to ``padded_size`` (default: the label size).
    """
    if labels.dim() != 3:
        raise ValueError(f"expected labels (N, H, W), got {tuple(labels.shape)}")
    height, width = labels.shape[1:]
    padded = (height, width) if padded_size is None else tuple(padded_size)
    if padded[0] < height or padded[1] < width:
        raise ValueError(f"padded_size {padded} is smaller than the labels {(height, width)}")
    targets = []
    for label_map in labels:
        present = torch.unique(label_map)
        present = present[(present >= 0) & (present < num_classes)].to(torch.int64)
        masks = torch.zeros((len(present), *padded), dtype=torch.bool, device=labels.device)
        masks[:, :height, :width] = label_map.unsqueeze(0) == present.view(-1, 1, 1)
        targets.append({"labels": present, "masks": masks})
    return targets


# ---------------------------------------------------------------------------------------------
# matcher


class HungarianMatcher:
    """Mask2Former's bipartite matching of queries to target masks (one image at a time).

    Cost ``cost_class · (-p_q[class_t]) + cost_mask · BCE(m_q, t) + cost_dice · dice(m_q, t)``
    with ``p = softmax`` over all ``C+1`` classes, BCE the mean binary cross-entropy and
    ``dice = 1 - (2 Σ σ(m)·t + 1) / (Σ σ(m) + Σ t + 1)``, both over the same ``num_points``
    uniformly drawn points for every query and target of an image (``None``: every pixel centre
    of the target grid). Solved with ``scipy.optimize.linear_sum_assignment``.
    """

    def __init__(self, cost_class: float = 2.0, cost_mask: float = 5.0, cost_dice: float = 5.0,
                 num_points: int | None = 12544):
        if cost_class == 0 and cost_mask == 0 and cost_dice == 0:
            raise ValueError("at least one matching cost must be non-zero")
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be positive or None, got {num_points}")
        self.cost_class = cost_class
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points

    def cost_matrix(self, class_logits: torch.Tensor, query_points: torch.Tensor, target_classes: torch.Tensor,
                    target_points: torch.Tensor) -> torch.Tensor:
        """``(Q, T)`` costs from class logits ``(Q, C+1)``, mask logits at the points ``(Q, P)``,
        target classes ``(T,)`` and target values at the same points ``(T, P)``."""
        class_logits, query_points = _at_least_float32(class_logits), _at_least_float32(query_points)
        target_points = target_points.to(query_points.dtype)
        num_points = query_points.shape[1]
        cost_class = -F.softmax(class_logits, dim=-1)[:, target_classes]
        # BCE(x, t) = t·softplus(-x) + (1 - t)·softplus(x)
        cost_mask = (F.softplus(-query_points) @ target_points.T + F.softplus(query_points) @ (1 - target_points).T) / num_points
        probs = torch.sigmoid(query_points)
        cost_dice = 1 - (2 * probs @ target_points.T + 1) / (probs.sum(-1)[:, None] + target_points.sum(-1)[None, :] + 1)
        return self.cost_class * cost_class + self.cost_mask * cost_mask + self.cost_dice * cost_dice

    @torch.no_grad()
    def __call__(self, outputs: Mapping, targets: list[dict], generator: torch.Generator | None = None
                 ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per image, ``(query indices, target indices)`` int64 tensors of ``min(Q, T)`` pairs,
        ordered by query index."""
        logits, masks = check_mask_outputs(outputs)
        if len(targets) != logits.shape[0]:
            raise ValueError(f"{len(targets)} targets for a batch of {logits.shape[0]}")
        indices = []
        for image, target in enumerate(targets):
            classes, target_masks = target["labels"], target["masks"]
            if len(classes) == 0:
                empty = torch.zeros(0, dtype=torch.int64)
                indices.append((empty, empty.clone()))
                continue
            if self.num_points is None:
                coords = _grid_centres(tuple(target_masks.shape[-2:]), masks.device)
            else:
                coords = _uniform((self.num_points, 2), _for_image(generator, image), masks.device)
            query_masks = _at_least_float32(masks[image]).unsqueeze(1)
            query_points = point_sample(query_masks, coords.expand(query_masks.shape[0], -1, -1))[:, 0]
            target_float = target_masks.to(query_masks.dtype).unsqueeze(1)
            target_points = point_sample(target_float, coords.expand(target_float.shape[0], -1, -1))[:, 0]
            cost = self.cost_matrix(logits[image], query_points, classes.to(logits.device), target_points)
            rows, cols = linear_sum_assignment(cost.cpu().numpy())
            indices.append((torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64)))
        return indices

    def __repr__(self) -> str:
        return (f"HungarianMatcher(cost_class={self.cost_class}, cost_mask={self.cost_mask}, "
                f"cost_dice={self.cost_dice}, num_points={self.num_points})")


# ---------------------------------------------------------------------------------------------
# anomaly terms


def _to_label_grid(maps: torch.Tensor, label_size: tuple[int, int], mask_stride: int) -> torch.Tensor:
    """``(N, K, h, w)`` maps on the mask grid → ``(N, K, H, W)`` on the label grid: bilinear
    (``align_corners=False``) to the padded input ``mask_stride·(h, w)``, then the padding cut off."""
    padded = _padded_size(maps, mask_stride)
    if label_size[0] > padded[0] or label_size[1] > padded[1]:
        raise ValueError(f"labels {label_size} are larger than the padded input {padded}")
    if padded != tuple(maps.shape[-2:]):
        maps = F.interpolate(maps, size=padded, mode="bilinear", align_corners=False)
    return maps[..., : label_size[0], : label_size[1]]


def _labels_on_mask_grid(labels: torch.Tensor, mask_size: tuple[int, int], mask_stride: int) -> torch.Tensor:
    """The label at (nearest to) the centre of every mask-grid cell; padding is ``VOID``."""
    height, width = mask_size
    padded = torch.full((labels.shape[0], height * mask_stride, width * mask_stride), VOID,
                        dtype=labels.dtype, device=labels.device)
    padded[:, : labels.shape[1], : labels.shape[2]] = labels
    offset = mask_stride // 2
    return padded[:, offset::mask_stride, offset::mask_stride]


def mask_contrastive_loss(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    labels: torch.Tensor,
    margin: float = 1.0,
    mask_stride: int = 4,
    void_as_inlier: bool = False,
    resize: str = "padded",
) -> torch.Tensor:
    """Mask2Anomaly's mask contrastive loss (the term Eq. 10 replaces).

    ``s = -max_k Σ_q softmax(c_q)_k · sigmoid(m_q)`` on the mask grid, bilinearly upsampled to the
    padded input and cropped to the labels (``resize="padded"``), or stretched onto the labels
    with ``align_corners=True`` as Mask2Anomaly's code does (``resize="official"``); then
    ``0.5 · (mean_{inlier} s² + mean_{anomaly} max(0, margin - s)²)``, each mean pooled over the
    batch (an empty set contributes 0). As written, both terms pull ``s`` towards 0 (s ≤ 0).

    The defaults differ from Mask2Anomaly's code, on purpose: its stretch of the padded mask grid
    onto the unpadded label shifts the score by up to the padding, while the padded grid keeps it
    aligned as for the mask targets; its code counts void pixels as inliers, while here void enters
    no loss (method.md) unless ``void_as_inlier=True``. The ``m2a`` preset takes both of the
    official choices.
    """
    if resize not in ("padded", "official"):
        raise ValueError(f"resize must be 'padded' or 'official', got {resize!r}")
    semantic = mask_logits(pred_logits, pred_masks, "softmax")
    score = -semantic.amax(dim=1, keepdim=True)
    if resize == "official":
        score = F.interpolate(score, size=tuple(labels.shape[-2:]), mode="bilinear", align_corners=True)[:, 0]
    else:
        score = _to_label_grid(score, tuple(labels.shape[-2:]), mask_stride)[:, 0]
    anomaly_mask, inlier_mask = split_train_labels(labels, semantic.shape[1])
    if void_as_inlier:
        inlier_mask = ~anomaly_mask
    inlier_term = _pooled(torch.where(inlier_mask, score.square(), 0.0).sum(), inlier_mask.sum())
    anomaly_term = _pooled(torch.where(anomaly_mask, F.relu(margin - score).square(), 0.0).sum(), anomaly_mask.sum())
    return 0.5 * (inlier_term + anomaly_term)


def mask_eel_loss(
    pred_logits: torch.Tensor,
    pred_masks: torch.Tensor,
    labels: torch.Tensor,
    alpha: float = 1.0,
    inlier_entropy: str = "confident",
    mask_stride: int = 4,
    resolution: str = "label",
    class_weights: str = "raw",
) -> torch.Tensor:
    """Eq. 7 (:func:`diffeel.losses.eel_loss`) on the mask-wise logits of Eq. 10.

    ``y_hat = Σ_q c_q[:C] · sigmoid(m_q)`` with the raw class logits (:func:`diffeel.scores.mask_logits`),
    used directly as the logits of Eq. 4/5, as method.md and the paper define them for mask models;
    ``class_weights="softmax"`` weights the masks with ``softmax(c_q)[:C]`` instead (an ablation).
    ``resolution="label"`` (default): ``y_hat`` bilinearly upsampled to the padded input, the
    padding cut off, Eq. 7 over every labelled pixel (the paper's image lattice; bilinear
    upsampling commutes with the sum over queries, so this is the semantic map of the upsampled
    sigmoid masks). ``"mask"``: Eq. 7 on the mask grid with the label nearest each cell's centre —
    ``mask_stride²`` times less memory, small anomalies may vanish.
    """
    if resolution not in ("label", "mask"):
        raise ValueError(f"resolution must be 'label' or 'mask', got {resolution!r}")
    semantic = mask_logits(pred_logits, pred_masks, class_weights)
    if resolution == "label":
        semantic = _to_label_grid(semantic, tuple(labels.shape[-2:]), mask_stride)
    else:
        labels = _labels_on_mask_grid(labels, tuple(semantic.shape[-2:]), mask_stride)
    anomaly_mask, inlier_mask = split_train_labels(labels, semantic.shape[1])
    return eel_loss(semantic, anomaly_mask, inlier_mask, alpha=alpha, inlier_entropy=inlier_entropy)


# ---------------------------------------------------------------------------------------------
# criterion


class SetCriterion(nn.Module):
    """Mask2Former's training loss with Mask2Anomaly's or DiffEEL's anomaly term.

    Per prediction set (the final one and, with ``deep_supervision``, every ``aux_outputs`` entry,
    each matched on its own): ``ce`` (cross-entropy over all ``N·Q`` queries, unmatched ones to
    "no object", class weights 1 and ``no_object_weight``, weighted mean), ``mask`` (point BCE)
    and ``dice`` (point dice), both summed over matched masks and divided by the number of target
    masks in the batch, and the anomaly term ``contrastive`` (:func:`mask_contrastive_loss`) or
    ``eel`` (:func:`mask_eel_loss`) when ``anomaly_loss`` names one (on aux sets too unless
    ``anomaly_on_aux=False``).

    ``forward`` returns the unweighted terms (aux ones suffixed ``_0``, ``_1``, …) and
    ``"total" = Σ_sets ce_weight·class_weight·ce + mask_weight·mask + dice_weight·dice +
    anomaly_weight·anomaly``. With ``anomaly_loss="eel"``, ``anomaly_weight = 0.05`` and
    ``ce_weight = 1`` this is Eq. 10, ``L_masks + λ_ce·L_ce + λ·L_eel``, reading ``L_ce`` as
    Mask2Former's class term with its weight 2 (so λ_ce = 1 keeps Mask2Anomaly's criterion and
    only the anomaly term changes); set ``ce_weight = 0.5`` for the other reading (CE weight 1).
    """

    def __init__(
        self,
        num_classes: int = NUM_CLASSES,
        matcher: HungarianMatcher | None = None,
        *,
        class_weight: float = 2.0,
        mask_weight: float = 5.0,
        dice_weight: float = 5.0,
        no_object_weight: float = 0.1,
        num_points: int | None = 12544,
        oversample_ratio: float = 3.0,
        importance_sample_ratio: float = 0.75,
        deep_supervision: bool = True,
        ce_weight: float = 1.0,
        anomaly_loss: str | None = None,
        anomaly_weight: float | None = None,
        margin: float = 1.0,
        void_as_inlier: bool = False,
        contrastive_resize: str = "padded",
        alpha: float = 1.0,
        inlier_entropy: str = "confident",
        eel_resolution: str = "label",
        eel_logits: str = "raw",
        anomaly_on_aux: bool = True,
        mask_stride: int = 4,
    ):
        super().__init__()
        if anomaly_loss not in (None, "contrastive", "eel"):
            raise ValueError(f"anomaly_loss must be None, 'contrastive' or 'eel', got {anomaly_loss!r}")
        if num_points is not None and num_points < 1:
            raise ValueError(f"num_points must be positive or None, got {num_points}")
        if not isinstance(mask_stride, int) or mask_stride < 1:
            raise ValueError(f"mask_stride must be a positive whole number, got {mask_stride!r}")
        if eel_resolution not in ("label", "mask"):
            raise ValueError(f"eel_resolution must be 'label' or 'mask', got {eel_resolution!r}")
        if inlier_entropy not in ("confident", "paper"):
            raise ValueError(f"inlier_entropy must be 'confident' or 'paper', got {inlier_entropy!r}")
        if eel_logits not in MASK_CLASS_WEIGHTS:
            raise ValueError(f"eel_logits must be one of {', '.join(MASK_CLASS_WEIGHTS)}, got {eel_logits!r}")
        self.num_classes = num_classes
        self.matcher = matcher or HungarianMatcher(class_weight, mask_weight, dice_weight, num_points)
        self.class_weight, self.mask_weight, self.dice_weight = class_weight, mask_weight, dice_weight
        self.ce_weight = ce_weight
        self.num_points = num_points
        self.oversample_ratio = oversample_ratio
        self.importance_sample_ratio = importance_sample_ratio
        self.deep_supervision = deep_supervision
        self.anomaly_loss = anomaly_loss
        if anomaly_weight is None:
            anomaly_weight = EEL_WEIGHT if anomaly_loss == "eel" else CONTRASTIVE_WEIGHT
        self.anomaly_weight = anomaly_weight
        self.margin = margin
        self.void_as_inlier = void_as_inlier
        self.contrastive_resize = contrastive_resize
        self.alpha = alpha
        self.inlier_entropy = inlier_entropy
        self.eel_resolution = eel_resolution
        self.eel_logits = eel_logits
        self.anomaly_on_aux = anomaly_on_aux
        self.mask_stride = mask_stride
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = no_object_weight
        self.register_buffer("empty_weight", empty_weight)

    @property
    def weights(self) -> dict[str, float]:
        """The weight of each term's base name in ``"total"``."""
        weights = {"ce": self.ce_weight * self.class_weight, "mask": self.mask_weight, "dice": self.dice_weight}
        if self.anomaly_loss is not None:
            weights[self.anomaly_loss] = self.anomaly_weight
        return weights

    def _class_term(self, logits: torch.Tensor, targets: list[dict], indices) -> torch.Tensor:
        target_classes = torch.full(logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device)
        for image, (queries, matched) in enumerate(indices):
            target_classes[image, queries.to(logits.device)] = targets[image]["labels"][matched].to(logits.device)
        nll = F.cross_entropy(_at_least_float32(logits).transpose(1, 2), target_classes, reduction="none")
        weight = self.empty_weight.to(device=nll.device, dtype=nll.dtype)[target_classes]
        return _pooled((weight * nll).sum(), weight.sum())

    def _mask_terms(self, masks: torch.Tensor, targets: list[dict], indices, num_masks: torch.Tensor,
                    generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
        sources = [masks[image, queries.to(masks.device)] for image, (queries, _) in enumerate(indices)]
        chosen = [targets[image]["masks"][matched] for image, (_, matched) in enumerate(indices)]
        source = _at_least_float32(torch.cat(sources)).unsqueeze(1)
        if source.shape[0] == 0:
            zero = masks.sum() * 0.0
            return _pooled(zero, num_masks), _pooled(zero, num_masks)
        target = torch.cat(chosen).to(source).unsqueeze(1)
        with torch.no_grad():
            if self.num_points is None:
                coords = _grid_centres(tuple(target.shape[-2:]), source.device).expand(source.shape[0], -1, -1)
            elif isinstance(generator, (list, tuple)):  # one generator per image: points of an image do not depend on its batch
                counts = [len(queries) for queries, _ in indices]
                coords = torch.cat([uncertain_point_coords(part, self.num_points, self.oversample_ratio, self.importance_sample_ratio,
                                                           generator[image])
                                    for image, part in enumerate(source.split(counts)) if counts[image]])
            else:
                coords = uncertain_point_coords(source, self.num_points, self.oversample_ratio,
                                                self.importance_sample_ratio, generator)
            point_targets = point_sample(target, coords)[:, 0]
        point_logits = point_sample(source, coords)[:, 0]
        bce = F.binary_cross_entropy_with_logits(point_logits, point_targets, reduction="none").mean(1)
        probs = torch.sigmoid(point_logits)
        dice = 1 - (2 * (probs * point_targets).sum(1) + 1) / (probs.sum(1) + point_targets.sum(1) + 1)
        return _pooled(bce.sum(), num_masks), _pooled(dice.sum(), num_masks)

    def _anomaly_term(self, logits: torch.Tensor, masks: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.anomaly_loss == "contrastive":
            return mask_contrastive_loss(logits, masks, labels, self.margin, self.mask_stride, self.void_as_inlier,
                                         self.contrastive_resize)
        return mask_eel_loss(logits, masks, labels, self.alpha, self.inlier_entropy, self.mask_stride, self.eel_resolution,
                             self.eel_logits)

    def set_losses(self, outputs: Mapping, labels: torch.Tensor, targets: list[dict], num_masks: torch.Tensor,
                   generator: torch.Generator | None = None, anomaly: bool = True) -> dict[str, torch.Tensor]:
        """The unweighted terms of one prediction set (matched here)."""
        logits, masks = check_mask_outputs(outputs, self.num_classes)
        indices = self.matcher(outputs, targets, generator)
        terms = {"ce": self._class_term(logits, targets, indices)}
        terms["mask"], terms["dice"] = self._mask_terms(masks, targets, indices, num_masks, generator)
        if self.anomaly_loss is not None and anomaly:
            terms[self.anomaly_loss] = self._anomaly_term(logits, masks, labels)
        return terms

    def forward(self, outputs: Mapping, labels: torch.Tensor, generator: torch.Generator | None = None
                ) -> dict[str, torch.Tensor]:
        logits, masks = check_mask_outputs(outputs, self.num_classes)
        padded = _padded_size(masks, self.mask_stride)
        _check_labels(labels, logits.shape[0], padded)
        labels = labels.to(masks.device)
        targets = semantic_targets(labels, self.num_classes, padded)
        num_masks = torch.tensor(float(sum(len(t["labels"]) for t in targets)), device=masks.device)
        sets = [("", outputs, True)]
        if self.deep_supervision:
            sets += [(f"_{i}", aux, self.anomaly_on_aux) for i, aux in enumerate(outputs.get("aux_outputs") or [])]
        weights = self.weights
        result: dict[str, torch.Tensor] = {}
        total = None
        for suffix, prediction, anomaly in sets:
            for name, value in self.set_losses(prediction, labels, targets, num_masks, generator, anomaly).items():
                result[name + suffix] = value
                total = weights[name] * value if total is None else total + weights[name] * value
        return {"total": total, **result}


# ---------------------------------------------------------------------------------------------
# recipes


def _setting(config: Any, name: str, default: Any) -> Any:
    if isinstance(config, Mapping):
        return config.get(name, default)
    return getattr(config, name, default)


def build_criterion(config: Any) -> SetCriterion:
    """The criterion a training config asks for: ``loss`` = ``"m2a-inlier"`` (Mask2Former's terms
    alone: Mask2Anomaly's stage 1), ``"m2a"`` (Mask2Anomaly, contrastive term weighted by
    ``anomaly_weight``) or ``"m2a+eel"`` (Eq. 10, λ = ``anomaly_weight``;
    ``alpha`` and ``inlier_entropy`` for Eq. 7); ``mask_loss`` overrides
    :data:`MASK_LOSS_DEFAULTS`. ``config`` is a :class:`~diffeel.train.TrainConfig` (its
    ``anomaly_weight`` is used as set: the ``m2a`` preset sets 1.0) or a mapping with the same
    names, where a missing ``anomaly_weight`` means 1.0 for ``m2a`` and 0.05 for ``m2a+eel``.
    """
    loss = _setting(config, "loss", None)
    if loss not in ANOMALY_TERMS:
        raise DiffeelError(f"a Mask2Anomaly criterion needs loss 'm2a-inlier', 'm2a' or 'm2a+eel', got {loss!r}")
    overrides = dict(_setting(config, "mask_loss", None) or {})
    unknown = sorted(set(overrides) - set(MASK_LOSS_DEFAULTS))
    if unknown:
        raise DiffeelError(f"unknown mask_loss setting {unknown[0]!r}; settings: {', '.join(MASK_LOSS_DEFAULTS)}")
    settings = {**MASK_LOSS_DEFAULTS, **overrides}
    anomaly = ANOMALY_TERMS[loss]
    default_weight = EEL_WEIGHT if anomaly == "eel" else CONTRASTIVE_WEIGHT
    try:
        return SetCriterion(
            NUM_CLASSES,
            class_weight=settings["class_weight"],
            mask_weight=settings["mask_weight"],
            dice_weight=settings["dice_weight"],
            no_object_weight=settings["no_object_weight"],
            num_points=settings["train_points"],
            oversample_ratio=settings["oversample_ratio"],
            importance_sample_ratio=settings["importance_sample_ratio"],
            deep_supervision=bool(settings["deep_supervision"]),
            ce_weight=settings["ce_weight"],
            anomaly_loss=anomaly,
            anomaly_weight=_setting(config, "anomaly_weight", default_weight),
            margin=settings["contrastive_margin"],
            void_as_inlier=bool(settings["contrastive_void_as_inlier"]),
            contrastive_resize=settings["contrastive_resize"],
            alpha=_setting(config, "alpha", 1.0),
            inlier_entropy=_setting(config, "inlier_entropy", "confident"),
            eel_resolution=settings["eel_resolution"],
            eel_logits=settings["eel_logits"],
            anomaly_on_aux=bool(settings["anomaly_on_aux"]),
            mask_stride=settings["mask_stride"],
        )
    except ValueError as error:
        raise DiffeelError(f"bad Mask2Anomaly loss settings: {error}") from error


def mask2anomaly_loss(outputs: Mapping, labels: torch.Tensor, config: Any,
                      generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
    """Mask2Anomaly's objective (``config.loss == "m2a"``) or Eq. 10 (``"m2a+eel"``) for one batch.

    ``{"total", "ce", "mask", "dice", "contrastive" | "eel", "ce_0", …}``; see :class:`SetCriterion`
    and :func:`build_criterion`. The criterion holds no parameters, so building it per call is cheap.
    """
    criterion = build_criterion(config).to(outputs["pred_logits"].device)
    return criterion(outputs, labels, image_generators(labels) if generator is None else generator)
