"""The ``diffeel`` command's entry point: imports the command-line interface (and torch with it)
inside a guard, so that Ctrl-C in the first second ends in one sentence, not a traceback."""

from __future__ import annotations

import sys


def main() -> int:
    try:
        from .cli import main as run
    except KeyboardInterrupt:
        print("diffeel: interrupted while starting; nothing was written.", file=sys.stderr)
        return 130
    return run()
