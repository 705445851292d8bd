"""CPU forward time and memory of the hosts: the official eager path vs diffeel's scoring path.

All paths run the same random-weight model (eval mode, seeded) on the same random image, batch 1.
``rpl_wrn38`` (``--model rpl_wrn38``, the default; ImageNet-normalised input):

- eager (the baseline, as the official RPL code runs): NCHW tensors, ``torch.no_grad()``,
  ``model(x)`` computing both outputs, out1 (the frozen host) and out2 (with the residual);
- optimised (``diffeel score``): model and input in ``torch.channels_last``,
  ``torch.inference_mode()``, ``scoring_logits(model, x)`` computing only out2, the logits anomaly
  scores come from.

``mask2anomaly_r50`` (``--model mask2anomaly_r50``; RGB 0..255 input; default size 256x512, the
size of the official code's quoted CPU time):

- eager: NCHW, ``torch.no_grad()``, the forward as the official code computes it on CPU
  (``_official_style.py``: its pure-PyTorch deformable-attention fallback, one ``grid_sample`` per
  level; ``nn.MultiheadAttention`` with per-head boolean masks) — on the same modules and weights;
- optimised: channels-last, ``torch.inference_mode()``, ``model(x)``: deformable attention as one
  weighted ``embedding_bag``, one additive mask for all heads, in-place residuals.
The compared output is ``pred_masks``.

For both, a third path ``bfloat16`` is the optimised one under bfloat16 autocast (``diffeel score
--precision bfloat16``). Its output is not expected to equal float32's: the largest difference
and the share of unchanged decisions (RPL: the arg-max class of out2; Mask2Anomaly: the side of
0.5 of each mask pixel's sigmoid) are printed.

Each (path, size) runs in its own fresh process, which builds the model and then waits for
orders: after one warm-up forward each, the repetitions are interleaved (eager, optimised,
bfloat16, eager, …) so machine noise hits all alike, and the median is reported. Peak RSS is the
process's high-water mark over its forwards (reset after building the model; ``VmHWM``, the value
``getrusage(RUSAGE_SELF).ru_maxrss`` reports); "forward extra" is that peak minus the resident
memory after building the model. Once per size, the optimised output must equal the eager output
to a tolerance (max |difference| printed): a speed-up that changes numbers is no speed-up.

    make bench                                                # half and full size, with the other benchmarks
    .venv/bin/python benchmarks/host_bench.py --sizes 512x1024  # half size only (a few minutes on 2 cores)
    .venv/bin/python benchmarks/host_bench.py --model mask2anomaly_r50 --repeats 5
"""

from __future__ import annotations

import argparse
import gc
import multiprocessing
import statistics
import sys
import time

import numpy as np
import torch
from _memory import peak_resident_bytes, resident_bytes
from _official_style import official_style_forward

from diffeel.models import create_model, is_mask_model, normalise, scoring_logits
from diffeel.models.loading import forward_precision

PATHS = ("eager", "optimised", "bfloat16")
DEFAULT_SIZES = {"rpl_wrn38": "512x1024,1024x2048", "mask2anomaly_r50": "256x512"}
TOLERANCE = 1e-4  # max |optimised - eager| over the output, relative to max |eager output|


def eager_forward(model, x):
    with torch.no_grad():
        if is_mask_model(model):
            return official_style_forward(model, x)["pred_masks"]
        return model(x).rpl_logits  # RPL: out1 and out2 computed


def optimised_forward(model, x, precision="float32"):
    with torch.inference_mode():
        if is_mask_model(model):
            with forward_precision(x.device, precision):
                return model(x)["pred_masks"].float()
        return scoring_logits(model, x, precision)


FORWARDS = {"eager": eager_forward, "optimised": optimised_forward,
            "bfloat16": lambda model, x: optimised_forward(model, x, "bfloat16")}


def worker(conn, path: str, height: int, width: int, seed: int, threads: int | None, name: str = "rpl_wrn38") -> None:
    """A fresh process for one (path, size): build, then one forward per "run" order until "stop"."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = create_model(name)
    rgb = torch.rand(1, 3, height, width, generator=torch.Generator().manual_seed(seed + 1)) * 255
    x = normalise(rgb, model.input_normalization)
    if path != "eager":
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    del rgb
    gc.collect()
    baseline = resident_bytes()
    with open("/proc/self/clear_refs", "w") as stream:
        stream.write("5")  # reset the peak so that building the model does not count
    conn.send(torch.get_num_threads())
    out2 = None
    while conn.recv() == "run":
        out2 = None  # the previous output must not add to this forward's peak
        start = time.perf_counter()
        out2 = FORWARDS[path](model, x)
        conn.send(time.perf_counter() - start)
    conn.send({"baseline": baseline, "peak": peak_resident_bytes()})
    conn.send(out2.contiguous().numpy())


def measure(height: int, width: int, repeats: int, args) -> dict:
    context = multiprocessing.get_context("spawn")
    workers = {}
    for path in PATHS:
        conn, child_conn = context.Pipe()
        process = context.Process(target=worker, args=(child_conn, path, height, width, args.seed, args.threads, args.model))
        process.start()
        workers[path] = (process, conn)
    threads = {workers[path][1].recv() for path in PATHS}
    times = {path: [] for path in PATHS}
    for repetition in range(repeats + 1):  # repetition 0 is the warm-up
        for path in PATHS:
            conn = workers[path][1]
            conn.send("run")
            elapsed = conn.recv()
            if repetition:
                times[path].append(elapsed)
    result = {"threads": threads}
    for path in PATHS:
        process, conn = workers[path]
        conn.send("stop")
        memory = conn.recv()
        result[path] = {"seconds": statistics.median(times[path]), "times": times[path],
                        "peak": memory["peak"], "extra": memory["peak"] - memory["baseline"], "out2": conn.recv()}
        process.join()
    return result


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", choices=sorted(DEFAULT_SIZES), default="rpl_wrn38", help="host to time (default rpl_wrn38)")
    parser.add_argument("--sizes", help="comma-separated HxW (default: half and full Cityscapes for rpl_wrn38, 256x512 for mask2anomaly_r50)")
    parser.add_argument("--repeats", type=int, help="timed forwards per path (default 2 up to 512x1024, 1 above)")
    parser.add_argument("--threads", type=int, help="torch threads (default torch's)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    sizes = [tuple(int(v) for v in size.lower().split("x")) for size in (args.sizes or DEFAULT_SIZES[args.model]).split(",")]

    mb = 2**20
    rows, ok = [], True
    for height, width in sizes:
        repeats = args.repeats or (2 if height * width <= 512 * 1024 else 1)
        result = measure(height, width, repeats, args)
        eager, optimised, reduced = result["eager"], result["optimised"], result["bfloat16"]
        size = f"{height}x{width}"
        for path in PATHS:
            r = result[path]
            times = ", ".join(f"{t:.2f}" for t in r["times"])
            rows.append(f"{size:<10} {path:<16} {r['seconds']:>9.2f} {r['peak'] / mb:>12.0f} {r['extra'] / mb:>17.0f}   ({times})")
        for path in PATHS[1:]:
            r = result[path]
            rows.append(f"{size:<10} {'eager/' + path:<16} {eager['seconds'] / r['seconds']:>8.2f}x "
                        f"{eager['peak'] / r['peak']:>11.2f}x {eager['extra'] / r['extra']:>16.2f}x")
        output = "out2" if args.model == "rpl_wrn38" else "pred_masks"
        difference = float(np.abs(optimised["out2"] - eager["out2"]).max())
        scale = float(np.abs(eager["out2"]).max())
        equal = difference <= TOLERANCE * scale
        ok &= equal
        rows.append(f"{size:<10} {output} max |optimised - eager| = {difference:.2e} (max |{output}| {scale:.2e}): "
                    f"{'equal' if equal else 'MISMATCH'} to {TOLERANCE:g} relative; threads {sorted(result['threads'])}")
        if args.model == "rpl_wrn38":  # the class each pixel is given
            same = float((reduced["out2"].argmax(1) == eager["out2"].argmax(1)).mean())
            decision = "arg-max class"
        else:  # the side of 0.5 of each mask pixel's sigmoid
            same = float(((reduced["out2"] >= 0) == (eager["out2"] >= 0)).mean())
            decision = "mask side"
        rows.append(f"{size:<10} {output} max |bfloat16 - eager| = {float(np.abs(reduced['out2'] - eager['out2']).max()):.2e}; "
                    f"{decision} unchanged at {100 * same:.2f} % of pixels")
        print(f"{size} done: eager {eager['seconds']:.2f} s, optimised {optimised['seconds']:.2f} s, bfloat16 {reduced['seconds']:.2f} s",
              file=sys.stderr, flush=True)

    print(f"\ntorch {torch.__version__}, {args.threads or torch.get_num_threads()} threads, batch 1, "
          f"{args.model} random weights (seed {args.seed}); median over the timed repetitions (listed), after one warm-up each")
    print(f"{'size':<10} {'path':<16} {'median s':>9} {'peak RSS MB':>12} {'forward extra MB':>17}   (timed s)")
    print("\n".join(rows))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
