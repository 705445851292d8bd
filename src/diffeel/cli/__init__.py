"""``diffeel <command>``: one module per command group, each owning its sub-parser and its run
function (argument handling only; the work is done by library functions). Here: the parser they
are assembled into, and the error and signal handling every command shares."""

from __future__ import annotations

import argparse
import os
import signal
import sys

from .. import __version__
from ..errors import DiffeelError
from . import compare, demo, evaluate, models, score, stats, submit, synth, train, weather, world

# In the order of ``diffeel --help``.
COMMAND_MODULES = (score, evaluate, compare, stats, submit, demo, train, models, synth, world, weather)
# Commands that keep finished work after an interrupt and pick it up when rerun.
RESUMABLE = {name for module in COMMAND_MODULES for name in module.RESUMABLE}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="diffeel",
        description="Open-set anomaly segmentation of road scenes in every weather (ComsAmy, DiffEEL).",
    )
    parser.add_argument("--version", action="version", version=f"diffeel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in COMMAND_MODULES:
        module.add_parser(commands)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM, turned into an exception so that staging folders and locks are cleaned up."""


def _raise_terminated(signum, frame):
    raise _Terminated()


def _command_name(args: argparse.Namespace) -> str:
    sub = (getattr(args, "world_command", None) or getattr(args, "weather_command", None) or getattr(args, "synth_command", None)
           or getattr(args, "models_command", None) or getattr(args, "submit_command", None))
    return f"{args.command} {sub}" if sub else args.command


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    name = _command_name(args)
    previous_handler = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args.handler(args)
    except (DiffeelError, ValueError, TypeError, OSError) as error:
        message = " ".join(str(error).split()).rstrip(".") or type(error).__name__
        print(f"diffeel {name}: error: {message}{'' if message.endswith('?') else '.'}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interrupt:
        kept = "finished outputs are kept, rerun to resume" if name in RESUMABLE else "nothing was written"
        print(f"diffeel {name}: {'terminated' if isinstance(interrupt, _Terminated) else 'interrupted'}; {kept}.", file=sys.stderr)
        return 143 if isinstance(interrupt, _Terminated) else 130
    except Exception as error:  # a bug, not bad input: still one sentence; DIFFEEL_DEBUG=1 shows the traceback
        if os.environ.get("DIFFEEL_DEBUG"):
            raise
        message = " ".join(str(error).split()).rstrip(".")
        print(f"diffeel {name}: internal error ({type(error).__name__}: {message}); rerun with DIFFEEL_DEBUG=1 "
              "for the traceback and please report it.", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous_handler)
    return 0
