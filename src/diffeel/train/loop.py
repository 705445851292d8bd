"""A seeded training loop that resumes bit-identically after an interruption.

Everything random in step ``s`` (which images, flips, crops, pasted objects) is drawn from a
generator seeded by ``(seed, s)``, and checkpoints hold the model, optimizer and step. So a run
stopped at any checkpoint and resumed produces exactly the parameters of a run that was never
stopped. Adam or AdamW, polynomial learning-rate decay, optional gradient-norm clipping, a
JSON-lines log of the losses; every setting comes from :class:`TrainConfig`, which is saved with
each checkpoint, so a checkpoint always says what ran.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Callable

import torch

from ..errors import DiffeelError
from ..models.checkpoints import load_state, save_state

LOSSES = ("closed", "rpl", "rpl+eel", "m2a", "m2a+eel")
SYNTHESIZERS = ("none", "placement", "rpl-mix")
OPTIMIZERS = ("adam", "adamw")


@dataclass
class TrainConfig:
    """Every setting of a training run. ``recipe`` names the preset it came from; ``loss`` picks
    the objective (``closed`` CE; ``rpl`` RPL's loss; ``rpl+eel`` Eq. 8; ``m2a`` / ``m2a+eel``
    Mask2Anomaly's objective and Eq. 10)."""

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
    seed: int = 0
    save_every: int = 50
    # anomaly synthesis
    synthesizer: str = "none"  # "placement" (diffeel, Eq. 1) | "rpl-mix" (RPL's random paste) | "none"
    objects_per_image: int = 1
    object_pool: float = 1.0  # share of the object bank used (Table V's amount of anomalous objects)
    paste_probability: float = 1.0  # share of frames that receive pasted objects
    # loss weights
    anomaly_weight: float = 0.05  # λ of Eq. 8/10, or RPL's energy-hinge weight
    alpha: float = 1.0  # entropy weight α of Eq. 6/7
    inlier_entropy: str = "confident"  # sign of Eq. 7's inlier entropy term ("paper": as printed)
    mask_loss: dict = field(default_factory=dict)  # Mask2Anomaly's matcher and loss weights
    amp: bool = False  # mixed precision (CUDA only)

    def __post_init__(self):
        checks = [
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
) -> dict:
    """Train ``model`` for ``config.steps`` steps, resuming from ``out_dir/checkpoint.pt`` if present.

    ``param_groups`` are optimizer groups; a group's ``lr_multiplier`` scales ``config.lr``.
    ``batch_at(step)`` returns (images, labels) for that step; ``loss_at(model, images, labels)``
    returns a dict of scalar losses with the optimised one under ``"total"``. ``stop_after`` ends
    the run early after that step (used to test resumption). Returns a summary.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, log_path = out / "checkpoint.pt", out / "log.jsonl"
    optimizer = make_optimizer(config, param_groups)
    device_type = next(model.parameters()).device.type
    if config.amp and device_type != "cuda":
        raise DiffeelError("amp (mixed precision) needs a CUDA device; set amp to false on the CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=config.amp)
    start = 0
    if checkpoint.exists():
        state = load_state(checkpoint)
        if state.get("config") != asdict(config):
            raise DiffeelError(f"{checkpoint} was written with other training settings; remove it or choose another folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if config.amp:
            scaler.load_state_dict(state["scaler"])
        start = int(state["step"])
        _truncate_log(log_path, start)

    def save(step: int) -> None:
        extra = {"scaler": scaler.state_dict()} if config.amp else {}
        save_state(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": asdict(config), **extra})

    trained = [p for group in param_groups for p in group["params"]]
    model.train()
    started = time.perf_counter()
    last = start
    with open(log_path, "a") as log, tqdm(total=config.steps, initial=start, desc=config.recipe, unit="step", disable=not progress) as bar:
        for step in range(start, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, config.steps, config.poly_power)
            images, labels = batch_at(step)
            with torch.autocast(device_type, enabled=config.amp):
                losses = loss_at(model, images, labels)
            if not torch.isfinite(losses["total"]):
                raise DiffeelError(f"the {config.recipe} loss became {float(losses['total'].detach())} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(losses["total"]).backward()
            if config.clip is not None:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trained, config.clip)
            scaler.step(optimizer)
            scaler.update()
            log.write(json.dumps({"step": step + 1, **{k: round(float(v.detach()), 6) for k, v in losses.items()}}) + "\n")
            bar.update(1)
            bar.set_postfix(loss=f"{float(losses['total'].detach()):.3f}")
            last = step + 1
            if last % config.save_every == 0 or last == config.steps:
                log.flush()
                save(last)
            if stop_after is not None and last >= stop_after:
                break
    if last != config.steps:
        save(last)
    return {"steps": last, "seconds": time.perf_counter() - started, "resumed_from": start}


def _truncate_log(path: Path, step: int) -> None:
    """Drop log lines written after the checkpoint we resume from (they will be written again)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
    path.write_text("".join(line + "\n" for line in kept))


def step_generator(seed: int, step: int, stream: int = 0):
    """The numpy generator for one step: depends only on (seed, step, stream)."""
    import numpy as np

    return np.random.default_rng([seed, step, stream])
