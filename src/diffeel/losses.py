"""Training losses (section IV-B): energy-entropy learning, the RPL consistency loss and baselines.

Logits are ``(B, C, H, W)`` torch tensors; masks are ``(B, H, W)`` boolean tensors. Void pixels are
in neither mask and never enter a loss. Use :func:`split_train_labels` to get the masks from a
training label map (Cityscapes train ids, ``ANOMALY_TRAIN_ID`` for pasted anomalies, ``VOID``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable

import torch
import torch.nn.functional as F

from .labels import ANOMALY_TRAIN_ID, NUM_CLASSES
from .scores import log_partition_and_entropy

__all__ = [
    "split_train_labels",
    "eel_loss",
    "consistency_loss",
    "rpl_energy_loss",
    "rpl_inlier_loss",
    "rpl_eel_total_loss",
    "rpl_baseline_total_loss",
    "EEL_WEIGHT",
    "RPL_ENERGY_WEIGHT",
]

EEL_WEIGHT = 0.05  # λ of Eq. 8 (section V-A)
RPL_ENERGY_WEIGHT = 0.05  # weight of RPL's anomaly energy hinge in RPL's published recipe
RPL_ENTROPY_PROB_FLOOR = 1e-7  # RPL clamps probabilities before the log in its entropy


def split_train_labels(labels: torch.Tensor, num_classes: int = NUM_CLASSES) -> tuple[torch.Tensor, torch.Tensor]:
    """``(anomaly_mask, inlier_mask)`` of a train-id label map: ``ANOMALY_TRAIN_ID`` vs ``0..C-1``.

    Everything else (``VOID`` and ids with no class) is in neither mask.
    """
    anomaly_mask = labels == ANOMALY_TRAIN_ID
    inlier_mask = (labels >= 0) & (labels < num_classes)
    return anomaly_mask, inlier_mask


def _check_masks(logits: torch.Tensor, *masks: torch.Tensor) -> None:
    if logits.dim() != 4:
        raise ValueError(f"expected logits of shape (B, C, H, W), got {tuple(logits.shape)}")
    expected = (logits.shape[0], *logits.shape[2:])
    for mask in masks:
        if tuple(mask.shape) != tuple(expected):
            raise ValueError(f"mask shape {tuple(mask.shape)} does not match logits {tuple(logits.shape)}")
        if mask.dtype != torch.bool:
            raise TypeError(f"masks must be boolean tensors, got {mask.dtype}")


# (sum over processes, number of processes) while data-parallel training; None for one process
_process_sum: tuple[Callable[[torch.Tensor], torch.Tensor], int] | None = None


@contextlib.contextmanager
def pooled_over_processes(all_reduce_sum: Callable[[torch.Tensor], torch.Tensor], world_size: int):
    """Inside, every batch mean divides by the count over all processes' shares of the batch
    (times ``world_size``, which data-parallel gradient averaging divides back out): each process's
    gradient is then its share of the gradient of the whole global batch's loss, and their average
    equals a single process's gradient on that batch."""
    global _process_sum
    previous, _process_sum = _process_sum, (all_reduce_sum, world_size)
    try:
        yield
    finally:
        _process_sum = previous


def _pooled(total: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
    """``total / count`` of a batch (zero, keeping the graph, when the count is 0), with the count
    taken over all processes inside :func:`pooled_over_processes`."""
    scale = 1.0
    if _process_sum is not None:
        all_reduce_sum, scale = _process_sum
        count = all_reduce_sum(count.detach().to(torch.float64))
    if count == 0:
        return total * 0.0
    return total / count.to(total.dtype) * scale


def _masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``values`` over ``mask`` pooled over the batch; a zero that keeps the graph if empty."""
    return _pooled((values * mask).sum(), mask.sum())


def eel_loss(
    logits: torch.Tensor,
    anomaly_mask: torch.Tensor,
    inlier_mask: torch.Tensor,
    alpha: float = 1.0,
    inlier_entropy: str = "confident",
) -> torch.Tensor:
    """Energy-entropy learning loss, Eq. 7.

    ``L = mean_{m=1}[-log σ(-E) - α·H] + mean_{m=0}[-log(1-σ(-E)) ± α·H]`` with ``E`` the
    log-partition (Eq. 4) and ``H`` the softmax entropy (Eq. 5): a binary cross-entropy on the
    anomaly probability ``σ(-E)`` over both sets, pushing anomalies to low energy and high entropy.
    ``-log σ(-E) = softplus(E)`` and ``-log(1-σ(-E)) = softplus(-E)`` keep it finite.

    ``inlier_entropy="confident"`` (default) adds ``+α·H`` for inliers so that they are pushed to
    low entropy, as the paper's text intends; ``"paper"`` keeps the sign as printed in Eq. 7
    (``-α·H``, which raises inlier entropy). Reduction: the mean over each set's pixels per image,
    the two terms summed, then the mean over the images that have any non-void pixel; an image
    without anomaly pixels contributes its inlier term only.
    """
    if inlier_entropy not in ("confident", "paper"):
        raise ValueError(f"inlier_entropy must be 'confident' or 'paper', got {inlier_entropy!r}")
    _check_masks(logits, anomaly_mask, inlier_mask)
    if bool((anomaly_mask & inlier_mask).any()):
        raise ValueError("anomaly_mask and inlier_mask overlap; a pixel must be in at most one set")
    log_partition, entropy_map = log_partition_and_entropy(logits, dim=1)
    inlier_sign = 1.0 if inlier_entropy == "confident" else -1.0
    anomaly_terms = F.softplus(log_partition) - alpha * entropy_map
    inlier_terms = F.softplus(-log_partition) + inlier_sign * alpha * entropy_map

    def per_image_mean(terms: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        counts = mask.flatten(1).sum(1)
        sums = (terms * mask).flatten(1).sum(1)
        return torch.where(counts > 0, sums / counts.clamp(min=1), torch.zeros_like(sums))

    per_image = per_image_mean(anomaly_terms, anomaly_mask) + per_image_mean(inlier_terms, inlier_mask)
    has_pixels = (anomaly_mask | inlier_mask).flatten(1).any(1)
    return _pooled((per_image * has_pixels).sum(), has_pixels.sum())


def consistency_loss(logits: torch.Tensor, ref_logits: torch.Tensor, inlier_mask: torch.Tensor) -> torch.Tensor:
    """Consistency loss for RPL + EEL, Eq. 9, over inlier pixels (mean pooled over the batch).

    ``CE(y^, argmax y~) + KL(softmax y~ ‖ softmax y^) + (H(y~) - H(y^))²`` where ``y~`` is the
    frozen model's prediction (``ref_logits``, detached here) and ``y^`` the trained one. CE uses
    the hard pseudo-label, as RPL does, so no ground truth is needed for inliers.
    """
    _check_masks(logits, inlier_mask)
    if ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits {tuple(ref_logits.shape)} and logits {tuple(logits.shape)} differ in shape")
    ref_logits = ref_logits.detach()
    log_probs = F.log_softmax(logits, dim=1)
    ref_log_probs = F.log_softmax(ref_logits, dim=1)
    pseudo_label = ref_logits.argmax(dim=1, keepdim=True)
    cross_entropy = -log_probs.gather(1, pseudo_label).squeeze(1)
    kl_divergence = (ref_log_probs.exp() * (ref_log_probs - log_probs)).sum(dim=1)
    entropy_gap = log_partition_and_entropy(ref_logits)[1] - log_partition_and_entropy(logits)[1]
    per_pixel = cross_entropy + kl_divergence + entropy_gap**2
    return _masked_mean(per_pixel, inlier_mask)


def rpl_energy_loss(logits: torch.Tensor, anomaly_mask: torch.Tensor) -> torch.Tensor:
    """RPL's anomaly loss (the baseline EEL replaces): ``mean_{anomaly} ReLU(logsumexp_c y_c)``.

    A one-sided linear hinge on the anomalies' log-partition, pooled over the batch; RPL weights it
    by 0.05 (:data:`RPL_ENERGY_WEIGHT`).
    """
    _check_masks(logits, anomaly_mask)
    return _masked_mean(F.relu(torch.logsumexp(logits, dim=1)), anomaly_mask)


def _rpl_entropy(logits: torch.Tensor) -> torch.Tensor:
    probs = F.softmax(logits, dim=1)
    return -(probs * torch.log(probs.clamp(min=RPL_ENTROPY_PROB_FLOOR))).sum(dim=1)


def rpl_inlier_loss(logits: torch.Tensor, ref_logits: torch.Tensor, inlier_mask: torch.Tensor) -> torch.Tensor:
    """RPL's inlier loss (baseline): ``CE(y^, argmax y~) + (H(y~) - H(y^))²``, probabilities
    floored at 1e-7 inside the entropy's log as in RPL's code; pooled mean over inlier pixels."""
    _check_masks(logits, inlier_mask)
    ref_logits = ref_logits.detach()
    pseudo_label = ref_logits.argmax(dim=1, keepdim=True)
    cross_entropy = -F.log_softmax(logits, dim=1).gather(1, pseudo_label).squeeze(1)
    entropy_gap = _rpl_entropy(ref_logits) - _rpl_entropy(logits)
    return _masked_mean(cross_entropy + entropy_gap**2, inlier_mask)


def rpl_eel_total_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    anomaly_mask: torch.Tensor,
    inlier_mask: torch.Tensor,
    weight: float = EEL_WEIGHT,
    alpha: float = 1.0,
    inlier_entropy: str = "confident",
) -> dict[str, torch.Tensor]:
    """RPL + EEL objective, Eq. 8: ``L = L_cons + λ·L_eel`` with λ = 0.05.

    Returns ``{"total", "consistency", "eel"}`` so that training can log each term.
    """
    consistency = consistency_loss(logits, ref_logits, inlier_mask)
    energy_entropy = eel_loss(logits, anomaly_mask, inlier_mask, alpha=alpha, inlier_entropy=inlier_entropy)
    return {"total": consistency + weight * energy_entropy, "consistency": consistency, "eel": energy_entropy}


def rpl_baseline_total_loss(
    logits: torch.Tensor,
    ref_logits: torch.Tensor,
    anomaly_mask: torch.Tensor,
    inlier_mask: torch.Tensor,
    weight: float = RPL_ENERGY_WEIGHT,
) -> dict[str, torch.Tensor]:
    """RPL's published objective: inlier CE + entropy-MSE + 0.05 · anomaly energy hinge.

    Returns ``{"total", "inlier", "energy"}``.
    """
    inlier = rpl_inlier_loss(logits, ref_logits, inlier_mask)
    energy_hinge = rpl_energy_loss(logits, anomaly_mask)
    return {"total": inlier + weight * energy_hinge, "inlier": inlier, "energy": energy_hinge}
