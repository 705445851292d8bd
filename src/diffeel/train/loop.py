"""A seeded training loop that resumes bit-identically after an interruption.

Everything random in step ``s`` (which images, flips, crops, pasted objects) is drawn from a
generator seeded by ``(seed, s)``, and checkpoints hold the model, optimizer and step. So a run
stopped at any checkpoint and resumed produces exactly the parameters of a run that was never
stopped. Adam or AdamW, polynomial learning-rate decay, optional gradient-norm clipping, a
JSON-lines log of the losses (and TensorBoard scalars under ``tensorboard/`` when the package is
installed); every setting comes from :class:`TrainConfig`, which is saved with each checkpoint
together with the code's git revision, so a checkpoint always says what ran.

Under torchrun the model is wrapped in DistributedDataParallel; batch means are taken over the
whole global batch (:func:`diffeel.losses.pooled_over_processes`), so N processes take the step
one process would; only rank 0 writes.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from .. import losses as loss_functions
from ..distributed import Distributed
from ..errors import DiffeelError
from ..labels import ANOMALY_TRAIN_ID
from ..models.checkpoints import load_state, save_state

LOSSES = ("closed", "rpl", "rpl+eel", "m2a-inlier", "m2a", "m2a+eel")
SYNTHESIZERS = ("none", "placement", "rpl-mix")
OPTIMIZERS = ("adam", "adamw")
PHOTOMETRIC = ("none", "jitter", "ssd")  # the colour augmentation of training frames
HARMONIZERS = ("none", "illumination", "illumination+dovenet")  # the blender's stages, in their order


@dataclass
class TrainConfig:
    """Every setting of a training run. ``recipe`` names the preset it came from; ``loss`` picks
    the objective (``closed`` CE; ``rpl`` RPL's loss; ``rpl+eel`` Eq. 8; ``m2a-inlier`` Mask2Former's
    loss alone, Mask2Anomaly's stage 1; ``m2a`` / ``m2a+eel`` Mask2Anomaly's objective and Eq. 10)."""

    recipe: str
    steps: int
    loss: str = "closed"
    batch_size: int = 8
    optimizer: str = "adamw"
    lr: float = 2e-3
    head_lr_multiplier: float = 1.0  # RPL: 10× for atten_aspp_final
    weight_decay: float = 1e-4
    poly_power: float = 0.9
    clip: float | None = 5.0  # gradient-norm clipping; None = none
    crop: list[int] | None = None  # (height, width) random crop; None = whole frames
    crop_around_anomaly: bool = False  # objects placed on the whole frame: the crop holds one of them
    resize_short_side: list[int] | None = None  # detectron2's ResizeShortestEdge before the crop: one of these short sides
    resize_max_size: int = 4096  # ... and the long side at most this
    seed: int = 0
    save_every: int = 50
    # anomaly synthesis
    synthesizer: str = "none"  # "placement" (diffeel, Eq. 1) | "rpl-mix" (RPL's random paste) | "none"
    objects_per_image: int = 1
    placement: str = "first"  # "best": candidates scored (road support, appearance); "first": the first valid one
    harmonizer: str = "illumination"  # the blender's stages: "none", "illumination", "illumination+dovenet"
    object_pool: float = 1.0  # share of the object bank used (Table V's amount of anomalous objects)
    paste_probability: float = 1.0  # share of frames that receive pasted objects
    # loss weights
    anomaly_weight: float = 0.05  # λ of Eq. 8/10, or RPL's energy-hinge weight
    alpha: float = 1.0  # entropy weight α of Eq. 6/7
    inlier_entropy: str = "confident"  # sign of Eq. 7's inlier entropy term ("paper": as printed)
    mask_loss: dict = field(default_factory=dict)  # Mask2Anomaly's matcher and loss weights
    amp: bool = False  # mixed precision (CUDA only)
    photometric: str = "jitter"  # "jitter" (colour, blur, noise: the small demo model needs it), "ssd" (detectron2's SSD colour), "none"
    decay_norm_and_embedding: bool = True  # False: weight decay 0 for norm and embedding parameters (Mask2Former's optimizer)
    validate_every: int = 0  # steps between validations (0: only at the end, when a validation set is given)
    adapter_point: str | None = None  # hosts without RPL's module: the adapter's attachment module (None: the host's own)

    def __post_init__(self):
        if isinstance(self.photometric, bool):  # configs written when this was a switch
            self.photometric = "jitter" if self.photometric else "none"
        if self.synthesizer != "placement":
            self.harmonizer = "none"  # only the placement synthesizer blends: no other claims a blender stage
        checks = [
            (self.placement in ("first", "best"), f"placement must be first or best, got {self.placement!r}"),
            (self.harmonizer in HARMONIZERS, f"harmonizer must be one of {', '.join(HARMONIZERS)}, got {self.harmonizer!r}"),
            (self.photometric in PHOTOMETRIC, f"photometric must be one of {', '.join(PHOTOMETRIC)}, got {self.photometric!r}"),
            (self.resize_short_side is None or (len(self.resize_short_side) > 0 and all(
                isinstance(side, int) and side > 0 for side in self.resize_short_side)),
             f"resize_short_side must list positive whole numbers or be None, got {self.resize_short_side!r}"),
            (isinstance(self.resize_max_size, int) and self.resize_max_size > 0,
             f"resize_max_size must be a positive whole number, got {self.resize_max_size!r}"),
            (self.loss in LOSSES, f"loss must be one of {', '.join(LOSSES)}, got {self.loss!r}"),
            (self.optimizer in OPTIMIZERS, f"optimizer must be adam or adamw, got {self.optimizer!r}"),
            (self.synthesizer in SYNTHESIZERS, f"synthesizer must be one of {', '.join(SYNTHESIZERS)}, got {self.synthesizer!r}"),
            (self.inlier_entropy in ("confident", "paper"), f"inlier_entropy must be confident or paper, got {self.inlier_entropy!r}"),
            (isinstance(self.steps, int) and self.steps >= 1, f"steps must be a positive whole number, got {self.steps!r}"),
            (isinstance(self.batch_size, int) and self.batch_size >= 1, f"batch_size must be a positive whole number, got {self.batch_size!r}"),
            (self.lr > 0 and self.head_lr_multiplier > 0, "lr and head_lr_multiplier must be positive"),
            (self.weight_decay >= 0 and self.poly_power >= 0, "weight_decay and poly_power must not be negative"),
            (self.clip is None or self.clip > 0, f"clip must be positive or None, got {self.clip!r}"),
            (0 < self.object_pool <= 1, f"object_pool must be in (0, 1], got {self.object_pool!r}"),
            (0 <= self.paste_probability <= 1, f"paste_probability must be in [0, 1], got {self.paste_probability!r}"),
            (isinstance(self.objects_per_image, int) and self.objects_per_image >= 0, "objects_per_image must be a whole number ≥ 0"),
            (isinstance(self.validate_every, int) and self.validate_every >= 0, "validate_every must be a whole number ≥ 0"),
            (self.crop is None or (len(self.crop) == 2 and all(isinstance(c, int) and c > 0 for c in self.crop)),
             f"crop must be [height, width] or None, got {self.crop!r}"),
        ]
        for ok, message in checks:
            if not ok:
                raise DiffeelError(message)
        if self.crop is not None:
            self.crop = [int(c) for c in self.crop]

    def with_overrides(self, overrides: dict) -> "TrainConfig":
        """A copy with fields replaced (unknown names are an error)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise DiffeelError(f"unknown training setting {unknown[0]!r}; settings: {', '.join(sorted(known))}")
        return TrainConfig(**{**asdict(self), **overrides})


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    return base * (1 - step / max(total, 1)) ** power


def code_revision() -> str:
    """The git commit of the running code (``+dirty`` with local changes), or the package version."""
    from .. import __version__

    source = Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=source, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return f"diffeel {__version__}"
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=source, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return commit.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return f"diffeel {__version__}"


def same_settings(saved: dict, config: TrainConfig) -> bool:
    """Whether a checkpoint's config is ``config`` (settings added since it was written at their defaults)."""
    try:
        return asdict(TrainConfig(**saved)) == asdict(config)
    except (TypeError, DiffeelError):
        return False


class _TensorBoard:
    """Scalars for TensorBoard under ``folder``; nothing (and one note) when tensorboard is not installed."""

    def __init__(self, folder: Path, enabled: bool, first_step: int = 1):
        self.writer = None
        if enabled:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                print("note: the tensorboard package is not installed; losses go to log.jsonl only")
            else:
                # events from first_step on, written before an interruption, are dropped: they are taken again
                self.writer = SummaryWriter(str(folder), purge_step=first_step)

    def scalars(self, prefix: str, values: dict, step: int) -> None:
        if self.writer is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self.writer.add_scalar(f"{prefix}/{name}", value, step)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


def make_optimizer(config: TrainConfig, param_groups: list[dict]) -> torch.optim.Optimizer:
    """Adam or AdamW with the config's learning rate and weight decay; a group's ``lr_multiplier``
    scales its rate (RPL's 10× head)."""
    groups = [{**{k: v for k, v in group.items() if k != "lr_multiplier"}, "lr": config.lr * group.get("lr_multiplier", 1.0)}
              for group in param_groups]
    optimizer_class = torch.optim.Adam if config.optimizer == "adam" else torch.optim.AdamW
    optimizer = optimizer_class(groups, lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    return optimizer


def train(
    config: TrainConfig,
    model: torch.nn.Module,
    param_groups: list[dict],
    batch_at: Callable[[int], tuple[torch.Tensor, torch.Tensor]],
    loss_at: Callable[[torch.nn.Module, torch.Tensor, torch.Tensor], dict],
    out_dir,
    progress: bool = True,
    stop_after: int | None = None,
    context: Distributed = Distributed(),
    validate: Callable[[torch.nn.Module], dict] | None = None,
) -> dict:
    """Train ``model`` for ``config.steps`` steps, resuming from ``out_dir/checkpoint.pt`` if present.

    ``param_groups`` are optimizer groups; a group's ``lr_multiplier`` scales ``config.lr``.
    ``batch_at(step)`` returns this process's (images, labels) for that step; ``loss_at(model,
    images, labels)`` returns a dict of scalar losses with the optimised one under ``"total"``.
    ``validate(model) -> {metric: value}`` runs on rank 0 every ``config.validate_every`` steps and
    at the end. ``stop_after`` ends the run early after that step (used to test resumption).
    Returns a summary.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    checkpoint, log_path = out / "checkpoint.pt", out / "log.jsonl"
    if context.is_main:
        out.mkdir(parents=True, exist_ok=True)
    optimizer = make_optimizer(config, param_groups)
    device = next(model.parameters()).device
    if config.amp and device.type != "cuda":
        raise DiffeelError("amp (mixed precision) needs a CUDA device; set amp to false on the CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
    start = 0
    if checkpoint.exists():
        state = load_state(checkpoint)
        if not same_settings(state.get("config", {}), config):
            raise DiffeelError(f"{checkpoint} was written with other training settings; remove it or choose another folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if config.amp:
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
    if context.is_main:
        _truncate_log(log_path, start)  # before the first checkpoint too: steps not in it are taken again
    revision = code_revision()
    network = model
    if context.active:
        from torch.nn.parallel import DistributedDataParallel

        from ..distributed import synchronise_batch_norms

        synchronise_batch_norms(model)  # batch statistics of the global batch, as one process computes them
        network = DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)

    def save(step: int) -> None:
        if context.is_main:
            extra = {"scaler": scaler.state_dict()} if config.amp else {}
            save_state(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                                    "config": asdict(config), "revision": revision, **extra})
        context.barrier()

    def run_validation(step: int, log, board) -> None:
        if validate is not None and context.is_main:
            model.eval()
            metrics = validate(model)
            model.train()
            log.write(json.dumps({"step": step, "validation": metrics}) + "\n")
            log.flush()
            board.scalars("validation", metrics, step)
        context.barrier()

    def averaged(values: dict) -> dict:
        """Loss values averaged over processes (each holds its share of the global batch's loss)."""
        names = sorted(values)
        stacked = torch.stack([values[name].detach().float() for name in names])
        if context.active:
            torch.distributed.all_reduce(stacked)
            stacked /= context.world_size
        return dict(zip(names, stacked.tolist()))

    trained = [p for group in param_groups for p in group["params"]]
    model.train()
    started = time.perf_counter()
    last = start
    board = _TensorBoard(out / "tensorboard", context.is_main, first_step=start + 1)
    with open(log_path, "a") if context.is_main else open(os.devnull, "w") as log, \
            tqdm(total=config.steps, initial=start, desc=f"{config.recipe} (seed {config.seed})", unit="step", disable=not progress or not context.is_main) as bar:
        def pooled():
            return loss_functions.pooled_over_processes(_all_reduce_sum, context.world_size) if context.active else contextlib.nullcontext()

        for step in range(start, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, config.steps, config.poly_power)
            images, labels = batch_at(step)
            torch.manual_seed(step_torch_seed(config.seed, step))  # the same on every process: per-image sampling keys on it
            try:
                with torch.autocast(device.type, enabled=config.amp), pooled():
                    losses = loss_at(network, images, labels)
            except ValueError as error:
                if "more than 1 value per channel" not in str(error):
                    raise
                raise DiffeelError(f"a batch norm that trains (RPL's residual module copies the host's ASPP, whose image-pooling "
                                   f"branch sees one value per image) cannot train on {len(images)} image(s) per process; "
                                   "use --set batch_size=2 or more per process") from None
            # the share of this step's crops that hold anomaly pixels (the global batch's: equal shares per process)
            coverage = {}
            if config.synthesizer != "none":
                held = (labels == ANOMALY_TRAIN_ID).flatten(1).any(1).float().mean()
                coverage["anomaly_crops"] = held.to(losses["total"].device)
            values = averaged({**losses, **coverage})
            if not math.isfinite(values["total"]):
                raise DiffeelError(f"the {config.recipe} loss became {values['total']} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            if config.clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trained, config.clip)
            scaler.step(optimizer)
            scaler.update()
            last = step + 1
            log.write(json.dumps({"step": last, **{k: round(v, 6) for k, v in values.items()}}) + "\n")
            board.scalars("train", {**values, "lr": optimizer.param_groups[0]["lr"]}, last)
            bar.update(1)
            bar.set_postfix(loss=f"{values['total']:.3f}")
            if last % config.save_every == 0 or last == config.steps:
                log.flush()
                save(last)
            if validate is not None and ((config.validate_every and last % config.validate_every == 0) or last == config.steps):
                run_validation(last, log, board)
            if stop_after is not None and last >= stop_after:
                break
    board.close()
    if last != config.steps:
        save(last)
    return {"steps": last, "seconds": time.perf_counter() - started, "resumed_from": start}


def _all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    tensor = tensor.clone()
    torch.distributed.all_reduce(tensor)
    return tensor


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again),
    and a line an interruption cut short."""
    if not path.exists():
        return

    def kept(line: str) -> bool:
        try:
            return json.loads(line)["step"] <= step
        except (ValueError, KeyError, TypeError):
            return False

    path.write_text("".join(line + "\n" for line in path.read_text().splitlines() if kept(line)))


def step_torch_seed(seed: int, step: int) -> int:
    """torch's global seed for one step: randomness inside the loss (Mask2Former's point sampling)
    repeats exactly when a run resumes, and is the same on every process."""
    import numpy as np

    return int(np.random.SeedSequence([seed, step]).generate_state(1)[0])


def step_generator(seed: int, step: int, stream: int = 0):
    """The numpy generator for one step: depends only on (seed, step, stream)."""
    import numpy as np

    return np.random.default_rng([seed, step, stream])
