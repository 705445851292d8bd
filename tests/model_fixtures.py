"""Helpers for model tests."""

from __future__ import annotations

import torch


def randomise_batch_norms(model: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Non-trivial running statistics and affine parameters, so a wrong normalisation shows."""
    generator = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.randn(n, generator=generator) * 0.1)
    return model
