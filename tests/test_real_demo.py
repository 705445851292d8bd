"""diffeel demo --real on a tiny CamVid tree around a small host: test set, adapter runs, findings, report, resume."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from diffeel.cli import main
from diffeel.data.benchmarks import load_benchmark
from diffeel.models import SmallDeepLab

HEIGHT, WIDTH = 96, 128
SKY, BUILDING, ROAD, UNLABELLED = 0, 1, 3, 11  # CamVid values


def write_camvid(root: Path) -> None:
    """Frames with sky, buildings and a wide road in SegNet's layout (8 test frames, 4 training frames)."""
    rng = np.random.default_rng(0)
    label = np.full((HEIGHT, WIDTH), SKY, np.uint8)
    label[20:48] = BUILDING
    label[48:] = ROAD
    label[:, :4] = UNLABELLED
    for split, count in (("train", 4), ("val", 1), ("test", 8)):
        for index in range(count):
            image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
            image[label == SKY] = (150, 180, 230)
            image[label == BUILDING] = (120, 100, 90)
            image[label == ROAD] = (80, 80, 85)
            image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
            for folder, array in ((split, image), (f"{split}annot", label)):
                (root / folder).mkdir(parents=True, exist_ok=True)
                Image.fromarray(array).save(root / folder / f"frame{index:03d}.png")


def run(*args):
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main([str(a) for a in args])
    return code, out.getvalue(), err.getvalue()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("real")
    write_camvid(root / "CamVid")
    torch.manual_seed(2)
    torch.save({"model": SmallDeepLab().state_dict()}, root / "host.pt")
    return root


def real_demo(tiny: Path, out: Path, benchmarks=()):
    from diffeel.experiments.real_demo import RealDemoConfig, run_real_demo

    config = RealDemoConfig(camvid=str(tiny / "CamVid"), host="small_deeplab", checkpoint=str(tiny / "host.pt"), seeds=2, steps=2,
                            batch_size=2, crop=(64, 96), clear_frames=2, per_weather=1, benchmarks=list(benchmarks))
    return run_real_demo(config, out, progress=False)


def test_the_real_demo_runs_end_to_end_and_resumes(tiny, tmp_path):
    out = tmp_path / "run"
    real_demo(tiny, out)
    results = json.loads((out / "results.json").read_text())
    assert results["n_test_frames"] == 8 and results["seeds"] == [0, 1]
    assert {m.split("/")[0] for m in results["methods"]} == {"closed", "rpl-loss", "rpl+eel"}
    assert set(results["methods"]["rpl+eel/eel"]) >= {"whole", "clear", "adverse", "fog", "sandstorm"}
    assert results["findings"] and all(f["verdict"] in ("holds", "within noise", "DOES NOT HOLD") for f in results["findings"])
    for name in ("report.md", "report.html", "fig8_weather.png"):
        assert (out / name).is_file(), name
    assert "real road images" in (out / "report.md").read_text()
    [cache] = (out / "cache").iterdir()
    test_set = load_benchmark("comsamy", cache / "test")
    labels = np.stack([frame.load_label() for frame in test_set])
    assert (labels == 1).any() and (labels == 255).any()  # pasted animals, and CamVid's void kept void
    assert sorted(f.metadata["weather"] for f in test_set).count("clear") == 2
    for seed in (0, 1):
        for run_name in ("rpl-loss", "rpl+eel"):
            assert (cache / f"seed-{seed}" / run_name / "checkpoint.pt").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in cache.rglob("checkpoint.pt")}
    real_demo(tiny, out, [("comsamy", str(cache / "test"))])
    assert {p: p.stat().st_mtime_ns for p in cache.rglob("checkpoint.pt")} == stamps  # trained once, reused
    results = json.loads((out / "results.json").read_text())
    assert set(results["benchmarks"]["comsamy"]["methods"]["closed/msp"]) >= {"whole", "clear", "adverse"}
    assert results["benchmarks"]["comsamy"]["methods"]["closed/msp"]["whole"]["auprc"] == pytest.approx(
        results["methods"]["closed/msp"]["whole"]["auprc"], abs=1e-4)  # the same frames, one by one (batches round differently)


def test_the_real_demo_needs_camvid_and_the_hosts_weights(tiny, tmp_path):
    code, _, err = run("demo", "--real", "--out", tmp_path / "a")
    assert code != 0 and "--camvid" in err
    code, _, err = run("demo", "--real", "--camvid", tiny / "CamVid", "--host", "small_deeplab", "--checkpoint",
                       tmp_path / "missing.pt", "--out", tmp_path / "b")
    assert code != 0 and "missing.pt" in err and not (tmp_path / "b" / "results.json").exists()
