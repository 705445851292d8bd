"""``create_model``: a registered model or any user factory, with its checkpoint loaded strictly.

Every key of the model must be in the file and every key of the file must be used; otherwise one
sentence names the first offending key. Foreign layouts are mapped explicitly by each registered
model's converter (its module documents the layouts it reads), never by loading loosely.

A user factory (``package.module:factory`` or ``path/to/file.py:factory``) returns an
``nn.Module`` whose forward gives ``(N, 19, H, W)`` logits (or an
:class:`~diffeel.models.rpl.RPLOutput`); its input is ImageNet-normalised RGB unless the module
sets ``input_normalization = "unit"`` (RGB in 0..1) or ``"0-255"``. A factory that takes a
``checkpoint`` argument loads its own weights; otherwise the file is loaded strictly.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..errors import DiffeelError
from .checkpoints import load_state
from .hub import published_checkpoint
from .loading import INPUT_NORMALIZATIONS, load_strict, without_common_prefix
from .registry import list_models, model_entry


def read_model_state(path, allow_pickle: bool = False) -> dict:
    """The model weights of a checkpoint file (under ``model`` or ``state_dict``, or bare)."""
    return _unwrap(load_state(path, allow_pickle=allow_pickle), path)


def _unwrap(raw, path) -> dict:
    """The state dict inside a checkpoint file: under ``model`` or ``state_dict``, or bare."""
    if isinstance(raw, dict):
        for wrapper in ("model", "state_dict"):
            if isinstance(raw.get(wrapper), dict):
                return raw[wrapper]
        if raw and all(isinstance(value, torch.Tensor) for value in raw.values()):
            return raw
    raise DiffeelError(f"checkpoint {path} holds no model weights (expected a state dict, or one under 'model' or 'state_dict')")


def _import_from_here(target: str):
    """``importlib.import_module(target)``, also finding a module in the current folder (the
    ``diffeel`` command, unlike ``python -m``, does not put it on ``sys.path``)."""
    try:
        return importlib.import_module(target)
    except ModuleNotFoundError as error:
        here = str(Path.cwd())
        if error.name != target.split(".")[0] or here in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(target)


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
            module = _import_from_here(target)
    except DiffeelError:
        raise
    except Exception as error:  # a user's module can fail in any way while importing
        raise DiffeelError(f"could not import {target} for the model factory ({type(error).__name__}: {error})") from error
    factory = getattr(module, attribute, None)
    if not callable(factory):
        raise DiffeelError(f"{target} has no callable {attribute!r} to build the model")
    return factory


def _user_model(spec: str, checkpoint, allow_pickle: bool, options: dict) -> nn.Module:
    factory = _import_factory(spec)
    takes_checkpoint = "checkpoint" in inspect.signature(factory).parameters
    try:
        model = factory(**options, **({"checkpoint": checkpoint} if takes_checkpoint else {}))
    except DiffeelError:
        raise
    except Exception as error:  # the user's factory may raise anything
        raise DiffeelError(f"the model factory {spec} failed ({type(error).__name__}: {error})") from error
    if not isinstance(model, nn.Module):
        raise DiffeelError(f"the model factory {spec} returned a {type(model).__name__}, not a torch.nn.Module")
    normalization = getattr(model, "input_normalization", "imagenet")
    if normalization not in INPUT_NORMALIZATIONS:
        raise DiffeelError(f"{spec} sets input_normalization = {normalization!r}; use one of {', '.join(INPUT_NORMALIZATIONS)}")
    if checkpoint is not None and not takes_checkpoint:
        raw = load_state(checkpoint, allow_pickle=allow_pickle)
        state = without_common_prefix(_unwrap(raw, checkpoint), "module.")
        if _is_adapter_state(state):
            return _adapted(model, raw, state, checkpoint, spec)
        load_strict(model, state, checkpoint, spec)
    return model


def _is_adapter_state(state: dict) -> bool:
    """Whether ``state`` is a trained residual adapter's (``host.*`` and ``residual_adapter.*``)."""
    return any(key.startswith("residual_adapter.") for key in state)


def _adapted(host: nn.Module, raw, state: dict, checkpoint, name: str) -> nn.Module:
    """The adapter a training run saved around ``host``, at the attachment point it trained
    (the run's ``adapter_point``, else the host's own), loaded strictly."""
    from .adapter import ResidualAdapter

    config = raw.get("config") if isinstance(raw, dict) else None
    point = (config or {}).get("adapter_point")
    model = ResidualAdapter(host, point)
    load_strict(model, state, checkpoint, f"{name} with its residual adapter at {model.point!r}")
    return model


def create_model(name: str, checkpoint=None, *, allow_pickle: bool = False, published_weights: bool = True,
                 **options) -> nn.Module:
    """Build model ``name`` (registered, or ``module:factory``) and load ``checkpoint`` strictly.

    Without a checkpoint, a model with public weights (:mod:`.hub`) loads them from the cache,
    or fails with one sentence naming ``diffeel models fetch``; ``published_weights=False`` builds
    it with its initial weights instead. ``options`` go to the model's constructor
    (``width_divisor=16`` builds a tiny ``rpl_wrn38``). ``allow_pickle=True`` opts in to legacy
    checkpoints that need full unpickling (it can run code). The model is returned in eval mode.
    """
    entry = model_entry(name)
    if entry is None:
        return _user_model(name, checkpoint, allow_pickle, options).eval()
    if checkpoint is None and published_weights:
        checkpoint = published_checkpoint(name)
    try:
        model = entry.build(**options)
    except TypeError as error:
        raise DiffeelError(f"model {name} does not take these options ({error})") from None
    if checkpoint is not None:
        raw = load_state(checkpoint, allow_pickle=allow_pickle)
        state = _unwrap(raw, checkpoint)
        if _is_adapter_state(state):
            return _adapted(model, raw, state, checkpoint, name).eval()
        if entry.convert is not None:
            state = entry.convert(state, model)
        load_strict(model, state, checkpoint, name)
    return model.eval()
