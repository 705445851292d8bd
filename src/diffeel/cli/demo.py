"""``diffeel demo``: the main job on the embedded world (:mod:`diffeel.experiments.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_jobs_argument, add_output_argument, add_quiet_argument, count

RESUMABLE = ("demo",)


def add_parser(commands) -> None:
    demo = commands.add_parser(
        "demo",
        help="the main job: train closed / RPL / RPL+EEL on the embedded world, evaluate per weather, report",
        description="Build the embedded world, train the closed-set model, the RPL residual module "
        "with RPL's loss and with energy-entropy learning (Eq. 8), evaluate MSP, max-logit, energy, "
        "entropy and EEL scores per weather, and write results.json, report.md, report.html and "
        "figures to --out. Everything is cached under --out/cache and resumes after interruption.",
    )
    add_output_argument(demo, "output folder (default runs/demo)", default="runs/demo")
    demo.add_argument("--quick", action="store_true", help="a smaller run: closed and rpl+eel only (about 3 minutes on 2 cores)")
    demo.add_argument("--seed", type=count(0), default=0)
    demo.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    add_jobs_argument(demo, "worker processes for building the world")
    add_quiet_argument(demo, bars="bars")
    demo.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..experiments.demo import DemoConfig, run_demo
    from ..experiments.demo_report import main_methods
    from ..report.output import check_output_dir

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
