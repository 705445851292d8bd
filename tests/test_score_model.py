"""``diffeel score --model``: a model over a benchmark → score maps that ``diffeel eval`` reads."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

import benchmark_fixtures as fixtures
from diffeel import scores
from diffeel.cli import main
from diffeel.data.images import read_image
from diffeel.models import RPLWiderResNet38, create_model, scoring_logits
from diffeel.scores import gaussian_smooth
from diffeel.models import normalise

FACTORY = f"{Path(__file__).parent / 'test_models_wrn38.py'}:make_segmenter"


def run(*args) -> tuple[int, str, str]:
    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.redirect_stderr(io.StringIO()) as err:
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("score")
    fixtures.comsamy(root / "bench", np.random.default_rng(4))
    torch.manual_seed(0)
    model = RPLWiderResNet38(width_divisor=16)
    torch.save({"model": {"branch1." + k: v for k, v in model.state_dict().items()}}, root / "res.pth")
    return root


def score_args(root: Path, out: Path, *extra):
    return ["score", "--model", "rpl_wrn38", "--model-option", "width_divisor=16", "--checkpoint", root / "res.pth",
            "--benchmark", "comsamy", "--root", root / "bench", "--out", out, "--quiet", *extra]


def maps(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*.npy"))}


def test_model_maps_equal_the_logits_path_and_eval_reads_them(setup, tmp_path):
    code, out, err = run(*score_args(setup, tmp_path / "model", "--scores", "eel,energy"))
    assert code == 0, err
    assert sorted(p.name for p in (tmp_path / "model").iterdir()) == ["eel", "energy", "score_config.json"]
    model = create_model("rpl_wrn38", checkpoint=setup / "res.pth", width_divisor=16).to(memory_format=torch.channels_last)
    logits_dir = tmp_path / "logits"
    logits_dir.mkdir()
    for image_path in sorted((setup / "bench" / "images").iterdir()):
        image = torch.from_numpy(read_image(image_path).copy()).permute(2, 0, 1)[None].float()
        with torch.inference_mode():
            logits = scoring_logits(model, normalise(image, "imagenet").contiguous(memory_format=torch.channels_last))
        np.save(logits_dir / f"{image_path.stem}.npy", logits[0].numpy())
    assert run("score", logits_dir, "--score", "eel", "--dtype", "float16", "--out", tmp_path / "from_logits", "--quiet")[0] == 0
    ours = maps(tmp_path / "model" / "eel")
    assert ours and ours == maps(tmp_path / "from_logits")
    first = np.load(tmp_path / "model" / "eel" / sorted(ours)[0])
    assert first.dtype == np.float16 and first.shape == (fixtures.SIZE[1], fixtures.SIZE[0])
    code, _, err = run("eval", "--benchmark", "comsamy", "--root", setup / "bench", "--scores", tmp_path / "model" / "eel",
                       "--out", tmp_path / "eval", "--quiet")
    assert code == 0, err
    assert 0 <= json.loads((tmp_path / "eval" / "results.json").read_text())["all"]["auprc"] <= 1


def test_resume_rescores_only_unfinished_batches_and_refuses_other_settings(setup, tmp_path):
    out = tmp_path / "run"
    assert run(*score_args(setup, out, "--batch", "2", "--scores", "msp,eel"))[0] == 0
    finished = maps(out)
    victim = sorted(out.glob("eel/*.npy"))[-1]
    victim.unlink()
    code, printed, _ = run(*score_args(setup, out, "--batch", "2", "--scores", "msp,eel"))
    assert code == 0 and "scored 2 frame(s)" in printed and "kept 2 finished" in printed
    assert maps(out) == finished
    code, _, err = run(*score_args(setup, out, "--batch", "2", "--scores", "eel"))
    assert code == 2 and "made with other settings (scores)" in err
    assert maps(out) == finished


def test_size_smoothing_and_a_user_factory(setup, tmp_path):
    code, _, err = run(*score_args(setup, tmp_path / "plain", "--scores", "energy", "--dtype", "float32", "--size", "48x32"))
    assert code == 0, err
    code, _, err = run(*score_args(setup, tmp_path / "smooth", "--scores", "energy", "--dtype", "float32", "--size", "48x32", "--smooth", "rpl"))
    assert code == 0, err
    for name in maps(tmp_path / "plain"):
        plain = np.load(tmp_path / "plain" / name)
        assert plain.shape == (fixtures.SIZE[1], fixtures.SIZE[0])  # label resolution, whatever the model saw
        np.testing.assert_allclose(np.load(tmp_path / "smooth" / name), gaussian_smooth(plain), atol=1e-5)
    code, _, err = run("score", "--model", FACTORY, "--benchmark", "comsamy", "--root", setup / "bench", "--out", tmp_path / "user",
                       "--scores", "msp", "--quiet")
    assert code == 0, err
    assert len(maps(tmp_path / "user")) == 4


def test_two_torchrun_processes_write_the_bytes_of_one(setup, tmp_path):
    """Each rank scores its share; batches are planned before the split, so nothing changes. The
    convolution library's results depend on its thread count, so both runs use one thread each."""
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).parent)}
    args = [str(a) for a in score_args(setup, tmp_path / "one", "--batch", "2")]
    subprocess.run([sys.executable, "-m", "diffeel", *args], check=True, env=environment, capture_output=True, timeout=300)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", "-m", "diffeel"]
    two = subprocess.run(torchrun + [a.replace(str(tmp_path / "one"), str(tmp_path / "two")) for a in args], env=environment,
                         capture_output=True, text=True, timeout=120)
    assert two.returncode == 0, two.stderr
    assert "rank 0 of 2" in two.stdout
    assert maps(tmp_path / "one") == maps(tmp_path / "two") and len(maps(tmp_path / "one")) == 4 * 5
    assert (tmp_path / "one" / "score_config.json").read_text() == (tmp_path / "two" / "score_config.json").read_text()


TINY_MASK = {"hidden_dim": 32, "num_queries": 10, "dec_layers": 3, "width_divisor": 16, "norm_groups": 4, "dim_feedforward": 32,
             "enc_layers": 1, "enc_dim_feedforward": 32, "nheads": 4}


def mask_model_command(setup: Path, tmp_path: Path) -> list:
    """``diffeel score`` arguments for a tiny random Mask2Anomaly saved to ``tmp_path / "m2a.pth"``."""
    torch.manual_seed(0)
    model = create_model("mask2anomaly_r50", **TINY_MASK)
    torch.save({"model": model.state_dict()}, tmp_path / "m2a.pth")
    options = [a for key, value in TINY_MASK.items() for a in ("--model-option", f"{key}={value}")]
    return ["score", "--model", "mask2anomaly_r50", *options, "--checkpoint", tmp_path / "m2a.pth", "--benchmark", "comsamy",
            "--root", setup / "bench", "--dtype", "float32", "--quiet"]


def test_mask_model_scores_eq3_and_the_official_script(setup, tmp_path):
    from diffeel.models.mask2anomaly_inference import eq3_score, mask_wise_logits, official_anomaly_score

    common = mask_model_command(setup, tmp_path)
    assert run(*common, "--scores", "msp,eel", "--out", tmp_path / "eq3")[0] == 0
    assert run(*common, "--scores", "eel", "--mask-logits", "softmax", "--out", tmp_path / "softmaxed")[0] == 0
    assert json.loads((tmp_path / "eq3" / "score_config.json").read_text())["mask_logits"] == "raw"
    assert json.loads((tmp_path / "softmaxed" / "score_config.json").read_text())["mask_logits"] == "softmax"
    code, _, err = run(*common, "--inference", "anomaly_inference", "--out", tmp_path / "official")
    assert code == 0, err
    model = create_model("mask2anomaly_r50", checkpoint=tmp_path / "m2a.pth", **TINY_MASK)
    for image_path in sorted((setup / "bench" / "images").iterdir()):
        rgb = read_image(image_path)
        with torch.inference_mode():
            outputs = model(torch.from_numpy(rgb.copy()).permute(2, 0, 1)[None].float())
            expected = eq3_score(outputs, outputs["image_size"])[0].numpy()
        np.testing.assert_allclose(np.load(tmp_path / "eq3" / "msp" / f"{image_path.stem}.npy"), expected, atol=1e-6)
        for folder, class_weights in (("eq3", "raw"), ("softmaxed", "softmax")):  # EEL of the paper's c^T·σ(m), or the ablation's
            with torch.inference_mode():
                eel = scores.eel(mask_wise_logits(outputs, outputs["image_size"], class_weights=class_weights))[0].numpy()
            np.testing.assert_allclose(np.load(tmp_path / folder / "eel" / f"{image_path.stem}.npy"), eel, rtol=1e-5, atol=1e-5)
        official = np.asarray(official_anomaly_score(model, np.ascontiguousarray(rgb[..., ::-1])), dtype=np.float32)
        np.testing.assert_allclose(np.load(tmp_path / "official" / "anomaly_inference" / f"{image_path.stem}.npy"), official, atol=2e-5)  # channels-last rounding
    code, _, err = run(*common, "--inference", "anomaly_inference", "--smooth", "rpl", "--out", tmp_path / "bad")
    assert code == 2 and "takes no --smooth, --size, --protocol or --flip" in err


def test_m2a_protocol_scores_at_the_official_scale(setup, tmp_path):
    """--protocol m2a --flip brings images to the model as Mask2Anomaly's evaluation does (short
    side 1024, PIL bilinear, flip averaged): with no query confident enough for the official extra
    channels, Eq. 3 under this protocol is the official score, map for map; the native maps differ."""
    from diffeel.models.mask2anomaly_inference import official_kept_queries, official_resize

    common = mask_model_command(setup, tmp_path)
    code, _, err = run(*common, "--scores", "msp,eel", "--protocol", "m2a", "--flip", "--out", tmp_path / "m2a")
    assert code == 0, err
    assert run(*common, "--inference", "anomaly_inference", "--out", tmp_path / "official")[0] == 0
    assert run(*common, "--scores", "msp", "--out", tmp_path / "native")[0] == 0
    config = json.loads((tmp_path / "m2a" / "score_config.json").read_text())
    assert config["protocol"] == "m2a" and config["flip"] is True
    model = create_model("mask2anomaly_r50", checkpoint=tmp_path / "m2a.pth", **TINY_MASK)
    for image_path in sorted((setup / "bench" / "images").iterdir()):
        resized = official_resize(read_image(image_path))
        assert min(resized.shape[:2]) == 1024
        with torch.inference_mode():
            for image in (resized, resized[:, ::-1]):
                logits = model(torch.from_numpy(image.copy()).permute(2, 0, 1)[None].float())["pred_logits"][0]
                assert len(official_kept_queries(logits)) == 0
        name = f"{image_path.stem}.npy"
        protocol, official = np.load(tmp_path / "m2a" / "msp" / name), np.load(tmp_path / "official" / "anomaly_inference" / name)
        np.testing.assert_allclose(protocol, official, atol=2e-5)  # channels-last rounding
        assert not np.allclose(np.load(tmp_path / "native" / "msp" / name), protocol, atol=1e-3)
    code, _, err = run(*common, "--protocol", "m2a", "--size", "64x32", "--out", tmp_path / "bad")
    assert code == 2 and "takes no --size" in err


def test_bfloat16_precision_is_recorded_close_and_float16_needs_cuda(setup, tmp_path):
    """--precision bfloat16 runs the forward under autocast: maps close to float32's but not the
    same bits (the switch is real), recorded in score_config.json, so that a float32 rerun into
    the folder is refused; float16 on the CPU is one sentence, before anything is written."""
    common = [*mask_model_command(setup, tmp_path), "--scores", "msp,energy"]
    assert run(*common, "--out", tmp_path / "f32")[0] == 0
    code, _, err = run(*common, "--precision", "bfloat16", "--out", tmp_path / "bf16")
    assert code == 0, err
    assert json.loads((tmp_path / "bf16" / "score_config.json").read_text())["precision"] == "bfloat16"
    full, reduced = maps(tmp_path / "f32"), maps(tmp_path / "bf16")
    assert full.keys() == reduced.keys() and full != reduced
    for name in full:
        exact, approximate = np.load(tmp_path / "f32" / name), np.load(tmp_path / "bf16" / name)
        # bfloat16 keeps 8 significant bits (2^-9 relative per rounding): an error small relative to
        # the magnitude of what was computed (msp = 1 - max_c of the class map, so the class map's),
        # and the pixels' order (what AUPRC and FPR95 see) nearly unchanged
        computed = 1 - exact if name.startswith("msp") else exact
        assert np.abs(approximate - exact).max() <= 0.02 * np.abs(computed).max(), name
        assert spearmanr(exact.ravel(), approximate.ravel())[0] > 0.99, name
    code, _, err = run(*common, "--out", tmp_path / "bf16")
    assert code == 2 and "other settings (precision)" in err
    code, _, err = run(*common, "--precision", "float16", "--out", tmp_path / "half")
    assert code == 2 and "float16 precision needs a CUDA device" in err
    assert not (tmp_path / "half").exists()


def test_overwrite_makes_the_folder_the_new_runs_and_a_failed_run_leaves_no_settings(setup, tmp_path):
    out = tmp_path / "run"
    assert run(*score_args(setup, out, "--scores", "msp,energy,eel"))[0] == 0
    assert run(*score_args(setup, out, "--scores", "eel", "--overwrite"))[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["eel", "score_config.json"]  # no msp/ or energy/ of the earlier run
    assert json.loads((out / "score_config.json").read_text())["scores"] == ["eel"]
    broken = tmp_path / "broken.py"
    broken.write_text("import torch\n\ndef build():\n    return torch.nn.Conv2d(3, 19, 1, bias=False).requires_grad_(False)"
                      "\n\nclass Flat(torch.nn.Module):\n    def forward(self, x):\n        return x.mean(1)\n\n"
                      "def flat():\n    return Flat()\n")
    failed = tmp_path / "failed"
    code, _, err = run("score", "--model", f"{broken}:flat", "--benchmark", "comsamy", "--root", setup / "bench", "--out", failed, "--quiet")
    assert code == 2 and "(N, C, H, W) logits" in err
    assert not (failed / "score_config.json").exists()  # nothing of the failed run: a fixed model may score here
    code, _, err = run("score", "--model", f"{broken}:build", "--benchmark", "comsamy", "--root", setup / "bench", "--out", failed, "--quiet")
    assert code == 0, err


def test_random_weights_are_asked_for_seeded_and_recorded(setup, tmp_path):
    command = ["score", "--model", "small_deeplab", "--benchmark", "comsamy", "--root", setup / "bench", "--quiet"]
    code, _, err = run(*command, "--out", tmp_path / "none")
    assert code == 2 and "small_deeplab needs its weights" in err and not (tmp_path / "none").exists()
    for name in ("a", "b"):
        assert run(*command, "--random-weights", 3, "--out", tmp_path / name)[0] == 0
    assert maps(tmp_path / "a") == maps(tmp_path / "b")  # the same seed, the same model in every run
    assert json.loads((tmp_path / "a" / "score_config.json").read_text())["random_weights"] == 3
    assert run(*command, "--random-weights", 4, "--out", tmp_path / "a")[0] == 2  # another model: not mixed into the folder
    one_class = tmp_path / "one_class.py"
    one_class.write_text("import torch\n\ndef build():\n    return torch.nn.Conv2d(3, 1, 1)\n")
    code, _, err = run("score", "--model", f"{one_class}:build", "--benchmark", "comsamy", "--root", setup / "bench",
                       "--out", tmp_path / "one", "--quiet")
    assert code == 2 and "1 class channel(s)" in err and not (tmp_path / "one" / "score_config.json").exists()


def test_a_factory_module_in_the_current_folder_is_found(setup, tmp_path, monkeypatch):
    (tmp_path / "my_segmenter.py").write_text("import torch\n\ndef build():\n    return torch.nn.Conv2d(3, 19, 1)\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.path", [p for p in __import__("sys").path if p not in ("", str(tmp_path))])
    code, _, err = run("score", "--model", "my_segmenter:build", "--benchmark", "comsamy", "--root", setup / "bench",
                       "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
