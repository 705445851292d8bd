"""``diffeel synth objects | paste | preview``: DiffEEL's anomaly synthesizer."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_output_argument, add_quiet_argument, count, device, finite_float, objects_per_image, shard

RESUMABLE = ("synth objects", "synth paste")


def add_parser(commands) -> None:
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
    # --count, not --n: torchrun reads any prefix of its own options (--nnodes, --nproc-per-node) as its own
    objects.add_argument("--count", dest="n", type=count(1), required=True, help="objects to plan")
    add_output_argument(objects, "the bank folder")
    objects.add_argument("--extractor", choices=("u2net", "u2netp", "grabcut"),
                         help="salient object extractor (default: u2net with --extractor-weights, else grabcut)")
    objects.add_argument("--extractor-weights", help="u2net.pth or u2netp.pth (the official releases)")
    objects.add_argument("--steps", type=count(1), default=30, help="diffusion steps (default 30)")
    objects.add_argument("--size", type=count(8), default=512, help="image side in pixels, a multiple of 8 (default 512)")
    objects.add_argument("--guidance", type=finite_float, default=7.5, help="classifier-free guidance scale (default 7.5)")
    objects.add_argument("--seed", type=count(0), default=0, help="bank seed: plans every object (default 0)")
    objects.add_argument("--shard", type=shard, help="build shard I of K, e.g. 0/4 (default: torchrun's rank/world size, else 0/1)")
    objects.add_argument("--batch", type=count(1), default=1, help="objects drawn per diffusion batch (default 1)")
    objects.add_argument("--vocabulary", help="objects CSV: object,category,min_height_m,max_height_m (default: diffeel's list)")
    objects.add_argument("--backgrounds", help="backgrounds, one per line (default: diffeel's list)")
    objects.add_argument("--device", type=device, default="cpu", help="cpu (default) or cuda (float16, attention slicing)")
    add_quiet_argument(objects)
    objects.set_defaults(handler=run_objects)
    paste = synth_commands.add_parser(
        "paste",
        help="write training pairs: frames + a bank → images and train-id labels with pasted anomalies (254)",
        description="Paste objects from a bank into frames with train ids (placement on the road at the camera's "
        "perspective, illumination matching, DoveNet with --harmonizer-weights, Eq. 1) and write OUT/images, OUT/labels "
        "and OUT/pastes.jsonl. Frame i uses seed (SEED, i): reruns write the same pairs and resume after an interruption.",
    )
    _add_paste_arguments(paste)
    paste.add_argument("--count", dest="n", type=count(1), help="only the first N frames")
    add_output_argument(paste)
    add_quiet_argument(paste)
    paste.set_defaults(handler=run_paste)
    preview = synth_commands.add_parser(
        "preview",
        help="a contact sheet: prompt → generated image → mask → pasted result",
        description="One row per object of the bank (accepted and rejected, with the reason); the pasted column needs "
        "frames (--cityscapes, --camvid, --world or --images with --labels).",
    )
    _add_paste_arguments(preview)
    preview.add_argument("--rows", type=count(1), default=6, help="objects shown (default 6)")
    add_output_argument(preview, "the PNG to write")
    preview.set_defaults(handler=run_preview)


def _add_paste_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--bank", required=True, help="object bank folder (objects*.jsonl or objects.csv, and the cut-outs)")
    parser.add_argument("--cityscapes", help="Cityscapes root: paste into its train split")
    parser.add_argument("--camvid", help="CamVid root in SegNet's layout: paste into its train split (labels as Cityscapes train ids)")
    parser.add_argument("--world", help="a world folder: paste into its training split")
    parser.add_argument("--images", help="image folder to paste into (with --labels)")
    parser.add_argument("--labels", help="train-id label maps for --images, same names (placement needs the road)")
    parser.add_argument("--k", type=objects_per_image, default=(1, 1), help="objects per frame: K or A..B (default 1)")
    parser.add_argument("--no-harmonize", action="store_true", help="paste as is (the ablation w/o harmonization)")
    parser.add_argument("--harmonizer-weights", help="DoveNet's latest_net_G.pth: harmonize after illumination matching")
    parser.add_argument("--poisson", action="store_true", help="finish with Poisson blending")
    parser.add_argument("--seed", type=count(0), default=0, help="seed (default 0)")
    parser.add_argument("--device", type=device, default="cpu", help="cpu (default) or cuda, for DoveNet")


def run_objects(args: argparse.Namespace) -> None:
    from ..distributed import from_environment
    from ..report.output import check_resumable_dir
    from ..synth.bank_builder import build_object_bank
    from ..synth.extract import make_extractor
    from ..synth.generate import (GenerationSettings, check_model_files, generate_images, load_pipeline, model_fingerprint,
                                  plan_objects, read_backgrounds, read_objects)

    check_resumable_dir(args.out, ("objects*.jsonl",), "a diffeel object bank")  # before loading any weights
    context = from_environment()
    bank_shard = args.shard or (context.rank, context.world_size)  # torchrun ranks share one bank
    plans = plan_objects(args.n, args.seed, read_objects(args.vocabulary), read_backgrounds(args.backgrounds), bank_shard)
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
                               shard=bank_shard, batch=args.batch, provenance=provenance, progress=not args.quiet)
    where = f" (shard {bank_shard[0]}/{bank_shard[1]})" if bank_shard[1] > 1 else ""
    print(f"object bank {args.out}{where}: {counts['ok']} accepted, {counts['rejected']} rejected (reason in each record), "
          f"{counts['kept']} already there, of {counts['planned']} planned")


def _paste_synthesizer(args: argparse.Namespace, bank=None):
    """The copy-paste synthesizer of the paste options, over ``bank`` (default: ``--bank``'s objects)."""
    from ..synth import CopyPasteSynthesizer, ObjectBank
    from ..synth.harmonize import make_blender

    bank = bank if bank is not None else ObjectBank.from_folder(args.bank, preload=False)
    if args.no_harmonize:
        blender = False
    else:
        blender = make_blender(illumination=True, dovenet=args.harmonizer_weights, poisson=args.poisson, device=args.device)
    camera = None
    if getattr(args, "camvid", None):
        from ..data.camvid import CAMVID_CAMERA as camera  # CamVid's own perspective, not Cityscapes'
    return CopyPasteSynthesizer(bank, objects_per_image=args.k, camera=camera, harmonize=blender)


def run_paste(args: argparse.Namespace) -> None:
    from ..report.output import check_resumable_dir
    from ..synth.pairs import labelled_frames, write_pairs

    check_resumable_dir(args.out, ("pairs_config.json",), "diffeel training pairs")
    frames = labelled_frames(cityscapes=args.cityscapes, camvid=args.camvid, world=args.world, images=args.images,
                             labels=args.labels)
    settings = {"bank": str(Path(args.bank).resolve()), "k": list(args.k), "harmonize": not args.no_harmonize,
                "dovenet": args.harmonizer_weights and str(Path(args.harmonizer_weights).resolve()), "poisson": args.poisson}
    counts = write_pairs(frames, _paste_synthesizer(args), args.out, seed=args.seed, limit=args.n, settings=settings,
                         progress=not args.quiet)
    print(f"training pairs in {args.out}: {counts['written']} written ({counts['objects']} objects pasted), "
          f"{counts['kept']} already there; images/, labels/ (train ids, anomaly = 254), pastes.jsonl")


def run_preview(args: argparse.Namespace) -> None:
    from ..data.images import write_image_atomic
    from ..report.output import check_output_file
    from ..synth.pairs import labelled_frames
    from ..synth.preview import contact_sheet

    check_output_file(args.out)
    frames = None
    if args.cityscapes or args.camvid or args.world or args.images:
        frames = labelled_frames(cityscapes=args.cityscapes, camvid=args.camvid, world=args.world, images=args.images,
                                 labels=args.labels)
    sheet = contact_sheet(args.bank, frames, lambda bank: _paste_synthesizer(args, bank), rows=args.rows, seed=args.seed)
    write_image_atomic(args.out, sheet)
    print(f"contact sheet of {args.bank}: {args.out} ({sheet.shape[1]}x{sheet.shape[0]})")
