"""``diffeel compare``: several evaluation runs as methods × benchmarks tables and a report."""

from __future__ import annotations

import argparse

from .arguments import add_output_argument

RESUMABLE = ()


def add_parser(commands) -> None:
    compare = commands.add_parser(
        "compare",
        help="tabulate several eval runs: methods × benchmarks (Markdown, LaTeX, CSV, HTML)",
        description="Read the results.json of each run folder and write comparison.md/.tex/.csv "
        "(Table III shape, with averages), conditions.md (Table II shape, ComsAmy runs) and a "
        "self-contained report.html with the curves.",
    )
    compare.add_argument("runs", nargs="+", help="folders written by diffeel eval")
    add_output_argument(compare)
    compare.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..report.compare import comparison_files, load_runs
    from ..report.output import atomic_output_dir, check_output_dir

    check_output_dir(args.out)
    runs = load_runs(args.runs)
    files = comparison_files(runs)
    with atomic_output_dir(args.out) as staging:
        for name, text in files.items():
            (staging / name).write_text(text)
    print(files["comparison.md"], end="")
    print(f"wrote {', '.join(sorted(files))} to {args.out}")
