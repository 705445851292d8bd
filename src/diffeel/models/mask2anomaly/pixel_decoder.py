"""Mask2Former's ``MSDeformAttnPixelDecoder`` in plain PyTorch (official module and key names).

- ``input_proj.{0,1,2}``: 1×1 convolution (with bias) + GroupNorm for res5, res4, res3 (coarsest
  first: level 0 is res5);
- ``transformer``: ``level_embed`` ``(3, d)`` and ``encoder.layers.{i}``: post-norm deformable
  self-attention over the three levels (``self_attn`` = :class:`MSDeformAttn`, ``norm1``), then
  the FFN ``linear1`` → ReLU → ``linear2`` (``norm2``). Queries carry the sine position embedding
  plus the level embedding; each query's reference point is its own pixel centre, the same
  normalised point on every level;
- one FPN level from res2: ``adapter_1`` (1×1, no bias, GroupNorm) plus the encoded res3 level
  upsampled bilinearly, then ``layer_1`` (3×3, no bias, GroupNorm, ReLU);
- ``mask_features``: 1×1 convolution (with bias) of that stride-4 map.

Returns the mask features and the three encoded levels (res5, res4, res3) for the transformer
decoder. Under float16 autocast it runs in float32, as the official module does.
"""

from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F
from torch import nn

from .backbone import Conv2dNorm
from .deform_attn import MSDeformAttn

ENCODER_FEATURES = ("res5", "res4", "res3")  # coarsest first: the order of the encoder's levels


def sine_position_embedding(x: torch.Tensor, num_feats: int, temperature: float = 10000.0) -> torch.Tensor:
    """DETR's normalised sine embedding of an unpadded ``(N, *, H, W)`` map: ``(N, 2·num_feats, H, W)``,
    the ``y`` half first. Row ``i`` sits at ``2π·(i + 1)/(H + 1e-6)``; channel pairs ``(2k, 2k + 1)``
    are ``sin`` / ``cos`` of that angle over ``temperature^(2k / num_feats)``."""
    n, _, h, w = x.shape
    device = x.device
    scale = 2 * torch.pi
    y = torch.arange(1, h + 1, dtype=torch.float32, device=device).view(1, h, 1).expand(n, h, w)
    x_ = torch.arange(1, w + 1, dtype=torch.float32, device=device).view(1, 1, w).expand(n, h, w)
    y = y / (y[:, -1:, :] + 1e-6) * scale  # the last row's count (float32) plus eps, as upstream
    x_ = x_ / (x_[:, :, -1:] + 1e-6) * scale
    dim = torch.arange(num_feats, dtype=torch.float32, device=device)
    dim = temperature ** (2 * torch.div(dim, 2, rounding_mode="floor") / num_feats)

    def embed(position: torch.Tensor) -> torch.Tensor:
        angles = position[..., None] / dim
        return torch.stack((angles[..., 0::2].sin(), angles[..., 1::2].cos()), dim=4).flatten(3)

    return torch.cat((embed(y), embed(x_)), dim=3).permute(0, 3, 1, 2)


class MSDeformAttnEncoderLayer(nn.Module):
    def __init__(self, d_model: int, d_ffn: int, n_levels: int, n_heads: int, n_points: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = MSDeformAttn(d_model, n_levels, n_heads, n_points)
        self.dropout1 = nn.Dropout(dropout)
        self.norm1 = nn.LayerNorm(d_model)
        self.linear1 = nn.Linear(d_model, d_ffn)
        self.dropout2 = nn.Dropout(dropout)
        self.linear2 = nn.Linear(d_ffn, d_model)
        self.dropout3 = nn.Dropout(dropout)
        self.norm2 = nn.LayerNorm(d_model)

    def forward(self, src, pos, reference_points, spatial_shapes, level_start_index):
        # In-place steps only on fresh tensors whose values no backward pass needs (the outputs of
        # linear layers): they spare a memory round trip each.
        attended = self.dropout1(self.self_attn(src + pos, reference_points, src, spatial_shapes, level_start_index))
        src = self.norm1(attended.add_(src))
        return self.norm2(self.dropout3(self.linear2(self.dropout2(F.relu(self.linear1(src), inplace=True)))).add_(src))


class MSDeformAttnEncoder(nn.Module):
    def __init__(self, layers: list[MSDeformAttnEncoderLayer]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    @staticmethod
    def reference_points(spatial_shapes, device) -> torch.Tensor:
        """``(1, S, L, 2)``: each position's pixel centre ``((j + 0.5)/W, (i + 0.5)/H)``, repeated per level."""
        points = []
        for h, w in spatial_shapes:
            y = (torch.arange(h, dtype=torch.float32, device=device) + 0.5) / h
            x = (torch.arange(w, dtype=torch.float32, device=device) + 0.5) / w
            points.append(torch.stack((x.view(1, w).expand(h, w), y.view(h, 1).expand(h, w)), -1).reshape(-1, 2))
        return torch.cat(points, 0)[None, :, None, :].expand(1, -1, len(spatial_shapes), 2)

    def forward(self, src, spatial_shapes, level_start_index, pos):
        reference_points = self.reference_points(spatial_shapes, src.device)
        for layer in self.layers:
            src = layer(src, pos, reference_points, spatial_shapes, level_start_index)
        return src


class MSDeformAttnTransformerEncoderOnly(nn.Module):
    def __init__(self, d_model: int, n_heads: int, num_layers: int, d_ffn: int, n_levels: int, n_points: int, dropout: float = 0.0):
        super().__init__()
        self.level_embed = nn.Parameter(torch.empty(n_levels, d_model))
        self.encoder = MSDeformAttnEncoder([MSDeformAttnEncoderLayer(d_model, d_ffn, n_levels, n_heads, n_points, dropout)
                                            for _ in range(num_layers)])
        for parameter in self.encoder.parameters():
            if parameter.dim() > 1:
                nn.init.xavier_uniform_(parameter)
        for module in self.modules():
            if isinstance(module, MSDeformAttn):
                module.reset_parameters()
        nn.init.normal_(self.level_embed)

    def forward(self, srcs: list[torch.Tensor], pos_embeds: list[torch.Tensor]):
        """Encode the levels; returns ``(memory (N, S, C), spatial_shapes, level_start_index)``."""
        shapes = [tuple(src.shape[-2:]) for src in srcs]
        src_flat = torch.cat([src.flatten(2).transpose(1, 2) for src in srcs], 1)
        pos_flat = torch.cat([pos.flatten(2).transpose(1, 2) + self.level_embed[level].view(1, 1, -1)
                              for level, pos in enumerate(pos_embeds)], 1)
        starts = [0]
        for h, w in shapes[:-1]:
            starts.append(starts[-1] + h * w)
        return self.encoder(src_flat, shapes, starts, pos_flat), shapes, starts


class MSDeformAttnPixelDecoder(nn.Module):
    """``forward({"res2".."res5"}) -> (mask_features (N, mask_dim, H/4, W/4), [res5, res4, res3] encoded)``."""

    def __init__(self, in_channels: dict[str, int], conv_dim: int = 256, mask_dim: int = 256, *, nheads: int = 8,
                 enc_layers: int = 6, dim_feedforward: int = 1024, n_points: int = 4, norm_groups: int = 32, dropout: float = 0.0):
        super().__init__()
        self.conv_dim = conv_dim
        self.input_proj = nn.ModuleList()
        for name in ENCODER_FEATURES:
            projection = nn.Sequential(nn.Conv2d(in_channels[name], conv_dim, 1), nn.GroupNorm(norm_groups, conv_dim))
            nn.init.xavier_uniform_(projection[0].weight)
            nn.init.zeros_(projection[0].bias)
            self.input_proj.append(projection)
        self.transformer = MSDeformAttnTransformerEncoderOnly(conv_dim, nheads, enc_layers, dim_feedforward,
                                                              len(ENCODER_FEATURES), n_points, dropout)
        self.mask_features = nn.Conv2d(conv_dim, mask_dim, 1)
        self.adapter_1 = Conv2dNorm(in_channels["res2"], conv_dim, 1, bias=False, norm=nn.GroupNorm(norm_groups, conv_dim))
        self.layer_1 = Conv2dNorm(conv_dim, conv_dim, 3, padding=1, bias=False, norm=nn.GroupNorm(norm_groups, conv_dim), activation=F.relu)
        for conv in (self.mask_features, self.adapter_1, self.layer_1):  # detectron2's c2_xavier_fill
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def forward(self, features: dict[str, torch.Tensor]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        device_type = features["res2"].device.type
        # Under float16 autocast the decoder runs in float32, as upstream (whose compiled op has
        # no half kernel; float16's range is also short for the encoder's sums). bfloat16 has
        # float32's range, so a bfloat16 autocast is followed.
        half = torch.is_autocast_enabled(device_type) and torch.get_autocast_dtype(device_type) == torch.float16
        with torch.autocast(device_type=device_type, enabled=False) if half else contextlib.nullcontext():
            srcs, pos = [], []
            for index, name in enumerate(ENCODER_FEATURES):
                x = features[name].float() if half else features[name]
                srcs.append(self.input_proj[index](x))
                pos.append(sine_position_embedding(x, self.conv_dim // 2))
            memory, shapes, starts = self.transformer(srcs, pos)
            # each level back to (N, C, h, w): a channels-last view of the tokens, no copy
            levels = [memory[:, start:start + h * w].unflatten(1, (h, w)).permute(0, 3, 1, 2) for (h, w), start in zip(shapes, starts)]
            lateral = self.adapter_1(features["res2"].float() if half else features["res2"])
            upsampled = F.interpolate(levels[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False)
            fine = self.layer_1(upsampled.add_(lateral))
            return self.mask_features(fine), levels
