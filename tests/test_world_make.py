import csv
import subprocess
import sys

import numpy as np
from PIL import Image

import benchmark_fixtures as fixtures
from diffeel.cli import main
from diffeel.data.benchmarks import WEATHERS, load_benchmark
from diffeel.world import make as world_make


def files_of(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_world_make_writes_a_comsamy_benchmark_and_a_training_split(tmp_path):
    out = tmp_path / "W"
    assert main(["world", "make", "--out", str(out), "--per-weather", "2", "--train", "2", "--seed", "7",
                 "--size", "160x80", "--quiet"]) == 0
    rows = list(csv.DictReader(open(out / "test" / "manifest.csv")))
    weathers = [r["weather"] for r in rows]
    # two frames per adverse weather, and clear ones in ComsAmy's clear : adverse ratio of 250 : 218
    assert all(weathers.count(w) == 2 for w in WEATHERS[1:]) and weathers.count("clear") == round(12 * 250 / 218) == 14
    frames = load_benchmark("comsamy", out / "test")  # readable by the evaluation toolkit as is
    for frame in frames:
        label = frame.load_label()
        assert set(np.unique(label)) <= {0, 1, 255} and (label == 1).any()
        assert set(frame.metadata["anomalies"]) <= set(world_make.ANIMALS)
    for stem in ("train_00000", "train_00001"):
        train_ids = np.asarray(Image.open(out / "train" / "labels" / f"{stem}.png"))
        assert train_ids.max() < 19  # inlier classes only: the training split holds no anomalies
        depth = np.load(out / "train" / "depth" / f"{stem}.npy")
        assert depth.shape == (80, 160) and np.all(depth > 0)
    objects = list(csv.DictReader(open(out / "train" / "objects" / "objects.csv")))
    assert {o["family"] for o in objects} == {"debris"}
    rgba = np.asarray(Image.open(out / "train" / "objects" / objects[0]["file"]))
    assert rgba.shape[2] == 4 and 0 < (rgba[..., 3] > 0).mean() < 1


def test_world_is_identical_whatever_jobs_and_resumes_after_interruption(tmp_path):
    args = ["--per-weather", "1", "--train", "2", "--seed", "3", "--size", "128x64", "--quiet"]
    assert main(["world", "make", "--out", str(tmp_path / "one"), *args]) == 0
    assert main(["world", "make", "--out", str(tmp_path / "two"), "--jobs", "2", *args]) == 0
    reference = files_of(tmp_path / "one")
    assert reference == files_of(tmp_path / "two")

    # an interrupted run: some frames missing, one temporary file left by a kill
    damaged = tmp_path / "two"
    fog = sorted((damaged / "test" / "images").glob("fog_*.png"))[0]
    fog.unlink()
    (damaged / "train" / "depth" / "train_00001.npy").unlink()
    (damaged / "test" / "labels" / ".rain_0001.png.tmp").write_bytes(b"partial")
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", "world", "make", "--out", str(damaged), *args],
                             capture_output=True, text=True)
    frames = 7 + 6 + 2  # ComsAmy's ratio gives 7 clear frames next to one per adverse weather, + 2 training frames
    assert process.returncode == 0 and f"wrote 2, kept {frames - 2}" in process.stdout
    assert files_of(damaged) == reference  # the stale temporary file is gone too


def test_world_clear_option_sets_the_number_of_clear_frames(tmp_path):
    out = tmp_path / "W"
    assert main(["world", "make", "--out", str(out), "--per-weather", "1", "--clear", "3", "--train", "0",
                 "--size", "96x48", "--quiet"]) == 0
    weathers = [r["weather"] for r in csv.DictReader(open(out / "test" / "manifest.csv"))]
    assert weathers.count("clear") == 3 and len(weathers) == 9


def test_a_rerun_with_other_counts_leaves_exactly_the_planned_frames(tmp_path):
    out = tmp_path / "W"
    common = ["world", "make", "--out", str(out), "--size", "96x48", "--quiet"]
    assert main(common + ["--per-weather", "2", "--train", "2"]) == 0
    assert main(common + ["--per-weather", "1", "--clear", "2", "--train", "0"]) == 0
    frames = load_benchmark("comsamy", out / "test")  # no stale frame makes the benchmark unreadable
    assert len(frames) == 8 and len(list((out / "test" / "images").glob("*.png"))) == 8
    assert not list((out / "train").glob("*/train_*")) and not (out / "train" / "manifest.csv").exists()


def test_world_refuses_other_settings_in_the_same_folder(tmp_path):
    args = ["world", "make", "--out", str(tmp_path / "W"), "--per-weather", "1", "--train", "0", "--size", "128x64", "--quiet"]
    assert main(args + ["--seed", "1"]) == 0
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", *args, "--seed", "2"], capture_output=True, text=True)
    assert process.returncode == 2 and "other settings" in process.stderr


def test_preview_contact_sheet(tmp_path):
    assert main(["world", "preview", "--out", str(tmp_path / "p.png"), "--size", "96x48"]) == 0
    sheet = np.asarray(Image.open(tmp_path / "p.png"))
    assert sheet.shape == (7 * 48, 3 * 96, 3)


def test_weather_apply_turns_a_benchmark_into_a_weather_variant(tmp_path, rng):
    truth = fixtures.road_anomaly(tmp_path / "RA", rng)
    assert main(["weather", "apply", "--benchmark", "road-anomaly", "--root", str(tmp_path / "RA"),
                 "--condition", "fog", "--severity", "4", "--out", str(tmp_path / "fog"), "--quiet"]) == 0
    frames = load_benchmark("comsamy", tmp_path / "fog")
    assert {f.metadata["weather"] for f in frames} == {"fog"}
    for frame in frames:
        np.testing.assert_array_equal(frame.load_label(), truth[frame.id])  # labels unchanged
        original = np.asarray(Image.open(tmp_path / "RA" / "frames" / f"{frame.id}.jpg")).astype(float)
        assert frame.load_image().astype(float).std() < original.std()  # fog lowers contrast
    assert main(["weather", "apply", "--input", str(tmp_path / "RA" / "frames"), "--condition", "night",
                 "--out", str(tmp_path / "night"), "--quiet"]) == 0
    assert len(list((tmp_path / "night").glob("*.png"))) == len(truth)
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", "weather", "apply", "--input", str(tmp_path / "RA" / "frames"),
                              "--condition", "smog", "--out", str(tmp_path / "x")], capture_output=True, text=True)
    assert process.returncode == 2 and "smog" in process.stderr and not (tmp_path / "x").exists()
