"""The real-image demo (``diffeel demo --real``): the paper's experiment on real road pixels, on a CPU.

1. The test set (cached): CamVid's test frames with objects of the world's *unseen* family
   (animals) pasted on the road by the placement synthesizer (perspective size, illumination
   matching, Eq. 1), in clear weather and in every adverse weather of the weather suite, written in
   ComsAmy's layout (labels 0 / 1 / 255: CamVid's void stays void).
2. The host: a real Cityscapes segmenter with public weights (``espnetv2_cityscapes`` by default),
   scored as it is (``closed``) with MSP, max-logit, energy, entropy and EEL.
3. Training (cached, resumable, several seeds): a residual adapter around the frozen host
   (:mod:`diffeel.models.adapter`) on CamVid's training split with pasted objects of the training
   family (the world's debris, or ``--objects``): ``rpl-loss`` (RPL's loss on diffeel's placement
   data) and ``rpl+eel`` (Eq. 8 on the same data), the published ``rpl`` / ``rpl+eel`` recipes with
   CPU-sized steps, batch and crop.
4. Evaluation on the test set (whole / clear / adverse / per weather) and on every extra benchmark
   given, the findings with their intervals over seeds and test images, and the same report as the
   embedded demo.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..data.benchmarks import ADVERSE_WEATHERS
from ..errors import DiffeelError

REAL_DEMO_FORMAT = 3
EVALUATION_BATCH = 1  # ESPNetv2 on a CPU: 0.07 s per 480×352 frame alone, 0.15 s each in batches of 8
TEST_ROW_MULTIPLE = 32  # test frames keep a row count the hosts' strides divide, so no host resamples them  # bumped when the test set or the recipes change, so that old caches are not reused


@dataclass
class RealDemoConfig:
    camvid: str
    host: str = "espnetv2_cityscapes"
    checkpoint: str | None = None  # the host's weights (None: the cached public file)
    host_options: dict = field(default_factory=dict)  # over HOST_OPTIONS
    objects: str | None = None  # training objects (None: the world's debris)
    benchmarks: list = field(default_factory=list)  # extra (name, root) to evaluate on
    seed: int = 0
    seeds: int = 5
    steps: int = 60
    batch_size: int = 4
    crop: tuple[int, int] = (256, 320)  # height, width of the training crops (CamVid frames are 360×480)
    lr: float = 3e-4  # the adapter trains at the recipes' head multiplier (10×) of this; chosen on CamVid val
    anomaly_weight: float = 0.05
    split: str = "test"  # the CamVid split the test set is made of ("val" to choose settings)
    clear_frames: int = 53  # CamVid test frames kept clear; the others go to the adverse weathers in equal shares
    per_weather: int = 30
    severity: int = 3
    objects_per_frame: tuple[int, int] = (1, 2)
    device: str = "cpu"

    @property
    def training_seeds(self) -> list[int]:
        return [self.seed + index for index in range(self.seeds)]


# The public hosts run CamVid at its own size (their official scripts resize every image to Cityscapes' 1024×512)
HOST_OPTIONS = {name: {"input_size": None, "input_scale": 1.0} for name in ("espnet_cityscapes", "espnetv2_cityscapes")}

# (name, preset, overrides): the adapter runs, RPL's loss and Eq. 8 on the same placement data (the
# embedded demo's rpl-loss and rpl+eel; RPL's random paste is left out to stay within 20 minutes)
REAL_RUNS = (
    ("rpl-loss", "rpl", {"synthesizer": "placement", "crop_around_anomaly": True}),
    ("rpl+eel", "rpl+eel", {}),
)


def camvid_test_set(config: RealDemoConfig, out: Path, animals: Path, progress: bool = True) -> Path:
    """CamVid's ``split`` with animals pasted on the road, ``clear_frames`` clear and ``per_weather``
    under each adverse weather (distinct frames, drawn with ``seed``; the top rows cut so that the
    row count is a multiple of 32), in ComsAmy's layout under ``out``. Every file is written atomically; the manifest, written last, marks the
    set complete, so an interrupted build resumes where it stopped."""
    from tqdm import tqdm

    from ..data.camvid import CAMVID_CAMERA, list_camvid, read_camvid_frame
    from ..data.images import write_image_atomic
    from ..labels import ANOMALY, ANOMALY_TRAIN_ID, INLIER, VOID
    from ..synth import CopyPasteSynthesizer, ObjectBank
    from ..synth.synthesizer import camera_for
    from ..weather import apply_weather

    if (out / "manifest.csv").is_file():
        return out
    frames = list_camvid(config.camvid, config.split)
    wanted = config.clear_frames + config.per_weather * len(ADVERSE_WEATHERS)
    if wanted > len(frames):
        raise DiffeelError(f"the test set needs {wanted} CamVid {config.split} frames but {config.camvid} has {len(frames)}")
    order = np.random.default_rng([config.seed, 7]).permutation(len(frames))[:wanted]
    weathers = ["clear"] * config.clear_frames + [w for w in ADVERSE_WEATHERS for _ in range(config.per_weather)]
    bank = ObjectBank.from_folder(animals)
    rows = []
    for frame_index, weather in tqdm(list(zip(order, weathers)), desc="test set", unit="frame", disable=not progress):
        frame = frames[frame_index]
        frame_id = f"{weather}_{frame.id}"
        image_path, label_path = out / "images" / f"{frame_id}.png", out / "labels" / f"{frame_id}.png"
        rows.append([frame_id, weather, "urban", frame.id])
        if image_path.exists() and label_path.exists():
            continue
        rgb, train_ids = read_camvid_frame(frame)
        cut = rgb.shape[0] % TEST_ROW_MULTIPLE  # the top rows (sky) go: 360 → 352
        camera = camera_for(CAMVID_CAMERA, rgb.shape[1], rgb.shape[0])
        synthesizer = CopyPasteSynthesizer(bank, objects_per_image=config.objects_per_frame, harmonize=True, search="best",
                                           camera=replace(camera, v0=camera.v0 - cut, rows=camera.rows - cut))
        rgb, train_ids = rgb[cut:], train_ids[cut:]
        result = synthesizer.synthesize(rgb, train_ids, np.random.default_rng([config.seed, int(frame_index)]))
        label = np.where(result.labels == ANOMALY_TRAIN_ID, ANOMALY, np.where(result.labels == VOID, VOID, INLIER)).astype(np.uint8)
        image = apply_weather(result.image, weather, config.severity, seed=[config.seed, int(frame_index)])
        write_image_atomic(label_path, label)
        write_image_atomic(image_path, image)
    stream = io.StringIO()
    csv.writer(stream).writerows([["id", "weather", "landform", "source"], *rows])
    staging = out / "manifest.csv.partial"
    staging.write_text(stream.getvalue())
    staging.replace(out / "manifest.csv")
    return out


def _host(config: RealDemoConfig, checkpoint=None):
    from ..models import create_model

    options = {**HOST_OPTIONS.get(config.host, {}), **config.host_options}
    return create_model(config.host, checkpoint=checkpoint or config.checkpoint, **options)


def _train_runs(config: RealDemoConfig, cache: Path, seed: int, debris: Path, progress: bool) -> tuple[dict, dict, dict]:
    """The adapter runs of one training seed, each cached in ``cache/seed-<seed>/<run>``."""
    import torch

    from ..train.recipes import preset, resolve_device, train_on_cityscapes

    device = resolve_device(config.device)
    models, runs, timings = {}, {}, {}
    for name, recipe, overrides in REAL_RUNS:
        started = time.perf_counter()
        run = preset(recipe, steps=config.steps, batch_size=config.batch_size, crop=list(config.crop), lr=config.lr,
                     anomaly_weight=config.anomaly_weight, save_every=max(1, config.steps // 4), seed=seed, **overrides)
        folder = cache / f"seed-{seed}" / name
        train_on_cityscapes(run, config.camvid, folder, lambda: _host(config), objects=config.objects or debris,
                            device=torch.device(device), progress=progress, inliers="camvid")
        models[name] = _host(config, checkpoint=folder / "checkpoint.pt")
        runs[name] = run
        timings[name] = time.perf_counter() - started
    return models, runs, timings


def run_real_demo(config: RealDemoConfig, out, progress: bool = True) -> dict:
    from ..world.make import write_object_bank
    from .demo import _energy_gaps, _seed_statistics, evaluate_benchmark, evaluate_models, write_results

    out = Path(out)
    settings = {**{k: v for k, v in asdict(config).items() if k not in ("seeds", "benchmarks", "device")},
                "format": REAL_DEMO_FORMAT}
    fingerprint = hashlib.sha1(json.dumps(settings, sort_keys=True, default=list).encode()).hexdigest()[:8]
    cache = out / "cache" / f"real-{fingerprint}"
    started = time.perf_counter()
    timings = {}
    host = _host(config)  # fails at once when the weights are missing
    debris, animals = cache / "objects" / "debris", cache / "objects" / "animals"
    write_object_bank(debris, config.seed, "debris")
    write_object_bank(animals, config.seed, "animals")
    test_root = camvid_test_set(config, cache / "test", animals, progress)
    timings["test_set_s"] = time.perf_counter() - started
    per_seed, accumulators, example, extra, closed = [], [], None, {}, None
    for seed in config.training_seeds:
        models, runs, train_timings = _train_runs(config, cache, seed, debris, progress)
        for name, seconds in train_timings.items():
            timings[f"train_{name}_s"] = timings.get(f"train_{name}_s", 0.0) + seconds
        evaluation_started = time.perf_counter()
        if closed is None:  # the frozen host is the same model for every seed: scored once
            closed = (evaluate_models({"closed": host}, test_root, config.device, batch=EVALUATION_BATCH, progress=progress),
                      {name: evaluate_benchmark({"closed": host}, name, root, config.device) for name, root in config.benchmarks})
        (closed_methods, closed_tables, closed_shown), closed_extra = closed
        methods, tables, shown = evaluate_models(models, test_root, config.device, batch=EVALUATION_BATCH, progress=progress)
        shown["maps"] = {**closed_shown["maps"], **shown["maps"]}
        methods, tables = {**closed_methods, **methods}, {**closed_tables, **tables}
        for name, root in config.benchmarks:
            extra.setdefault(name, []).append({**closed_extra[name], **evaluate_benchmark(models, name, root, config.device)})
        timings["evaluation_s"] = timings.get("evaluation_s", 0.0) + time.perf_counter() - evaluation_started
        per_seed.append(methods)
        accumulators.append(tables)
        example = example or shown
    methods, spread = _seed_statistics(per_seed)
    run_fields = ("loss", "synthesizer", "object_pool", "objects_per_image", "steps", "lr", "optimizer")
    results = {"methods": methods, "spread": spread, "methods_by_seed": per_seed, "energy_gap": _energy_gaps(accumulators),
               "config": {**asdict(config), "crop": list(config.crop), "quick": False, "real": True},
               "seeds": config.training_seeds,
               "runs": {name: {k: getattr(run, k) for k in run_fields} for name, run in runs.items()},
               "n_test_frames": methods["closed/msp"]["whole"]["n_images"], "timings": timings,
               "benchmarks": {name: dict(zip(("methods", "spread"), _seed_statistics(seed_results))) for name, seed_results in extra.items()}}
    return write_results(results, accumulators, example, out, started)

