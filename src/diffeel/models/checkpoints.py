"""Checkpoints as plain tensors: written atomically, read with ``weights_only=True``."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import torch

from ..errors import DiffeelError


def save_state(path, state: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(state, temporary)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def load_state(path, allow_pickle: bool = False) -> dict:
    """Load a checkpoint; ``allow_pickle=True`` is an explicit opt-in for legacy files (a pickle can run code)."""
    path = Path(path)
    if path.is_dir():
        raise DiffeelError(f"checkpoint {path} is a folder; give the checkpoint file inside it (e.g. {path / 'checkpoint.pt'})")
    if not path.is_file():
        raise DiffeelError(f"checkpoint {path} does not exist")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about foreign pickles before it refuses them
            return torch.load(path, map_location="cpu", weights_only=not allow_pickle)
    except pickle.UnpicklingError as error:
        if allow_pickle or "Unsupported global" not in str(error):  # damaged, not a class weights_only refuses
            raise DiffeelError(f"checkpoint {path} could not be read ({type(error).__name__}): it is damaged or not a diffeel "
                               "checkpoint") from error
        raise DiffeelError(f"checkpoint {path} holds Python objects beyond tensors (a legacy pickle), which diffeel does not "
                           "load by default; if you trust its source, --allow-pickle loads it (unpickling can run code)") from error
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise DiffeelError(f"checkpoint {path} could not be read ({type(error).__name__}): it is damaged or not a diffeel checkpoint") from error
