"""``diffeel <command>``: argument parsing only; the work is done by library functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import DiffeelError


def _score_targets(out_dir: Path, stem: str, batch: int) -> list[Path]:
    """One map per frame: ``{stem}.npy`` for a single frame, ``{stem}_{i:04d}.npy`` for a batch."""
    if batch == 1:
        return [out_dir / f"{stem}.npy"]
    return [out_dir / f"{stem}_{index:04d}.npy" for index in range(batch)]


def _score_model_command(args: argparse.Namespace) -> None:
    """``diffeel score --model``: run a model over a benchmark (this process's share under torchrun)."""
    from .distributed import process_group
    from .models import create_model
    from .report.output import check_output_dir
    from .scoring import ScoreSettings, score_frames

    if args.logits:
        raise DiffeelError("give either logits files or --model, not both")
    if not args.benchmark or not args.root:
        raise DiffeelError("--model needs --benchmark and --root: the frames to score")
    settings = ScoreSettings(scores=tuple(s.strip() for s in args.scores.split(",") if s.strip()), alpha=args.alpha,
                             smooth=args.smooth, size=args.size[::-1] if args.size else None, batch=args.batch,
                             dtype=args.dtype or "float16", inference=args.inference, precision=args.precision)
    check_output_dir(args.out, allowed=None)
    frames = _benchmark_frames(args)
    with process_group(args.device) as context:
        device = context.device(args.device)
        model = create_model(args.model, checkpoint=args.checkpoint, allow_pickle=args.allow_pickle, **dict(args.model_option or []))
        provenance = {"model": args.model, "model_options": dict(args.model_option or []), "checkpoint": str(Path(args.checkpoint).resolve()) if args.checkpoint else None,
                      "benchmark": args.benchmark, "root": str(Path(args.root).resolve())}
        counts = score_frames(model, frames, args.out, settings, provenance=provenance, device=device, context=context,
                              overwrite=args.overwrite, progress=not args.quiet)
        if context.is_main:
            kept = f", kept {counts['kept']} finished" if counts["kept"] else ""
            shared = f" (rank 0 of {context.world_size})" if context.active else ""
            print(f"scored {counts['scored']} frame(s){shared}{kept}: {', '.join(settings.scores)} maps in "
                  f"{Path(args.out)}/<score>/; evaluate with diffeel eval --scores {Path(args.out) / settings.scores[-1]}")


def _score_command(args: argparse.Namespace) -> None:
    if args.model:
        return _score_model_command(args)
    import numpy as np
    from tqdm import tqdm

    from .data.arrays import ARRAY_SUFFIXES, load_array, save_array_atomic
    from .report.output import check_output_dir
    from .scores import compute_score, gaussian_smooth

    if not args.logits:
        raise DiffeelError("give logits files, or --model with --benchmark and --root")
    check_output_dir(args.out, allowed=None)
    inputs: list[Path] = []
    for given in args.logits:
        path = Path(given)
        if path.is_dir():
            inputs.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in ARRAY_SUFFIXES))
        elif path.is_file():
            inputs.append(path)
        else:
            raise DiffeelError(f"{path} does not exist")
    if not inputs:
        raise DiffeelError("no logits files found (expected .npy, .npz, .pt or .pth files)")
    stems = [p.stem for p in inputs]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise DiffeelError(f"two inputs share the name {duplicate!r}; their score maps would collide")

    out_dir = Path(args.out)
    written = skipped = 0
    claimed: set[Path] = set()
    for path in tqdm(inputs, desc=f"{args.score} scores", unit="file", disable=args.quiet):
        single = out_dir / f"{path.stem}.npy"
        if single.exists() and not args.overwrite:
            skipped += 1
            claimed.add(single)
            continue
        logits = load_array(path, key=args.key)
        if logits.ndim not in (3, 4) or logits.dtype.kind != "f":
            raise DiffeelError(
                f"{path} holds a {logits.dtype} array of shape {logits.shape}; expected float logits "
                "(C, H, W) or (B, C, H, W)"
            )
        if logits.ndim == 3:
            logits = logits[None]
        if min(logits.shape) == 0 or logits.shape[1] < 2:
            raise DiffeelError(f"{path} holds logits of shape {logits.shape}; a score needs at least 2 classes and a non-empty image")
        targets = _score_targets(out_dir, path.stem, logits.shape[0])
        if claimed & set(targets):
            raise DiffeelError(f"{path} would write {sorted(claimed & set(targets))[0].name}, which another input writes too")
        claimed.update(targets)
        if all(t.exists() for t in targets) and not args.overwrite:
            skipped += len(targets)
            continue
        score_maps = compute_score(args.score, logits, alpha=args.alpha, dim=1)
        if args.smooth == "rpl":
            score_maps = gaussian_smooth(score_maps)
        if not np.isfinite(score_maps).all():
            raise DiffeelError(f"{path} gives non-finite {args.score} scores; the logits contain NaN or inf")
        for target, score_map in zip(targets, score_maps):
            save_array_atomic(target, score_map.astype(args.dtype or "float32"))
        written += len(targets)
    print(f"wrote {written} score map(s) to {out_dir}" + (f", kept {skipped} existing" if skipped else ""))


DEFAULT_GROUPS = {"comsamy": "weather,landform", "smiyc-obstacle": "weather,scene", "laf": "scene"}


def _benchmark_frames(args: argparse.Namespace):
    from .data.benchmarks import load_benchmark
    from .labels import LabelMapping

    label_map = LabelMapping.parse(args.label_map) if getattr(args, "label_map", None) else None
    return load_benchmark(args.benchmark, args.root, images=args.images, labels=args.labels, label_map=label_map)


def _eval_command(args: argparse.Namespace) -> None:
    import numpy as np

    from .evaluation import EvalOptions, evaluate
    from .report import plots
    from .report.output import atomic_output_dir, check_output_dir, write_json
    from .report.tables import run_table_csv, run_table_markdown

    check_output_dir(args.out)
    frames = _benchmark_frames(args)
    group_by = args.group_by if args.group_by is not None else DEFAULT_GROUPS.get(args.benchmark, "")
    options = EvalOptions(
        group_by=tuple(g.strip() for g in group_by.split(",") if g.strip()),
        protocol=args.protocol,
        resize=args.resize,
        components=args.components,
        bootstrap=args.bootstrap,
        seed=args.seed,
        jobs=args.jobs,
        progress=not args.quiet,
    )
    results, curves = evaluate(frames, args.scores, options)
    method = args.method or Path(args.scores).stem
    results = {"method": method, "benchmark": args.benchmark, "protocol": args.protocol, **results}
    results["config"] = {
        "root": str(args.root),
        "scores": str(args.scores),
        "group_by": list(options.group_by),
        "resize": args.resize,
        "components": args.components,
        "bootstrap": args.bootstrap,
        "seed": args.seed,
        "n_frames": len(frames),
    }
    with atomic_output_dir(args.out) as staging:
        write_json(staging / "results.json", results)
        (staging / "results.csv").write_text(run_table_csv(results))
        header = f"# {method} on {args.benchmark}\n\nProtocol: {args.protocol}; void pixels excluded; percent.\n\n"
        (staging / "table.md").write_text(header + run_table_markdown(results))
        plots.save(plots.curves_figure({method: curves}), staging / "curves.png")
        np.savez_compressed(staging / "curves.npz", **plots.thinned_curves(curves))
        if results["groups"]:
            plots.save(plots.group_bars_figure(results), staging / "groups.png")
    overall = results["all"]
    print(
        f"{method} on {args.benchmark} ({len(frames)} frames): AUPRC {100 * overall['auprc']:.2f}  "
        f"FPR95 {100 * overall['fpr95']:.2f}  AUROC {100 * overall['auroc']:.2f}  → {args.out}"
        if overall["n_anomaly"] and overall["n_pixels"] > overall["n_anomaly"]
        else f"{method} on {args.benchmark}: metrics undefined (no anomaly or no inlier pixels) → {args.out}"
    )


def _compare_command(args: argparse.Namespace) -> None:
    from .report.compare import comparison_files, load_runs
    from .report.output import atomic_output_dir, check_output_dir

    check_output_dir(args.out)
    runs = load_runs(args.runs)
    files = comparison_files(runs)
    with atomic_output_dir(args.out) as staging:
        for name, text in files.items():
            (staging / name).write_text(text)
    print(files["comparison.md"], end="")
    print(f"wrote {', '.join(sorted(files))} to {args.out}")


def _stats_command(args: argparse.Namespace) -> None:
    from .data.stats import benchmark_stats, stats_markdown
    from .report import plots
    from .report.output import atomic_output_dir, check_output_dir, write_json

    if args.out:
        check_output_dir(args.out)
    frames = _benchmark_frames(args)
    stats, material = benchmark_stats(frames, progress=not args.quiet)
    text = stats_markdown(args.benchmark, stats)
    if args.out:
        with atomic_output_dir(args.out) as staging:
            write_json(staging / "stats.json", stats)
            (staging / "stats.md").write_text(text)
            plots.save(plots.heatmap_figure(material["heatmap"], f"{args.benchmark}: where anomalies lie"), staging / "heatmap.png")
            plots.save(plots.histograms_figure(material["anomaly_percent"], material["component_sizes"]), staging / "sizes.png")
    print(text, end="")


def _count(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        return value

    return parse


def _size(text: str) -> tuple[int, int]:
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if not (32 <= width <= 4096 and 16 <= height <= 2048):
        raise argparse.ArgumentTypeError(f"size {text} is outside 32x16 .. 4096x2048")
    return width, height


def _world_make_command(args: argparse.Namespace) -> None:
    from .world.make import make_world

    counts = make_world(args.out, per_weather=args.per_weather, train=args.train, size=args.size, seed=args.seed,
                        jobs=args.jobs, progress=not args.quiet, clear=args.clear)
    print(f"world in {args.out}: {counts['test']} test frames ({args.per_weather} per adverse weather, {counts['clear']} clear), {counts['train']} "
          f"training frames, {counts['objects']} training objects; wrote {counts['written']}, kept {counts['kept']}")


def _models_command(args: argparse.Namespace) -> None:
    from .models import describe_models

    print(describe_models())
    print("any other segmenter: --model package.module:factory or path/to/file.py:factory (an nn.Module giving (N, 19, H, W) logits)")


def _shard(text: str) -> tuple[int, int]:
    """``I/K``: shard I of K (0 <= I < K)."""
    try:
        part, parts = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form I/K (e.g. 0/4)") from None
    if not (parts >= 1 and 0 <= part < parts):
        raise argparse.ArgumentTypeError(f"shard {text} needs 0 <= I < K")
    return part, parts


def _synth_objects_command(args: argparse.Namespace) -> None:
    from .distributed import from_environment
    from .synth.bank_builder import build_object_bank
    from .synth.extract import make_extractor
    from .synth.generate import (GenerationSettings, check_model_files, generate_images, load_pipeline, model_fingerprint,
                                 plan_objects, read_backgrounds, read_objects)

    context = from_environment()
    shard = args.shard or (context.rank, context.world_size)  # torchrun ranks share one bank
    plans = plan_objects(args.n, args.seed, read_objects(args.vocabulary), read_backgrounds(args.backgrounds), shard)
    check_model_files(args.model, args.config)
    device = str(context.device(args.device))
    kind = args.extractor or ("u2net" if args.extractor_weights else "grabcut")
    extractor = make_extractor(kind, args.extractor_weights, device=device)
    settings = GenerationSettings(steps=args.steps, size=args.size, guidance=args.guidance)
    provenance = {"model": {"name": Path(args.model).name, "fingerprint": model_fingerprint(args.model)},
                  "settings": {"steps": settings.steps, "size": settings.size, "guidance": settings.guidance,
                               "extractor": kind, "bank_seed": args.seed}}
    pipeline = load_pipeline(args.model, config=args.config, device=device)
    counts = build_object_bank(args.out, plans, lambda chunk: generate_images(pipeline, chunk, settings, device), extractor,
                               shard=shard, batch=args.batch, provenance=provenance, progress=not args.quiet)
    where = f" (shard {shard[0]}/{shard[1]})" if shard[1] > 1 else ""
    print(f"object bank {args.out}{where}: {counts['ok']} accepted, {counts['rejected']} rejected (reason in each record), "
          f"{counts['kept']} already there, of {counts['planned']} planned")


def _objects_per_image(text: str) -> tuple[int, int]:
    """``K`` or ``A..B``: objects pasted per frame."""
    try:
        low, _, high = text.partition("..")
        low, high = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K or A..B (e.g. 1..3)") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text} needs 0 <= A <= B")
    return low, high


def _paste_synthesizer(args: argparse.Namespace, bank=None):
    """The copy-paste synthesizer of the paste options, over ``bank`` (default: ``--bank``'s objects)."""
    from .synth import CopyPasteSynthesizer, ObjectBank
    from .synth.harmonize import make_blender

    bank = bank if bank is not None else ObjectBank.from_folder(args.bank, preload=False)
    if args.no_harmonize:
        blender = False
    else:
        blender = make_blender(illumination=True, dovenet=args.harmonizer_weights, poisson=args.poisson, device=args.device)
    return CopyPasteSynthesizer(bank, objects_per_image=args.k, harmonize=blender)


def _synth_paste_command(args: argparse.Namespace) -> None:
    from .synth.pairs import labelled_frames, write_pairs

    frames = labelled_frames(cityscapes=args.cityscapes, world=args.world, images=args.images, labels=args.labels)
    settings = {"bank": str(Path(args.bank).resolve()), "k": list(args.k), "harmonize": not args.no_harmonize,
                "dovenet": args.harmonizer_weights and str(Path(args.harmonizer_weights).resolve()), "poisson": args.poisson}
    counts = write_pairs(frames, _paste_synthesizer(args), args.out, seed=args.seed, limit=args.n, settings=settings,
                         progress=not args.quiet)
    print(f"training pairs in {args.out}: {counts['written']} written ({counts['objects']} objects pasted), "
          f"{counts['kept']} already there; images/, labels/ (train ids, anomaly = 254), pastes.jsonl")


def _synth_preview_command(args: argparse.Namespace) -> None:
    from .data.images import write_image_atomic
    from .report.output import check_output_file
    from .synth.pairs import labelled_frames
    from .synth.preview import contact_sheet

    check_output_file(args.out)
    frames = None
    if args.cityscapes or args.world or args.images:
        frames = labelled_frames(cityscapes=args.cityscapes, world=args.world, images=args.images, labels=args.labels)
    sheet = contact_sheet(args.bank, frames, lambda bank: _paste_synthesizer(args, bank), rows=args.rows, seed=args.seed)
    write_image_atomic(args.out, sheet)
    print(f"contact sheet of {args.bank}: {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")


def _add_paste_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bank", required=True, help="object bank folder (objects*.jsonl or objects.csv, and the cut-outs)")
    parser.add_argument("--cityscapes", help="Cityscapes root: paste into its train split")
    parser.add_argument("--world", help="a world folder: paste into its training split")
    parser.add_argument("--images", help="image folder to paste into (with --labels)")
    parser.add_argument("--labels", help="train-id label maps for --images, same names (placement needs the road)")
    parser.add_argument("--k", type=_objects_per_image, default=(1, 1), help="objects per frame: K or A..B (default 1)")
    parser.add_argument("--no-harmonize", action="store_true", help="paste as is (the ablation w/o harmonization)")
    parser.add_argument("--harmonizer-weights", help="DoveNet's latest_net_G.pth: harmonize after illumination matching")
    parser.add_argument("--poisson", action="store_true", help="finish with Poisson blending")
    parser.add_argument("--seed", type=_count(0), default=0, help="seed (default 0)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda, for DoveNet")


def _world_preview_command(args: argparse.Namespace) -> None:
    from .data.images import write_image_atomic
    from .report.output import check_output_file
    from .world.preview import contact_sheet

    check_output_file(args.out)
    write_image_atomic(args.out, contact_sheet(seed=args.seed, size=args.size))
    print(f"wrote {args.out}")


def _weather_apply_command(args: argparse.Namespace) -> None:
    from .weather_benchmark import benchmark_variant, folder_variant

    if args.input:
        count = folder_variant(args.input, args.condition, args.severity, args.seed, args.out, progress=not args.quiet)
    elif args.benchmark and args.root:
        frames = _benchmark_frames(args)
        inputs = [args.root] + ([args.images] if args.images else [])
        count = benchmark_variant(frames, args.condition, args.severity, args.seed, args.out, progress=not args.quiet, inputs=inputs)
    else:
        raise DiffeelError("give either --benchmark and --root, or --input FOLDER")
    print(f"wrote {count} {args.condition} (severity {args.severity}) frame(s) to {args.out}")


def _demo_command(args: argparse.Namespace) -> None:
    from .demo import DemoConfig, run_demo
    from .demo_report import main_methods
    from .report.output import check_output_dir

    check_output_dir(args.out, allowed=("cache",))
    config = DemoConfig.preset(args.quick, seed=args.seed, device=args.device, jobs=args.jobs)
    results = run_demo(config, args.out, progress=not args.quiet)
    methods = results["methods"]
    print(f"\ndiffeel demo ({'quick' if args.quick else 'default'}): AUPRC / FPR95 in percent on {results['n_test_frames']} test frames")
    print(f"{'method':<22}{'clear':>16}{'adverse':>16}{'whole':>16}")
    for method in main_methods(results):
        cells = "".join(f"{100 * methods[method][g]['auprc']:>8.2f}{100 * methods[method][g]['fpr95']:>8.2f}" for g in ("clear", "adverse", "whole"))
        print(f"{method:<22}{cells}")
    print()
    for finding in results["findings"]:
        print(f"  [{'holds' if finding['holds'] else 'DOES NOT HOLD'}] {finding['claim']}: {finding['evidence']}")
    print(f"\nreport: {Path(args.out) / 'report.md'} and report.html; numbers in results.json "
          f"({results['timings']['total_s']:.0f} s)")


def _setting(text: str) -> tuple[str, object]:
    """``key=value`` with a JSON value (``lr=1e-4``, ``crop=null``, ``crop=[512,512]``) or a bare word."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form setting=value")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def _train_command(args: argparse.Namespace) -> None:
    from .report.output import check_output_dir
    from .train.recipes import describe, load_small_host, preset, train_on_world

    overrides = dict(args.set or [])
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = preset(args.recipe, **overrides)
    if args.show_config:
        print(describe(args.recipe, config), end="")
        return
    if args.cityscapes:
        return _train_cityscapes(args, config)
    if not args.world or not args.out:
        raise DiffeelError("give --world (a folder made by diffeel world make) or --cityscapes, and --out to train, "
                           "or --show-config to print the settings")
    check_output_dir(args.out, allowed=None)  # a run folder resumes, so earlier contents are expected
    world_train = Path(args.world) / "train"
    host = load_small_host(args.host) if args.host else None
    validate = _validation(args, args.device)
    train_on_world(config, world_train, args.out, host=host, device=args.device, progress=not args.quiet, validate=validate,
                   objects=args.objects)
    print(f"trained {args.recipe} for {config.steps} steps → {Path(args.out) / 'checkpoint.pt'} (log.jsonl beside it)")


def _validation(args: argparse.Namespace, device):
    """The validation hook of --validate-benchmark / --validate-root, or None."""
    if not args.validate_benchmark:
        return None
    if not args.validate_root:
        raise DiffeelError("--validate-benchmark needs --validate-root")
    from .data.benchmarks import load_benchmark
    from .scoring import validate_model

    frames = load_benchmark(args.validate_benchmark, args.validate_root, images=args.validate_images)
    size = args.validate_size[::-1] if args.validate_size else None
    return lambda model: validate_model(model, frames, device=device, size=size)


def _train_cityscapes(args: argparse.Namespace, config) -> None:
    """RPL / RPL+EEL on Cityscapes with a real host, under torchrun when started by it."""
    from .distributed import process_group
    from .models import create_model, list_models
    from .report.output import check_output_dir
    from .train.recipes import train_on_cityscapes

    if not args.out:
        raise DiffeelError("give --out, the run folder")
    if not args.host or (args.host not in list_models() and ":" not in args.host):
        raise DiffeelError("training on Cityscapes needs --host NAME (e.g. rpl_wrn38) and its --checkpoint "
                           "(NVIDIA's cityscapes_best.pth, or RPL's res.pth to continue)")
    if args.checkpoint is None:
        raise DiffeelError(f"give the closed-set weights of {args.host} with --checkpoint (e.g. NVIDIA's cityscapes_best.pth)")
    check_output_dir(args.out, allowed=None)
    with process_group(args.device) as context:
        device = context.device(args.device)
        def make_model():
            return create_model(args.host, checkpoint=args.checkpoint, allow_pickle=args.allow_pickle, **dict(args.model_option or []))

        summary = train_on_cityscapes(config, args.cityscapes, args.out, make_model, coco=args.coco, objects=args.objects, device=device,
                                      context=context, workers=args.workers, validate=_validation(args, device),
                                      progress=not args.quiet)
        if context.is_main:
            print(f"trained {args.recipe} on {args.host} for {summary['steps']} steps on {context.world_size} process(es) → "
                  f"{Path(args.out) / 'checkpoint.pt'} (log.jsonl and tensorboard/ beside it); load it with "
                  f"create_model({args.host!r}, checkpoint=...)")


def _add_benchmark_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    from .data.benchmarks import BENCHMARKS

    parser.add_argument("--benchmark", required=required, choices=sorted(BENCHMARKS), help="benchmark layout")
    parser.add_argument("--root", required=required, help="benchmark root folder")
    parser.add_argument("--images", help="image folder (folder benchmark: relative to --root; fs-laf/fs-static: dataset root)")
    parser.add_argument("--labels", help="label folder relative to --root (folder benchmark; default labels_masks)")
    parser.add_argument("--label-map", help="label value mapping for the folder benchmark, e.g. 2:1,0:0,*:255")


def build_parser() -> argparse.ArgumentParser:
    from .models import list_models
    from .scores import SCORES

    parser = argparse.ArgumentParser(
        prog="diffeel",
        description="Open-set anomaly segmentation of road scenes in every weather (ComsAmy, DiffEEL).",
    )
    parser.add_argument("--version", action="version", version=f"diffeel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    score = commands.add_parser(
        "score",
        help="anomaly score maps (MSP, max-logit, energy, entropy, EEL) from a model on a benchmark, or from saved logits",
        description="With --model: run a model (registered name, or package.module:factory) over a benchmark's frames "
        "(RGB/255, ImageNet mean/std, full resolution unless --size) and write {out}/{score}/{frame id}.npy at label "
        "resolution for each score of --scores, the layout diffeel eval --scores reads; runs under torchrun, each "
        "process scoring its share, with output identical to one process. Without --model: compute --score from "
        "saved logits files, one .npy per frame: {stem}.npy for a (C, H, W) or (1, C, H, W) input, {stem}_0000.npy, "
        "{stem}_0001.npy, … for a (B, C, H, W) batch. Finished maps are kept unless --overwrite, so an interrupted "
        "run resumes.",
    )
    score.add_argument("logits", nargs="*", help="logits files (.npy, .npz, .pt) or folders of them; (C,H,W) or (B,C,H,W)")
    score.add_argument("--model", help="model to run: " + ", ".join(list_models()) + ", or package.module:factory "
                       "(or path/to/file.py:factory) returning an nn.Module that gives (N, 19, H, W) logits")
    score.add_argument("--checkpoint", help="model weights (e.g. RPL's res.pth, NVIDIA's cityscapes_best.pth); loaded strictly")
    score.add_argument("--model-option", action="append", type=_setting, metavar="NAME=VALUE",
                       help="keyword argument for the model's constructor or factory (repeatable), e.g. width_divisor=16")
    score.add_argument("--allow-pickle", action="store_true", help="allow a legacy checkpoint that needs full unpickling (can run code)")
    _add_benchmark_arguments(score, required=False)
    score.add_argument("--scores", default=",".join(SCORES), help=f"--model: scores to write (default: {','.join(SCORES)})")
    score.add_argument("--batch", type=_count(1), default=1, help="--model: frames per forward pass (default 1)")
    score.add_argument("--inference", choices=("default", "anomaly_inference"), default="default",
                       help="--model, mask models: default = Eq. 3 (msp) and the EEL family on mask-wise logits; anomaly_inference "
                       "= Mask2Anomaly's official script's score (its resizing, kept-query channels, zeroing rule, flip average)")
    score.add_argument("--size", type=_size, help="--model: resize images to WIDTHxHEIGHT before the model (default: full resolution)")
    score.add_argument("--device", default="cpu", help="--model: cpu (default) or cuda (cuda:LOCAL_RANK under torchrun)")
    score.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32",
                       help="--model: the forward's arithmetic: float32 (default, the official numbers), bfloat16 (autocast; "
                       "several times faster on CPUs with AMX or AVX-512 BF16, scores change slightly) or float16 (autocast, CUDA only)")
    score.add_argument("--score", choices=sorted(SCORES), default="eel", help="logits files: score to compute (default: eel, Eq. 6)")
    score.add_argument("--alpha", type=float, default=1.0, help="entropy weight α of the EEL score (default: 1)")
    score.add_argument("--smooth", nargs="?", const="rpl", default="none", choices=("none", "rpl"),
                       help="rpl: Gaussian blur (7 taps, σ=1, reflect) as RPL's inference does; the same as eval --protocol rpl "
                       "applies (then evaluate with --protocol nearest). Plain --smooth means rpl")
    score.add_argument("--dtype", choices=("float16", "float32"), help="stored dtype (default: float16 with --model, else float32)")
    score.add_argument("--key", help="array name inside .npz/.pt files holding several")
    score.add_argument("--out", required=True, help="output folder")
    score.add_argument("--overwrite", action="store_true", help="recompute maps that already exist")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=_score_command)

    from .metrics import PROTOCOLS

    evaluation = commands.add_parser(
        "eval",
        help="evaluate score maps on a benchmark: pooled AUPRC / FPR95 / AUROC, per group",
        description="Evaluate one score map per frame (same stem as the frame id; .npy, .npz, .h5) on a "
        "benchmark. Writes results.json (fractions), results.csv, table.md (percent), curves.png and "
        "groups.png to --out, all at once or not at all.",
    )
    _add_benchmark_arguments(evaluation)
    evaluation.add_argument("--scores", required=True, help="folder of score files, or one .npz/.h5 holding all frames by id")
    evaluation.add_argument("--out", required=True, help="output folder")
    evaluation.add_argument("--method", help="method name in tables (default: the scores folder name)")
    evaluation.add_argument("--group-by", help="metadata fields to group by, e.g. weather,landform (default per benchmark)")
    evaluation.add_argument("--protocol", choices=sorted(PROTOCOLS), default="pooled", help="metric protocol (default pooled)")
    evaluation.add_argument("--resize", choices=("nearest", "bilinear"), help="resize score maps to the label size")
    evaluation.add_argument("--components", choices=("anomaly", "obstacle"), help="also component metrics (SMIYC track rules)")
    evaluation.add_argument("--bootstrap", type=_count(0), default=0, metavar="N", help="N bootstrap resamples for intervals")
    evaluation.add_argument("--seed", type=_count(0), default=0, help="bootstrap seed (default 0)")
    evaluation.add_argument("--jobs", type=_count(1), default=1, help="worker processes (results identical to 1)")
    evaluation.add_argument("--quiet", action="store_true", help="no progress bars")
    evaluation.set_defaults(handler=_eval_command)

    compare = commands.add_parser(
        "compare",
        help="tabulate several eval runs: methods × benchmarks (Markdown, LaTeX, CSV, HTML)",
        description="Read the results.json of each run folder and write comparison.md/.tex/.csv "
        "(Table III shape, with averages), conditions.md (Table II shape, ComsAmy runs) and a "
        "self-contained report.html with the curves.",
    )
    compare.add_argument("runs", nargs="+", help="folders written by diffeel eval")
    compare.add_argument("--out", required=True, help="output folder")
    compare.set_defaults(handler=_compare_command)

    stats = commands.add_parser(
        "stats",
        help="benchmark statistics: frames, resolutions, anomaly share, components, heat map",
        description="Table I / Figure 2 for any benchmark. Prints a Markdown table; with --out also "
        "writes stats.json, stats.md, heatmap.png and sizes.png.",
    )
    _add_benchmark_arguments(stats)
    stats.add_argument("--out", help="output folder (optional)")
    stats.add_argument("--quiet", action="store_true", help="no progress bar")
    stats.set_defaults(handler=_stats_command)

    demo = commands.add_parser(
        "demo",
        help="the main job: train closed / RPL / RPL+EEL on the embedded world, evaluate per weather, report",
        description="Build the embedded world, train the closed-set model, the RPL residual module "
        "with RPL's loss and with energy-entropy learning (Eq. 8), evaluate MSP, max-logit, energy, "
        "entropy and EEL scores per weather, and write results.json, report.md, report.html and "
        "figures to --out. Everything is cached under --out/cache and resumes after interruption.",
    )
    demo.add_argument("--out", default="runs/demo", help="output folder (default runs/demo)")
    demo.add_argument("--quick", action="store_true", help="a smaller run: closed and rpl+eel only (about 3 minutes on 2 cores)")
    demo.add_argument("--seed", type=_count(0), default=0)
    demo.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    demo.add_argument("--jobs", type=_count(1), default=1, help="worker processes for building the world")
    demo.add_argument("--quiet", action="store_true", help="no progress bars")
    demo.set_defaults(handler=_demo_command)

    from .train.recipes import RECIPES

    training = commands.add_parser(
        "train",
        help="train a recipe (closed host, RPL, RPL+EEL) on the embedded world or on Cityscapes, or print a recipe's settings",
        description="Presets: rpl, rpl+eel, m2a, m2a+eel (the published settings) and demo-closed, demo-rpl, "
        "demo-rpl+eel (the demo's CPU-sized ones). --show-config prints every setting and where its value "
        "comes from. With --world: the small DeepLab host on a world's training split (diffeel world make); "
        "rpl and rpl+eel train the RPL module around the closed host given by --host. With --cityscapes: rpl "
        "or rpl+eel on Cityscapes around --host rpl_wrn38 --checkpoint cityscapes_best.pth, outliers from --coco "
        "or --objects; under torchrun each process takes its share of every global batch (DDP). Resumes from "
        "--out/checkpoint.pt; the checkpoint stores the settings and code revision that ran.",
    )
    training.add_argument("--recipe", required=True, choices=RECIPES, help="preset to start from")
    training.add_argument("--set", action="append", type=_setting, metavar="SETTING=VALUE",
                          help="override a setting, e.g. --set lr=1e-4 --set crop=null (repeatable)")
    training.add_argument("--show-config", action="store_true", help="print the settings and exit")
    training.add_argument("--world", help="a world folder (its train/ split is used)")
    training.add_argument("--host", help="world: the closed host's run folder or checkpoint; Cityscapes: the host model "
                          "(rpl_wrn38, or package.module:factory)")
    training.add_argument("--checkpoint", help="Cityscapes: the host's weights (NVIDIA's cityscapes_best.pth, RPL's res.pth)")
    training.add_argument("--model-option", action="append", type=_setting, metavar="NAME=VALUE", help="host constructor option (repeatable)")
    training.add_argument("--allow-pickle", action="store_true", help="allow a legacy checkpoint that needs full unpickling (can run code)")
    training.add_argument("--cityscapes", help="Cityscapes root (leftImg8bit/train, gtFine/train) to train on instead of a world")
    training.add_argument("--coco", help="COCO root (annotations/instances_train2017.json, train2017/): outlier objects, filtered as RPL")
    training.add_argument("--objects", help="an object bank folder (objects.csv or objects*.jsonl + RGBA cut-outs, e.g. made by "
                          "diffeel synth objects) as the outlier objects (world default: the world's own)")
    training.add_argument("--workers", type=_count(0), default=2, help="Cityscapes: data-loading processes per training process (default 2)")
    training.add_argument("--validate-benchmark", help="validate on this benchmark during training (AUPRC / FPR95 in log.jsonl)")
    training.add_argument("--validate-root", help="root of the validation benchmark")
    training.add_argument("--validate-images", help="image root of the validation benchmark (fs-static, fs-laf)")
    training.add_argument("--validate-size", type=_size, help="resize validation images to WIDTHxHEIGHT")
    training.add_argument("--out", help="run folder (checkpoint.pt, log.jsonl, tensorboard/)")
    training.add_argument("--seed", type=_count(0), help="seed (default: the preset's, 0)")
    training.add_argument("--device", default="cpu", help="cpu (default) or cuda (cuda:LOCAL_RANK under torchrun)")
    training.add_argument("--quiet", action="store_true", help="no progress bar")
    training.set_defaults(handler=_train_command)

    models = commands.add_parser("models", help="list the registered models and the checkpoints each loads")
    models.set_defaults(handler=_models_command)

    synth = commands.add_parser("synth", help="DiffEEL's anomaly synthesizer: diffusion objects, cut-outs, harmonized pastes")
    synth_commands = synth.add_subparsers(dest="synth_command", metavar="COMMAND", required=True)
    objects = synth_commands.add_parser(
        "objects",
        help="draw objects with Stable Diffusion and cut them out into an object bank",
        description="Plan --n objects (\"One {object} in the {background}\", a seed each), draw them with a local Stable "
        "Diffusion model, cut them out (U^2-Net, U^2-NetP or GrabCut) and write BANK/objects*.jsonl (one record per "
        "object: prompt, seed, model, settings, status ok or the rejection reason, file) with the RGBA cut-outs. "
        "Resumable; --shard I/K (or torchrun's ranks) builds a disjoint share, and the shards together equal one run.",
    )
    objects.add_argument("--model", required=True, help="Stable Diffusion: a local diffusers folder, or a .safetensors/.ckpt file with --config")
    objects.add_argument("--config", help="diffusers configuration folder for a single-file model")
    objects.add_argument("--n", type=_count(1), required=True, help="objects to plan")
    objects.add_argument("--out", required=True, help="the bank folder")
    objects.add_argument("--extractor", choices=("u2net", "u2netp", "grabcut"),
                         help="salient object extractor (default: u2net with --extractor-weights, else grabcut)")
    objects.add_argument("--extractor-weights", help="u2net.pth or u2netp.pth (the official releases)")
    objects.add_argument("--steps", type=_count(1), default=30, help="diffusion steps (default 30)")
    objects.add_argument("--size", type=_count(8), default=512, help="image side in pixels, a multiple of 8 (default 512)")
    objects.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    objects.add_argument("--seed", type=_count(0), default=0, help="bank seed: plans every object (default 0)")
    objects.add_argument("--shard", type=_shard, help="build shard I of K, e.g. 0/4 (default: torchrun's rank/world size, else 0/1)")
    objects.add_argument("--batch", type=_count(1), default=1, help="objects drawn per diffusion batch (default 1)")
    objects.add_argument("--vocabulary", help="objects CSV: object,category,min_height_m,max_height_m (default: diffeel's list)")
    objects.add_argument("--backgrounds", help="backgrounds, one per line (default: diffeel's list)")
    objects.add_argument("--device", default="cpu", help="cpu (default) or cuda (float16, attention slicing)")
    objects.add_argument("--quiet", action="store_true", help="no progress bar")
    objects.set_defaults(handler=_synth_objects_command)
    paste = synth_commands.add_parser(
        "paste",
        help="write training pairs: frames + a bank → images and train-id labels with pasted anomalies (254)",
        description="Paste objects from a bank into frames with train ids (placement on the road at the camera's "
        "perspective, illumination matching, DoveNet with --harmonizer-weights, Eq. 1) and write OUT/images, OUT/labels "
        "and OUT/pastes.jsonl. Frame i uses seed (SEED, i): reruns write the same pairs and resume after an interruption.",
    )
    _add_paste_arguments(paste)
    paste.add_argument("--n", type=_count(1), help="only the first N frames")
    paste.add_argument("--out", required=True, help="output folder")
    paste.add_argument("--quiet", action="store_true", help="no progress bar")
    paste.set_defaults(handler=_synth_paste_command)
    preview = synth_commands.add_parser(
        "preview",
        help="a contact sheet: prompt → generated image → mask → pasted result",
        description="One row per object of the bank (accepted and rejected, with the reason); the pasted column needs "
        "frames (--cityscapes, --world or --images with --labels).",
    )
    _add_paste_arguments(preview)
    preview.add_argument("--rows", type=_count(1), default=6, help="objects shown (default 6)")
    preview.add_argument("--out", required=True, help="the PNG to write")
    preview.set_defaults(handler=_synth_preview_command)

    world = commands.add_parser("world", help="the embedded world: procedural road scenes with exact labels")
    world_commands = world.add_subparsers(dest="world_command", metavar="COMMAND", required=True)
    make = world_commands.add_parser(
        "make",
        help="write a ComsAmy-format test benchmark and a training split",
        description="Render the embedded world into --out: test/ (every weather × landform, unseen "
        "anomaly family, labels 0/1/255, manifest.csv) and train/ (clear weather, train-id labels, "
        "depth, and cut-outs of the training anomaly family). Rerunning resumes.",
    )
    make.add_argument("--out", required=True, help="output folder")
    make.add_argument("--per-weather", type=_count(0), default=10, help="test frames per adverse weather (default 10)")
    make.add_argument("--clear", type=_count(0), default=None,
                      help="clear-weather test frames (default: ComsAmy's clear : adverse ratio, 250 : 218, i.e. 69 for 10 per weather)")
    make.add_argument("--train", type=_count(0), default=200, help="training frames (default 200)")
    make.add_argument("--size", type=_size, default=(512, 256), help="WIDTHxHEIGHT (default 512x256)")
    make.add_argument("--seed", type=_count(0), default=0, help="world seed (default 0)")
    make.add_argument("--jobs", type=_count(1), default=1, help="worker processes, at most the CPU count (same output whatever N)")
    make.add_argument("--quiet", action="store_true", help="no progress bar")
    make.set_defaults(handler=_world_make_command)
    preview = world_commands.add_parser("preview", help="a contact sheet of scenes, labels and weathers")
    preview.add_argument("--out", required=True, help="PNG file to write")
    preview.add_argument("--size", type=_size, default=(384, 192), help="tile size WIDTHxHEIGHT (default 384x192)")
    preview.add_argument("--seed", type=_count(0), default=0)
    preview.set_defaults(handler=_world_preview_command)

    weather = commands.add_parser("weather", help="adverse-weather variants of any benchmark")
    weather_commands = weather.add_subparsers(dest="weather_command", metavar="COMMAND", required=True)
    apply = weather_commands.add_parser(
        "apply",
        help="turn a benchmark (or an image folder) into a weather variant",
        description="Apply one weather condition to every image of a benchmark the evaluation reads "
        "and write a ComsAmy-format benchmark (images/, labels/ in 0/1/255, manifest.csv) to --out; "
        "or, with --input, to every image of a plain folder.",
    )
    _add_benchmark_arguments(apply, required=False)
    apply.add_argument("--input", help="a plain folder of images instead of a benchmark")
    apply.add_argument("--condition", required=True, help="rain, night, frost, fog, blizzard, sandstorm or clear")
    apply.add_argument("--severity", type=int, choices=range(1, 6), metavar="1..5", default=3, help="1 (light) .. 5 (extreme), default 3")
    apply.add_argument("--seed", type=_count(0), default=0, help="seed of the random layers (per frame: seed + index)")
    apply.add_argument("--out", required=True, help="output folder")
    apply.add_argument("--quiet", action="store_true", help="no progress bar")
    apply.set_defaults(handler=_weather_apply_command)
    return parser


# Commands that keep finished work after an interrupt and pick it up when rerun.
RESUMABLE = {"score", "world make", "demo", "train", "synth objects"}


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that staging folders and locks are cleaned up."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _command_name(args: argparse.Namespace) -> str:
    sub = getattr(args, "world_command", None) or getattr(args, "weather_command", None) or getattr(args, "synth_command", None)
    return f"{args.command} {sub}" if sub else args.command


def main(argv: list[str] | None = None) -> int:
    import os
    import signal

    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    name = _command_name(args)
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args.handler(args)
    except (DiffeelError, ValueError, TypeError, OSError) as error:
        message = " ".join(str(error).split()).rstrip(".") or type(error).__name__
        print(f"diffeel {name}: error: {message}{'' if message.endswith('?') else '.'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        kept = "finished outputs are kept, rerun to resume" if name in RESUMABLE else "nothing was written"
        print(f"diffeel {name}: {'terminated' if isinstance(interrupt, _Terminated) else 'interrupted'}; {kept}.", file=sys.stderr)
        return 143 if isinstance(interrupt, _Terminated) else 130
    except Exception as error:  # a bug, not bad input: still one sentence; DIFFEEL_DEBUG=1 shows the traceback
        if os.environ.get("DIFFEEL_DEBUG"):
            raise
        message = " ".join(str(error).split()).rstrip(".")
        print(f"diffeel {name}: internal error ({type(error).__name__}: {message}); rerun with DIFFEEL_DEBUG=1 "
              "for the traceback and please report it.", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0


if __name__ == "__main__":
    sys.exit(main())
