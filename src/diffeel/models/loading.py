"""How a model is loaded and run: strict loading, input conventions, the forward's precision and
the logits anomaly scores come from. Imports no model: models declare what these helpers read
(``input_normalization``, ``classifies_masks``, a ``scoring_logits(images)`` method)."""

from __future__ import annotations

import contextlib
import math

import torch
from torch import nn

from ..errors import DiffeelError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INPUT_NORMALIZATIONS = ("imagenet", "unit", "0-255")
PRECISIONS = ("float32", "bfloat16", "float16")


def without_common_prefix(state: dict, *prefixes: str) -> dict:
    """``state`` with the first of ``prefixes`` that every key carries removed (e.g. the ``module.``
    of a DataParallel / DDP save); a copy, unchanged when no prefix is common to all keys."""
    for prefix in prefixes:
        if state and all(key.startswith(prefix) for key in state):
            return {key[len(prefix):]: value for key, value in state.items()}
    return dict(state)


def under_prefix(state: dict, prefix: str) -> dict:
    """An official state dict (bare keys; a ``module.`` prefix of a ``DataParallel`` save removed)
    with every key placed under ``prefix``; a state dict already under it passes unchanged."""
    state = without_common_prefix(state, "module.")
    if state and all(key.startswith(prefix) for key in state):
        return state
    return {f"{prefix}{key}": value for key, value in state.items()}


def load_strict(model: nn.Module, state: dict, source: str, name: str) -> None:
    """``model.load_state_dict(state, strict=True)``, with one sentence naming the first key that
    is missing, unexpected or of the wrong shape. BatchNorm's ``num_batches_tracked`` counters may
    be absent (files from PyTorch < 0.4.1 lack them; inference never reads them)."""
    expected = model.state_dict()
    state = dict(state)
    for key in expected:
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = expected[key]
    missing = [key for key in expected if key not in state]
    unexpected = [key for key in state if key not in expected]
    more = lambda keys: f" (and {len(keys) - 1} more)" if len(keys) > 1 else ""  # noqa: E731
    if missing:
        raise DiffeelError(f"checkpoint {source} does not fit {name}: key {missing[0]!r} is missing{more(missing)}")
    if unexpected:
        raise DiffeelError(f"checkpoint {source} does not fit {name}: key {unexpected[0]!r} is unexpected{more(unexpected)}")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise DiffeelError(f"checkpoint {source} does not fit {name}: {key!r} is a {type(value).__name__}, not a tensor")
        if value.shape != expected[key].shape:
            raise DiffeelError(f"checkpoint {source} does not fit {name}: {key!r} has shape {list(value.shape)} in the file "
                               f"but {list(expected[key].shape)} in the model")
    model.load_state_dict(state, strict=True)


def input_normalization(model: nn.Module) -> str:
    """How ``model`` wants its input: ``imagenet`` (default), ``unit`` (RGB 0..1) or ``0-255``."""
    return getattr(model, "input_normalization", "imagenet")


def normalise(images: torch.Tensor, how: str) -> torch.Tensor:
    """RGB in the uint8 range, ``(N, 3, H, W)`` float → the model's input convention ``how``."""
    if how == "0-255":
        return images
    images = images / 255
    if how == "unit":
        return images
    mean = torch.tensor(IMAGENET_MEAN, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean) / std


def is_mask_model(model: nn.Module) -> bool:
    """Whether ``model`` classifies masks (Mask2Anomaly): its per-pixel logits are mask-wise."""
    return bool(getattr(model, "classifies_masks", False))


def forward_precision(device: torch.device, precision: str = "float32"):
    """The context a scoring forward runs in: ``float32`` as the weights are, or autocast to
    ``bfloat16`` (CPU and CUDA; fast on CPUs with AMX or AVX-512 BF16) or ``float16`` (CUDA only).
    Convolutions and matrix products run in the lower precision, the rest as autocast decides."""
    if precision not in PRECISIONS:
        raise DiffeelError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "float32":
        return contextlib.nullcontext()
    if precision == "float16" and torch.device(device).type != "cuda":
        raise DiffeelError("float16 precision needs a CUDA device; on the CPU use bfloat16")
    return torch.autocast(torch.device(device).type, dtype=getattr(torch, precision))


def scoring_logits(model: nn.Module, images: torch.Tensor, precision: str = "float32") -> torch.Tensor:
    """The logits anomaly scores come from, as float32 ``(N, C, H, W)``: what the model's own
    ``scoring_logits(images)`` gives when it has one (RPL: ``out2``, or ``out1`` when the residual
    module is untrained, computed alone; a mask model: its mask-wise logits at the input size),
    else the model's logits (``rpl_logits`` of an RPL-style output). The forward runs at
    ``precision`` (:func:`forward_precision`)."""
    own_choice = getattr(model, "scoring_logits", None)
    with forward_precision(images.device, precision):
        output = own_choice(images) if callable(own_choice) else model(images)
    if isinstance(output, tuple) and hasattr(output, "rpl_logits"):
        output = output.rpl_logits
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        if output.shape[1] < 2:
            raise DiffeelError(f"the model returned {output.shape[1]} class channel(s); anomaly scores compare at least 2 classes")
        return output.float()
    described = f"a {type(output).__name__}" + (f" of shape {list(output.shape)}" if isinstance(output, torch.Tensor) else "")
    raise DiffeelError(f"the model returned {described}; a scored model must return (N, C, H, W) logits")


def network_input_size(height: int, width: int, fixed: tuple[int, int] | None, scale: float, stride: int) -> tuple[int, int]:
    """``(height, width)`` a network with a fixed test size runs at: ``fixed`` (width, height, as
    its official script resizes every image to), or with ``fixed=None`` the image's own size times
    ``scale``, each side rounded to a multiple of the network's ``stride`` (its decoder needs one)."""
    if fixed is not None:
        return int(fixed[1]), int(fixed[0])
    return tuple(max(stride, int(round(side * scale / stride)) * stride) for side in (height, width))


def check_input_size(input_size, input_scale) -> tuple[tuple[int, int] | None, float]:
    """A model's ``input_size`` (None, or two positive whole numbers: width, height) and positive ``input_scale``."""
    if input_size is not None:
        if len(input_size) != 2 or not all(isinstance(side, int) and side > 0 for side in input_size):
            raise DiffeelError(f"input_size must be [width, height] in pixels or null (the image's own size), got {input_size!r}")
        input_size = (int(input_size[0]), int(input_size[1]))
    if not (isinstance(input_scale, (int, float)) and math.isfinite(input_scale) and input_scale > 0):
        raise DiffeelError(f"input_scale must be a positive number, got {input_scale!r}")
    return input_size, float(input_scale)

