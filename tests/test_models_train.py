import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from diffeel.data.benchmarks import WEATHERS
from diffeel.experiments.demo import DemoConfig, run_demo
from diffeel.errors import DiffeelError
from diffeel.models import RPLModel, SmallDeepLab, load_state, save_state
from diffeel.train import TrainConfig, train
from diffeel.train.recipes import closed_loss, preset, residual_loss, residual_model


def tiny_batch(step: int):
    generator = torch.Generator().manual_seed(1000 + step)
    images = torch.rand(2, 3, 32, 64, generator=generator)
    labels = torch.randint(0, 19, (2, 32, 64), generator=generator)
    labels[:, 10:16, 20:30] = 254
    labels[:, :2] = 255
    return images, labels


def test_small_deeplab_shapes():
    model = SmallDeepLab(width=8)
    assert model(torch.rand(2, 3, 32, 64)).shape == (2, 19, 32, 64)


def test_rpl_residual_module_is_initialised_as_rpl():
    torch.manual_seed(0)
    host = SmallDeepLab(width=8)
    model = RPLModel(host)
    block = model.residual_block
    for copy, original in ((block.atten_aspp, host.aspp), (block.bot_atten_aspp, host.bot_aspp)):
        for (name, a), (_, b) in zip(copy.state_dict().items(), original.state_dict().items()):
            assert torch.equal(a, b), name
        assert all(p.data_ptr() != q.data_ptr() for p, q in zip(copy.parameters(), original.parameters()))  # copies, not shared
    weight = block.atten_aspp_final.weight
    assert weight.shape == (host.decoder_channels, host.bot_aspp.out_channels, 1, 1)
    fan_in, fan_out = host.bot_aspp.out_channels, host.decoder_channels
    # RPL's initialize_weights: kaiming_normal_ with PyTorch's defaults (fan_in, gain √2); the
    # fan_out variant would give std √(2/fan_out), 12 % lower here, outside the 5 % band
    assert abs(weight.std().item() / (2 / fan_in) ** 0.5 - 1) < 0.05
    assert abs(weight.std().item() / (2 / fan_out) ** 0.5 - 1) > 0.07


def test_host_gets_no_gradient_and_its_output_never_changes():
    torch.manual_seed(0)
    host = SmallDeepLab(width=8)
    host.eval()
    images = torch.rand(2, 3, 32, 64)
    with torch.no_grad():
        before = host(images).clone()
    host_state = {k: v.clone() for k, v in host.state_dict().items()}
    model, groups = residual_model(host, seed=0)
    optimizer = torch.optim.AdamW([{"params": g["params"]} for g in groups], lr=1e-2)
    model.train()
    for step in range(3):
        batch_images, labels = tiny_batch(step)
        loss = residual_loss(preset("demo-rpl+eel"))(model, batch_images, labels)["total"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert not host.training  # BatchNorm statistics stay frozen
    assert all(p.grad is None and not p.requires_grad for p in host.parameters())
    for key, value in host.state_dict().items():
        assert torch.equal(value, host_state[key]), key
    with torch.no_grad():
        out1, out2 = model(images)
        assert torch.equal(host(images), before)
    assert torch.equal(out1, before) and not torch.equal(out2, before)


def test_resume_equals_an_uninterrupted_run(tmp_path):
    def fresh():
        torch.manual_seed(0)
        model = SmallDeepLab(width=8)
        return model, [{"params": list(model.parameters())}]

    config = TrainConfig("closed", steps=6, batch_size=2, lr=1e-2, save_every=2)
    straight, groups = fresh()
    train(config, straight, groups, tiny_batch, closed_loss, tmp_path / "straight", progress=False)

    interrupted, groups = fresh()
    summary = train(config, interrupted, groups, tiny_batch, closed_loss, tmp_path / "resumed", progress=False, stop_after=3)
    assert summary["steps"] == 3
    resumed, groups = fresh()  # a new process: only the checkpoint survives
    summary = train(config, resumed, groups, tiny_batch, closed_loss, tmp_path / "resumed", progress=False)
    assert summary["resumed_from"] == 3 and summary["steps"] == 6
    for key, value in straight.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    log = [json.loads(line)["step"] for line in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4, 5, 6]


def test_checkpoints_load_with_weights_only_and_fail_clearly(tmp_path):
    save_state(tmp_path / "ok.pt", {"model": SmallDeepLab(width=8).state_dict(), "step": 3})
    assert load_state(tmp_path / "ok.pt")["step"] == 3
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DiffeelError, match="could not be read"):
        load_state(tmp_path / "bad.pt")
    with pytest.raises(DiffeelError, match="does not exist"):
        load_state(tmp_path / "missing.pt")


def test_a_tiny_demo_writes_every_output(tmp_path):
    config = DemoConfig(per_weather=1, train_frames=4, closed_steps=3, residual_steps=2, batch_size=2, size=(128, 64), ablate_objects=False)
    results = run_demo(config, tmp_path / "demo", progress=False)
    for name in ("results.json", "report.md", "report.html", "fig8_weather.png", "fig7_energy_gap.png", "fig6_score_maps.png"):
        assert (tmp_path / "demo" / name).stat().st_size > 0, name
    stored = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert set(stored) >= {"methods", "config", "timings", "findings", "energy_gap"}
    runs = stored["runs"]  # which loss and which data each row used
    assert runs["rpl"]["synthesizer"] == "rpl-mix" and runs["rpl-loss"]["synthesizer"] == "placement"
    assert runs["rpl"]["loss"] == runs["rpl-loss"]["loss"] == "rpl" and runs["rpl+eel"]["loss"] == "rpl+eel"
    assert [runs[name]["object_pool"] for name in ("rpl+eel pool 25%", "rpl+eel pool 50%", "rpl+eel")] == [0.25, 0.5, 1.0]
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "which loss and which data" in report and "amount of anomalous objects (object pool, EEL)" in report
    for recipe in ("closed", "rpl", "rpl-loss", "rpl+eel", "rpl+eel pool 25%"):
        for score in ("msp", "max_logit", "energy", "entropy", "eel"):
            groups = stored["methods"][f"{recipe}/{score}"]
            assert set(groups) >= {"whole", "clear", "adverse", "fog", "sandstorm"}
            assert 0 <= groups["whole"]["auprc"] <= 1
    whole = results["methods"]["closed/msp"]["whole"]
    assert results["n_test_frames"] == 13  # 1 per adverse weather + 7 clear (ComsAmy's clear : adverse ratio)
    assert whole["n_pixels"] == 13 * 128 * 64 - whole["n_void"]
    # adverse and whole are merges of the per-weather states: their counts add up
    by_weather = results["methods"]["closed/msp"]
    assert whole["n_anomaly"] == sum(by_weather[w]["n_anomaly"] for w in WEATHERS)
    assert by_weather["adverse"]["n_pixels"] == sum(by_weather[w]["n_pixels"] for w in WEATHERS[1:])
    # a second run reuses the cached world and checkpoints
    again = run_demo(config, tmp_path / "demo", progress=False)
    assert again["methods"]["rpl+eel/eel"]["whole"]["auprc"] == results["methods"]["rpl+eel/eel"]["whole"]["auprc"]


def test_findings_follow_the_numbers_and_skip_recipes_not_trained():
    from diffeel.experiments.demo_report import _ablation, findings

    def run(**auprc):
        return {"methods": {m.replace("_", "/"): {g: {"auprc": v} for g, v in zip(("whole", "clear", "adverse"), values)}
                            for m, values in auprc.items()}, "energy_gap": {}}

    quick = run(closed_msp=(0.20, 0.30, 0.15), closed_energy=(0.22, 0.35, 0.18), **{"rpl+eel_eel": (0.26, 0.40, 0.20),
                "rpl+eel_energy": (0.25, 0.39, 0.2), "rpl+eel_msp": (0.21, 0.3, 0.19)})
    claims = {f["claim"]: f["holds"] for f in findings(quick)}
    assert not any("RPL loss" in claim for claim in claims)  # no rpl recipe: not measured, not "failed"
    assert [row[0] for row in _ablation(quick)[1]] == ["anomaly score (rpl+eel model)"] * 3  # no one-sided loss ablation
    assert claims["rpl+eel/eel beats closed/msp by at least 5 AUPRC points (whole test set)"] is True
    assert claims["EEL score ≥ energy ≥ MSP (rpl+eel model)"] is True
    worse = run(closed_msp=(0.20, 0.30, 0.15), closed_energy=(0.22, 0.35, 0.18), **{"rpl+eel_eel": (0.249, 0.40, 0.20),
                "rpl+eel_energy": (0.25, 0.39, 0.2), "rpl+eel_msp": (0.21, 0.3, 0.19), "rpl-loss_eel": (0.3, 0.4, 0.2),
                "rpl-loss_energy": (0.3, 0.4, 0.2), "rpl_energy": (0.24, 0.3, 0.2)})
    claims = {f["claim"]: f["holds"] for f in findings(worse)}
    assert claims["rpl+eel/eel beats closed/msp by at least 5 AUPRC points (whole test set)"] is False  # 4.9 points
    assert claims["EEL loss ≥ RPL loss (same data, same EEL score)"] is False
    assert claims["RPL + DiffEEL (EEL loss and score, diffeel's data) beats RPL as published (its loss, mixing and energy score)"] is True
    assert claims["diffeel's placement beats RPL's random paste (RPL loss, energy score)"] is True


@pytest.mark.slow
def test_quick_demo_end_to_end(tmp_path):
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", "demo", "--quick", "--out", str(tmp_path / "q"), "--quiet"],
                             capture_output=True, text=True, timeout=900)
    assert process.returncode == 0, process.stderr[-2000:]
    results = json.loads((tmp_path / "q" / "results.json").read_text())
    assert results["config"]["quick"] is True and "rpl+eel/eel" in results["methods"]
    assert "report:" in process.stdout
    assert np.isfinite(results["methods"]["rpl+eel/eel"]["whole"]["auprc"])
