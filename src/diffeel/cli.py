"""``diffeel <command>``: argument parsing only; the work is done by library functions."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import __version__
from .errors import DiffeelError


def _score_command(args: argparse.Namespace) -> None:
    import numpy as np
    from tqdm import tqdm

    from .data.arrays import ARRAY_SUFFIXES, load_array, save_array_atomic
    from .scores import compute_score, gaussian_smooth

    inputs: list[Path] = []
    for given in args.logits:
        path = Path(given)
        if path.is_dir():
            inputs.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in ARRAY_SUFFIXES))
        elif path.is_file():
            inputs.append(path)
        else:
            raise DiffeelError(f"{path} does not exist")
    if not inputs:
        raise DiffeelError("no logits files found (expected .npy, .npz, .pt or .pth files)")
    stems = [p.stem for p in inputs]
    if len(set(stems)) != len(stems):
        duplicate = next(s for s in stems if stems.count(s) > 1)
        raise DiffeelError(f"two inputs share the name {duplicate!r}; their score maps would collide")

    out_dir = Path(args.out)
    written = skipped = 0
    for path in tqdm(inputs, desc=f"{args.score} scores", unit="map", disable=args.quiet):
        target = out_dir / f"{path.stem}.npy"
        if target.exists() and not args.overwrite:
            skipped += 1
            continue
        logits = load_array(path, key=args.key)
        if logits.ndim not in (3, 4) or logits.dtype.kind != "f":
            raise DiffeelError(
                f"{path} holds a {logits.dtype} array of shape {logits.shape}; expected float logits "
                "(C, H, W) or (B, C, H, W)"
            )
        score_map = compute_score(args.score, logits, alpha=args.alpha, dim=logits.ndim - 3)
        if args.smooth:
            score_map = gaussian_smooth(score_map)
        if not np.isfinite(score_map).all():
            raise DiffeelError(f"{path} gives non-finite {args.score} scores; the logits contain NaN or inf")
        save_array_atomic(target, score_map.astype(args.dtype))
        written += 1
    print(f"wrote {written} score map(s) to {out_dir}" + (f", kept {skipped} existing" if skipped else ""))


def build_parser() -> argparse.ArgumentParser:
    from .scores import SCORES

    parser = argparse.ArgumentParser(
        prog="diffeel",
        description="Open-set anomaly segmentation of road scenes in every weather (ComsAmy, DiffEEL).",
    )
    parser.add_argument("--version", action="version", version=f"diffeel {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    score = commands.add_parser(
        "score",
        help="turn saved logits into anomaly score maps (MSP, max-logit, energy, entropy, EEL)",
        description="Compute a pixel-wise anomaly score (higher = more anomalous) from saved logits "
        "and write one .npy score map per input, same stem. Existing outputs are kept unless "
        "--overwrite, so an interrupted run resumes.",
    )
    score.add_argument("logits", nargs="+", help="logits files (.npy, .npz, .pt) or folders of them; (C,H,W) or (B,C,H,W)")
    score.add_argument("--score", choices=sorted(SCORES), default="eel", help="score to compute (default: eel, Eq. 6)")
    score.add_argument("--alpha", type=float, default=1.0, help="entropy weight α of the EEL score (default: 1)")
    score.add_argument("--smooth", action="store_true", help="Gaussian blur (7×7, σ=1) as RPL's inference does")
    score.add_argument("--dtype", choices=("float16", "float32"), default="float32", help="stored dtype (default: float32)")
    score.add_argument("--key", help="array name inside .npz/.pt files holding several")
    score.add_argument("--out", required=True, help="output folder")
    score.add_argument("--overwrite", action="store_true", help="recompute maps that already exist")
    score.add_argument("--quiet", action="store_true", help="no progress bar")
    score.set_defaults(handler=_score_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        args.handler(args)
    except (DiffeelError, ValueError, TypeError, OSError) as error:
        message = str(error).rstrip(".") or type(error).__name__
        print(f"diffeel {args.command}: error: {message}.", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"diffeel {args.command}: interrupted; finished outputs are kept, rerun to resume.", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
