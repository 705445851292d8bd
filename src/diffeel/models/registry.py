"""The model registry: registered names → factory, description and checkpoint layout.

The bottom of :mod:`diffeel.models`: it imports no model. Each model module registers its factory
with :func:`register_model` (timm's ``register_model`` pattern) and owns its checkpoint key mapping
and input convention; importing :mod:`diffeel.models` imports every model module, so every name is
registered before anyone asks for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from torch import nn


@dataclass(frozen=True)
class ModelEntry:
    build: Callable[..., nn.Module]
    description: str
    convert: Callable[[dict, nn.Module], dict] | None = None  # the checkpoint file's layout → the model's keys


_MODELS: dict[str, ModelEntry] = {}


def register_model(name: str, description: str, convert: Callable[[dict, nn.Module], dict] | None = None):
    """Decorator: register the decorated factory under ``name``; ``convert(state, model)`` maps a
    checkpoint's state dict to the model's keys before strict loading."""

    def register(build: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _MODELS:
            raise ValueError(f"model {name!r} is registered twice")
        _MODELS[name] = ModelEntry(build, description, convert)
        return build

    return register


def model_entry(name: str) -> ModelEntry | None:
    """The registered entry of ``name``, or None."""
    return _MODELS.get(name)


def list_models() -> list[str]:
    return sorted(_MODELS)


def describe_models() -> str:
    return "\n".join(f"{name}: {_MODELS[name].description}" for name in list_models())
