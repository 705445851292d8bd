"""Score maps on disk: one file per frame (same stem as the frame id) or one container of all.

Per-frame files: ``{id}.npy``, ``{id}.npz`` (its only array, or key ``scores``), ``{id}.h5`` /
``{id}.hdf5`` (its only dataset, or ``value`` as the SegmentMeIfYouCan toolkit writes, or
``anomaly_score`` / ``scores``). A container: one ``.npz`` or ``.h5`` file whose arrays are keyed by
frame id. float16/32/64 are kept as stored (the metrics are exact for each).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..errors import DiffeelError

SCORE_SUFFIXES = (".npy", ".npz", ".h5", ".hdf5")
_ARRAY_KEYS = ("scores", "value", "anomaly_score", "anomaly_p")


def _pick(names: list[str], where: Path) -> str:
    if len(names) == 1:
        return names[0]
    for key in _ARRAY_KEYS:
        if key in names:
            return key
    raise DiffeelError(f"{where} holds {len(names)} arrays ({', '.join(sorted(names)[:5])}); name one 'scores'")


def _as_score_map(array, where: str) -> np.ndarray:
    array = np.asarray(array)
    if array.ndim == 3 and 1 in (array.shape[0], array.shape[-1]):
        array = array.reshape(array.shape[1:] if array.shape[0] == 1 else array.shape[:-1])
    if array.ndim != 2:
        raise DiffeelError(f"{where} holds an array of shape {array.shape}, not an (H, W) score map")
    if array.dtype.kind not in "fiub":
        raise DiffeelError(f"{where} holds {array.dtype} values, not scores")
    return array


def read_score_file(path: Path) -> np.ndarray:
    """One frame's score map from a ``.npy``, ``.npz`` or HDF5 file."""
    try:
        suffix = path.suffix.lower()
        if suffix == ".npy":
            return _as_score_map(np.load(path, allow_pickle=False), str(path))
        if suffix == ".npz":
            with np.load(path, allow_pickle=False) as archive:
                return _as_score_map(archive[_pick(list(archive.files), path)], str(path))
        import h5py

        with h5py.File(path, "r") as handle:
            names = [name for name in handle if isinstance(handle[name], h5py.Dataset)]
            return _as_score_map(handle[_pick(names, path)][()], str(path))
    except DiffeelError:
        raise
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as error:
        raise DiffeelError(f"score file {path} could not be read ({type(error).__name__})") from error


class ScoreMaps:
    """Score maps by frame id, from a folder of per-frame files or a single container file."""

    def __init__(self, path):
        self.path = Path(path)
        if self.path.is_dir():
            self.files: dict[str, Path] = {}
            for file in sorted(self.path.iterdir()):
                if file.is_file() and file.suffix.lower() in SCORE_SUFFIXES and not file.name.startswith("."):
                    if file.stem in self.files:
                        raise DiffeelError(f"two score files for frame {file.stem}: {self.files[file.stem].name} and {file.name}")
                    self.files[file.stem] = file
            self.ids = set(self.files)
        elif self.path.is_file() and self.path.suffix.lower() in (".npz", ".h5", ".hdf5"):
            self.files = {}
            self.ids = set(self._container_keys())
        else:
            raise DiffeelError(f"scores {self.path} is neither a folder of score files nor a .npz/.h5 container")

    def _container_keys(self) -> list[str]:
        try:
            if self.path.suffix.lower() == ".npz":
                with np.load(self.path, allow_pickle=False) as archive:
                    return list(archive.files)
            import h5py

            with h5py.File(self.path, "r") as handle:
                return list(handle)
        except (OSError, ValueError, zipfile.BadZipFile) as error:
            raise DiffeelError(f"score container {self.path} could not be read ({type(error).__name__})") from error

    def check(self, frame_ids: list[str], other_frames: list[str] = ()) -> None:
        """Every frame has a score map and every score map a frame (of ``frame_ids`` or of the
        benchmark's ``other_frames``, e.g. test frames without labels); else name the first culprit."""
        missing = [i for i in frame_ids if i not in self.ids]
        if missing:
            where = f"{self.path}/{missing[0]}.npy (or .npz/.h5)" if self.files or self.path.is_dir() else f"key {missing[0]!r} of {self.path}"
            raise DiffeelError(f"missing score map for frame {missing[0]}: expected {where}")
        extra = sorted(self.ids - set(frame_ids) - set(other_frames))
        if extra:
            name = self.files[extra[0]].name if extra[0] in self.files else f"key {extra[0]!r}"
            raise DiffeelError(f"score map {name} in {self.path} matches no frame of the benchmark")

    def load(self, frame_id: str) -> np.ndarray:
        if frame_id in self.files:
            return read_score_file(self.files[frame_id])
        if frame_id not in self.ids:
            raise DiffeelError(f"missing score map for frame {frame_id} in {self.path}")
        try:
            if self.path.suffix.lower() == ".npz":
                with np.load(self.path, allow_pickle=False) as archive:
                    return _as_score_map(archive[frame_id], f"{self.path}[{frame_id}]")
            import h5py

            with h5py.File(self.path, "r") as handle:
                return _as_score_map(handle[frame_id][()], f"{self.path}[{frame_id}]")
        except DiffeelError:
            raise
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as error:
            raise DiffeelError(f"score map {frame_id} in {self.path} could not be read ({type(error).__name__})") from error
