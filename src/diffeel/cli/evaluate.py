"""``diffeel eval``: score maps on a benchmark → pooled and grouped metrics, tables and curves."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_benchmark_arguments, add_jobs_argument, add_output_argument, add_quiet_argument, benchmark_frames, count

RESUMABLE = ()


def add_parser(commands) -> None:
    from ..metrics import PROTOCOLS

    evaluation = commands.add_parser(
        "eval",
        help="evaluate score maps on a benchmark: pooled AUPRC / FPR95 / AUROC, per group",
        description="Evaluate one score map per frame (same stem as the frame id; .npy, .npz, .h5) on a "
        "benchmark. Writes results.json (fractions), results.csv, table.md (percent), curves.png and "
        "groups.png to --out, all at once or not at all.",
    )
    add_benchmark_arguments(evaluation)
    evaluation.add_argument("--scores", required=True, help="folder of score files, or one .npz/.h5 holding all frames by id")
    add_output_argument(evaluation)
    evaluation.add_argument("--method", help="method name in tables (default: the scores folder name)")
    evaluation.add_argument("--group-by", help="metadata fields to group by, e.g. weather,landform (default per benchmark)")
    evaluation.add_argument("--protocol", choices=sorted(PROTOCOLS), default="pooled", help="metric protocol (default pooled)")
    evaluation.add_argument("--resize", choices=("nearest", "bilinear"), help="resize score maps to the label size")
    evaluation.add_argument("--components", choices=("anomaly", "obstacle"), help="also component metrics (SMIYC track rules)")
    evaluation.add_argument("--bootstrap", type=count(0), default=0, metavar="N", help="N bootstrap resamples for intervals")
    evaluation.add_argument("--seed", type=count(0), default=0, help="bootstrap seed (default 0)")
    add_jobs_argument(evaluation, "worker processes (results identical to 1)")
    add_quiet_argument(evaluation, bars="bars")
    evaluation.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..data.benchmarks import DEFAULT_GROUP_BY
    from ..evaluation import EvalOptions, evaluate
    from ..report.folders import write_eval_run
    from ..report.output import check_output_dir

    check_output_dir(args.out)
    frames = benchmark_frames(args)
    if args.group_by is None:
        group_by = DEFAULT_GROUP_BY.get(args.benchmark, ())
    else:
        group_by = tuple(g.strip() for g in args.group_by.split(",") if g.strip())
    options = EvalOptions(group_by=group_by, protocol=args.protocol, resize=args.resize, components=args.components,
                          bootstrap=args.bootstrap, seed=args.seed, jobs=args.jobs, progress=not args.quiet)
    results, curves = evaluate(frames, args.scores, options)
    method = args.method or Path(args.scores).stem
    results = {"method": method, "benchmark": args.benchmark, "protocol": args.protocol, **results}
    results["config"] = {"root": str(args.root), "scores": str(args.scores), "group_by": list(options.group_by),
                         "resize": args.resize, "components": args.components, "bootstrap": args.bootstrap,
                         "seed": args.seed, "n_frames": len(frames)}
    write_eval_run(args.out, results, curves)
    overall = results["all"]
    print(
        f"{method} on {args.benchmark} ({len(frames)} frames): AUPRC {100 * overall['auprc']:.2f}  "
        f"FPR95 {100 * overall['fpr95']:.2f}  AUROC {100 * overall['auroc']:.2f}  → {args.out}"
        if overall["n_anomaly"] and overall["n_pixels"] > overall["n_anomaly"]
        else f"{method} on {args.benchmark}: metrics undefined (no anomaly or no inlier pixels) → {args.out}"
    )
