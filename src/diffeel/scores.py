"""Pixel-wise anomaly scores (section IV-B). Higher = more anomalous, everywhere.

Every function takes logits with the class axis at ``dim`` (default 1, i.e. ``(B, C, H, W)`` →
``(B, H, W)``), accepts torch tensors or numpy arrays (and returns the same kind), and works in at
least float32: float16/bfloat16 input is upcast, float64 stays float64. Energy and entropy are
computed from max-shifted logits, so results are finite for any finite input (tested at 1e4).
"""

from __future__ import annotations

import functools
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "msp",
    "max_logit",
    "energy",
    "entropy",
    "eel",
    "mask_logits",
    "mask_msp",
    "MASK_CLASS_WEIGHTS",
    "gaussian_smooth",
    "SCORES",
    "compute_score",
    "all_scores",
]


def _as_tensor(array) -> tuple[torch.Tensor, bool]:
    """Return a float tensor (≥ float32) and whether the caller gave numpy."""
    was_numpy = isinstance(array, np.ndarray)
    tensor = torch.from_numpy(array) if was_numpy else array
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"expected a torch tensor or numpy array, got {type(array).__name__}")
    if not tensor.is_floating_point():
        raise TypeError(f"expected floating-point logits, got {tensor.dtype}")
    if tensor.dtype in (torch.float16, torch.bfloat16):
        tensor = tensor.float()
    return tensor, was_numpy


def _returning_input_kind(compute: Callable[..., torch.Tensor]):
    """Wrap a torch implementation so numpy in gives numpy out."""

    @functools.wraps(compute)
    def wrapper(logits, *args, **kwargs):
        tensor, was_numpy = _as_tensor(logits)
        result = compute(tensor, *args, **kwargs)
        return result.numpy() if was_numpy else result

    return wrapper


def log_partition_and_entropy(logits: torch.Tensor, dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """``E = logsumexp_c(y)`` (Eq. 4) and ``H = -Σ p log p`` (Eq. 5) in one pass, differentiable.

    With ``z = y - max y``: ``E = max y + logsumexp(z)`` and ``H = logsumexp(z) - Σ p·z``. Both
    terms of ``H`` are non-negative, so there is no cancellation and no ``log(0)``, even for logits
    of magnitude 1e4 where the literal ``E - Σ p·y`` loses all precision in float32.
    """
    peak = logits.amax(dim=dim, keepdim=True).detach()
    shifted = logits - peak
    shifted_lse = torch.logsumexp(shifted, dim=dim, keepdim=True)
    probs = torch.exp(shifted - shifted_lse)
    entropy_map = (shifted_lse - (probs * shifted).sum(dim=dim, keepdim=True)).squeeze(dim)
    return (peak + shifted_lse).squeeze(dim), entropy_map


@_returning_input_kind
def msp(logits, dim: int = 1):
    """Maximum softmax probability score, Eq. 2: ``1 - max_c softmax(y)_c`` (Hendrycks & Gimpel)."""
    shifted = logits - logits.amax(dim=dim, keepdim=True)
    # max softmax = exp(-logsumexp(shifted)); expm1 keeps precision when the max is close to 1.
    return -torch.expm1(-torch.logsumexp(shifted, dim=dim))


@_returning_input_kind
def max_logit(logits, dim: int = 1):
    """Max-logit score (Hendrycks et al., 2022): ``-max_c y_c``."""
    return -logits.amax(dim=dim)


@_returning_input_kind
def energy(logits, dim: int = 1):
    """Energy score, Eq. 4: ``-E`` with ``E = logsumexp_c y_c`` (low energy = anomalous)."""
    return -torch.logsumexp(logits, dim=dim)


@_returning_input_kind
def entropy(logits, dim: int = 1):
    """Softmax entropy, Eq. 5: ``H = -Σ_c p_c log p_c`` with ``p = softmax(y)``, natural log."""
    return log_partition_and_entropy(logits, dim)[1]


@_returning_input_kind
def eel(logits, alpha: float = 1.0, dim: int = 1):
    """Energy-entropy score, Eq. 6: ``S = α·H(y) - E(y)``, α = 1 in the paper."""
    log_partition, entropy_map = log_partition_and_entropy(logits, dim)
    return alpha * entropy_map - log_partition


MASK_CLASS_WEIGHTS = ("raw", "softmax")  # the class weights of mask-wise logits: c[..., :C] or softmax(c)[..., :C]


def mask_class_weights(class_logits: torch.Tensor, class_weights: str) -> torch.Tensor:
    """The per-query class weights ``(…, N, C)`` of mask-wise logits: the raw class logits
    (``"raw"``) or their softmax over the C + 1 classes (``"softmax"``), "no object" dropped."""
    if class_weights == "raw":
        return class_logits[..., :-1]
    if class_weights == "softmax":
        return F.softmax(class_logits, dim=-1)[..., :-1]
    raise ValueError(f"class_weights must be one of {', '.join(MASK_CLASS_WEIGHTS)}, got {class_weights!r}")


def _mask_semantic(class_logits: torch.Tensor, mask_logits_: torch.Tensor, class_weights: str) -> torch.Tensor:
    """``w(c)^T · sigmoid(m)`` after shape checks, ``w`` of :func:`mask_class_weights` (shared by
    Eq. 3 and mask_logits)."""
    if class_logits.dim() != 3 or mask_logits_.dim() != 4:
        raise ValueError(
            "mask-wise scores need class logits (B, N, C+1) and mask logits (B, N, H, W), got "
            f"{tuple(class_logits.shape)} and {tuple(mask_logits_.shape)}"
        )
    if class_logits.shape[:2] != mask_logits_.shape[:2]:
        raise ValueError(
            f"class logits {tuple(class_logits.shape)} and mask logits {tuple(mask_logits_.shape)} "
            "disagree on batch size or number of queries"
        )
    weights = mask_class_weights(class_logits, class_weights)
    return torch.einsum("bnc,bnhw->bchw", weights, torch.sigmoid(mask_logits_))


def mask_logits(class_logits, mask_logits, class_weights: str = "raw"):
    """The per-pixel logits of a mask-wise model (section IV-B, below Eq. 5): ``y_hat =
    c[..., :C]^T · sigmoid(m)`` with the raw class logits, "no object" dropped.

    ``(B, N, C+1), (B, N, H, W) → (B, C, H, W)``; the result feeds :func:`energy`,
    :func:`entropy` and :func:`eel` (scores, and ``L_eel`` of Eq. 10) like pixel-wise logits.
    ``class_weights="softmax"`` weights the masks with ``softmax(c)[..., :C]`` instead (Mask2Former's
    semantic map, the form of Eq. 3), an ablation: its values lie in ``[0, N]``, which squashes the
    energy to about ``log C`` and leaves EEL little range.
    """
    class_tensor, was_numpy = _as_tensor(class_logits)
    mask_tensor, _ = _as_tensor(mask_logits)
    result = _mask_semantic(class_tensor, mask_tensor, class_weights)
    return result.numpy() if was_numpy else result


def mask_msp(class_logits, mask_logits):
    """Mask-wise MSP, Eq. 3: ``1 - max_c (softmax(c)[..., :C]^T · sigmoid(m))_c``."""
    class_tensor, was_numpy = _as_tensor(class_logits)
    mask_tensor, _ = _as_tensor(mask_logits)
    result = 1.0 - _mask_semantic(class_tensor, mask_tensor, "softmax").amax(dim=1)
    return result.numpy() if was_numpy else result


def _gaussian_kernel_1d(kernel_size: int, sigma: float, dtype: torch.dtype) -> torch.Tensor:
    half = (kernel_size - 1) / 2
    positions = torch.linspace(-half, half, kernel_size, dtype=torch.float64)
    weights = torch.exp(-0.5 * (positions / sigma) ** 2)
    return (weights / weights.sum()).to(dtype)


def gaussian_smooth(score_map, kernel_size: int = 7, sigma: float = 1.0):
    """Gaussian blur of a score map, as RPL's published inference applies to its energy score.

    Separable, reflect padding (``d c b | a b c d | c b a``), the normalised sampled Gaussian of
    ``kernel_size`` taps. Accepts ``(H, W)`` or ``(B, H, W)``; off by default everywhere, on for
    the RPL preset.
    """
    if kernel_size < 1 or kernel_size % 2 == 0:
        raise ValueError(f"kernel_size must be a positive odd number, got {kernel_size}")
    if not sigma > 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    tensor, was_numpy = _as_tensor(score_map)
    if tensor.dim() not in (2, 3):
        raise ValueError(f"expected a (H, W) or (B, H, W) score map, got shape {tuple(tensor.shape)}")
    pad = kernel_size // 2
    if min(tensor.shape[-2:]) <= pad:
        raise ValueError(f"score map {tuple(tensor.shape)} is too small for a {kernel_size}-tap blur")
    batch = tensor.reshape(-1, 1, *tensor.shape[-2:])
    kernel = _gaussian_kernel_1d(kernel_size, sigma, tensor.dtype)
    batch = F.conv2d(F.pad(batch, (pad, pad, 0, 0), mode="reflect"), kernel.view(1, 1, 1, -1))
    batch = F.conv2d(F.pad(batch, (0, 0, pad, pad), mode="reflect"), kernel.view(1, 1, -1, 1))
    result = batch.reshape(tensor.shape)
    return result.numpy() if was_numpy else result


SCORES: dict[str, Callable] = {
    "msp": msp,
    "max_logit": max_logit,
    "energy": energy,
    "entropy": entropy,
    "eel": eel,
}


def all_scores(logits, *, alpha: float = 1.0, dim: int = 1) -> dict:
    """Every score of :data:`SCORES` at once, sharing one pass for ``E`` and ``H`` (Eqs. 2, 4–6).

    The same values as the individual functions up to float rounding; for evaluating many scores
    of one model's output without recomputing the log-partition four times.
    """
    tensor, was_numpy = _as_tensor(logits)
    log_partition, entropy_map = log_partition_and_entropy(tensor, dim)
    peak = tensor.amax(dim=dim)
    maps = {
        "msp": -torch.expm1(peak - log_partition),  # 1 - max softmax, with max softmax = exp(max y - E)
        "max_logit": -peak,
        "energy": -log_partition,
        "entropy": entropy_map,
        "eel": alpha * entropy_map - log_partition,
    }
    return {name: value.numpy() if was_numpy else value for name, value in maps.items()}


def compute_score(name: str, logits, *, alpha: float = 1.0, dim: int = 1):
    """Compute the pixel-wise score called ``name`` (one of :data:`SCORES`)."""
    if name not in SCORES:
        raise ValueError(f"unknown score {name!r}; choose one of {', '.join(SCORES)}")
    if name == "eel":
        return eel(logits, alpha=alpha, dim=dim)
    return SCORES[name](logits, dim=dim)

