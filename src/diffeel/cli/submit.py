"""``diffeel submit smiyc``: check a SegmentMeIfYouCan toolkit tree frame by frame and archive it
for the test server."""

from __future__ import annotations

import argparse
import sys

from ..errors import DiffeelError
from .arguments import add_output_argument, add_quiet_argument

RESUMABLE = ()
SUBMITTABLE = ("smiyc-anomaly", "smiyc-obstacle", "laf")


def add_parser(commands) -> None:
    submit = commands.add_parser(
        "submit",
        help="package score maps for a benchmark's test server (smiyc: SegmentMeIfYouCan)",
        description="Check score maps against every frame of a benchmark's test data and archive them as its test server "
        "takes them.",
    )
    servers = submit.add_subparsers(dest="submit_command", metavar="SERVER", required=True)
    smiyc = servers.add_parser(
        "smiyc",
        help="zip a toolkit tree (anomaly_p/<method>/<dataset>/<frame id>.hdf5) after checking every frame",
        description="Check that every frame of each dataset (every image of the track, test frames included, as the "
        "SegmentMeIfYouCan toolkit lists them; the copy must hold the toolkit's frame counts) has a map in --scores of the "
        "image's size with finite values, then write --out, a zip of anomaly_p/<method>/<dataset>/<frame id>.hdf5 for "
        "exactly those frames. Each missing or malformed map is named in one sentence and no archive is written.",
    )
    smiyc.add_argument("--scores", required=True, help="the toolkit tree: the folder holding anomaly_p/ (diffeel score --layout smiyc --out)")
    smiyc.add_argument("--method", help="the method to package (needed when the tree holds several)")
    smiyc.add_argument("--benchmarks", default="smiyc-anomaly,smiyc-obstacle",
                       help=f"datasets to include, of {', '.join(SUBMITTABLE)} (default: smiyc-anomaly,smiyc-obstacle: "
                       "AnomalyTrack-all and ObstacleTrack-all)")
    smiyc.add_argument("--root", required=True, help="SegmentMeIfYouCan root holding dataset_AnomalyTrack/ and dataset_ObstacleTrack/")
    smiyc.add_argument("--laf-root", help="LostAndFound root (leftImg8bit/, gtCoarse/), when --benchmarks includes laf")
    add_output_argument(smiyc, "the archive to write (.zip)")
    smiyc.add_argument("--overwrite", action="store_true", help="replace an existing archive")
    add_quiet_argument(smiyc)
    smiyc.set_defaults(handler=run_smiyc)


def run_smiyc(args: argparse.Namespace) -> None:
    from ..data.toolkit_layout import submission_frames, submission_problems, toolkit_scores_folder, tree_root, write_submission
    from ..report.output import check_output_file

    out = check_output_file(args.out)
    if out.exists() and not args.overwrite:
        raise DiffeelError(f"{out} exists; give --overwrite to replace it")
    benchmarks = [b.strip() for b in args.benchmarks.split(",") if b.strip()]
    unknown = [b for b in benchmarks if b not in SUBMITTABLE]
    if unknown or not benchmarks:
        raise DiffeelError(f"--benchmarks takes {', '.join(SUBMITTABLE)}, not {unknown[0] if unknown else 'nothing'}")
    if "laf" in benchmarks and not args.laf_root:
        raise DiffeelError("--benchmarks laf needs --laf-root: the LostAndFound copy whose test frames are checked")
    method = toolkit_scores_folder(args.scores, benchmarks[0], args.method).parent.name
    frames = submission_frames(args.scores, method, {b: args.laf_root if b == "laf" else args.root for b in benchmarks})
    tree = tree_root(args.scores)
    problems = submission_problems(tree, method, frames, progress=not args.quiet)
    if problems:
        for problem in problems:
            print(f"diffeel submit smiyc: {problem}.", file=sys.stderr)
        total = sum(map(len, frames.values()))
        raise DiffeelError(f"{len(problems)} problem(s) among the {total} frames' maps of {method}; no archive was written")
    written = write_submission(out, tree, method, {dataset: [f.id for f in dataset_frames] for dataset, dataset_frames in frames.items()})
    counts = ", ".join(f"{dataset} {len(dataset_frames)}" for dataset, dataset_frames in frames.items())
    print(f"wrote {out}: {written['maps']} maps of {method} ({counts}), {written['bytes'] / 1e6:.1f} MB, sha256 {written['sha256']}")
