"""Argument types and the argument groups several commands share (benchmark, output, jobs)."""

from __future__ import annotations

import argparse
import json
import math
import re

from ..errors import DiffeelError


def count(minimum: int):
    """An argparse type: a whole number of at least ``minimum``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} is below the minimum of {minimum}")
        return value

    return parse


def finite_float(text: str) -> float:
    """An argparse type: a finite number (``nan`` and ``inf`` are refused: they are not valid JSON
    in a recorded config, and no setting means them)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def device(text: str) -> str:
    """An argparse type: ``cpu``, ``cuda`` or ``cuda:N`` (whether CUDA is present is checked when the
    device is first used)."""
    if text == "cpu" or re.fullmatch(r"cuda(:\d+)?", text):
        return text
    raise argparse.ArgumentTypeError(f"{text!r} is not a device diffeel runs on: use cpu, cuda or cuda:N")


def size(text: str) -> tuple[int, int]:
    """``WIDTHxHEIGHT`` within 32x16 .. 4096x2048."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not WIDTHxHEIGHT") from None
    if not (32 <= width <= 4096 and 16 <= height <= 2048):
        raise argparse.ArgumentTypeError(f"size {text} is outside 32x16 .. 4096x2048")
    return width, height


def shard(text: str) -> tuple[int, int]:
    """``I/K``: shard I of K (0 <= I < K)."""
    try:
        part, parts = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form I/K (e.g. 0/4)") from None
    if not (parts >= 1 and 0 <= part < parts):
        raise argparse.ArgumentTypeError(f"shard {text} needs 0 <= I < K")
    return part, parts


def objects_per_image(text: str) -> tuple[int, int]:
    """``K`` or ``A..B``: objects pasted per frame."""
    try:
        low, _, high = text.partition("..")
        low, high = int(low), int(high or low)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not K or A..B (e.g. 1..3)") from None
    if not 0 <= low <= high:
        raise argparse.ArgumentTypeError(f"{text} needs 0 <= A <= B")
    return low, high


def setting(text: str) -> tuple[str, object]:
    """``key=value`` with a JSON value (``lr=1e-4``, ``crop=null``, ``crop=[512,512]``) or a bare word."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"{text!r} is not of the form setting=value")
    if value.strip().lower().lstrip("+-") in ("nan", "inf", "infinity"):
        raise argparse.ArgumentTypeError(f"{text!r}: {value} is not a finite number")
    try:
        return key.strip(), json.loads(value)
    except ValueError:
        return key.strip(), value


def add_benchmark_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """The benchmark group: which layout, where, and the folder benchmark's options."""
    from ..data.benchmarks import BENCHMARKS

    parser.add_argument("--benchmark", required=required, choices=sorted(BENCHMARKS), help="benchmark layout")
    parser.add_argument("--root", required=required, help="benchmark root folder")
    parser.add_argument("--images", help="image folder (folder benchmark: relative to --root; fs-laf/fs-static: dataset root)")
    parser.add_argument("--labels", help="label folder relative to --root (folder benchmark; default labels_masks)")
    parser.add_argument("--label-map", help="label value mapping for the folder benchmark, e.g. 2:1,0:0,*:255")
    parser.add_argument("--subset", choices=("testValid", "testNoKnown"),
                        help="laf: the SegmentMeIfYouCan toolkit's selection of the 1203 test frames (testNoKnown: its "
                        "obstacle track's LostAndFound, 1043 frames; testValid: 1186)")


def benchmark_frames(args: argparse.Namespace, unlabelled: bool = False, label_map=None):
    """The frames of the benchmark group's arguments; with ``unlabelled``, also the frames whose
    labels are withheld (SegmentMeIfYouCan's test frames); ``label_map`` unless ``--label-map``."""
    from ..data.benchmarks import load_benchmark
    from ..labels import LabelMapping

    if getattr(args, "label_map", None):
        label_map = LabelMapping.parse(args.label_map)
    subset = getattr(args, "subset", None)
    if subset and args.benchmark != "laf":
        raise DiffeelError(f"--subset selects LostAndFound test frames (--benchmark laf), not frames of {args.benchmark}")
    return load_benchmark(args.benchmark, args.root, images=args.images, labels=args.labels, label_map=label_map,
                          unlabelled=unlabelled or None, subset=subset)


def add_output_argument(parser: argparse.ArgumentParser, help: str = "output folder", **options) -> None:
    """``--out``: where the command writes (required unless ``options`` give a default or say otherwise)."""
    options.setdefault("required", "default" not in options)
    parser.add_argument("--out", help=help, **options)


def add_quiet_argument(parser: argparse.ArgumentParser, bars: str = "bar") -> None:
    parser.add_argument("--quiet", action="store_true", help=f"no progress {bars}")


def add_jobs_argument(parser: argparse.ArgumentParser, help: str) -> None:
    """``--jobs N``: worker processes; the output never depends on N."""
    parser.add_argument("--jobs", type=count(1), default=1, help=help)
