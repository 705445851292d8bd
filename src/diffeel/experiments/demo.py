"""The demo: the paper's experiment in miniature on the embedded world, on a CPU.

1. Build the world (cached): a ComsAmy-format test set over seven weathers with an *unseen*
   anomaly family (animals; clear : adverse frames in ComsAmy's 250 : 218 ratio), and a
   clear-weather training split with cut-outs of another family (debris).
2. Train the recipes (cached, resumable; the ``demo-*`` presets of :mod:`diffeel.train.recipes`):
   ``closed`` (a small DeepLabV3+); the RPL residual module with ``rpl`` (RPL's loss on RPL's
   random-paste mixing, as published), ``rpl-loss`` (RPL's loss on diffeel's placement data) and
   ``rpl+eel`` (Eq. 8 on diffeel's placement data); for Table V, ``rpl+eel`` on 25 % and 50 %
   of the debris bank and with three objects per image. The quick run trains ``closed`` and
   ``rpl+eel`` only.
3. Evaluate every recipe with the scores MSP, max-logit, energy, entropy and EEL on the test set,
   whole / clear / adverse / per weather, and write ``results.json``, ``report.md``,
   ``report.html`` and the figures (Table II, Figure 8, Table V, Figure 6, Figure 7 shapes).
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..data.benchmarks import ADVERSE_WEATHERS, WEATHERS, load_benchmark
from ..metrics import PixelMetrics
from ..scores import SCORES, all_scores


DEMO_RECIPES = 2  # bumped when the demo's recipes change, so that old checkpoints are not reused


@dataclass
class DemoConfig:
    quick: bool = False
    seed: int = 0
    size: tuple[int, int] = (256, 128)
    per_weather: int = 12
    train_frames: int = 200
    closed_steps: int = 900
    residual_steps: int = 400
    batch_size: int = 8
    closed_lr: float = 3e-3
    residual_lr: float = 3e-4
    rpl_baseline: bool = True  # train RPL's recipe (Table II's RPL row, Table V's loss ablation)
    ablate_pool: bool = True  # Table V's amount of anomalous objects: 25 % / 50 % of the object bank
    ablate_objects: bool = True  # three pasted objects per image (an extra row)
    device: str = "cpu"
    jobs: int = 1

    @classmethod
    def preset(cls, quick: bool, **overrides) -> "DemoConfig":
        if quick:
            # the quick run spends its 3 minutes on the host and on rpl+eel, and skips the baselines
            base = cls(quick=True, per_weather=6, train_frames=160, closed_steps=560, residual_steps=140, rpl_baseline=False,
                       ablate_pool=False, ablate_objects=False)
        else:
            base = cls()
        return cls(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})


# The residual runs: (name, preset, overrides, ablation flag). ``rpl`` is RPL as published (its loss
# on its own random-paste mixing); ``rpl-loss`` is RPL's loss on diffeel's placement data, so
# that Table V compares the losses on the same data; the pool runs use 25 % / 50 % of the debris
# bank (Table V's amount of anomalous objects); k=3 pastes three objects per image.
RESIDUAL_RUNS = (
    ("rpl", "demo-rpl", {}, "rpl_baseline"),
    ("rpl-loss", "demo-rpl", {"synthesizer": "placement"}, "rpl_baseline"),
    ("rpl+eel", "demo-rpl+eel", {}, None),
    ("rpl+eel pool 25%", "demo-rpl+eel", {"object_pool": 0.25}, "ablate_pool"),
    ("rpl+eel pool 50%", "demo-rpl+eel", {"object_pool": 0.5}, "ablate_pool"),
    ("rpl+eel k=3", "demo-rpl+eel", {"objects_per_image": 3}, "ablate_objects"),
)


def _train_recipes(config: DemoConfig, cache: Path, progress: bool) -> tuple[dict, dict, dict]:
    from ..train.recipes import load_small_host, preset, resolve_device, train_on_world

    resolve_device(config.device)  # fail before any work when CUDA is asked for and absent
    world_train = cache / "world" / "train"
    timings = {}
    common = {"batch_size": config.batch_size, "seed": config.seed}
    started = time.perf_counter()
    closed = preset("demo-closed", steps=config.closed_steps, lr=config.closed_lr, **common)
    train_on_world(closed, world_train, cache / "closed", device=config.device, progress=progress)
    host = load_small_host(cache / "closed").to(config.device)
    timings["closed"] = time.perf_counter() - started
    models, runs = {"closed": host}, {"closed": closed}
    for name, recipe, overrides, flag in RESIDUAL_RUNS:
        if flag is not None and not getattr(config, flag):
            continue
        started = time.perf_counter()
        run_config = preset(recipe, steps=config.residual_steps, lr=config.residual_lr, **common, **overrides)
        models[name] = train_on_world(run_config, world_train, cache / name, host=host, device=config.device, progress=progress)
        runs[name] = run_config
        timings[name] = time.perf_counter() - started
    return models, runs, timings


@torch.no_grad()
def _logits(model, images: torch.Tensor) -> torch.Tensor:
    model.eval()
    output = model(images)
    return output[1] if isinstance(output, tuple) else output


def evaluate_models(models: dict, test_root: Path, device: str = "cpu", batch: int = 16) -> tuple[dict, dict]:
    """Metrics of every (recipe, score) on the test set, grouped, and material for the figures.

    Each weather is accumulated once; ``adverse`` and ``whole`` are exact merges of those states.
    """
    frames = load_benchmark("comsamy", test_root)
    metrics = {f"{recipe}/{score}": {w: PixelMetrics(name=w) for w in WEATHERS} for recipe in models for score in SCORES}
    energies = {recipe: {"anomaly": [], "inlier": []} for recipe in models}
    shown = next((f for f in frames if f.metadata["weather"] == "fog"), frames[0])  # Figure 6's frame
    example = {"id": shown.id, "image": shown.load_image(), "label": shown.load_label(), "maps": {}}
    for start in range(0, len(frames), batch):
        chunk = frames[start : start + batch]
        images = torch.from_numpy(np.stack([f.load_image() for f in chunk])).permute(0, 3, 1, 2).float().div_(255).to(device)
        labels = np.stack([f.load_label() for f in chunk])
        weathers = np.array([f.metadata["weather"] for f in chunk])
        for recipe, model in models.items():
            maps = {name: value.numpy() for name, value in all_scores(_logits(model, images).cpu()).items()}
            energies[recipe]["anomaly"].append(-maps["energy"][labels == 1])
            energies[recipe]["inlier"].append(-maps["energy"][labels == 0])
            for score, values in maps.items():
                for weather in np.unique(weathers):
                    metrics[f"{recipe}/{score}"][weather].update(values[weathers == weather], labels[weathers == weather])
            ids = [f.id for f in chunk]
            if shown.id in ids:
                example["maps"][recipe] = {s: maps[s][ids.index(shown.id)] for s in ("energy", "entropy", "eel")}
    import warnings

    from ..metrics import UndefinedMetricWarning

    def merged(by_weather: dict, weathers, name: str) -> PixelMetrics:
        total = PixelMetrics(name=name)
        for weather in weathers:
            total.merge(by_weather[weather])
        return total

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UndefinedMetricWarning)
        results = {}
        for method, by_weather in metrics.items():
            groups = {"whole": merged(by_weather, WEATHERS, "whole"), "clear": by_weather["clear"],
                      "adverse": merged(by_weather, ADVERSE_WEATHERS, "adverse"), **by_weather}
            results[method] = {group: accumulator.compute() for group, accumulator in groups.items()}
    gaps = {}
    for recipe, values in energies.items():
        anomaly, inlier = np.concatenate(values["anomaly"]), np.concatenate(values["inlier"])
        worst_anomalies = np.sort(anomaly)[-max(1, len(anomaly) // 4) :]  # highest energy response
        worst_inliers = np.sort(inlier)[: max(1, len(inlier) // 4)]  # lowest energy response
        gaps[recipe] = {"worst_anomaly_mean": float(worst_anomalies.mean()), "worst_inlier_mean": float(worst_inliers.mean()),
                        "gap": float(worst_inliers.mean() - worst_anomalies.mean())}
    return results, {"energy_gap": gaps, "example": example, "n_frames": len(frames)}


def run_demo(config: DemoConfig, out, progress: bool = True) -> dict:
    from . import demo_report
    from ..report.output import atomic_output_dir, write_json
    from ..world.make import WORLD_FORMAT, make_world

    out = Path(out)
    # one cache per configuration, so that quick and default runs (or other seeds) never mix
    settings = {**{k: v for k, v in asdict(config).items() if k != "jobs"}, "world_format": WORLD_FORMAT, "recipes": DEMO_RECIPES}
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]
    cache = out / "cache" / f"{'quick' if config.quick else 'default'}-{fingerprint}"
    started = time.perf_counter()
    timings = {}
    make_world(cache / "world", per_weather=config.per_weather, train=config.train_frames, size=config.size,
               seed=config.seed, jobs=config.jobs, progress=progress)
    timings["world_s"] = time.perf_counter() - started
    models, runs, train_timings = _train_recipes(config, cache, progress)
    timings.update({f"train_{k}_s": v for k, v in train_timings.items()})
    evaluation_started = time.perf_counter()
    methods, material = evaluate_models(models, cache / "world" / "test", config.device)
    timings["evaluation_s"] = time.perf_counter() - evaluation_started
    run_fields = ("loss", "synthesizer", "object_pool", "objects_per_image", "steps", "lr", "optimizer")
    results = {"methods": methods, "energy_gap": material["energy_gap"], "config": {**asdict(config), "size": list(config.size)},
               "runs": {name: {k: getattr(run, k) for k in run_fields} for name, run in runs.items()},
               "n_test_frames": material["n_frames"], "timings": timings}
    results["findings"] = demo_report.findings(results)
    with atomic_output_dir(out, allowed=("cache",)) as staging:
        demo_report.write(staging, results, material)
        timings["total_s"] = time.perf_counter() - started
        write_json(staging / "results.json", results)
    return results


