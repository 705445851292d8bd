"""``diffeel models``: the registered models and the checkpoints each loads; ``diffeel models
fetch NAME``: download a model's public weights into the cache."""

from __future__ import annotations

import argparse

RESUMABLE = ()


def add_parser(commands) -> None:
    models = commands.add_parser(
        "models",
        help="list the registered models and the checkpoints each loads; fetch a model's public weights",
        description="Without a command: list the registered models, and for those with public weights whether they are "
        "in the cache ($DIFFEEL_HOME/weights, default ~/.cache/diffeel/weights). fetch NAME downloads them there "
        "(checked against their SHA-256), after which --model NAME needs no --checkpoint.",
    )
    models.set_defaults(handler=run)
    actions = models.add_subparsers(dest="models_command", metavar="COMMAND")
    fetch = actions.add_parser("fetch", help="download a model's public weights into the cache",
                               description="Download the public weights of NAME into $DIFFEEL_HOME/weights (default "
                               "~/.cache/diffeel/weights), checked against their SHA-256; a cached file that checks out is "
                               "kept. On an offline machine, copy the file there by hand instead.")
    fetch.add_argument("name", metavar="NAME", help="a model with public weights (diffeel models lists them)")
    fetch.add_argument("--url", help="download from this http, https or file URL instead (a mirror); the SHA-256 is checked all the same")
    fetch.add_argument("--quiet", action="store_true", help="no progress bar")
    fetch.set_defaults(handler=run_fetch)


def run(args: argparse.Namespace) -> None:
    from ..models import list_models
    from ..models.hub import public_weights, weights_destination, weights_path
    from ..models.registry import model_entry

    for name in list_models():
        line = f"{name}: {model_entry(name).description}"
        if public_weights(name) is not None:
            cached = weights_path(name)
            line += (f" [public weights: cached in {cached}]" if cached else
                     f" [public weights: not cached; diffeel models fetch {name}, or copy the file to {weights_destination(name)}]")
        print(line)
    print("any other segmenter: --model package.module:factory or path/to/file.py:factory (an nn.Module giving (N, 19, H, W) logits)")


def run_fetch(args: argparse.Namespace) -> None:
    from ..models.hub import fetch_weights

    path = fetch_weights(args.name, url=args.url, progress=not args.quiet)
    print(f"{args.name}: weights in {path} (SHA-256 checked); --model {args.name} loads them when no --checkpoint is given")
