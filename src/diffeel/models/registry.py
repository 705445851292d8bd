"""Named models, any user model through ``package.module:factory``, and strict checkpoint loading.

``create_model(name, checkpoint=None, **options)`` builds a registered model (``list_models()``)
or calls a user factory, then loads the checkpoint with strict key matching: every key of the
model must be in the file and every key of the file must be used; otherwise one sentence names the
first offending key. Foreign layouts are mapped explicitly, never by loading loosely:

``rpl_wrn38`` reads three layouts.

- RPL's released ``res.pth``: ``{'model': {'branch1.<key>': ...}, 'optimizer', 'epoch', 'iteration'}``.
- NVIDIA's ``cityscapes_best.pth`` (the closed-set model RPL starts from): ``{'state_dict':
  {'module.<key>': ...}}`` without a residual module, whose training-only entries (``criterion``,
  ``dsn``, ``final2``) are dropped. The residual module is initialised as RPL does: ``atten_aspp``
  and ``bot_atten_aspp`` copy ``aspp`` and ``bot_aspp``; ``atten_aspp_final`` keeps its Kaiming
  initialisation (seeded by the global torch seed).
- diffeel's own training checkpoints: ``{'model': {...}, 'config': {...}}``, plain keys.

A user factory returns an ``nn.Module`` whose forward gives ``(N, 19, H, W)`` logits (or an
:class:`~diffeel.models.rpl.RPLOutput`); its input is ImageNet-normalised RGB unless the module
sets ``input_normalization = "unit"`` (RGB in 0..1) or ``"0-255"``. A factory that takes a
``checkpoint`` argument loads its own weights; otherwise the file is loaded strictly.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import DiffeelError
from .checkpoints import load_state
from .deeplab import IMAGENET_MEAN, IMAGENET_STD, SmallDeepLab
from .rpl import RPLModel
from .wider_resnet import RPLWiderResNet38

INPUT_NORMALIZATIONS = ("imagenet", "unit", "0-255")
_NVIDIA_TRAINING_ONLY = ("criterion.", "dsn.", "final2.")


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    description: str
    convert: Callable[[dict, nn.Module], dict] | None = None  # file layout → the model's keys


def _strip(state: dict, prefix: str) -> dict:
    return {key[len(prefix):] if key.startswith(prefix) else key: value for key, value in state.items()}


def _unwrap(raw, path) -> tuple[dict, str]:
    """The state dict inside a checkpoint file, and the wrapper it sat in (model, state_dict, bare)."""
    if isinstance(raw, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(raw.get(wrapper), dict):
                return raw[wrapper], wrapper
        if raw and all(isinstance(value, torch.Tensor) for value in raw.values()):
            return raw, "bare"
    raise DiffeelError(f"checkpoint {path} holds no model weights (expected a state dict, or one under 'model' or 'state_dict')")


def rpl_wrn38_state(state: dict, model: RPLWiderResNet38) -> dict:
    """Map RPL's, NVIDIA's or diffeel's keys to :class:`RPLWiderResNet38`'s, initialising the
    residual module from ``aspp`` / ``bot_aspp`` when the file is a closed-set model."""
    for prefix in ("module.branch1.", "branch1.", "module."):
        if state and all(key.startswith(prefix) for key in state):
            state = _strip(state, prefix)
            break
    state = {key: value for key, value in state.items() if not key.startswith(_NVIDIA_TRAINING_ONLY)}
    model.residual_trained = any(key.startswith("residual_block.") for key in state)
    if not model.residual_trained:
        for key in list(state):
            if key.startswith(("aspp.", "bot_aspp.")):
                state["residual_block." + key.replace("aspp", "atten_aspp", 1)] = state[key].clone()
        state["residual_block.atten_aspp_final.weight"] = model.residual_block.atten_aspp_final.weight.detach().clone()
    return state


def _small_rpl(**options) -> RPLModel:
    return RPLModel(SmallDeepLab(**options))


def _u2net(**options):
    from .u2net import U2NET

    return U2NET(**options)


def _u2netp(**options):
    from .u2net import U2NETP

    return U2NETP(**options)


def _mask2anomaly(**options):
    from .mask2anomaly import Mask2Anomaly

    return Mask2Anomaly(**options)


def _mask2anomaly_state(state: dict, model) -> dict:
    from .mask2anomaly import mask2anomaly_state

    return mask2anomaly_state(state, model)


def _dovenet(**options):
    from .dovenet import DoveNetGenerator

    return DoveNetGenerator(**options)


def _dovenet_state(state: dict, model) -> dict:
    from .dovenet import dovenet_state

    return dovenet_state(state, model)


_MODELS: dict[str, ModelEntry] = {
    "rpl_wrn38": ModelEntry(
        RPLWiderResNet38,
        "RPL (ICCV 2023): DeepLabV3+ on WiderResNet38-A2, output stride 8, with the residual module; "
        "loads RPL's res.pth, NVIDIA's cityscapes_best.pth or a diffeel training checkpoint",
        rpl_wrn38_state,
    ),
    "small_deeplab": ModelEntry(SmallDeepLab, "the demo's small DeepLabV3+ for CPUs (diffeel train --recipe demo-closed)"),
    "small_rpl": ModelEntry(_small_rpl, "the RPL module around the small DeepLab (diffeel train --recipe demo-rpl / demo-rpl+eel)"),
    "mask2anomaly_r50": ModelEntry(_mask2anomaly, "Mask2Anomaly (Rai et al.): Mask2Former ResNet-50 with global mask attention, "
                                   "plain PyTorch; loads the official model_final.pth", _mask2anomaly_state),
    "u2net": ModelEntry(_u2net, "U^2-Net salient object detector (Qin et al., 2020): loads the released u2net.pth; "
                        "model(x) gives 7 sigmoid maps, fused first"),
    "u2netp": ModelEntry(_u2netp, "U^2-NetP, the small U^2-Net: loads the released u2netp.pth"),
    "dovenet": ModelEntry(_dovenet, "DoveNet's harmonization generator (CVPR 2020): loads the released latest_net_G.pth; "
                          "model(comp, mask) at 256x256", _dovenet_state),
}


def list_models() -> list[str]:
    return sorted(_MODELS)


def describe_models() -> str:
    return "\n".join(f"{name}: {_MODELS[name].description}" for name in list_models())


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


def _import_factory(spec: str) -> Callable[..., nn.Module]:
    """``package.module:factory`` or ``path/to/file.py:factory``."""
    target, _, attribute = spec.rpartition(":")
    if not target or not attribute:
        raise DiffeelError(f"unknown model {spec!r}; choose one of {', '.join(list_models())} or give package.module:factory")
    try:
        if target.endswith(".py") or "/" in target:
            path = Path(target)
            if not path.is_file():
                raise DiffeelError(f"model factory file {path} does not exist")
            module_spec = importlib.util.spec_from_file_location(f"diffeel_user_model_{path.stem}", path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[module_spec.name] = module
            module_spec.loader.exec_module(module)
        else:
            module = importlib.import_module(target)
    except DiffeelError:
        raise
    except Exception as error:  # a user's module can fail in any way while importing
        raise DiffeelError(f"could not import {target} for the model factory ({type(error).__name__}: {error})") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise DiffeelError(f"{target} has no callable {attribute!r} to build the model")
    return factory


def create_model(name: str, checkpoint=None, *, allow_pickle: bool = False, **options) -> nn.Module:
    """Build model ``name`` (registered, or ``module:factory``) and load ``checkpoint`` strictly.

    ``options`` go to the model's constructor (``width_divisor=16`` builds a tiny ``rpl_wrn38``).
    ``allow_pickle=True`` opts in to legacy checkpoints that need full unpickling (it can run code).
    The model is returned in eval mode.
    """
    entry = _MODELS.get(name)
    if entry is None:
        factory = _import_factory(name)
        takes_checkpoint = "checkpoint" in inspect.signature(factory).parameters
        try:
            model = factory(**options, **({"checkpoint": checkpoint} if takes_checkpoint else {}))
        except DiffeelError:
            raise
        except Exception as error:  # the user's factory may raise anything
            raise DiffeelError(f"the model factory {name} failed ({type(error).__name__}: {error})") from error
        if not isinstance(model, nn.Module):
            raise DiffeelError(f"the model factory {name} returned a {type(model).__name__}, not a torch.nn.Module")
        normalization = getattr(model, "input_normalization", "imagenet")
        if normalization not in INPUT_NORMALIZATIONS:
            raise DiffeelError(f"{name} sets input_normalization = {normalization!r}; use one of {', '.join(INPUT_NORMALIZATIONS)}")
        if checkpoint is not None and not takes_checkpoint:
            state, _ = _unwrap(load_state(checkpoint, allow_pickle=allow_pickle), checkpoint)
            load_strict(model, _strip(state, "module.") if all(k.startswith("module.") for k in state) else state, checkpoint, name)
        return model.eval()
    try:
        model = entry.build(**options)
    except TypeError as error:
        raise DiffeelError(f"model {name} does not take these options ({error})") from None
    if checkpoint is not None:
        state, _ = _unwrap(load_state(checkpoint, allow_pickle=allow_pickle), checkpoint)
        if entry.convert is not None:
            state = entry.convert(state, model)
        load_strict(model, state, checkpoint, name)
    return model.eval()


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
    from .mask2anomaly import Mask2Anomaly

    return isinstance(model, Mask2Anomaly)


PRECISIONS = ("float32", "bfloat16", "float16")


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
    """The logits anomaly scores come from: RPL's ``out2`` (``out1`` when the residual module is
    untrained, i.e. a closed-set checkpoint), computed alone; a mask model's mask-wise logits
    (Eq. 3's class map, ``Σ_q softmax(c_q)[:C]·sigmoid(m_q)``) at the input size; else the model's
    logits. The forward runs at ``precision`` (:func:`forward_precision`); the logits come back as
    float32 (a mask model's class map is computed in float32 from its outputs)."""
    if is_mask_model(model):
        from .mask2anomaly_inference import mask_wise_logits

        with forward_precision(images.device, precision):
            outputs = model(images)
        return mask_wise_logits(outputs, outputs["image_size"])
    with forward_precision(images.device, precision):
        if isinstance(model, (RPLModel, RPLWiderResNet38)):
            wanted = "rpl" if getattr(model, "residual_trained", True) else "host"
            output = model(images, outputs=(wanted,))
            return (output.rpl_logits if wanted == "rpl" else output.host_logits).float()
        output = model(images)
    if isinstance(output, tuple) and hasattr(output, "rpl_logits"):
        output = output.rpl_logits
    if isinstance(output, torch.Tensor) and output.ndim == 4:
        return output.float()
    described = f"a {type(output).__name__}" + (f" of shape {list(output.shape)}" if isinstance(output, torch.Tensor) else "")
    raise DiffeelError(f"the model returned {described}; a scored model must return (N, C, H, W) logits")
