"""Multi-scale deformable attention (Deformable DETR's ``MSDeformAttn``) in plain PyTorch.

:func:`ms_deform_attn` is the sampling core: for every query, head, level and point it reads the
value map of that head bilinearly at a location given in ``[0, 1]`` coordinates of the level
(``0`` = the left / top edge, ``1`` = the right / bottom edge, so pixel ``i`` has its centre at
``(i + 0.5) / size``), with zeros outside the map, and sums the samples with the attention
weights. That is ``F.grid_sample(..., mode="bilinear", padding_mode="zeros",
align_corners=False)`` at the normalised coordinate ``2·loc - 1`` on each level.

Instead of one ``grid_sample`` call per level, the levels are zero-padded to the largest level's
size and stacked on the batch axis, so one call samples all of them; no loop runs over queries
or points.

:class:`MSDeformAttn` is the module around it, with the official parameter names
(``sampling_offsets``, ``attention_weights``, ``value_proj``, ``output_proj``).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _level_shapes(spatial_shapes) -> list[tuple[int, int]]:
    if isinstance(spatial_shapes, torch.Tensor):
        spatial_shapes = spatial_shapes.tolist()
    return [(int(h), int(w)) for h, w in spatial_shapes]


def ms_deform_attn(value: torch.Tensor, spatial_shapes, level_start_index, sampling_locations: torch.Tensor,
                   attention_weights: torch.Tensor) -> torch.Tensor:
    """Deformable attention sampling, fused over levels.

    ``value`` ``(N, S, M, D)`` (``S = Σ H_l·W_l``, levels flattened row-major one after the other,
    ``M`` heads of ``D`` channels), ``spatial_shapes`` ``(L, 2)`` as ``(H_l, W_l)`` (tensor or
    pairs), ``level_start_index`` ``(L,)`` where each level starts in ``S``, ``sampling_locations``
    ``(N, Q, M, L, P, 2)`` as ``(x, y)`` in ``[0, 1]`` (any value allowed: outside is zero),
    ``attention_weights`` ``(N, Q, M, L, P)``. Returns ``(N, Q, M·D)``, heads major.
    """
    shapes = _level_shapes(spatial_shapes)
    starts = [int(s) for s in (level_start_index.tolist() if isinstance(level_start_index, torch.Tensor) else level_start_index)]
    n, length, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    if len(shapes) != levels or len(starts) != levels:
        raise ValueError(f"ms_deform_attn got {len(shapes)} level shapes and {len(starts)} start indices for {levels} sampled levels")
    if sum(h * w for h, w in shapes) != length:
        raise ValueError(f"ms_deform_attn: the level shapes {shapes} cover {sum(h * w for h, w in shapes)} positions but value has {length}")
    if attention_weights.shape != sampling_locations.shape[:-1]:
        raise ValueError(f"ms_deform_attn: attention weights of shape {list(attention_weights.shape)} do not match "
                         f"sampling locations of shape {list(sampling_locations.shape)}")

    # All levels in one grid_sample call: each level's (N·M, D, H_l, W_l) map is zero-padded at the
    # bottom / right to the largest level's size and the levels are stacked on the batch axis.
    # Location x in [0, 1] of a level W_l wide sits at 2·x·W_l/W - 1 in the padded map's
    # normalised coordinates; beyond the level's own pixels the padding reads zeros, exactly as
    # zero padding around the level would (for a pyramid, W_l/W is a power of two, so the scale
    # is exact and the only rounding is the shift, as in the per-level computation).
    height, width = max(h for h, _ in shapes), max(w for _, w in shapes)
    padded = [F.pad(value[:, start:start + h * w].permute(0, 2, 3, 1).reshape(n * heads, channels, h, w), (0, width - w, 0, height - h))
              for (h, w), start in zip(shapes, starts)]
    canvas = torch.cat(padded) if levels > 1 else padded[0]  # (L·N·M, D, H, W), level major
    dtype = value.dtype
    scale = torch.tensor([(2.0 * w / width, 2.0 * h / height) for h, w in shapes], dtype=torch.float64).to(device=value.device, dtype=dtype)
    grid = sampling_locations.to(dtype).permute(3, 0, 2, 1, 4, 5) * scale[:, None, None, None, None, :] - 1  # (L, N, M, Q, P, 2)
    sampled = F.grid_sample(canvas, grid.reshape(levels * n * heads, queries, points, 2),
                            mode="bilinear", padding_mode="zeros", align_corners=False)  # (L·N·M, D, Q, P)
    weights = attention_weights.to(dtype).permute(3, 0, 2, 1, 4).reshape(levels * n * heads, 1, queries, points)
    weighted = sampled * weights if torch.is_grad_enabled() else sampled.mul_(weights)
    output = weighted.sum(-1).view(levels, n, heads, channels, queries).sum(0)  # (N, M, D, Q)
    return output.permute(0, 3, 1, 2).reshape(n, queries, heads * channels)


class MSDeformAttn(nn.Module):
    """Multi-scale deformable self-attention (``d_model`` channels, ``n_heads`` heads, ``n_points``
    sampling points per head and level)."""

    def __init__(self, d_model: int = 256, n_levels: int = 3, n_heads: int = 8, n_points: int = 4):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        self.d_model, self.n_levels, self.n_heads, self.n_points = d_model, n_levels, n_heads, n_points
        self.sampling_offsets = nn.Linear(d_model, n_heads * n_levels * n_points * 2)
        self.attention_weights = nn.Linear(d_model, n_heads * n_levels * n_points)
        self.value_proj = nn.Linear(d_model, d_model)
        self.output_proj = nn.Linear(d_model, d_model)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Deformable DETR's initialisation: offsets start on rays at the heads' angles (point ``k``
        at distance ``k`` pixels along its head's direction, on the unit square's border), uniform
        attention weights, Xavier projections."""
        nn.init.zeros_(self.sampling_offsets.weight)
        angles = torch.arange(self.n_heads, dtype=torch.float32) * (2 * math.pi / self.n_heads)
        directions = torch.stack([angles.cos(), angles.sin()], -1)
        directions = directions / directions.abs().max(-1, keepdim=True).values
        steps = torch.arange(1, self.n_points + 1, dtype=torch.float32).view(1, 1, -1, 1)
        bias = directions.view(self.n_heads, 1, 1, 2) * steps
        with torch.no_grad():
            self.sampling_offsets.bias.copy_(bias.expand(self.n_heads, self.n_levels, self.n_points, 2).reshape(-1))
        nn.init.zeros_(self.attention_weights.weight)
        nn.init.zeros_(self.attention_weights.bias)
        for projection in (self.value_proj, self.output_proj):
            nn.init.xavier_uniform_(projection.weight)
            nn.init.zeros_(projection.bias)

    def forward(self, query: torch.Tensor, reference_points: torch.Tensor, input_flatten: torch.Tensor,
                spatial_shapes: Sequence[tuple[int, int]], level_start_index: Sequence[int]) -> torch.Tensor:
        """``query`` ``(N, Q, C)``, ``reference_points`` ``(N or 1, Q, L, 2)`` in ``[0, 1]``,
        ``input_flatten`` ``(N, S, C)`` → ``(N, Q, C)``."""
        n, queries, _ = query.shape
        length = input_flatten.shape[1]
        value = self.value_proj(input_flatten).view(n, length, self.n_heads, self.d_model // self.n_heads)
        offsets = self.sampling_offsets(query).view(n, queries, self.n_heads, self.n_levels, self.n_points, 2)
        weights = self.attention_weights(query).view(n, queries, self.n_heads, self.n_levels * self.n_points)
        weights = weights.softmax(-1).view(n, queries, self.n_heads, self.n_levels, self.n_points)
        normalizer = torch.tensor([(w, h) for h, w in _level_shapes(spatial_shapes)], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights))
