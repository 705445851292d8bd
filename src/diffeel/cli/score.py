"""``diffeel score``: anomaly score maps from a model over a benchmark, or from saved logits."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..errors import DiffeelError
from .arguments import add_benchmark_arguments, add_output_argument, add_quiet_argument, benchmark_frames, count, device, finite_float, setting, size

RESUMABLE = ("score",)


def add_parser(commands) -> None:
    from ..models import list_models
    from ..scores import SCORES

    score = commands.add_parser(
        "score",
        help="anomaly score maps (MSP, max-logit, energy, entropy, EEL) from a model on a benchmark, or from saved logits",
        description="With --model: run a model (registered name, or package.module:factory) over a benchmark's frames "
        "(RGB/255, ImageNet mean/std, full resolution unless --size) and write {out}/{score}/{frame id}.npy at label "
        "resolution for each score of --scores, the layout diffeel eval --scores reads; runs under torchrun, each "
        "process scoring its share, with output identical to one process. Without --model: compute --score from "
        "saved logits files, one .npy per frame: {stem}.npy for a (C, H, W) or (1, C, H, W) input, {stem}_0000.npy, "
        "{stem}_0001.npy, … for a (B, C, H, W) batch. Finished maps are kept unless --overwrite, so an interrupted "
        "run resumes.",
    )
    score.add_argument("logits", nargs="*", help="logits files (.npy, .npz, .pt) or folders of them; (C,H,W) or (B,C,H,W)")
    score.add_argument("--model", help="model to run: " + ", ".join(list_models()) + ", or package.module:factory "
                       "(or path/to/file.py:factory) returning an nn.Module that gives (N, 19, H, W) logits")
    score.add_argument("--checkpoint", help="model weights (e.g. RPL's res.pth, NVIDIA's cityscapes_best.pth); loaded strictly "
                       "(default for a model with public weights: its file fetched by diffeel models fetch NAME)")
    score.add_argument("--model-option", action="append", type=setting, metavar="NAME=VALUE",
                       help="keyword argument for the model's constructor or factory (repeatable), e.g. width_divisor=16")
    score.add_argument("--allow-pickle", action="store_true", help="allow a legacy checkpoint that needs full unpickling (can run code)")
    add_benchmark_arguments(score, required=False)
    score.add_argument("--scores", help=f"--model: scores to write (default: {','.join(SCORES)}; one with --layout smiyc)")
    score.add_argument("--layout", choices=("diffeel", "smiyc"), default="diffeel",
                       help="--model: diffeel (default: {out}/{score}/{frame id}.npy) or smiyc: the SegmentMeIfYouCan toolkit's "
                       "{out}/anomaly_p/{method}/{dataset}/{frame id}.hdf5 (float16, gzip 9), every frame of the toolkit's "
                       "dataset including the test frames without labels; one score (--scores) and --method")
    score.add_argument("--method", help="--layout smiyc: the method's name (its folder in the toolkit's layout)")
    score.add_argument("--batch", type=count(1), default=1, help="--model: frames per forward pass (default 1)")
    score.add_argument("--inference", choices=("default", "anomaly_inference"), default="default",
                       help="--model, mask models: default = Eq. 3 (msp) and the EEL family on mask-wise logits; anomaly_inference "
                       "= Mask2Anomaly's official script's score (its resizing, kept-query channels, zeroing rule, flip average)")
    score.add_argument("--mask-logits", choices=("raw", "softmax"), default="raw",
                       help="--model, mask models: the class weights of the mask-wise logits that energy, entropy and EEL use: raw "
                       "(default; the paper's c^T·sigmoid(m) with raw class logits) or softmax (Mask2Former's semantic map, an "
                       "ablation); msp (Eq. 3) always weights with the softmax")
    score.add_argument("--protocol", choices=("native", "m2a"), default="native",
                       help="--model: the input's size: native (default: full resolution, or --size) or m2a (Mask2Anomaly's "
                       "evaluation: short side 1024, long side at most 2048, PIL bilinear), so that M2A and M2A+EEL maps "
                       "compare at the official scale")
    score.add_argument("--flip", action="store_true",
                       help="--model: average each score with that of the left-right flipped image (as Mask2Anomaly's evaluation does)")
    score.add_argument("--size", type=size, help="--model: resize images to WIDTHxHEIGHT before the model (default: full resolution)")
    score.add_argument("--device", type=device, default="cpu", help="--model: cpu (default) or cuda (cuda:LOCAL_RANK under torchrun)")
    score.add_argument("--precision", choices=("float32", "bfloat16", "float16"), default="float32",
                       help="--model: the forward's arithmetic: float32 (default, the official numbers), bfloat16 (autocast; "
                       "several times faster on CPUs with AMX or AVX-512 BF16, scores change slightly) or float16 (autocast, CUDA only)")
    score.add_argument("--score", choices=sorted(SCORES), default="eel", help="logits files: score to compute (default: eel, Eq. 6)")
    score.add_argument("--alpha", type=finite_float, default=1.0, help="entropy weight α of the EEL score (default: 1)")
    score.add_argument("--smooth", nargs="?", const="rpl", default="none", choices=("none", "rpl"),
                       help="rpl: Gaussian blur (7 taps, σ=1, reflect) as RPL's inference does; the same as eval --protocol rpl "
                       "applies (then evaluate with --protocol nearest). Plain --smooth means rpl")
    score.add_argument("--dtype", choices=("float16", "float32"), help="stored dtype (default: float16 with --model, else float32)")
    score.add_argument("--key", help="array name inside .npz/.pt files holding several")
    add_output_argument(score)
    score.add_argument("--overwrite", action="store_true", help="recompute maps that already exist")
    score.add_argument("--random-weights", type=count(0), metavar="SEED",
                       help="--model without --checkpoint: score a registered model with random weights drawn from SEED "
                       "(recorded; for trying the pipeline, never for numbers)")
    add_quiet_argument(score)
    score.set_defaults(handler=run)


def run(args: argparse.Namespace) -> None:
    if args.model:
        return _score_model(args)
    from ..report.output import check_output_dir
    from ..scoring import find_logits_files, score_logits_files

    if not args.logits:
        raise DiffeelError("give logits files, or --model with --benchmark and --root")
    check_output_dir(args.out, allowed=None)
    inputs = find_logits_files(args.logits)
    counts = score_logits_files(inputs, args.out, args.score, alpha=args.alpha, smooth=args.smooth, dtype=args.dtype or "float32",
                                key=args.key, overwrite=args.overwrite, progress=not args.quiet)
    print(f"wrote {counts['written']} score map(s) to {Path(args.out)}" + (f", kept {counts['kept']} existing" if counts["kept"] else ""))


def _score_model(args: argparse.Namespace) -> None:
    """``diffeel score --model``: run a model over a benchmark (this process's share under torchrun)."""
    from ..distributed import process_group
    from ..models import create_model
    import torch

    from ..models.hub import published_checkpoint
    from ..models.registry import model_entry
    from ..report.output import check_output_dir
    from ..scores import SCORES
    from ..scoring import ScoreSettings, maps_folder, score_frames

    if args.logits:
        raise DiffeelError("give either logits files or --model, not both")
    if not args.benchmark or not args.root:
        raise DiffeelError("--model needs --benchmark and --root: the frames to score")
    toolkit = None
    if args.layout == "smiyc":
        from ..data.toolkit_layout import toolkit_dataset

        if not args.method:
            raise DiffeelError("--layout smiyc needs --method NAME: the method's folder in the toolkit's layout")
        if not args.scores and args.inference == "default":
            raise DiffeelError(f"--layout smiyc stores one map per frame: name the score with --scores (one of {', '.join(SCORES)})")
        toolkit = (args.method, toolkit_dataset(args.benchmark))
    elif args.method:
        raise DiffeelError("--method names a method of the toolkit's layout: give it with --layout smiyc")
    settings = ScoreSettings(scores=tuple(s.strip() for s in (args.scores or ",".join(SCORES)).split(",") if s.strip()),
                             alpha=args.alpha, smooth=args.smooth, size=args.size[::-1] if args.size else None, batch=args.batch,
                             dtype=args.dtype or "float16", inference=args.inference, precision=args.precision,
                             mask_logits=args.mask_logits, protocol=args.protocol, flip=args.flip, toolkit=toolkit)
    checkpoint = args.checkpoint or published_checkpoint(args.model)
    if checkpoint is not None and args.random_weights is not None:
        raise DiffeelError("give --checkpoint or --random-weights, not both")
    if checkpoint is None and args.random_weights is None and model_entry(args.model) is not None:
        # a registered model without weights is a new random model on every run: maps of a resumed run would mix models
        raise DiffeelError(f"{args.model} needs its weights: give --checkpoint PATH (or --random-weights SEED to try the "
                           "pipeline on a seeded random model)")
    check_output_dir(args.out, allowed=None)
    frames = benchmark_frames(args, unlabelled=toolkit is not None)  # the toolkit's datasets include the test frames
    with process_group(args.device) as context:
        device = context.device(args.device)
        if args.random_weights is not None:
            torch.manual_seed(args.random_weights)  # every process draws the same model
        model = create_model(args.model, checkpoint=checkpoint, allow_pickle=args.allow_pickle, **dict(args.model_option or []))
        if getattr(model, "segmenter", True) is False:
            raise DiffeelError(f"{args.model} is not a segmenter (it gives no class logits per pixel); score a segmentation model")
        provenance = {"model": args.model, "model_options": dict(args.model_option or []), "checkpoint": str(Path(checkpoint).resolve()) if checkpoint else None,
                      "benchmark": args.benchmark, "root": str(Path(args.root).resolve())}
        if args.random_weights is not None:
            provenance["random_weights"] = args.random_weights  # recorded when set, so earlier folders still resume
        counts = score_frames(model, frames, args.out, settings, provenance=provenance, device=device, context=context,
                              overwrite=args.overwrite, progress=not args.quiet)
        if context.is_main:
            kept = f", kept {counts['kept']} finished" if counts["kept"] else ""
            shared = f" (rank 0 of {context.world_size})" if context.active else ""
            where, evaluate = (f"{maps_folder(Path(args.out), settings)}/", args.out) if toolkit else \
                (f"{Path(args.out)}/<score>/", Path(args.out) / settings.scores[-1])
            print(f"scored {counts['scored']} frame(s){shared}{kept}: {', '.join(settings.scores)} maps in {where}; "
                  f"evaluate with diffeel eval --scores {evaluate}")
