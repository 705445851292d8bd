"""Writing a set of output files all at once, or not at all."""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_output_dir(out):
    """Yield a temporary folder beside ``out``; on success move its files into ``out``.

    On any error the temporary folder is removed and ``out`` is left as it was: a failed run never
    leaves half its results behind.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        yield staging
        out.mkdir(exist_ok=True)
        for path in sorted(staging.iterdir()):
            target = out / path.name
            if target.is_dir() and path.is_dir():
                shutil.rmtree(target)
            os.replace(path, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _plain(value):
    """JSON-ready values: NaN becomes null (JSON has no NaN), numpy scalars become Python."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_json(path, data) -> None:
    Path(path).write_text(json.dumps(_plain(data), indent=2) + "\n")


def read_json(path) -> dict:
    return json.loads(Path(path).read_text())
