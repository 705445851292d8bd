"""The SegmentMeIfYouCan toolkit's score files (``adynathos/road-anomaly-benchmark``).

Its ``Evaluation.save_output`` writes each frame's anomaly map as
``anomaly_p/<method>/<dataset>/<frame id>.hdf5``: one HDF5 dataset named ``value``, float16,
gzip-compressed at level 9 (``ChannelLoaderHDF5(compression=9)``). ``<dataset>`` is the name the
toolkit persists a track under (a config's ``name_for_persistence``, else its name): every
ObstacleTrack split is stored as ``ObstacleTrack-all``, the LostAndFound test splits as
``LostAndFound-test``. Frame ids are the image stems, which are the frame ids diffeel's loaders give.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np

from ..errors import DiffeelError

ANOMALY_P = "anomaly_p"
HDF5_KEY = "value"
GZIP_LEVEL = 9
# diffeel benchmark → the toolkit's persisted dataset name
TOOLKIT_DATASETS = {
    "smiyc-anomaly": "AnomalyTrack-all",
    "smiyc-obstacle": "ObstacleTrack-all",
    "laf": "LostAndFound-test",
}


def toolkit_dataset(benchmark: str) -> str:
    """The toolkit's dataset folder for a diffeel benchmark, or one sentence."""
    if benchmark not in TOOLKIT_DATASETS:
        raise DiffeelError(f"the SegmentMeIfYouCan toolkit has no dataset for {benchmark}; its layout holds "
                           f"{', '.join(TOOLKIT_DATASETS)}")
    return TOOLKIT_DATASETS[benchmark]


def check_method_name(method: str) -> str:
    """A method name the toolkit can use as a folder (and a leaderboard entry), or one sentence."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", method or ""):
        raise DiffeelError(f"method name {method!r} cannot name a folder of the toolkit's layout: use letters, digits "
                           "and . _ + - (starting with a letter or digit)")
    return method


def toolkit_maps_folder(root, method: str, dataset: str) -> Path:
    """``root/anomaly_p/<method>/<dataset>``: where one method's maps of one dataset go."""
    return Path(root) / ANOMALY_P / method / dataset


def write_toolkit_map(path, score_map: np.ndarray) -> None:
    """One frame's map as the toolkit writes it (float16 ``value``, gzip 9), atomically. A score
    beyond float16's range (±65504) would be stored as infinity: that is refused."""
    import h5py

    with np.errstate(over="ignore"):  # an overflow becomes infinity, refused just below
        value = np.asarray(score_map).astype(np.float16)
    if not np.isfinite(value).all():
        raise DiffeelError(f"{Path(path).stem}: scores beyond float16's range (±65504) or not finite cannot be stored "
                           "in the toolkit's float16 maps; rescale the score")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with h5py.File(temporary, "w") as handle:
            handle.create_dataset(HDF5_KEY, data=value, compression=GZIP_LEVEL)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def is_toolkit_tree(scores) -> bool:
    """``scores`` is the folder holding ``anomaly_p/`` or ``anomaly_p/`` itself."""
    scores = Path(scores)
    return scores.is_dir() and (scores.name == ANOMALY_P or (scores / ANOMALY_P).is_dir())


def toolkit_scores_folder(scores, benchmark: str, method: str | None = None) -> Path:
    """The folder of one method's maps on ``benchmark`` in the toolkit tree ``scores`` (the folder
    holding ``anomaly_p/``, or ``anomaly_p/`` itself). ``method`` picks among several methods (one
    alone is taken)."""
    scores = Path(scores)
    tree = scores if scores.name == ANOMALY_P else scores / ANOMALY_P
    if not tree.is_dir():
        raise DiffeelError(f"{scores} is not a toolkit tree: it holds no {ANOMALY_P} folder")
    methods = sorted(p.name for p in tree.iterdir() if p.is_dir())
    if method is None or method not in methods:
        if len(methods) != 1:
            named = f"--method {method} is not among them; " if method else ""
            raise DiffeelError(f"{tree} holds the maps of {len(methods)} methods ({', '.join(methods[:5])}); {named}"
                               "name one with --method")
        method = methods[0]
    folder = tree / method / toolkit_dataset(benchmark)
    if not folder.is_dir():
        raise DiffeelError(f"{tree / method} has no {toolkit_dataset(benchmark)} folder: no maps of {benchmark} by {method}")
    return folder
