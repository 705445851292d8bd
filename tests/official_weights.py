"""Deterministic weights for parity with the official code: every tensor is drawn from a generator
seeded by its key name, so the recording script (run against the official code) and the tests (run
against diffeel) build the same network without storing a weight file.

Conv / linear weights are fan-in scaled normals (activations stay finite through deep stacks);
1-D weights (norm scales) are near 1, running variances positive, everything else small."""

from __future__ import annotations

import hashlib

import torch


def name_seed(name: str) -> int:
    return int.from_bytes(hashlib.sha256(name.encode("utf-8")).digest()[:8], "little") % (2**63)


def name_tensor(name: str, shape) -> torch.Tensor:
    """The tensor of key ``name`` and ``shape``."""
    shape = tuple(int(side) for side in shape)
    generator = torch.Generator().manual_seed(name_seed(name))
    if name.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if name.endswith("running_var"):
        return 1.0 + 0.2 * torch.rand(shape, generator=generator)
    if len(shape) >= 2:
        fan_in = 1
        for side in shape[1:]:
            fan_in *= side
        return torch.randn(shape, generator=generator) * (2.0 / fan_in) ** 0.5
    if name.endswith("weight"):
        return 1.0 + 0.1 * torch.randn(shape, generator=generator)
    return 0.1 * torch.randn(shape, generator=generator)


def name_state(keys_and_shapes) -> dict[str, torch.Tensor]:
    """A state dict of ``(key, shape)`` pairs."""
    return {name: name_tensor(name, shape) for name, shape in keys_and_shapes}


def probe(shape, seed: int = 0, low: float = -1.0, high: float = 1.0) -> torch.Tensor:
    """A seeded uniform input tensor."""
    generator = torch.Generator().manual_seed(seed)
    return low + (high - low) * torch.rand(tuple(shape), generator=generator)
