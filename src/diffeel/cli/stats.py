"""``diffeel stats``: a benchmark's statistics (Table I / Figure 2)."""

from __future__ import annotations

import argparse

from .arguments import add_benchmark_arguments, add_output_argument, add_quiet_argument, benchmark_frames

RESUMABLE = ()


def add_parser(commands) -> None:
    stats = commands.add_parser(
        "stats",
        help="benchmark statistics: frames, resolutions, anomaly share, components, heat map",
        description="Table I / Figure 2 for any benchmark. Prints a Markdown table; with --out also "
        "writes stats.json, stats.md, heatmap.png and sizes.png.",
    )
    add_benchmark_arguments(stats)
    add_output_argument(stats, "output folder (optional)", required=False)
    add_quiet_argument(stats)
    stats.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..data.stats import benchmark_stats, stats_markdown
    from ..report.folders import write_stats
    from ..report.output import check_output_dir

    if args.out:
        check_output_dir(args.out)
    frames = benchmark_frames(args)
    stats, material = benchmark_stats(frames, progress=not args.quiet)
    text = stats_markdown(args.benchmark, stats)
    if args.out:
        write_stats(args.out, args.benchmark, stats, material, text)
    print(text, end="")
