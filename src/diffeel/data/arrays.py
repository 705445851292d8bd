"""Reading and writing arrays: ``.npy``, ``.npz`` and ``.pt`` files, written atomically."""

from __future__ import annotations

import os
import pickle
import tempfile
import warnings
import zipfile
from pathlib import Path

import numpy as np

from ..errors import DiffeelError

ARRAY_SUFFIXES = (".npy", ".npz", ".pt", ".pth")


def load_array(path: str | os.PathLike, key: str | None = None) -> np.ndarray:
    """Load one array from ``.npy``, ``.npz`` (the only array, or ``key``) or a torch tensor file.

    Torch files are read with ``weights_only=True``: a pickle can run code.
    """
    path = Path(path)
    if not path.is_file():
        raise DiffeelError(f"{path} does not exist or is not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".npy":
            return np.load(path, allow_pickle=False)
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                names = list(archive.files)
                if key is not None:
                    if key not in names:
                        raise DiffeelError(f"{path} has no array {key!r} (it holds {', '.join(names) or 'nothing'})")
                    return archive[key]
                if len(names) != 1:
                    raise DiffeelError(f"{path} holds {len(names)} arrays ({', '.join(names)}); say which one to use")
                return archive[names[0]]
        if suffix in (".pt", ".pth"):
            import torch

            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch warns about foreign pickles before it refuses them
                loaded = torch.load(path, map_location="cpu", weights_only=True)
            if isinstance(loaded, dict) and key is not None:
                loaded = loaded.get(key)
            if not isinstance(loaded, torch.Tensor):
                raise DiffeelError(f"{path} does not hold a single tensor" + (f" under {key!r}" if key else ""))
            return loaded.float().numpy() if loaded.dtype == torch.bfloat16 else loaded.numpy()
    except DiffeelError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, pickle.UnpicklingError) as error:
        raise DiffeelError(f"{path} could not be read as an array file ({type(error).__name__})") from error
    raise DiffeelError(f"{path} is not an array file (expected one of {', '.join(ARRAY_SUFFIXES)})")


def save_array_atomic(path: str | os.PathLike, array: np.ndarray) -> None:
    """Write ``array`` as ``.npy`` via a temporary file and a rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            np.save(stream, array, allow_pickle=False)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
