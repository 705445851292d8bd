import json
import subprocess
import sys

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

import benchmark_fixtures as fixtures
from diffeel.cli import main
from diffeel.metrics import pixel_metrics


def sklearn_pooled(truth, scores):
    labels = np.concatenate([truth[i].ravel() for i in sorted(truth)])
    values = np.concatenate([scores[i].astype(np.float64).ravel() for i in sorted(truth)])
    valid = labels != 255
    fpr, tpr, _ = roc_curve(labels[valid], values[valid], drop_intermediate=False)
    return {
        "auprc": average_precision_score(labels[valid], values[valid]),
        "fpr95": fpr[np.argmax(tpr >= 0.95)],
        "auroc": roc_auc_score(labels[valid], values[valid]),
    }


def run_cli(*args):
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", *map(str, args)], capture_output=True, text=True)
    return process.returncode, process.stdout, process.stderr


def road_anomaly_folder(tmp_path, rng):
    """The common 'images + labels_masks' layout with RoadAnomaly's 2 = anomaly, one lying extension."""
    truth = {}
    for index in range(4):
        stem = f"road{index}"
        fixtures.write_image(tmp_path / "R" / "images" / f"{stem}.png", rng, image_format="JPEG" if index == 0 else None)
        stored = fixtures.random_eval_label(rng, anomaly_value=2, void=False)
        fixtures.write_png(tmp_path / "R" / "labels_masks" / f"{stem}.png", stored)
        truth[stem] = (stored == 2).astype(np.uint8)
    return truth


def test_folder_eval_equals_sklearn_on_pooled_pixels(tmp_path, rng):
    truth = road_anomaly_folder(tmp_path, rng)
    scores = fixtures.write_scores(tmp_path / "S", truth, rng)
    code, stdout, stderr = run_cli(
        "eval", "--benchmark", "folder", "--root", tmp_path / "R", "--labels", "labels_masks",
        "--label-map", "2:1", "--scores", tmp_path / "S", "--out", tmp_path / "O", "--quiet",
    )
    assert code == 0, stderr
    results = json.loads((tmp_path / "O" / "results.json").read_text())
    expected = sklearn_pooled(truth, scores)
    for key in ("auprc", "fpr95", "auroc"):
        assert abs(results["all"][key] - expected[key]) <= 1e-9
    assert results["all"]["n_pixels"] == sum(t.size for t in truth.values())
    for name in ("results.csv", "table.md", "curves.png"):
        assert (tmp_path / "O" / name).stat().st_size > 0
    assert "AUPRC" in stdout


@pytest.mark.parametrize("fmt, dtype", [("npy", np.float16), ("npz", np.float32), ("hdf5", np.float64)])
def test_every_per_frame_score_format(tmp_path, rng, fmt, dtype):
    truth = fixtures.road_anomaly(tmp_path / "RA", rng)
    scores = fixtures.write_scores(tmp_path / "S", truth, rng, dtype=dtype, fmt=fmt)
    assert main(["eval", "--benchmark", "road-anomaly", "--root", str(tmp_path / "RA"), "--scores", str(tmp_path / "S"),
                 "--out", str(tmp_path / "O"), "--quiet"]) == 0
    results = json.loads((tmp_path / "O" / "results.json").read_text())
    assert abs(results["all"]["auprc"] - sklearn_pooled(truth, scores)["auprc"]) <= 1e-9


@pytest.mark.parametrize("container", ["all.npz", "all.h5"])
def test_single_container_of_all_frames(tmp_path, rng, container):
    truth = fixtures.road_anomaly(tmp_path / "RA", rng)
    scores = {i: (rng.normal(size=t.shape) + t).astype(np.float32) for i, t in truth.items()}
    path = tmp_path / container
    if container.endswith(".npz"):
        np.savez(path, **scores)
    else:
        import h5py

        with h5py.File(path, "w") as handle:
            for frame_id, score in scores.items():
                handle[frame_id] = score
    assert main(["eval", "--benchmark", "road-anomaly", "--root", str(tmp_path / "RA"), "--scores", str(path),
                 "--out", str(tmp_path / "O"), "--quiet"]) == 0
    results = json.loads((tmp_path / "O" / "results.json").read_text())
    assert abs(results["all"]["fpr95"] - sklearn_pooled(truth, scores)["fpr95"]) <= 1e-9


def break_missing(folder, truth, rng):
    sorted(folder.iterdir())[0].unlink()


def break_extra(folder, truth, rng):
    np.save(folder / "stranger.npy", np.zeros((16, 24), np.float32))


def break_unreadable(folder, truth, rng):
    sorted(folder.iterdir())[1].write_bytes(b"garbage")


def break_shape(folder, truth, rng):
    np.save(sorted(folder.iterdir())[2], np.zeros((8, 12), np.float32))


def break_nan(folder, truth, rng):
    path = sorted(folder.iterdir())[1]
    score = np.load(path)
    score[5, 5] = np.nan
    np.save(path, score)


@pytest.mark.parametrize(
    "breaker, message",
    [
        (break_missing, "missing score map for frame animals00_road"),
        (break_extra, "score map stranger.npy in"),
        (break_unreadable, "score file"),
        (break_shape, "has shape (8, 12) but its label (16, 24)"),
        (break_nan, "frame animals01_road: 1 of 384 non-void score values are NaN or infinite"),
    ],
)
def test_bad_scores_end_in_one_sentence_and_no_results(tmp_path, rng, breaker, message):
    truth = fixtures.road_anomaly(tmp_path / "RA", rng)
    fixtures.write_scores(tmp_path / "S", truth, rng)
    breaker(tmp_path / "S", truth, rng)
    code, stdout, stderr = run_cli("eval", "--benchmark", "road-anomaly", "--root", tmp_path / "RA",
                                   "--scores", tmp_path / "S", "--out", tmp_path / "O", "--quiet")
    assert code == 2
    assert message in stderr and "Traceback" not in stderr
    assert len(stderr.strip().splitlines()) == 1
    assert not (tmp_path / "O").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".O.")]  # no staging left behind


def test_resize_option_makes_small_score_maps_usable(tmp_path, rng):
    truth = fixtures.road_anomaly(tmp_path / "RA", rng)
    (tmp_path / "S").mkdir()
    for frame_id, label in truth.items():
        np.save(tmp_path / "S" / f"{frame_id}.npy", label[::2, ::2].astype(np.float32))
    args = ["eval", "--benchmark", "road-anomaly", "--root", str(tmp_path / "RA"), "--scores", str(tmp_path / "S"),
            "--out", str(tmp_path / "O"), "--quiet"]
    assert main(args) == 2
    assert main(args + ["--resize", "nearest"]) == 0
    assert json.loads((tmp_path / "O" / "results.json").read_text())["all"]["auroc"] > 0.9


def test_comsamy_groups_are_pooled_subsets_and_jobs_change_nothing(tmp_path, rng):
    weathers = ("clear", "fog", "night", "clear", "rain", "fog", "clear", "sandstorm")
    truth = fixtures.comsamy(tmp_path / "C", rng, weathers=weathers)
    scores = fixtures.write_scores(tmp_path / "S", truth, rng, dtype=np.float16)
    outputs = {}
    for jobs in (1, 2):
        out = tmp_path / f"O{jobs}"
        assert main(["eval", "--benchmark", "comsamy", "--root", str(tmp_path / "C"), "--scores", str(tmp_path / "S"),
                     "--out", str(out), "--jobs", str(jobs), "--quiet"]) == 0
        outputs[jobs] = json.loads((out / "results.json").read_text())
    strip = lambda r: {k: v for k, v in r.items() if k != "timings"}  # noqa: E731
    assert strip(outputs[1]) == {**strip(outputs[2]), "config": outputs[1]["config"]}
    results = outputs[1]
    ids = sorted(truth)
    for condition, members in (("clear", [i for i, w in zip(ids, weathers) if w == "clear"]),
                               ("adverse", [i for i, w in zip(ids, weathers) if w != "clear"])):
        expected = pixel_metrics(np.stack([scores[i] for i in members]), np.stack([truth[i] for i in members]))
        assert results["groups"]["condition"][condition]["auprc"] == expected["auprc"]
    assert set(results["groups"]["weather"]) == set(weathers)
    assert results["groups"]["condition"]["whole"] == results["all"]
    table = (tmp_path / "O1" / "table.md").read_text()
    assert "clear AUPRC | clear FPR95 | adverse AUPRC" in table
    assert (tmp_path / "O1" / "groups.png").exists()


def test_protocol_and_bootstrap_are_recorded_and_deterministic(tmp_path, rng):
    truth = fixtures.comsamy(tmp_path / "C", rng, weathers=("clear",) * 6)
    scores = fixtures.write_scores(tmp_path / "S", truth, rng)
    runs = []
    for out in ("A", "B"):
        assert main(["eval", "--benchmark", "comsamy", "--root", str(tmp_path / "C"), "--scores", str(tmp_path / "S"),
                     "--out", str(tmp_path / out), "--protocol", "nearest", "--bootstrap", "50", "--seed", "3", "--quiet"]) == 0
        runs.append(json.loads((tmp_path / out / "results.json").read_text()))
    assert runs[0]["all"]["bootstrap"] == runs[1]["all"]["bootstrap"]
    low, high = runs[0]["all"]["bootstrap"]["auprc"]
    assert low <= high
    ids = sorted(truth)
    expected = pixel_metrics(np.stack([scores[i] for i in ids]), np.stack([truth[i] for i in ids]), "nearest")
    assert runs[0]["all"]["fpr95"] == expected["fpr95"] and runs[0]["protocol"] == "nearest"
