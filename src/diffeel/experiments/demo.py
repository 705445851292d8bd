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


DEMO_RECIPES = 3  # bumped when the demo's recipes change, so that old checkpoints are not reused


@dataclass
class DemoConfig:
    quick: bool = False
    seed: int = 0  # the world's seed and the first training seed
    seeds: int = 5  # training seeds: every recipe is trained with seed, seed + 1, … (5: verdicts that survive another machine)
    size: tuple[int, int] = (256, 128)
    per_weather: int = 12
    train_frames: int = 200
    closed_steps: int = 500
    residual_steps: int = 120
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
            # the quick run spends its 3 minutes on one seed of the host and of rpl+eel, and skips the baselines
            base = cls(quick=True, seeds=1, per_weather=6, train_frames=160, closed_steps=560, residual_steps=140, rpl_baseline=False,
                       ablate_pool=False, ablate_objects=False)
        else:
            base = cls()
        return cls(**{**asdict(base), **{k: v for k, v in overrides.items() if v is not None}})

    @property
    def training_seeds(self) -> list[int]:
        return [self.seed + index for index in range(self.seeds)]


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


def _train_recipes(config: DemoConfig, cache: Path, seed: int, progress: bool) -> tuple[dict, dict, dict]:
    """The closed host and the residual runs of one training seed, each cached in ``cache/seed-<seed>/``."""
    from ..train.recipes import load_small_host, preset, resolve_device, train_on_world

    resolve_device(config.device)  # fail before any work when CUDA is asked for and absent
    world_train, folder = cache / "world" / "train", cache / f"seed-{seed}"
    timings = {}
    common = {"batch_size": config.batch_size, "seed": seed}
    started = time.perf_counter()
    closed = preset("demo-closed", steps=config.closed_steps, lr=config.closed_lr, **common)
    train_on_world(closed, world_train, folder / "closed", device=config.device, progress=progress)
    host = load_small_host(folder / "closed").to(config.device)
    timings["closed"] = time.perf_counter() - started
    models, runs = {"closed": host}, {"closed": closed}
    for name, recipe, overrides, flag in RESIDUAL_RUNS:
        if flag is not None and not getattr(config, flag):
            continue
        started = time.perf_counter()
        run_config = preset(recipe, steps=config.residual_steps, lr=config.residual_lr, **common, **overrides)
        models[name] = train_on_world(run_config, world_train, folder / name, host=host, device=config.device, progress=progress)
        runs[name] = run_config
        timings[name] = time.perf_counter() - started
    return models, runs, timings


@torch.no_grad()
def _logits(model, rgb: torch.Tensor) -> torch.Tensor:
    """The logits scores come from, for ``(N, 3, H, W)`` RGB in 0..255 given in the model's own input
    convention, at the images' size (bilinear, as scoring does, for a model that answers at another size)."""
    from ..models import input_normalization, normalise, scoring_logits

    model.eval()
    logits = scoring_logits(model, normalise(rgb, input_normalization(model)))
    if logits.shape[-2:] != rgb.shape[-2:]:
        logits = torch.nn.functional.interpolate(logits, size=rgb.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def evaluate_models(models: dict, test_root: Path, device: str = "cpu", batch: int = 16, progress: bool = False) -> tuple[dict, dict, dict]:
    """Metrics of every (recipe, score) on the test set, grouped; per-image tables of the methods
    the findings compare; and Figure 6's maps.

    Each weather is accumulated once; ``adverse`` and ``whole`` are exact merges of those states.
    Returns ``(results, accumulators, example)``: ``accumulators[method][group]`` for ``group`` in
    whole / clear / adverse, for :data:`~.demo_findings.COMPARED_METHODS` and every recipe's energy
    (Figure 7).
    """
    from ..metrics.bootstrap import BootstrapAccumulator
    from .demo_findings import COMPARED_METHODS, grouped

    frames = load_benchmark("comsamy", test_root)
    metrics = {f"{recipe}/{score}": {w: PixelMetrics(name=w) for w in WEATHERS} for recipe in models for score in SCORES}
    kept = [method for method in metrics if method in COMPARED_METHODS or method.endswith("/energy")]
    tables = {method: {w: BootstrapAccumulator() for w in WEATHERS} for method in kept}
    shown = next((f for f in frames if f.metadata["weather"] == "fog"), frames[0])  # Figure 6's frame
    example = {"id": shown.id, "image": shown.load_image(), "label": shown.load_label(), "maps": {}}
    from tqdm import tqdm

    for start in tqdm(range(0, len(frames), batch), desc="evaluation", unit="batch", disable=not progress):
        chunk = frames[start : start + batch]
        images = torch.from_numpy(np.stack([f.load_image() for f in chunk])).permute(0, 3, 1, 2).float().to(device)
        labels = np.stack([f.load_label() for f in chunk])
        weathers = np.array([f.metadata["weather"] for f in chunk])
        for recipe, model in models.items():
            maps = {name: value.numpy() for name, value in all_scores(_logits(model, images).cpu()).items()}
            for score, values in maps.items():
                method = f"{recipe}/{score}"
                for weather in np.unique(weathers):
                    metrics[method][weather].update(values[weathers == weather], labels[weathers == weather])
                if method in kept:
                    for index, frame in enumerate(chunk):
                        tables[method][frame.metadata["weather"]].add_map(values[index], labels[index], image_id=frame.id)
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
    accumulators = {method: {"whole": grouped(by_weather, WEATHERS), "clear": by_weather["clear"],
                             "adverse": grouped(by_weather, ADVERSE_WEATHERS)} for method, by_weather in tables.items()}
    return results, accumulators, example


def evaluate_benchmark(models: dict, name: str, root, device: str = "cpu") -> dict:
    """``{method: {group: metrics}}`` of every (model, score) on a benchmark diffeel loads: ``whole``
    and, where its frames carry a weather, ``clear``, ``adverse`` and each weather."""
    from ..data.benchmarks import load_benchmark

    frames = load_benchmark(name, root)
    groups = {frame.id: [frame.metadata["weather"]] if frame.metadata.get("weather") in WEATHERS else [] for frame in frames}
    metrics = {f"{model}/{score}": {} for model in models for score in SCORES}
    for frame in frames:
        rgb = torch.from_numpy(np.array(frame.load_image())).permute(2, 0, 1)[None].float().to(device)
        label = frame.load_label()
        weather = groups[frame.id]
        wanted = ["whole", *weather, *(["adverse"] if weather and weather[0] in ADVERSE_WEATHERS else [])]
        for model_name, model in models.items():
            logits = _logits(model, rgb)
            if logits.shape[-2:] != label.shape:
                logits = torch.nn.functional.interpolate(logits, size=label.shape, mode="bilinear", align_corners=False)
            for score, values in all_scores(logits.cpu()).items():
                for group in wanted:
                    metrics[f"{model_name}/{score}"].setdefault(group, PixelMetrics(name=group)).update(values[0].numpy(), label)
    return {method: {group: accumulator.compute() for group, accumulator in by_group.items()} for method, by_group in metrics.items()}


def _energy_gaps(accumulators: list[dict]) -> dict:
    """Figure 7 per recipe, averaged over seeds: the mean energy of the hardest quarter of inlier
    and of anomaly pixels (at the tables' float16 resolution), and their gap."""
    from .demo_findings import hard_pixel_energies

    gaps = {}
    for method in accumulators[0]:
        if method.endswith("/energy"):
            bars = [[seed_runs[method]["whole"].statistic_point(lambda *histogram, side=side: hard_pixel_energies(*histogram)[side])
                     for side in (0, 1)] for seed_runs in accumulators]
            inliers, anomalies = np.mean(bars, axis=0)
            gaps[method.rsplit("/", 1)[0]] = {"worst_inlier_mean": float(inliers), "worst_anomaly_mean": float(anomalies),
                                             "gap": float(inliers - anomalies)}
    return gaps


def _seed_statistics(per_seed: list[dict]) -> tuple[dict, dict]:
    """The mean over seeds of every metric (counts are the same for every seed), and the spread:
    the sample standard deviation over seeds of AUPRC, FPR95 and AUROC (0 with one seed)."""
    mean, spread = {}, {}
    for method, groups in per_seed[0].items():
        mean[method], spread[method] = {}, {}
        for group, values in groups.items():
            mean[method][group] = dict(values)
            spread[method][group] = {}
            for key in ("auprc", "fpr95", "auroc", "best_f1"):
                seeds = np.array([results[method][group][key] for results in per_seed], dtype=float)
                mean[method][group][key] = float(np.mean(seeds))
                spread[method][group][key] = float(np.std(seeds, ddof=1)) if len(seeds) > 1 else 0.0
    return mean, spread


def run_demo(config: DemoConfig, out, progress: bool = True) -> dict:
    from ..world.make import WORLD_FORMAT, make_world

    out = Path(out)
    # one cache per configuration, so that quick and default runs never mix; each training seed in
    # its own folder, so that more seeds reuse the ones already trained
    settings = {**{k: v for k, v in asdict(config).items() if k not in ("jobs", "seeds")}, "world_format": WORLD_FORMAT,
                "recipes": DEMO_RECIPES}
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]
    cache = out / "cache" / f"{'quick' if config.quick else 'default'}-{fingerprint}"
    started = time.perf_counter()
    timings = {}
    make_world(cache / "world", per_weather=config.per_weather, train=config.train_frames, size=config.size,
               seed=config.seed, jobs=config.jobs, progress=progress)
    timings["world_s"] = time.perf_counter() - started
    per_seed, accumulators, example = [], [], None
    for seed in config.training_seeds:
        models, runs, train_timings = _train_recipes(config, cache, seed, progress)
        for name, seconds in train_timings.items():
            timings[f"train_{name}_s"] = timings.get(f"train_{name}_s", 0.0) + seconds
        evaluation_started = time.perf_counter()
        methods, tables, shown = evaluate_models(models, cache / "world" / "test", config.device)
        timings["evaluation_s"] = timings.get("evaluation_s", 0.0) + time.perf_counter() - evaluation_started
        per_seed.append(methods)
        accumulators.append(tables)
        example = example or shown  # Figure 6 shows the first seed's models
    methods, spread = _seed_statistics(per_seed)
    run_fields = ("loss", "synthesizer", "object_pool", "objects_per_image", "steps", "lr", "optimizer")
    results = {"methods": methods, "spread": spread, "methods_by_seed": per_seed, "energy_gap": _energy_gaps(accumulators),
               "config": {**asdict(config), "size": list(config.size)}, "seeds": config.training_seeds,
               "runs": {name: {k: getattr(run, k) for k in run_fields} for name, run in runs.items()},
               "n_test_frames": methods["closed/msp"]["whole"]["n_images"], "timings": timings}
    return write_results(results, accumulators, example, out, started)


def write_results(results: dict, accumulators: list[dict], example: dict, out: Path, started: float) -> dict:
    """``results`` with the findings, written to ``out`` as a whole (report, figures, results.json;
    ``out/cache`` kept); ``results["timings"]`` gets the findings' and the total time."""
    from . import demo_findings, demo_report
    from ..report.output import atomic_output_dir, write_json

    timings = results["timings"]
    findings_started = time.perf_counter()
    results["findings"] = demo_findings.findings(results, accumulators)
    timings["findings_s"] = time.perf_counter() - findings_started
    with atomic_output_dir(out, allowed=("cache",)) as staging:
        demo_report.write(staging, results, {"example": example})
        timings["total_s"] = time.perf_counter() - started
        write_json(staging / "results.json", results)
    return results
