"""CPU throughput of the anomaly synthesizer's stages, each against a baseline measured in the same run.

All networks have random weights (seeded; no released U²-Net or DoveNet weights exist on this
machine), and all inputs are seeded random pictures, so only the speeds mean anything:

1. extract: objects/s of ``SalientExtractor`` on 512×512 RGB objects (a textured ellipse on a plain
   background) at U²-Net's 320×320 input (preprocess + forward + postprocess + mask clean-up), for
   U²-NetP and the full U²-Net, one object per ``extract`` call and a batch through
   ``extract_many``; baseline: the weightless GrabCut fallback (``SalientExtractor(None)``).
2. blend: objects/s of one blender on a 150×100 (rows × columns) object standing on the road of a
   1024×2048 scene: ``DoveNetBlender`` (full-width ngf 64 generator) and ``PoissonBlender``;
   baseline: ``IlluminationBlender`` (Reinhard in Lab).
3. paste: frames/s of ``CopyPasteSynthesizer`` on 1024×2048 Cityscapes-like frames (train ids: sky
   10 in the upper half, road 0 in the lower half), one object per frame from a bank of four
   ``BankObject`` cut-outs, every variant on the same frames and seeds; baseline: plain copy-paste
   (``harmonize=False``), against illumination matching (``harmonize=True``) and the full chain
   ``make_blender(dovenet=generator)`` (illumination → DoveNet).

Each measurement runs once as a warm-up, then ``--repeats`` times; the median is reported. Ratios
are throughputs over the section's baseline throughput (0.35× = 0.35 times as many per second).

    make bench                                               # with the other benchmarks
    .venv/bin/python benchmarks/synth_bench.py                # a few minutes on 2 cores
    .venv/bin/python benchmarks/synth_bench.py --repeats 5 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import cv2
import numpy as np
import torch

from diffeel.labels import TRAIN_ID
from diffeel.models.dovenet import DoveNetGenerator
from diffeel.models.u2net import U2NET, U2NETP
from diffeel.synth.bank import BankObject, ObjectBank
from diffeel.synth.extract import SalientExtractor
from diffeel.synth.harmonize import DoveNetBlender, PoissonBlender, make_blender
from diffeel.synth.placement import Placement
from diffeel.synth.synthesizer import CopyPasteSynthesizer, IlluminationBlender

FRAME = (1024, 2048)  # rows, columns
OBJECT_SIDE = 512
BLEND_OBJECT = (150, 100)  # rows, columns
BANK_SIZES = ((200, 150), (160, 240), (300, 300), (120, 100))
ROAD, SKY = TRAIN_ID["road"], TRAIN_ID["sky"]


def blob_object(rng: np.random.Generator, rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """A dark textured ellipse (70 % of each side) on a light plain background: (rgb uint8, bool mask)."""
    r, c = np.ogrid[:rows, :cols]
    mask = ((r - rows / 2) / (0.35 * rows)) ** 2 + ((c - cols / 2) / (0.35 * cols)) ** 2 <= 1
    rgb = np.where(mask[..., None], rng.integers(0, 110, 3), rng.integers(150, 256, 3))
    rgb = rgb + rng.normal(0, 8, (rows, cols, 3)) * np.where(mask, 3, 1)[..., None]
    return np.clip(rgb, 0, 255).astype(np.uint8), mask


def city_frame(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A 1024×2048 frame and its train ids: sky above, road in the lower half, noisy colours."""
    labels = np.full(FRAME, SKY, np.uint8)
    labels[FRAME[0] // 2:] = ROAD
    image = np.where((labels == ROAD)[..., None], (110, 105, 115), (120, 170, 230)) + rng.normal(0, 10, (*FRAME, 3))
    return np.clip(image, 0, 255).astype(np.uint8), labels


def median_seconds(function, repeats: int) -> float:
    function()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per measurement, after one warm-up")
    parser.add_argument("--threads", type=int, help="torch and OpenCV threads (default torch's)")
    parser.add_argument("--batch", type=int, default=8, help="objects per extract_many call")
    parser.add_argument("--frames", type=int, default=4, help="frames per timed paste run (seeds 0..frames-1)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
        cv2.setNumThreads(args.threads)
    rng = np.random.default_rng(args.seed)
    rows = []  # (section, variant, items per call, median seconds per call, unit, baseline name)

    def measure(section, variant, items, function, unit, baseline):
        seconds = median_seconds(function, args.repeats)
        rows.append((section, variant, items, seconds, unit, baseline))
        print(f"{section} {variant}: {seconds:.3f} s per call of {items}", file=sys.stderr, flush=True)

    # 1. extraction
    objects = [blob_object(rng, OBJECT_SIDE, OBJECT_SIDE)[0] for _ in range(args.batch)]
    grabcut = SalientExtractor(None)
    measure("extract", "GrabCut fallback, extract", 1, lambda: grabcut.extract(objects[0]), "objects/s", "grabcut")
    for name, network in (("U²-NetP", U2NETP), ("U²-Net", U2NET)):
        torch.manual_seed(args.seed)
        extractor = SalientExtractor(network(), batch_size=args.batch)
        measure("extract", f"{name}, extract", 1, lambda: extractor.extract(objects[0]), "objects/s", "grabcut")
        measure("extract", f"{name}, extract_many ({args.batch})", args.batch,
                lambda: extractor.extract_many(objects), "objects/s", "grabcut")

    # 2. blending one object into a scene
    torch.manual_seed(args.seed)
    generator = DoveNetGenerator(ngf=64)
    scene, _ = city_frame(rng)
    object_rgb, object_mask = blob_object(rng, *BLEND_OBJECT)
    top = FRAME[0] * 3 // 4 - BLEND_OBJECT[0]
    box = Placement(top, FRAME[1] // 2 - BLEND_OBJECT[1] // 2, *BLEND_OBJECT, foot_row=top + BLEND_OBJECT[0] - 1)
    for variant, blender in (("illumination (Reinhard)", IlluminationBlender()),
                             ("DoveNet ngf 64", DoveNetBlender(generator)), ("Poisson", PoissonBlender())):
        measure("blend", variant, 1, lambda: blender(scene, object_rgb, object_mask, box), "objects/s", "illumination")

    # 3. copy-paste synthesis of whole frames
    bank = ObjectBank([BankObject(*blob_object(rng, *size), "blob", (0.5, 1.5), f"blob{i}")
                       for i, size in enumerate(BANK_SIZES)])
    frame, labels = city_frame(rng)
    seeds = range(args.frames)
    variants = (("plain copy-paste", False), ("illumination", True),
                ("illumination + DoveNet", make_blender(dovenet=generator)))
    pasted = sum(len(CopyPasteSynthesizer(bank, 1, harmonize=False).synthesize(frame, labels, s).objects) for s in seeds)
    for variant, harmonize in variants:
        synthesizer = CopyPasteSynthesizer(bank, 1, harmonize=harmonize)
        measure("paste", variant, args.frames, lambda: [synthesizer(frame, labels, s) for s in seeds], "frames/s", "plain")

    rates = {(section, variant): items / seconds for section, variant, items, seconds, _, _ in rows}
    baseline_of = {("extract", "grabcut"): "GrabCut fallback, extract", ("blend", "illumination"): "illumination (Reinhard)",
                   ("paste", "plain"): "plain copy-paste"}
    print(f"\ntorch {torch.__version__}, {torch.get_num_threads()} threads; RANDOM weights (seed {args.seed}; no U²-Net or "
          "DoveNet weights on this machine): speeds only, masks and colours are meaningless")
    print(f"median of {args.repeats} timed runs after one warm-up; extract on {OBJECT_SIDE}×{OBJECT_SIDE} objects at "
          f"320×320, blend a {BLEND_OBJECT[0]}×{BLEND_OBJECT[1]} object into {FRAME[0]}×{FRAME[1]}, paste "
          f"{args.frames} frames of {FRAME[0]}×{FRAME[1]} ({pasted} of {args.frames} got their object)")
    print(f"{'stage':<8} {'variant':<28} {'per second':>19} {'s each':>9}   vs baseline")
    for section, variant, items, seconds, unit, baseline in rows:
        ratio = rates[(section, variant)] / rates[(section, baseline_of[(section, baseline)])]
        print(f"{section:<8} {variant:<28} {rates[(section, variant)]:>9.2f} {unit:<9} {seconds / items:>9.3f}   "
              f"{ratio:.2f}× {baseline}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
