"""Record the SegmentMeIfYouCan toolkit's own outputs on small procedural frames into
tests/data/smiyc/, the fixtures tests/test_toolkit_layout.py compares diffeel with.

Not run by the test suite: it needs the toolkit, which is not part of diffeel. Export both
editions of the toolkit and run, from diffeel's repository root:

    git -C road-anomaly-benchmark archive 1c7804e0749686452eb02bbcfb81234e38795f8a | tar -x -C rab-2023
    git -C road-anomaly-benchmark-2021 archive da3bc7707fad0a8532a77053cf2ebc944753b09a | tar -x -C rab-2021
    python tests/official/record_smiyc_toolkit.py --toolkit-2023 rab-2023 --toolkit-2021 rab-2021

(SegmentMeIfYouCan/road-anomaly-benchmark @ 1c7804e, 2023-08-24, and its first home
adynathos/road-anomaly-benchmark @ da3bc77, 2021-10-28), in an environment with the toolkit's
requirements (easydict, h5py, numpy, pandas, matplotlib, imageio, opencv, scipy, IPython, click).
NumPy 2 renamed ``np.trapz`` to ``np.trapezoid``; the old name is restored for the toolkit's code.

What it does, in each edition, in fresh ``DIR_DATASETS`` / ``DIR_OUTPUTS`` folders:

1. writes three small datasets in the toolkit's layout: ``dataset_ObstacleTrack`` (its scene
   prefixes, webp images), ``dataset_AnomalyTrack`` (jpg, one test frame without a label) and
   ``dataset_LostAndFound`` (Cityscapes layout, gtCoarse labelIds with road, obstacles, a
   non-hazard id and void). AnomalyTrack-all and LostAndFound-test are registered without their
   expected frame counts (110, 1203), which a small fixture cannot meet; everything else is the
   toolkit's own dataset classes;
2. saves each frame's score map through the toolkit's ``Evaluation.save_output`` (float16 HDF5);
3. runs the toolkit's ``PixBinaryClass`` metric (``calculate_metric_from_saved_outputs``, one
   process, frames in the toolkit's order; the 2021 edition's one-process path needs its metric's
   ``default_instancer`` set, as its parallel path does) and records AP, FPR95, AUROC, best F1 and
   thresholds; then its component metric ``SegEval-ObstacleTrack`` (50 / 10 px minimum sizes, at
   the best-F1 threshold of that curve; the metric object's cached threshold is cleared between
   datasets) and records sIoU, PPV and the F1 values;
4. checks that the toolkit's loader reads a map written by diffeel's ``write_toolkit_map`` back
   unchanged, and records diffeel's file next to the toolkit's.

Copied into tests/data/smiyc/: the datasets (without the unlabelled frame's label, which does not
exist), the 2023 edition's ``outputs/anomaly_p`` tree (both editions write identical files; checked)
and ``toolkit_results.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "data" / "smiyc"
METHOD = "ProceduralMethod"
SIZE = (48, 80)  # height, width

OBSTACLE_FRAMES = ["curvy-street_0_a", "driveway_1_a", "gravel_2_a", "motorway_3_empty", "snowstorm1_4_a", "validation_5_a"]
ANOMALY_FRAMES = ["animal_0", "debris_1", "testframe_2"]  # the last one has no label: a test frame
LAF_FRAMES = [("01_Hanns_Klemm_Str_45", "01_Hanns_Klemm_Str_45_000000_000080"),
              ("01_Hanns_Klemm_Str_45", "01_Hanns_Klemm_Str_45_000001_000120"),
              ("04_Maurener_Weg_8", "04_Maurener_Weg_8_000002_000060")]


def road_and_object(rng, frame_index: int, empty: bool):
    """(road mask, object mask) of a procedural road scene."""
    height, width = SIZE
    rows, cols = np.mgrid[:height, :width]
    road = (rows > height // 3) & (np.abs(cols - width / 2) < (rows - height / 3) * 1.4 + 4)
    objects = np.zeros(SIZE, bool)
    if not empty:
        cy, cx = rng.integers(height // 2, height - 6), rng.integers(width // 3, 2 * width // 3)
        objects = ((rows - cy) / (3 + frame_index % 3)) ** 2 + ((cols - cx) / 5) ** 2 <= 1
    return road, objects & road


def score_map(rng, objects: np.ndarray, style: int) -> np.ndarray:
    """Scores with the shapes that stress binning: ties (clipping, coarse steps) and ranges beyond [0, 1]."""
    logits = rng.normal(0, 1.2, SIZE) + 2.5 * objects
    scores = 1 / (1 + np.exp(-logits))
    if style == 1:
        scores = np.clip(1.3 * scores - 0.15, 0, 1)  # many exact 0s and 1s
    elif style == 2:
        scores = np.round(scores * 16) / 16  # coarse steps: ties within and across frames
    elif style == 3:
        scores = 6 * logits - 4  # an energy-like range, far outside [0, 1]
    return scores.astype(np.float32)


def flat_image(value: int) -> np.ndarray:
    """An image no metric looks at: flat, so that the fixture stays small."""
    return np.full((*SIZE, 3), value, np.uint8)


def write_image(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, quality=95) if path.suffix == ".jpg" else Image.fromarray(array).save(path)


def make_datasets(datasets: Path) -> dict:
    """The three datasets; returns {dataset name: {frame id: float32 score map}}."""
    rng = np.random.default_rng(2026)
    scores = {"ObstacleTrack-all": {}, "AnomalyTrack-all": {}, "LostAndFound-test": {}}
    for index, fid in enumerate(OBSTACLE_FRAMES):
        road, objects = road_and_object(rng, index, empty=fid.endswith("empty"))
        label = np.full(SIZE, 255, np.uint8)
        label[road] = 0
        label[objects] = 1
        track = datasets / "dataset_ObstacleTrack"
        write_image(track / "images" / f"{fid}.webp", flat_image(40 * index))
        write_image(track / "labels_masks" / f"{fid}_labels_semantic.png", label)
        scores["ObstacleTrack-all"][fid] = score_map(rng, objects, index % 4)
    for index, fid in enumerate(ANOMALY_FRAMES):
        road, objects = road_and_object(rng, index, empty=False)
        label = np.zeros(SIZE, np.uint8)
        label[objects] = 1
        label[:4] = 255  # a void band
        track = datasets / "dataset_AnomalyTrack"
        write_image(track / "images" / f"{fid}.jpg", flat_image(40 * index))
        if fid != "testframe_2":
            write_image(track / "labels_masks" / f"{fid}_labels_semantic.png", label)
        scores["AnomalyTrack-all"][fid] = score_map(rng, objects, (index + 1) % 4)
    for index, (scene, fid) in enumerate(LAF_FRAMES):
        road, objects = road_and_object(rng, index, empty=False)
        label_ids = np.zeros(SIZE, np.uint8)  # 0: outside the free space
        label_ids[road] = 1
        label_ids[objects] = 5 + index
        label_ids[road & (np.arange(SIZE[1]) < 12)] = 33  # a "non-hazard" id: the toolkit counts it as an obstacle
        laf = datasets / "dataset_LostAndFound"
        write_image(laf / "leftImg8bit" / "test" / scene / f"{fid}_leftImg8bit.png", flat_image(40 * index))
        for kind, array in (("labelIds", label_ids), ("instanceIds", np.zeros(SIZE, np.uint8))):
            write_image(laf / "gtCoarse" / "test" / scene / f"{fid}_gtCoarse_{kind}.png", array)
        scores["LostAndFound-test"][fid] = score_map(rng, objects | (label_ids == 33), (index + 2) % 4)
    return scores


EDITION_SCRIPT = r'''
import dataclasses, json, sys
from pathlib import Path
import numpy as np
if not hasattr(np, "trapz"):
    np.trapz = np.trapezoid  # NumPy 2 renamed it; the toolkit calls the old name
toolkit, work = Path(sys.argv[1]), Path(sys.argv[2])
sys.path.insert(0, str(toolkit))
from easydict import EasyDict
from road_anomaly_benchmark.evaluation import Evaluation
from road_anomaly_benchmark.datasets import DatasetRegistry
from road_anomaly_benchmark.datasets.tracks import DatasetAnomalyTrack, DatasetLostAndFound
from road_anomaly_benchmark.datasets.dataset_io import ChannelLoaderHDF5
from road_anomaly_benchmark.metrics import MetricRegistry

# the 2021 edition's one-process path reads this setting without defining it (its parallel path
# passes True, the default); set once on the registry's shared metric object
MetricRegistry.get("PixBinaryClass").cfg.default_instancer = True

# the small fixture cannot have the toolkit's expected frame counts; the classes are its own
for cls, name in ((DatasetAnomalyTrack, "AnomalyTrack-all"), (DatasetLostAndFound, "LostAndFound-test")):
    cfg = dict(next(c for c in cls.configs if c["name"] == name))
    cfg.pop("expected_length")
    if cls is DatasetLostAndFound:
        cfg["dir_root"] = work / "datasets" / "dataset_LostAndFound"
    DatasetRegistry.register_concrete(name, cls(cfg))

scores = {d: {f: np.load(work / "scores" / d / f"{f}.npy") for f in json.loads((work / "scores" / d / "ids.json").read_text())}
          for d in ("ObstacleTrack-all", "AnomalyTrack-all", "LostAndFound-test")}
results = {}
for dataset in scores:
    evaluation = Evaluation(method_name="%s", dataset_name=dataset, threaded_saver=False)
    for frame in evaluation.get_frames():
        evaluation.save_output(frame, scores[dataset][frame.fid])
    data = evaluation.get_dataset()
    labelled = [i for i, fr in enumerate(data.frames)
                if Path(data.channels["semantic_class_gt"].resolve_template(dset=data, **fr)).is_file()]
    curve = evaluation.calculate_metric_from_saved_outputs(
        "PixBinaryClass", sample=(dataset, labelled), parallel=False, show_plot=False, frame_vis=False)
    results[dataset] = {key: float(getattr(curve, key)) for key in
                        ("area_PRC", "tpr95_fpr", "area_ROC", "best_f1", "tpr95_threshold", "best_f1_threshold")}
    results[dataset]["frames"] = [evaluation.get_dataset().frames[i]["fid"] for i in labelled]
    segments = MetricRegistry.get("SegEval-ObstacleTrack")
    segments.cfg.thresh_p = None  # the metric object keeps the last dataset's threshold otherwise
    # run_metric_single: the same computation without saving, which NumPy 2's integer scalars break
    info = evaluation.run_metric_single("SegEval-ObstacleTrack", sample=(dataset, labelled), frame_vis=False)
    results[dataset]["SegEval-ObstacleTrack"] = {
        "thresh_p": float(segments.cfg.thresh_p),
        **{key: float(value) for key, value in dataclasses.asdict(info).items() if key not in ("method_name", "dataset_name")}}
loader = ChannelLoaderHDF5(str(work / "diffeel_written.hdf5"))
results["diffeel_written"] = loader.read_file(work / "diffeel_written.hdf5").astype(np.float64).tolist()
print(json.dumps(results))
''' % METHOD


def run_edition(toolkit: Path, work: Path) -> dict:
    environment = dict(os.environ, DIR_DATASETS=str(work / "datasets"), DIR_OUTPUTS=str(work / "outputs"),
                       DIR_LAF=str(work / "datasets" / "dataset_LostAndFound"), MPLBACKEND="Agg")
    done = subprocess.run([sys.executable, "-c", EDITION_SCRIPT, str(toolkit), str(work)], env=environment,
                          capture_output=True, text=True)
    if done.returncode != 0:
        sys.exit(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--toolkit-2023", type=Path, required=True, help="SegmentMeIfYouCan/road-anomaly-benchmark @ 1c7804e")
    parser.add_argument("--toolkit-2021", type=Path, required=True, help="adynathos/road-anomaly-benchmark @ da3bc77")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from diffeel.data.toolkit_layout import write_toolkit_map

    probe = np.linspace(-3, 5, SIZE[0] * SIZE[1], dtype=np.float32).reshape(SIZE)
    recorded, trees = {}, {}
    for edition, toolkit in (("2023", args.toolkit_2023), ("2021", args.toolkit_2021)):
        work = Path(tempfile.mkdtemp(prefix=f"smiyc-{edition}-"))
        scores = make_datasets(work / "datasets")
        for dataset, maps in scores.items():
            (work / "scores" / dataset).mkdir(parents=True)
            (work / "scores" / dataset / "ids.json").write_text(json.dumps(sorted(maps)))
            for fid, array in maps.items():
                np.save(work / "scores" / dataset / f"{fid}.npy", array)
        write_toolkit_map(work / "diffeel_written.hdf5", probe)
        recorded[edition] = run_edition(toolkit.resolve(), work)
        assert recorded[edition].pop("diffeel_written") == probe.astype(np.float16).astype(np.float64).tolist()
        trees[edition] = work
    first, second = (sorted((trees[e] / "outputs" / "anomaly_p").rglob("*.hdf5")) for e in ("2023", "2021"))
    import h5py

    for a, b in zip(first, second, strict=True):  # both editions write the same maps
        with h5py.File(a) as x, h5py.File(b) as y:
            assert np.array_equal(x["value"][()], y["value"][()]), a.name
    if FIXTURES.exists():
        shutil.rmtree(FIXTURES)
    shutil.copytree(trees["2023"] / "datasets", FIXTURES / "datasets")
    shutil.copytree(trees["2023"] / "outputs" / "anomaly_p", FIXTURES / "outputs" / "anomaly_p")
    shutil.copy(trees["2023"] / "diffeel_written.hdf5", FIXTURES / "diffeel_written.hdf5")
    (FIXTURES / "toolkit_results.json").write_text(json.dumps(
        {"method": METHOD, "editions": {"2023": "SegmentMeIfYouCan/road-anomaly-benchmark@1c7804e0749686452eb02bbcfb81234e38795f8a",
                                        "2021": "adynathos/road-anomaly-benchmark@da3bc7707fad0a8532a77053cf2ebc944753b09a"},
         "numpy": np.__version__, "results": recorded}, indent=1) + "\n")
    print(json.dumps(recorded, indent=1))


if __name__ == "__main__":
    main()
