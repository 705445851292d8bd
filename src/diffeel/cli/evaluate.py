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
    evaluation.add_argument("--scores", required=True, help="folder of score files, one .npz/.h5 holding all frames by id, "
                            "or a SegmentMeIfYouCan toolkit tree (the folder holding anomaly_p/)")
    evaluation.add_argument("--layout", choices=("auto", "diffeel", "smiyc"), default="auto",
                            help="how --scores is laid out: auto (default: a folder holding anomaly_p/ is the toolkit's), "
                            "diffeel, or smiyc (anomaly_p/<method>/<dataset>/<frame id>.hdf5)")
    add_output_argument(evaluation)
    evaluation.add_argument("--method", help="method name in tables (default: the scores folder name); in a toolkit tree, "
                            "the method to evaluate (needed when it holds several)")
    evaluation.add_argument("--group-by", help="metadata fields to group by, e.g. weather,landform (default per benchmark)")
    evaluation.add_argument("--protocol", choices=sorted(PROTOCOLS), default="pooled",
                            help="metric protocol (default pooled, exact); smiyc = the SegmentMeIfYouCan toolkit's binned "
                            "PixBinaryClass (current edition), smiyc-2021 its first edition")
    evaluation.add_argument("--resize", choices=("nearest", "bilinear"), help="resize score maps to the label size")
    evaluation.add_argument("--components", choices=("anomaly", "obstacle"), help="also component metrics (SMIYC track rules)")
    evaluation.add_argument("--bootstrap", type=count(0), default=0, metavar="N", help="N bootstrap resamples for intervals")
    evaluation.add_argument("--seed", type=count(0), default=0, help="bootstrap seed (default 0)")
    add_jobs_argument(evaluation, "worker processes (results identical to 1)")
    add_quiet_argument(evaluation, bars="bars")
    evaluation.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..data.benchmarks import DEFAULT_GROUP_BY, LOST_AND_FOUND_TOOLKIT_MAPPING, load_benchmark
    from ..metrics import PROTOCOLS
    from ..evaluation import EvalOptions, evaluate
    from ..report.folders import write_eval_run
    from ..report.output import check_output_dir

    check_output_dir(args.out)
    scores, method = toolkit_scores(args)
    toolkit_labels = PROTOCOLS[args.protocol].toolkit and args.benchmark == "laf" and not args.label_map
    # the toolkit's LostAndFound region of interest: road and objects, non-hazards counted as objects
    frames = benchmark_frames(args, unlabelled=True, label_map=LOST_AND_FOUND_TOOLKIT_MAPPING if toolkit_labels else None)
    if args.group_by is None:
        group_by = DEFAULT_GROUP_BY.get(args.benchmark, ())
    else:
        group_by = tuple(g.strip() for g in args.group_by.split(",") if g.strip())
    options = EvalOptions(group_by=group_by, protocol=args.protocol, resize=args.resize, components=args.components,
                          bootstrap=args.bootstrap, seed=args.seed, jobs=args.jobs, progress=not args.quiet)
    # a LostAndFound subset of a toolkit tree: the maps of the other test frames are there too
    others = [frame.id for frame in load_benchmark(args.benchmark, args.root)] if args.subset else ()
    results, curves = evaluate(frames, scores, options, other_frames=others)
    overall = results["all"]
    results = {"method": method, "benchmark": args.benchmark, "protocol": args.protocol, **results}
    results["config"] = {"root": str(args.root), "scores": str(scores), "group_by": list(options.group_by),
                         "resize": args.resize, "components": args.components, "bootstrap": args.bootstrap,
                         "seed": args.seed, "n_frames": overall["n_frames"], "subset": args.subset}
    if toolkit_labels:
        results["config"]["labels"] = "the toolkit's LostAndFound classes (1 road, 2..200 objects, else void)"
    write_eval_run(args.out, results, curves)
    print(
        f"{method} on {args.benchmark} ({overall['n_frames']} frames): AUPRC {100 * overall['auprc']:.2f}  "
        f"FPR95 {100 * overall['fpr95']:.2f}  AUROC {100 * overall['auroc']:.2f}  → {args.out}"
        if overall["n_anomaly"] and overall["n_pixels"] > overall["n_anomaly"]
        else f"{method} on {args.benchmark}: metrics undefined (no anomaly or no inlier pixels) → {args.out}"
    )


def toolkit_scores(args: argparse.Namespace) -> tuple[Path, str]:
    """(the score maps' folder or file, the method's name) of ``--scores``, ``--layout`` and ``--method``."""
    from ..data.toolkit_layout import is_toolkit_tree, toolkit_scores_folder

    scores = Path(args.scores)
    if args.layout == "smiyc" or (args.layout == "auto" and is_toolkit_tree(scores)):
        folder = toolkit_scores_folder(scores, args.benchmark, args.method)
        return folder, folder.parent.name
    return scores, args.method or scores.stem
