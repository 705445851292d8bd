"""``diffeel models``: the registered models and the checkpoints each loads."""

from __future__ import annotations

import argparse

RESUMABLE = ()


def add_parser(commands) -> None:
    models = commands.add_parser("models", help="list the registered models and the checkpoints each loads")
    models.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    from ..models import describe_models

    print(describe_models())
    print("any other segmenter: --model package.module:factory or path/to/file.py:factory (an nn.Module giving (N, 19, H, W) logits)")
