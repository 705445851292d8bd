"""Every CLI command fed bad input: exit code 2, one sentence on stderr, nothing written.

Each case is one row of ``CASES``: a few setup steps that put good inputs and one defect into the
case's own sandbox folder, the command line (``{s}`` is the sandbox; ``{world}``, ``{bench}``,
``{scores}`` and ``{run}`` are good inputs shared by all cases), and a fragment the error sentence
must contain. The command runs as a subprocess with the sandbox as working directory; afterwards
the sandbox must be exactly as before (same files, same bytes): no output, no partial output, no
temporary or lock files, and an existing ``--out`` untouched. The weight cache (``DIFFEEL_HOME``) of
each case is ``diffeel-home`` in its sandbox, so it is checked the same way.

Argparse errors (usage line + error line) are only checked for exit code 2, no traceback, and the
fragment in the last line.

Every subprocess spends about two seconds importing torch, so the selected cases are run up front
by a module fixture, a few at a time; each test then checks its own case's outcome.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
from PIL import Image

from diffeel.cli import main

Setup = Callable[[Path, dict], None]  # (sandbox, shared inputs) -> None


# ---- setup steps: each puts one input into a case's sandbox -------------------------------------


def write(relative: str, content: str | bytes) -> Setup:
    def setup(sandbox: Path, shared: dict) -> None:
        path = sandbox / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)

    return setup


def save_array(relative: str, array: np.ndarray) -> Setup:
    def setup(sandbox: Path, shared: dict) -> None:
        np.save(sandbox / relative, array)

    return setup


def pickled(relative: str, value) -> Setup:
    def setup(sandbox: Path, shared: dict) -> None:
        with open(sandbox / relative, "wb") as stream:
            pickle.dump(value, stream)

    return setup


def legacy_pickle_checkpoint(relative: str) -> Setup:
    """A checkpoint that keeps its training arguments as a Python object (as RPL's and older files do)."""

    def setup(sandbox: Path, shared: dict) -> None:
        import argparse

        import torch

        torch.save({"model": {"w": torch.zeros(1)}, "args": argparse.Namespace(lr=0.1)}, sandbox / relative)

    return setup


def remove(relative: str) -> Setup:
    def setup(sandbox: Path, shared: dict) -> None:
        (sandbox / relative).unlink()

    return setup


def mkdir(relative: str) -> Setup:
    def setup(sandbox: Path, shared: dict) -> None:
        (sandbox / relative).mkdir(parents=True)

    return setup


def copy(name: str, relative: str) -> Setup:
    """A copy of the shared good input ``name`` (a folder) at ``relative``."""

    def setup(sandbox: Path, shared: dict) -> None:
        shutil.copytree(shared[name], sandbox / relative)

    return setup


def replace_text(relative: str, old: str, new: str) -> Setup:
    def setup(sandbox: Path, shared: dict) -> None:
        path = sandbox / relative
        text = path.read_text()
        assert old in text, f"{old!r} not in {path}"
        path.write_text(text.replace(old, new))

    return setup


def edit_lines(relative: str, change: Callable[[list[str]], list[str]]) -> Setup:
    def setup(sandbox: Path, shared: dict) -> None:
        path = sandbox / relative
        path.write_text("".join(line + "\n" for line in change(path.read_text().splitlines())))

    return setup


def truncate(relative: str) -> Setup:
    """Keep the first half of a file, as an interrupted copy does."""

    def setup(sandbox: Path, shared: dict) -> None:
        path = sandbox / relative
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    return setup


def stray_label_value(relative: str, value: int = 7) -> Setup:
    """A label PNG with a corner of ``value``, which is none of 0 / 1 / 255."""

    def setup(sandbox: Path, shared: dict) -> None:
        path = sandbox / relative
        label = np.array(Image.open(path))
        label[:3, :3] = value
        Image.fromarray(label).save(path)

    return setup


def tiny_rpl_checkpoint(relative: str, architecture: str = "rpl_wrn38") -> Setup:
    """RPL's res.pth layout for a 1/16-width network, or another architecture's weights."""

    def setup(sandbox: Path, shared: dict) -> None:
        import torch

        from diffeel.models import create_model

        options = {"width_divisor": 16} if architecture == "rpl_wrn38" else {}
        state = create_model(architecture, **options).state_dict()
        torch.save({"model": {"branch1." + k: v for k, v in state.items()}}, sandbox / relative)

    return setup


def steps(*setups: Setup) -> Setup:
    def setup(sandbox: Path, shared: dict) -> None:
        for step in setups:
            step(sandbox, shared)

    return setup


# ---- the cases ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    id: str
    args: tuple[str, ...]
    fragment: str  # may name paths with the same {placeholders} as args
    setup: Setup | None = None
    usage: bool = False  # an argparse error: usage line + error line


def case(id, args, fragment, *setups, usage=False):
    return pytest.param(Case(id, tuple(args), fragment, steps(*setups), usage), id=id)


def usage_case(id, args, fragment, *setups):
    return case(id, args, fragment, *setups, usage=True)


FLOAT_LOGITS = np.random.default_rng(0).normal(size=(19, 4, 4)).astype(np.float32)

SCORE = ["score", "{s}/logits.npy", "--out", "{s}/out", "--quiet"]
SCORE_MODEL = ["score", "--model", "rpl_wrn38", "--model-option", "width_divisor=16", "--checkpoint", "{s}/res.pth",
               "--benchmark", "comsamy", "--root", "{bench}", "--out", "{s}/out", "--quiet"]

# eval and stats read a sandbox copy of the good benchmark (and scores), then one defect is added
EVAL_INPUTS = steps(copy("bench", "bench"), copy("scores", "scores"))
EVAL = ["eval", "--benchmark", "comsamy", "--root", "{s}/bench", "--scores", "{s}/scores", "--out", "{s}/out", "--quiet"]
MANIFEST = "bench/manifest.csv"
STATS = ["stats", "--benchmark", "comsamy", "--root", "{s}/bench", "--out", "{s}/out", "--quiet"]

WORLD_MAKE = ["world", "make", "--out", "{s}/w", "--per-weather", "1", "--train", "2", "--clear", "1", "--size", "64x32",
              "--seed", "7", "--quiet"]
WEATHER = ["weather", "apply", "--benchmark", "comsamy", "--condition", "rain", "--quiet"]
TRAIN = ["train", "--world", "{world}", "--out", "{s}/run", "--quiet"]
FETCH = ["models", "fetch", "espnet_cityscapes", "--quiet", "--url"]
HOME = "diffeel-home"  # each case's DIFFEEL_HOME (the weight cache), inside its sandbox


CASES = [
    # score
    case("score-missing-input", SCORE, "{s}/logits.npy does not exist"),
    case("score-corrupt-npy", SCORE, "{s}/logits.npy could not be read as an array file", write("logits.npy", b"not a numpy file")),
    case("score-plain-pickle-pt", ["score", "{s}/x.pt", "--out", "{s}/out", "--quiet"], "{s}/x.pt could not be read as an array file",
         pickled("x.pt", {"a": 1})),
    case("score-integer-logits", SCORE, "expected float logits", save_array("logits.npy", np.zeros((19, 4, 4), np.int64))),
    case("score-nan-logits", SCORE, "{s}/logits.npy gives non-finite", save_array("logits.npy", np.full((19, 4, 4), np.nan, np.float32))),
    case("score-zero-classes", SCORE, "at least 2 classes", save_array("logits.npy", np.zeros((0, 4, 4), np.float32))),
    case("score-out-is-a-file", SCORE, "--out {s}/out is an existing file", save_array("logits.npy", FLOAT_LOGITS), write("out", "my notes\n")),
    case("score-model-corrupt-checkpoint", SCORE_MODEL, "checkpoint {s}/res.pth could not be read", write("res.pth", b"PK\x03\x04 junk")),
    case("score-model-truncated-checkpoint", SCORE_MODEL, "checkpoint {s}/res.pth could not be read",
         tiny_rpl_checkpoint("res.pth"), truncate("res.pth")),
    case("score-model-other-architecture", SCORE_MODEL, "does not fit rpl_wrn38: key 'mod1.conv1.weight' is missing",
         tiny_rpl_checkpoint("res.pth", "small_deeplab")),
    case("score-model-other-width", [a.replace("=16", "=8") for a in SCORE_MODEL], "'mod1.conv1.weight' has shape [4, 3, 3, 3] in the file",
         tiny_rpl_checkpoint("res.pth")),
    case("score-model-missing-checkpoint", SCORE_MODEL, "checkpoint {s}/res.pth does not exist"),
    case("score-model-checkpoint-is-a-folder", SCORE_MODEL, "checkpoint {s}/res.pth is a folder; give the checkpoint file inside it",
         mkdir("res.pth")),
    case("score-model-legacy-pickle", SCORE_MODEL, "a legacy pickle), which diffeel does not load by default; if you trust its "
         "source, --allow-pickle loads it", legacy_pickle_checkpoint("res.pth")),
    case("score-mask-model-other-architecture", ["score", "--model", "mask2anomaly_r50", "--checkpoint", "{s}/res.pth", "--benchmark",
                                                 "comsamy", "--root", "{bench}", "--out", "{s}/out", "--quiet"],
         "does not fit mask2anomaly_r50: key 'backbone.stem.conv1.weight' is missing", tiny_rpl_checkpoint("res.pth")),
    case("score-mask-model-truncated", ["score", "--model", "mask2anomaly_r50", "--checkpoint", "{s}/res.pth", "--benchmark",
                                        "comsamy", "--root", "{bench}", "--out", "{s}/out", "--quiet"],
         "checkpoint {s}/res.pth could not be read", tiny_rpl_checkpoint("res.pth"), truncate("res.pth")),
    case("score-official-inference-not-a-mask-model", [*SCORE_MODEL, "--inference", "anomaly_inference"],
         "the model is not a mask model", tiny_rpl_checkpoint("res.pth")),
    case("score-model-no-benchmark", SCORE_MODEL[:7] + ["--out", "{s}/out"], "--model needs --benchmark and --root"),
    case("score-model-unknown", ["score", "--model", "wrn99", "--benchmark", "comsamy", "--root", "{bench}", "--out", "{s}/out"],
         "unknown model 'wrn99'"),
    case("score-model-unknown-score", [*SCORE_MODEL, "--scores", "eel,odin"], "unknown score 'odin'", tiny_rpl_checkpoint("res.pth")),
    case("score-model-and-logits", [*SCORE_MODEL, "{s}/logits.npy"], "either logits files or --model", save_array("logits.npy", FLOAT_LOGITS)),
    case("score-no-input", ["score", "--out", "{s}/out"], "give logits files, or --model"),
    case("score-model-not-a-segmenter", ["score", "--model", "dovenet", "--random-weights", "0", "--benchmark", "comsamy", "--root",
                                         "{bench}", "--out", "{s}/out", "--quiet"], "dovenet is not a segmenter"),
    case("synth-paste-foreign-folder", ["synth", "paste", "--bank", "{s}/bank", "--world", "{world}", "--out", "{s}/mine", "--quiet"],
         "--out {s}/mine holds files that are not diffeel training pairs", write("mine/images/train_00000.png", b"my picture")),
    case("synth-objects-foreign-folder", ["synth", "objects", "--model", "{s}/sd", "--count", "2", "--out", "{s}/mine", "--quiet"],
         "--out {s}/mine holds files that are not a diffeel object bank", write("mine/generated/000001.png", b"my picture")),
    case("train-foreign-log", [*TRAIN[:3], "--out", "{s}/mine", "--quiet", "--recipe", "demo-closed"],
         "--out {s}/mine holds files that are not a diffeel training run", write("mine/log.jsonl", "my own notes\n")),
    case("score-model-without-weights", ["score", "--model", "small_deeplab", "--benchmark", "comsamy", "--root", "{bench}", "--out",
                                         "{s}/out", "--quiet"], "small_deeplab needs its weights: give --checkpoint PATH"),
    usage_case("score-device-unknown", [*SCORE_MODEL, "--device", "banana"], "'banana' is not a device diffeel runs on"),
    usage_case("score-device-mps", [*SCORE_MODEL, "--device", "mps"], "'mps' is not a device diffeel runs on"),
    usage_case("score-alpha-infinite", [*SCORE, "--alpha", "inf"], "--alpha: 'inf' is not a finite number"),
    usage_case("train-setting-nan", ["train", "--recipe", "rpl", "--set", "lr=nan", "--show-config"], "nan is not a finite number"),
    usage_case("synth-objects-guidance-nan", ["synth", "objects", "--model", "{s}/sd", "--count", "2", "--out", "{s}/bank",
                                              "--guidance", "nan"], "--guidance: 'nan' is not a finite number"),
    # synth
    case("synth-objects-no-model", ["synth", "objects", "--model", "{s}/sd", "--count", "2", "--out", "{s}/bank", "--quiet"],
         "Stable Diffusion model {s}/sd does not exist; expected a diffusers folder"),
    case("synth-objects-model-incomplete", ["synth", "objects", "--model", "{s}/sd", "--count", "2", "--out", "{s}/bank", "--quiet"],
         "lacks unet/, vae/, text_encoder/, tokenizer/, scheduler/", write("sd/model_index.json", "{}")),
    usage_case("synth-objects-unknown-extractor", ["synth", "objects", "--model", "{s}/sd", "--count", "2", "--out", "{s}/bank",
                                                    "--extractor", "sam"], "--extractor: invalid choice"),
    case("synth-objects-empty-vocabulary", ["synth", "objects", "--model", "{s}/sd", "--count", "2", "--out", "{s}/bank",
                                            "--vocabulary", "{s}/objects.csv", "--quiet"], "lists no objects",
         write("objects.csv", "object,category,min_height_m,max_height_m\n")),
    case("synth-objects-u2net-without-weights", ["synth", "objects", "--model", "{s}/sd", "--count", "2", "--out", "{s}/bank",
                                                 "--extractor", "u2net", "--quiet"], "needs its weights",
         write("sd/model_index.json", "{}"), *(mkdir(f"sd/{part}") for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))),
    case("synth-objects-corrupt-extractor-weights", ["synth", "objects", "--model", "{s}/sd", "--count", "2", "--out", "{s}/bank",
                                                     "--extractor-weights", "{s}/u2net.pth", "--quiet"], "checkpoint {s}/u2net.pth could not be read",
         write("u2net.pth", b"\x80\x02 not torch"), write("sd/model_index.json", "{}"),
         *(mkdir(f"sd/{part}") for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"))),
    case("synth-paste-bank-missing-png", ["synth", "paste", "--bank", "{s}/bank", "--world", "{world}", "--out", "{s}/pairs", "--quiet"],
         "{s}/bank/objects/000000.png does not exist",
         write("bank/objects.jsonl", '{"id": "000000", "status": "ok", "file": "objects/000000.png", "object": "dog", "height_range": [0.4, 0.8]}\n')),
    case("synth-paste-no-frames", ["synth", "paste", "--bank", "{world}/train/objects", "--out", "{s}/pairs", "--quiet"],
         "give the frames to paste into"),
    # eval
    usage_case("eval-root-not-given", [a for a in EVAL if a not in ("--root", "{s}/bench")], "required: --root", EVAL_INPUTS),
    case("eval-root-missing", EVAL, "benchmark root {s}/bench does not exist", copy("scores", "scores")),
    case("eval-score-file-missing", EVAL, "missing score map for frame rain_0001", EVAL_INPUTS, remove("scores/rain_0001.npy")),
    case("eval-extra-score-file", EVAL, "score map ghost.npy in {s}/scores matches no frame", EVAL_INPUTS,
         save_array("scores/ghost.npy", np.zeros((32, 64), np.float32))),
    case("eval-score-wrong-shape", EVAL, "score map of frame rain_0001 has shape (16, 32)", EVAL_INPUTS,
         save_array("scores/rain_0001.npy", np.zeros((16, 32), np.float32))),
    case("eval-nan-scores", EVAL, "score values are NaN or infinite", EVAL_INPUTS,
         save_array("scores/rain_0001.npy", np.full((32, 64), np.nan, np.float32))),
    case("eval-corrupt-score-file", EVAL, "score file {s}/scores/rain_0001.npy could not be read", EVAL_INPUTS,
         write("scores/rain_0001.npy", b"\x93NUMPY garbage")),
    case("eval-manifest-header-only", EVAL, "{s}/bench/manifest.csv lists no frames", EVAL_INPUTS, edit_lines(MANIFEST, lambda lines: lines[:1])),
    case("eval-manifest-duplicate-id", EVAL, "frame rain_0001 is listed twice", EVAL_INPUTS,
         edit_lines(MANIFEST, lambda lines: lines + [lines[2]])),
    case("eval-manifest-no-weather", EVAL, "frame rain_0001 has no weather", EVAL_INPUTS, replace_text(MANIFEST, "rain_0001,rain,", "rain_0001,,")),
    case("eval-manifest-unknown-weather", EVAL, "frame rain_0001 has weather 'hail'", EVAL_INPUTS,
         replace_text(MANIFEST, "rain_0001,rain,", "rain_0001,hail,")),
    case("eval-label-stray-value", EVAL, "{s}/bench/labels/rain_0001.png: label map contains values outside", EVAL_INPUTS,
         stray_label_value("bench/labels/rain_0001.png")),
    case("eval-label-truncated", EVAL, "{s}/bench/labels/rain_0001.png is not a readable image", EVAL_INPUTS,
         truncate("bench/labels/rain_0001.png")),
    case("eval-group-by-unknown-field", [*EVAL, "--group-by", "wether"], "no frame has a 'wether' field", EVAL_INPUTS),
    usage_case("eval-jobs-0", [*EVAL, "--jobs", "0"], "--jobs: 0 is below the minimum of 1", EVAL_INPUTS),
    usage_case("eval-jobs-negative", [*EVAL, "--jobs", "-3"], "--jobs: -3 is below the minimum of 1", EVAL_INPUTS),
    case("eval-out-is-a-file", EVAL, "--out {s}/out is an existing file", EVAL_INPUTS, write("out", "my notes\n")),
    case("eval-out-holds-user-files", EVAL, "already holds files diffeel did not write", EVAL_INPUTS,
         write("out/thesis.tex", "\\section{Results}\n"), write("out/photos/cat.jpg", b"\xff\xd8 not really a cat")),
    case("eval-out-is-a-dataset-folder", EVAL, "--out {s}/out already holds files diffeel did not write", EVAL_INPUTS, copy("bench", "out")),
    # compare
    case("compare-no-results-json", ["compare", "{s}/run", "--out", "{s}/out"], "{s}/run is not an evaluation run (no results.json",
         mkdir("run"), write("run/table.md", "| m |\n")),
    case("compare-corrupt-results-json", ["compare", "{s}/run", "--out", "{s}/out"], "{s}/run/results.json is not a diffeel results file",
         copy("run", "run"), write("run/results.json", '{"method": "m", "benchm')),
    case("compare-corrupt-curves", ["compare", "{s}/run", "--out", "{s}/out"], "{s}/run/curves.npz could not be read",
         copy("run", "run"), write("run/curves.npz", b"PK\x03\x04 broken zip")),
    # stats
    case("stats-manifest-header-only", STATS, "{s}/bench/manifest.csv lists no frames", copy("bench", "bench"), edit_lines(MANIFEST, lambda lines: lines[:1])),
    case("stats-root-missing", STATS, "benchmark root {s}/bench does not exist"),
    # world make
    usage_case("world-make-per-weather-negative", [*WORLD_MAKE, "--per-weather", "-2"], "--per-weather: -2 is below the minimum of 0"),
    usage_case("world-make-train-negative", [*WORLD_MAKE, "--train", "-3"], "--train: -3 is below the minimum of 0"),
    usage_case("world-make-clear-negative", [*WORLD_MAKE, "--clear", "-1"], "--clear: -1 is below the minimum of 0"),
    case("world-make-out-not-a-world", WORLD_MAKE, "is not empty and holds no world", write("w/holiday.jpg", b"\xff\xd8 pixels"),
         write("w/notes/todo.txt", "buy milk\n")),
    case("world-make-world-json-bad-seed", WORLD_MAKE, "{s}/w/world.json is damaged", write("w/world.json", '{"seed": "x"}')),
    case("world-make-world-json-list", WORLD_MAKE, "{s}/w/world.json is damaged", write("w/world.json", "[1, 2]")),
    # world preview
    case("world-preview-out-is-a-folder", ["world", "preview", "--out", "{s}/sheet.png", "--size", "64x32"], "--out {s}/sheet.png is a folder",
         write("sheet.png/keep.txt", "mine\n")),
    # weather apply
    case("weather-out-is-root", [*WEATHER, "--root", "{s}/bench", "--out", "{s}/bench"], "overlaps the input", copy("bench", "bench")),
    case("weather-out-inside-root", [*WEATHER, "--root", "{s}/bench", "--out", "{s}/bench/rainy"], "overlaps the input", copy("bench", "bench")),
    case("weather-unknown-condition", ["weather", "apply", "--benchmark", "comsamy", "--root", "{bench}", "--condition", "hail",
                                       "--out", "{s}/out", "--quiet"], "unknown condition 'hail'"),
    usage_case("weather-severity-9", [*WEATHER, "--root", "{bench}", "--severity", "9", "--out", "{s}/out"], "--severity: invalid choice"),
    case("weather-input-missing", ["weather", "apply", "--input", "{s}/photos", "--condition", "rain", "--out", "{s}/out", "--quiet"],
         "input folder {s}/photos does not exist"),
    # demo
    usage_case("demo-jobs-0", ["demo", "--out", "{s}/demo", "--jobs", "0", "--quiet"], "--jobs: 0 is below the minimum of 1"),
    case("demo-out-is-a-file", ["demo", "--out", "{s}/demo", "--quick", "--quiet"], "--out {s}/demo is an existing file",
         write("demo", "my notes\n")),
    # train
    case("train-unknown-setting", [*TRAIN, "--recipe", "demo-closed", "--set", "nonsense=1"], "unknown training setting 'nonsense'"),
    case("train-negative-lr", [*TRAIN, "--recipe", "demo-closed", "--set", "lr=-1"], "lr and head_lr_multiplier must be positive"),
    case("train-no-world-or-out", ["train", "--recipe", "demo-closed", "--quiet"], "give --world"),
    case("train-m2a-on-a-world", [*TRAIN, "--recipe", "m2a"], "trains the Mask2Anomaly host on Cityscapes"),
    case("train-rpl-corrupt-host", [*TRAIN, "--recipe", "rpl", "--host", "{s}/host.pt"], "checkpoint {s}/host.pt could not be read",
         write("host.pt", b"PK\x03\x04 half a checkpoint")),
    # models fetch (DIFFEEL_HOME is {s}/diffeel-home; file:// URLs stand in for a server)
    usage_case("models-fetch-no-name", ["models", "fetch"], "required: NAME"),
    case("models-fetch-no-public-weights", ["models", "fetch", "rpl_wrn38", "--quiet"], "rpl_wrn38 has no public weights to fetch"),
    case("models-fetch-unreachable", [*FETCH, "file://{s}/missing.pth"],
         "file://{s}/missing.pth could not be reached ([Errno 2] No such file or directory: '{s}/missing.pth'); on an "
         "offline machine, download https://github.com/sacmehta/ESPNet/raw/"),
    case("models-fetch-wrong-checksum", [*FETCH, "file://{s}/espnet.pth"], "has SHA-256 "
         "2e7b7976ffe1c85c9e63c6540ca3d753c17974f1a98e2c41ec42434de0d4e7be, not the expected "
         "343b0e77e8545d36113c4f3efbf1ee349256f25c97c9f9d5ddefe45f2f49763e", write("espnet.pth", b"not the weights\n"),
         mkdir(HOME + "/weights")),
    case("models-fetch-not-a-url", [*FETCH, "{s}/espnet.pth"], "give an http, https or file URL", write("espnet.pth", b"not the weights\n")),
]


# ---- shared good inputs ---------------------------------------------------------------------------


def run_in_process(*args) -> None:
    """Build a fixture with the CLI itself (in this process: no extra torch import)."""
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as stderr:
        code = main([str(a) for a in args])
    assert code == 0, stderr.getvalue()


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """A tiny world (its test split is the benchmark), one good score map per frame, and an eval
    run of them: every case's inputs are these with one defect."""
    root = tmp_path_factory.mktemp("shared")
    world, scores, run = root / "world", root / "scores", root / "run"
    run_in_process("world", "make", "--out", world, "--per-weather", 1, "--train", 2, "--clear", 1, "--size", "64x32", "--seed", 7, "--quiet")
    scores.mkdir()
    rng = np.random.default_rng(7)
    for label in sorted((world / "test" / "labels").glob("*.png")):
        np.save(scores / f"{label.stem}.npy", rng.random(np.array(Image.open(label)).shape, dtype=np.float32))
    run_in_process("eval", "--benchmark", "comsamy", "--root", world / "test", "--scores", scores, "--out", run, "--quiet")
    return {"world": world, "bench": world / "test", "scores": scores, "run": run}


# ---- running the cases ----------------------------------------------------------------------------


def snapshot(folder: Path) -> dict[str, str]:
    """Every path under ``folder`` (hidden ones too) → "dir" or the SHA-256 of its bytes."""
    return {
        str(path.relative_to(folder)): "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
        for path in sorted(folder.rglob("*"))
    }


@dataclass
class Outcome:
    command: str
    fragment: str
    code: int
    stderr: str
    before: dict[str, str]
    after: dict[str, str]


ENVIRONMENT = {k: v for k, v in os.environ.items() if k != "DIFFEEL_DEBUG"}  # internal errors stay one sentence


def run_case(case: Case, shared: dict, sandbox: Path) -> Outcome:
    case.setup(sandbox, shared)
    before = snapshot(sandbox)
    places = {"s": sandbox, **shared}
    args = [arg.format(**places) for arg in case.args]
    process = subprocess.run([sys.executable, "-m", "diffeel.cli", *args], capture_output=True, text=True, timeout=120,
                             cwd=sandbox, env={**ENVIRONMENT, "DIFFEEL_HOME": str(sandbox / HOME)})
    return Outcome("diffeel " + " ".join(args), case.fragment.format(**places), process.returncode, process.stderr,
                   before, snapshot(sandbox))


@pytest.fixture(scope="module")
def shared_before(shared) -> dict[str, dict[str, str]]:
    return {name: snapshot(path) for name, path in shared.items()}


@pytest.fixture(scope="module")
def outcomes(request, shared, shared_before, tmp_path_factory) -> dict[str, Outcome]:
    """The outcome of every selected case, run a few at a time."""
    cases = [
        item.callspec.params["case"]
        for item in request.session.items
        if item.module is request.module and "case" in getattr(getattr(item, "callspec", None), "params", {})
    ]
    workers = max(2, len(os.sched_getaffinity(0)))
    with ThreadPoolExecutor(workers) as pool:
        results = pool.map(lambda c: run_case(c, shared, tmp_path_factory.mktemp(c.id, numbered=True)), cases)
        return {c.id: outcome for c, outcome in zip(cases, results)}


def changes(before: dict[str, str], after: dict[str, str]) -> str:
    added = sorted(set(after) - set(before))
    removed = sorted(set(before) - set(after))
    changed = sorted(p for p in set(before) & set(after) if before[p] != after[p])
    return f"added {added}, removed {removed}, changed {changed}"


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_sentence_and_writes_nothing(case: Case, outcomes: dict[str, Outcome]):
    outcome = outcomes[case.id]
    context = f"\n$ {outcome.command}\nexit {outcome.code}\n{outcome.stderr}"
    assert "Traceback" not in outcome.stderr, context
    assert outcome.code == 2, context
    lines = outcome.stderr.strip().splitlines()
    if case.usage:
        assert lines and outcome.fragment in lines[-1], context
    else:
        assert len(lines) == 1, context
        assert lines[0].endswith("."), context
        assert outcome.fragment in lines[0], context
    assert outcome.after == outcome.before, f"the command changed its sandbox: {changes(outcome.before, outcome.after)}{context}"


def test_shared_inputs_are_untouched(shared, shared_before, outcomes):
    """No case wrote into the good inputs that several cases read."""
    for name, path in shared.items():
        assert snapshot(path) == shared_before[name], f"{name}: {changes(shared_before[name], snapshot(path))}"
