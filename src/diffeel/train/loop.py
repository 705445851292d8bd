"""A seeded training loop that resumes bit-identically after an interruption.

Everything random in step ``s`` (which images, flips, pasted objects) is drawn from a generator
seeded by ``(seed, s)``, and checkpoints hold the model, optimizer and step. So a run stopped at any
checkpoint and resumed produces exactly the parameters of a run that was never stopped. AdamW,
polynomial learning-rate decay (power 0.9), gradient-norm clipping, a JSON-lines log of the losses.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import DiffeelError
from ..models.checkpoints import load_state, save_state


@dataclass
class TrainConfig:
    recipe: str
    steps: int
    batch_size: int = 8
    lr: float = 2e-3
    weight_decay: float = 1e-4
    clip: float = 5.0
    seed: int = 0
    save_every: int = 50
    objects_per_image: int = 1
    inlier_entropy: str = "confident"


def poly_lr(base: float, step: int, total: int, power: float = 0.9) -> float:
    return base * (1 - step / max(total, 1)) ** power


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

    ``batch_at(step)`` returns (images, labels) for that step; ``loss_at(model, images, labels)``
    returns a dict of scalar losses with the optimised one under ``"total"``. ``stop_after`` ends
    the run early after that step (used to test resumption). Returns a summary.
    """
    from tqdm import tqdm

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    checkpoint, log_path = out / "checkpoint.pt", out / "log.jsonl"
    optimizer = torch.optim.AdamW(param_groups, lr=config.lr, weight_decay=config.weight_decay)
    for group in optimizer.param_groups:
        group["base_lr"] = group["lr"]
    start = 0
    if checkpoint.exists():
        state = load_state(checkpoint)
        if state.get("config") != asdict(config):
            raise DiffeelError(f"{checkpoint} was written with other training settings; remove it or choose another folder")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start = int(state["step"])
        _truncate_log(log_path, start)

    def save(step: int) -> None:
        save_state(checkpoint, {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step, "config": asdict(config)})

    model.train()
    started = time.perf_counter()
    last = start
    with open(log_path, "a") as log, tqdm(total=config.steps, initial=start, desc=config.recipe, unit="step", disable=not progress) as bar:
        for step in range(start, config.steps):
            for group in optimizer.param_groups:
                group["lr"] = poly_lr(group["base_lr"], step, config.steps)
            images, labels = batch_at(step)
            losses = loss_at(model, images, labels)
            if not torch.isfinite(losses["total"]):
                raise DiffeelError(f"the {config.recipe} loss became {float(losses['total'].detach())} at step {step}; lower the learning rate")
            optimizer.zero_grad(set_to_none=True)
            losses["total"].backward()
            torch.nn.utils.clip_grad_norm_([p for g in param_groups for p in g["params"]], config.clip)
            optimizer.step()
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


def is_finished(out_dir, steps: int) -> bool:
    checkpoint = Path(out_dir) / "checkpoint.pt"
    return checkpoint.exists() and int(load_state(checkpoint)["step"]) >= steps


def step_generator(seed: int, step: int, stream: int = 0):
    """The numpy generator for one step: depends only on (seed, step, stream)."""
    import numpy as np

    return np.random.default_rng([seed, step, stream])


