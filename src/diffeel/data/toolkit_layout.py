"""The SegmentMeIfYouCan toolkit's score files (``road_anomaly_benchmark``: SegmentMeIfYouCan/
road-anomaly-benchmark @ 1c7804e, first released as adynathos/road-anomaly-benchmark; both write
the same files), and test-server submissions of them.

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


def tree_root(scores) -> Path:
    """The folder holding ``anomaly_p/``, given it or ``anomaly_p/`` itself."""
    scores = Path(scores)
    return scores.parent if scores.name == ANOMALY_P else scores


def is_toolkit_tree(scores) -> bool:
    """``scores`` is the folder holding ``anomaly_p/`` or ``anomaly_p/`` itself."""
    scores = Path(scores)
    return (tree_root(scores) / ANOMALY_P).is_dir()


def toolkit_scores_folder(scores, benchmark: str, method: str | None = None) -> Path:
    """The folder of one method's maps on ``benchmark`` in the toolkit tree ``scores`` (the folder
    holding ``anomaly_p/``, or ``anomaly_p/`` itself). ``method`` picks among several methods (one
    alone is taken)."""
    scores = Path(scores)
    tree = tree_root(scores) / ANOMALY_P
    if not tree.is_dir():
        raise DiffeelError(f"{scores} is not a toolkit tree: it holds no {ANOMALY_P} folder")
    methods = sorted(p.name for p in tree.iterdir() if p.is_dir())
    if method is not None and method not in methods:
        raise DiffeelError(f"{tree} holds the maps of {', '.join(methods[:5]) or 'no method'}; --method {method} is not among them")
    if method is None:
        if len(methods) != 1:
            raise DiffeelError(f"{tree} holds the maps of {len(methods)} methods ({', '.join(methods[:5])}); name one with --method")
        method = methods[0]
    folder = tree / method / toolkit_dataset(benchmark)
    if not folder.is_dir():
        raise DiffeelError(f"{tree / method} has no {toolkit_dataset(benchmark)} folder: no maps of {benchmark} by {method}")
    return folder


# ---- test-server submissions ------------------------------------------------------------------

# The toolkit's frame counts (its configs' expected_length) for the datasets a submission holds;
# ObstacleTrack-all has none of its own, so its splits are counted. A copy of a dataset missing
# frames would leave frames out of a submission unnoticed.
OBSTACLE_SPLIT_COUNTS = {"test": 327, "night": 30, "snowstorm": 55, "validation": 30}
FRAME_COUNTS = {"AnomalyTrack-all": 110, "LostAndFound-test": 1203}
_OBSTACLE_VALIDATION_LEFT_OUT = ("validation_19", *(f"validation_2{digit}" for digit in range(1, 10)))


def obstacle_split(frame_id: str) -> str | None:
    """The toolkit's ObstacleTrack split of a frame (by its scene prefix); None for validation
    frames its validation split leaves out."""
    scene = frame_id.split("_", 1)[0]
    if scene in ("snowstorm1", "snowstorm2"):
        return "snowstorm"
    if scene == "driveway":
        return "night"
    if scene == "validation":
        return None if frame_id.startswith(_OBSTACLE_VALIDATION_LEFT_OUT) else "validation"
    return "test"


def check_dataset_complete(dataset: str, frame_ids: list[str]) -> None:
    """The dataset copy has the toolkit's number of frames, or one sentence."""
    if dataset == "ObstacleTrack-all":
        counts = {split: 0 for split in OBSTACLE_SPLIT_COUNTS}
        for frame_id in frame_ids:
            split = obstacle_split(frame_id)
            if split:
                counts[split] += 1
        expected = OBSTACLE_SPLIT_COUNTS
    else:
        counts, expected = {"all": len(frame_ids)}, {"all": FRAME_COUNTS[dataset]}
    for split, number in expected.items():
        if counts[split] != number:
            part = "" if split == "all" else f" {split}"
            raise DiffeelError(f"the dataset copy for {dataset} has {counts[split]}{part} frames where the toolkit lists "
                               f"{number}: complete the download before packaging a submission")


def map_problem(path: Path, size: tuple[int, int]) -> str | None:
    """Why the toolkit's map at ``path`` cannot go to the server for an image of ``(width,
    height)``, or None."""
    import h5py

    if not path.is_file():
        return f"{path.stem}: no map ({path} is missing)"
    try:
        with h5py.File(path, "r") as handle:
            if HDF5_KEY not in handle or not isinstance(handle[HDF5_KEY], h5py.Dataset):
                return f"{path.stem}: {path.name} holds no '{HDF5_KEY}' dataset, where the toolkit reads the map"
            value = handle[HDF5_KEY][()]
    except OSError as error:
        return f"{path.stem}: {path.name} is not a readable HDF5 file ({type(error).__name__})"
    width, height = size
    if np.squeeze(value).shape != (height, width):
        return f"{path.stem}: the map has shape {value.shape}, the image is {height}x{width} (height x width)"
    if value.dtype.kind != "f":
        return f"{path.stem}: the map holds {value.dtype} values, not float scores"
    if not np.isfinite(value).all():
        return f"{path.stem}: the map holds {int(np.count_nonzero(~np.isfinite(value)))} NaN or infinite values"
    return None


def submission_frames(scores, method: str, roots: dict[str, str]) -> dict[str, list]:
    """``{dataset: [Frame, …]}``: every frame (test frames included) of each benchmark of ``roots``
    (``{benchmark: its root}``), after checking that ``scores`` holds a folder of ``method``'s maps
    for it and that the copy has the toolkit's frame count; else one sentence."""
    from .benchmarks import load_benchmark

    frames = {}
    for benchmark, root in roots.items():
        dataset = toolkit_dataset(benchmark)
        toolkit_scores_folder(scores, benchmark, method)
        frames[dataset] = load_benchmark(benchmark, root, unlabelled=True)
        check_dataset_complete(dataset, [frame.id for frame in frames[dataset]])
    return frames


def submission_problems(root, method: str, frames: dict[str, list], progress: bool = False) -> list[str]:
    """One sentence per map of ``frames`` (``{dataset: [Frame, …]}``, every frame of each dataset)
    that is missing or malformed in ``root``'s toolkit tree, and per map there of no such frame."""
    from tqdm import tqdm

    from .images import image_size

    problems = []
    with tqdm(total=sum(map(len, frames.values())), desc="checking maps", unit="map", disable=not progress) as bar:
        for dataset, dataset_frames in frames.items():
            folder = toolkit_maps_folder(root, method, dataset)
            for frame in dataset_frames:
                problem = map_problem(folder / f"{frame.id}.hdf5", image_size(frame.image_path))
                if problem:
                    problems.append(f"{dataset}/{problem}")
                bar.update(1)
            known = {frame.id for frame in dataset_frames}
            problems += [f"{dataset}/{path.name} matches no frame of the dataset" for path in sorted(folder.glob("*.hdf5"))
                         if path.stem not in known]
    return problems


def write_submission(path, root, method: str, frames: dict[str, list[str]]) -> dict:
    """Zip the maps ``anomaly_p/<method>/<dataset>/<frame id>.hdf5`` of ``root``'s toolkit tree for
    ``frames`` (``{dataset: frame ids}``), nothing else; in name order with a fixed date, so the
    same maps give the same archive; atomically. Returns the number of maps, the archive's size and
    SHA-256."""
    import hashlib
    import zipfile

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    count = 0
    try:
        with zipfile.ZipFile(temporary, "w", compression=zipfile.ZIP_STORED) as archive:  # the maps are gzip already
            for dataset, frame_ids in frames.items():
                for frame_id in sorted(frame_ids):
                    entry = zipfile.ZipInfo(f"{ANOMALY_P}/{method}/{dataset}/{frame_id}.hdf5", date_time=(1980, 1, 1, 0, 0, 0))
                    entry.external_attr = 0o644 << 16
                    archive.writestr(entry, (toolkit_maps_folder(root, method, dataset) / f"{frame_id}.hdf5").read_bytes())
                    count += 1
        digest = hashlib.sha256(temporary.read_bytes()).hexdigest()
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return {"maps": count, "sha256": digest, "bytes": path.stat().st_size}
