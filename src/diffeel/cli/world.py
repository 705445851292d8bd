"""``diffeel world make | preview``: the embedded world of procedural road scenes."""

from __future__ import annotations

import argparse

from .arguments import add_jobs_argument, add_output_argument, add_quiet_argument, count, size

RESUMABLE = ("world make",)


def add_parser(commands) -> None:
    world = commands.add_parser("world", help="the embedded world: procedural road scenes with exact labels")
    world_commands = world.add_subparsers(dest="world_command", metavar="COMMAND", required=True)
    make = world_commands.add_parser(
        "make",
        help="write a ComsAmy-format test benchmark and a training split",
        description="Render the embedded world into --out: test/ (every weather × landform, unseen "
        "anomaly family, labels 0/1/255, manifest.csv) and train/ (clear weather, train-id labels, "
        "depth, and cut-outs of the training anomaly family). Rerunning resumes.",
    )
    add_output_argument(make)
    make.add_argument("--per-weather", type=count(0), default=10, help="test frames per adverse weather (default 10)")
    make.add_argument("--clear", type=count(0), default=None,
                      help="clear-weather test frames (default: ComsAmy's clear : adverse ratio, 250 : 218, i.e. 69 for 10 per weather)")
    make.add_argument("--train", type=count(0), default=200, help="training frames (default 200)")
    make.add_argument("--size", type=size, default=(512, 256), help="WIDTHxHEIGHT (default 512x256)")
    make.add_argument("--seed", type=count(0), default=0, help="world seed (default 0)")
    add_jobs_argument(make, "worker processes, at most the CPU count (same output whatever N)")
    add_quiet_argument(make)
    make.set_defaults(handler=run_make)
    preview = world_commands.add_parser("preview", help="a contact sheet of scenes, labels and weathers")
    add_output_argument(preview, "PNG file to write")
    preview.add_argument("--size", type=size, default=(384, 192), help="tile size WIDTHxHEIGHT (default 384x192)")
    preview.add_argument("--seed", type=count(0), default=0)
    preview.set_defaults(handler=run_preview)


def run_make(args: argparse.Namespace) -> None:
    from ..world.make import make_world

    counts = make_world(args.out, per_weather=args.per_weather, train=args.train, size=args.size, seed=args.seed,
                        jobs=args.jobs, progress=not args.quiet, clear=args.clear)
    print(f"world in {args.out}: {counts['test']} test frames ({args.per_weather} per adverse weather, {counts['clear']} clear), {counts['train']} "
          f"training frames, {counts['objects']} training objects; wrote {counts['written']}, kept {counts['kept']}")


def run_preview(args: argparse.Namespace) -> None:
    from ..data.images import write_image_atomic
    from ..report.output import check_output_file
    from ..world.preview import contact_sheet

    check_output_file(args.out)
    write_image_atomic(args.out, contact_sheet(seed=args.seed, size=args.size))
    print(f"wrote {args.out}")
