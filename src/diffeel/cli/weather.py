"""``diffeel weather apply``: adverse-weather variants of a benchmark or of an image folder."""

from __future__ import annotations

import argparse

from ..errors import DiffeelError
from .arguments import add_benchmark_arguments, add_output_argument, add_quiet_argument, benchmark_frames, count

RESUMABLE = ()


def add_parser(commands) -> None:
    weather = commands.add_parser("weather", help="adverse-weather variants of any benchmark")
    weather_commands = weather.add_subparsers(dest="weather_command", metavar="COMMAND", required=True)
    apply = weather_commands.add_parser(
        "apply",
        help="turn a benchmark (or an image folder) into a weather variant",
        description="Apply one weather condition to every image of a benchmark the evaluation reads "
        "and write a ComsAmy-format benchmark (images/, labels/ in 0/1/255, manifest.csv) to --out; "
        "or, with --input, to every image of a plain folder.",
    )
    add_benchmark_arguments(apply, required=False)
    apply.add_argument("--input", help="a plain folder of images instead of a benchmark")
    apply.add_argument("--condition", required=True, help="rain, night, frost, fog, blizzard, sandstorm or clear")
    apply.add_argument("--severity", type=int, choices=range(1, 6), metavar="1..5", default=3, help="1 (light) .. 5 (extreme), default 3")
    apply.add_argument("--seed", type=count(0), default=0, help="seed of the random layers (per frame: seed + index)")
    add_output_argument(apply)
    add_quiet_argument(apply)
    apply.set_defaults(handler=run_apply)


def run_apply(args: argparse.Namespace) -> None:
    from ..experiments.weather_benchmark import benchmark_variant, folder_variant

    if args.input:
        written = folder_variant(args.input, args.condition, args.severity, args.seed, args.out, progress=not args.quiet)
    elif args.benchmark and args.root:
        frames = benchmark_frames(args)
        inputs = [args.root] + ([args.images] if args.images else [])
        written = benchmark_variant(frames, args.condition, args.severity, args.seed, args.out, progress=not args.quiet, inputs=inputs)
    else:
        raise DiffeelError("give either --benchmark and --root, or --input FOLDER")
    print(f"wrote {written} {args.condition} (severity {args.severity}) frame(s) to {args.out}")
