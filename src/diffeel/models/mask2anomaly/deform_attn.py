"""Multi-scale deformable attention (Deformable DETR's ``MSDeformAttn``) in plain PyTorch.

:func:`ms_deform_attn` is the sampling core: for every query, head, level and point it reads the
value map of that head bilinearly at a location given in ``[0, 1]`` coordinates of the level
(``0`` = the left / top edge, ``1`` = the right / bottom edge, so pixel ``i`` has its centre at
``(i + 0.5) / size``), with zeros outside the map, and sums the samples with the attention
weights. That is what ``F.grid_sample(..., mode="bilinear", padding_mode="zeros",
align_corners=False)`` at the normalised coordinate ``2·loc - 1`` computes on each level, which
is how the official code's pure-PyTorch fallback does it, one level at a time.

Here a bilinear read is a weighted sum of four value rows, and the attention-weighted sum over
levels and points is a weighted sum too: each (query, head) output is one weighted sum of
``4·levels·points`` rows of the value table, which is exactly ``F.embedding_bag(mode="sum")``
with per-sample weights. One call serves all levels, heads and points; nothing of size
``queries × points × channels`` is ever materialised, and no loop runs over levels, queries or
points.

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
    """Deformable attention sampling, fused over levels, heads and points.

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

    # Coordinates and weights in float32 at least: a bfloat16 pixel coordinate is off by up to a pixel.
    dtype, device = torch.promote_types(value.dtype, torch.float32), value.device
    index_type = torch.int32 if n * heads * length < 2**31 else torch.int64  # int32 halves the index traffic

    def per_sample(per_level: list, kind=dtype) -> torch.Tensor:
        """One entry per level, repeated for its points: ``(L·P,)``, the sample axis."""
        return torch.tensor(per_level, dtype=kind, device=device).repeat_interleave(points)

    widths, heights = per_sample([w for _, w in shapes]), per_sample([h for h, _ in shapes])

    def neighbours(locations: torch.Tensor, size: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Along one axis, ``(N, Q, M, 1, L·P)`` locations → the two neighbouring pixel indices and
        their bilinear weights, ``(N, Q, M, 2, L·P)`` each. A neighbour outside the level weighs 0
        (zero padding) and its index is clamped into the level (it is read, then ignored)."""
        pixel = locations * size - 0.5  # centres on integers, as the compiled op computes it
        low = pixel.floor()
        high_weight = pixel - low
        index = torch.cat((low, low + 1), -2)
        inside = (index >= 0) & (index < size)
        weight = torch.cat((1 - high_weight, high_weight), -2) * inside
        return torch.minimum(index.clamp_(min=0), size - 1).to(index_type), weight

    locations = sampling_locations.to(dtype).reshape(n, queries, heads, 1, levels * points, 2)
    column, column_weight = neighbours(locations[..., 0], widths)
    row, row_weight = neighbours(locations[..., 1], heights)
    # The table holds value (b, s, m) at row (b·M + m)·S + s: level l's pixel (y, x) of head m is
    # row (b·M + m)·S + start_l + y·W_l + x.
    table = value.permute(0, 2, 1, 3).reshape(n * heads * length, channels)
    first_rows = ((torch.arange(n, device=device)[:, None] * heads + torch.arange(heads, device=device)) * length).to(index_type)
    row_starts = row * per_sample([w for _, w in shapes], index_type) + (first_rows[:, None, :, None, None] + per_sample(starts, index_type))
    row_weight = row_weight * attention_weights.to(dtype).reshape(n, queries, heads, 1, levels * points)
    # Each (query, head) output: one weighted sum over 2 rows × 2 columns × levels × points.
    rows = (row_starts[..., :, None, :] + column[..., None, :, :]).view(n * queries * heads, -1)
    weights = (row_weight[..., :, None, :] * column_weight[..., None, :, :]).to(value.dtype).view(n * queries * heads, -1)
    output = F.embedding_bag(rows, table, per_sample_weights=weights, mode="sum")
    return output.view(n, queries, heads * channels)


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
        logits = self.attention_weights(query).view(n, queries, self.n_heads, self.n_levels * self.n_points)
        # softmax over each head's levels × points, written out: torch's kernel is several times
        # slower on such a short last axis (12 upstream)
        exp = (logits - logits.amax(-1, keepdim=True)).exp()
        weights = (exp / exp.sum(-1, keepdim=True)).view(n, queries, self.n_heads, self.n_levels, self.n_points)
        normalizer = torch.tensor([(w, h) for h, w in _level_shapes(spatial_shapes)], dtype=query.dtype, device=query.device)
        locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
        return self.output_proj(ms_deform_attn(value, spatial_shapes, level_start_index, locations, weights))
