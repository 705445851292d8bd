"""Fidelity to the paper and to RPL: recipes, presets, the rpl protocol, RPL's mixing, label and
weather conventions."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

import benchmark_fixtures as fixtures
from diffeel import scores
from diffeel.cli import main
from diffeel.data.benchmarks import load_benchmark, weather_condition
from diffeel.errors import DiffeelError
from diffeel.evaluation import group_keys
from diffeel.metrics import pixel_metrics
from diffeel.models import SmallDeepLab, load_state
from diffeel.synth import ObjectBank, RPLMixSynthesizer, RPL_SCALES
from diffeel.synth.bank import BankObject
from diffeel.train import TrainConfig, train
from diffeel.train.loop import make_optimizer
from diffeel.train.recipes import PRESETS, loss_for, preset, residual_model
from test_metrics_pixel import hendrycks_fpr_at_recall
from test_models_train import tiny_batch


def run_cli(*args):
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", *map(str, args)], capture_output=True, text=True)
    return process.returncode, process.stdout, process.stderr


# ---- recipe options reach the loss; the checkpoint says what ran -------------------------------


def one_step(tmp_path, config: TrainConfig):
    torch.manual_seed(0)
    host = SmallDeepLab(width=8).eval()
    model, groups = residual_model(host, seed=0, head_lr_multiplier=config.head_lr_multiplier)
    train(config, model, groups, tiny_batch, loss_for(config), tmp_path, progress=False)
    return model.residual_block.state_dict(), load_state(tmp_path / "checkpoint.pt")["config"]


@pytest.mark.parametrize("setting, values", [("inlier_entropy", ("confident", "paper")), ("anomaly_weight", (0.05, 0.5)),
                                             ("alpha", (1.0, 0.25))])
def test_every_eel_setting_reaches_the_loss_and_the_checkpoint(tmp_path, setting, values):
    states = []
    for index, value in enumerate(values):
        config = preset("demo-rpl+eel", steps=1, batch_size=2, **{setting: value})
        state, saved = one_step(tmp_path / str(index), config)
        assert saved[setting] == value  # the checkpoint's config is the one that ran
        states.append(state)
    changed = [key for key in states[0] if not torch.equal(states[0][key], states[1][key])]
    assert changed, f"{setting} made no difference to the trained parameters"


def test_optimizer_and_clipping_follow_the_config():
    parameter = torch.nn.Parameter(torch.zeros(3))
    adam = make_optimizer(preset("rpl"), [{"params": [parameter]}, {"params": [torch.nn.Parameter(torch.zeros(1))], "lr_multiplier": 10}])
    assert type(adam) is torch.optim.Adam and adam.param_groups[0]["weight_decay"] == 0.0
    assert adam.param_groups[0]["lr"] == 7.5e-5 and adam.param_groups[1]["lr"] == pytest.approx(7.5e-4)
    assert type(make_optimizer(preset("m2a"), [{"params": [parameter]}])) is torch.optim.AdamW
    with pytest.raises(DiffeelError, match="unknown training setting"):
        preset("rpl", learning_rate=1.0)
    with pytest.raises(DiffeelError, match="object_pool"):
        preset("rpl+eel", object_pool=0.0)


def test_paper_presets_print_the_published_settings():
    expected = {
        "rpl": {"optimizer": "adam", "lr": 7.5e-05, "head_lr_multiplier": 10.0, "poly_power": 0.9, "clip": None, "batch_size": 8,
                "crop": [700, 700], "steps": 40 * 371, "anomaly_weight": 0.05, "synthesizer": "rpl-mix", "weight_decay": 0.0},
        "rpl+eel": {"lr": 5e-05, "steps": 30 * 371, "anomaly_weight": 0.05, "alpha": 1.0, "loss": "rpl+eel"},
        "m2a": {"optimizer": "adamw", "lr": 1e-05, "weight_decay": 0.05, "clip": 0.01, "crop": [380, 760], "steps": 5000,
                "batch_size": 8, "paste_probability": 0.2},
        "m2a+eel": {"steps": 4000, "lr": 1e-05, "weight_decay": 0.05, "anomaly_weight": 0.05, "loss": "m2a+eel"},
    }
    for name, values in expected.items():
        code, stdout, stderr = run_cli("train", "--recipe", name, "--show-config")
        assert code == 0, stderr
        printed = {line.split(":", 1)[0]: json.loads(line.split(":", 1)[1].split("  #")[0]) for line in stdout.splitlines()[1:]}
        for key, value in values.items():
            assert printed[key] == value, (name, key)
    code, stdout, _ = run_cli("train", "--recipe", "demo-rpl+eel", "--show-config", "--set", "lr=1e-4")
    assert "CPU-sized demo setting" in stdout and "lr: 0.0001  # overridden" in stdout
    assert set(PRESETS) >= {"rpl", "rpl+eel", "m2a", "m2a+eel"}


def test_train_command_trains_a_host_and_the_rpl_module_on_a_world(tmp_path):
    world = tmp_path / "W"
    assert main(["world", "make", "--out", str(world), "--per-weather", "0", "--clear", "0", "--train", "3", "--size", "64x32", "--quiet"]) == 0
    assert main(["train", "--recipe", "demo-closed", "--world", str(world), "--out", str(tmp_path / "closed"),
                 "--set", "steps=2", "--set", "batch_size=2", "--quiet"]) == 0
    assert main(["train", "--recipe", "demo-rpl+eel", "--world", str(world), "--host", str(tmp_path / "closed"),
                 "--out", str(tmp_path / "eel"), "--set", "steps=2", "--set", "batch_size=2", "--set", "inlier_entropy=\"paper\"",
                 "--quiet"]) == 0
    saved = load_state(tmp_path / "eel" / "checkpoint.pt")
    assert saved["config"]["inlier_entropy"] == "paper" and saved["step"] == 2
    code, _, stderr = run_cli("train", "--recipe", "m2a", "--world", world, "--out", tmp_path / "m2a")
    assert code == 2 and "Mask2Anomaly host" in stderr


# ---- the rpl evaluation protocol ----------------------------------------------------------------


def test_rpl_protocol_smooths_then_pools_with_nearest_fpr(rng):
    labels = np.stack([fixtures.random_eval_label(rng) for _ in range(3)])
    raw = (rng.normal(size=labels.shape) + 1.2 * (labels == 1)).astype(np.float32)
    result = pixel_metrics(raw, labels, "rpl")
    smooth = scores.gaussian_smooth(raw)
    valid = labels != 255
    assert abs(result["auprc"] - average_precision_score(labels[valid], smooth[valid])) < 1e-9
    assert abs(result["fpr95"] - hendrycks_fpr_at_recall(labels[valid].astype(np.int64), smooth[valid].astype(np.float64))) < 1e-9
    assert abs(result["auprc"] - pixel_metrics(raw, labels)["auprc"]) > 1e-3  # smoothing matters here


def test_eval_protocol_rpl_equals_score_smooth_rpl_then_nearest(tmp_path, rng):
    truth = fixtures.comsamy(tmp_path / "C", rng)
    logits = tmp_path / "logits"
    logits.mkdir()
    for frame_id, label in truth.items():
        np.save(logits / f"{frame_id}.npy", (rng.normal(size=(19, *label.shape)) + 2.0 * (label == 0)).astype(np.float32))
    assert main(["score", str(logits), "--score", "energy", "--out", str(tmp_path / "raw"), "--quiet"]) == 0
    assert main(["score", str(logits), "--score", "energy", "--smooth", "rpl", "--out", str(tmp_path / "smooth"), "--quiet"]) == 0
    common = ["eval", "--benchmark", "comsamy", "--root", str(tmp_path / "C"), "--quiet"]
    assert main(common + ["--scores", str(tmp_path / "raw"), "--protocol", "rpl", "--out", str(tmp_path / "a")]) == 0
    assert main(common + ["--scores", str(tmp_path / "smooth"), "--protocol", "nearest", "--out", str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / name / "results.json").read_text()) for name in "ab")
    assert a["protocol"] == "rpl"
    for key in ("auprc", "fpr95", "auroc"):
        assert a["all"][key] == b["all"][key]
        assert a["groups"]["weather"]["fog"][key] == b["groups"]["weather"]["fog"][key]


# ---- RPL's mixing ------------------------------------------------------------------------------


def test_rpl_mixing_pastes_object_pixels_at_a_scale_from_rpls_list_anywhere():
    rows, cols = 60, 80
    shape = np.zeros((20, 30), bool)
    shape[2:18, 5:25] = True
    shape[2:6, 5:9] = False  # a notch: only object pixels are pasted, not the whole box
    bank = ObjectBank([BankObject(np.full((20, 30, 3), 200, np.uint8), shape, "crate", (0.5, 0.6))])
    synthesizer = RPLMixSynthesizer(bank)
    labels = np.full((rows, cols), 10, np.uint8)  # all sky: RPL pastes anyway
    heights, tops = set(), set()
    for seed in range(60):
        result = synthesizer.synthesize(np.zeros((rows, cols, 3), np.uint8), labels, np.random.default_rng(seed))
        pasted = result.labels == 254
        if not pasted.any():
            continue
        placement = result.objects[0].placement
        heights.add(placement.height)
        tops.add(placement.top)
        if placement.height >= 8:
            assert pasted.sum() < placement.height * placement.width  # the notch stays background
        np.testing.assert_array_equal(result.image[pasted], 200)
        assert (result.image[~pasted] == 0).all()
    # the 16-row object at RPL's scales (0.25 → 4 rows, 0.5 → 8, 0.75 → 12, 0.125 → 2, 0.1 → 1-2)
    assert heights <= {1, 2, 3, 4, 8, 12} and {4, 8, 12} <= heights
    assert len(tops) > 10  # uniform over the frame, not tied to a road
    assert RPL_SCALES.count(0.5) == 2 and sorted(set(RPL_SCALES)) == [0.1, 0.125, 0.25, 0.5, 0.75]


def test_object_pool_subsets_are_nested_and_sized():
    objects = [BankObject(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4), bool), f"k{i}", (1.0, 1.0), source=str(i)) for i in range(40)]
    bank = ObjectBank(objects)
    quarter, half = bank.subset(0.25, seed=3), bank.subset(0.5, seed=3)
    sources = lambda b: {b[i].source for i in range(len(b))}  # noqa: E731
    assert len(quarter) == 10 and len(half) == 20 and sources(quarter) <= sources(half)
    assert sources(bank.subset(0.25, seed=4)) != sources(quarter)


# ---- weather conditions, manifests, LostAndFound ------------------------------------------------


def test_every_loader_weather_is_mapped_and_snow_is_adverse(tmp_path, rng):
    fixtures.smiyc(tmp_path, rng, track="dataset_ObstacleTrack", ids=("snowstorm1_00", "driveway_01", "gravel_02"), suffix=".webp")
    frames = load_benchmark("smiyc-obstacle", tmp_path)
    conditions = {f.id: dict(group_keys(f.metadata, ("weather",)))["condition"] for f in frames}
    assert conditions == {"snowstorm1_00": "adverse", "driveway_01": "adverse", "gravel_02": "clear"}
    with pytest.raises(DiffeelError, match="hail"):
        weather_condition("hail")


@pytest.mark.parametrize("row, message", [("scene000,,urban,", "has no weather"), ("scene000,clear,urban,", "listed twice")])
def test_comsamy_rejects_rows_without_weather_and_duplicate_ids(tmp_path, rng, row, message):
    fixtures.comsamy(tmp_path, rng)
    manifest = tmp_path / "manifest.csv"
    lines = manifest.read_text().splitlines()
    manifest.write_text("\n".join((lines + [row]) if "twice" in message else [lines[0], row, *lines[2:]]) + "\n")
    with pytest.raises(DiffeelError, match=message):
        load_benchmark("comsamy", tmp_path)


def test_lost_and_found_non_hazards_are_void_unless_mapped_otherwise(tmp_path, rng):
    fixtures.lost_and_found(tmp_path, rng, scenes=("02_Hanns_Klemm_Str_44",))
    label_path = next((tmp_path / "gtCoarse").rglob("*_labelIds.png"))
    stored = np.ones((16, 24), np.uint8)
    stored[0] = 0
    stored[2:6, 2:6] = 31  # lying marker pole: a non-hazard
    stored[8:12, 2:6] = 38  # wheel cap
    stored[8:12, 10:14] = 7  # a hazard
    fixtures.write_png(label_path, stored)
    label = load_benchmark("laf", tmp_path)[0].load_label()
    assert (label[2:6, 2:6] == 255).all() and (label[8:12, 2:6] == 255).all()
    assert (label[8:12, 10:14] == 1).all() and (label[0] == 255).all() and label[15, 20] == 0
    from diffeel.labels import LabelMapping

    smiyc_style = load_benchmark("laf", tmp_path, label_map=LabelMapping.parse("0:255,1:0,*:1"))[0].load_label()
    assert (smiyc_style[2:6, 2:6] == 1).all()
