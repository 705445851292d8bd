"""Mask2Anomaly's transformer decoder (``MultiScaleMaskedTransformerDecoder_GMA``) in plain PyTorch.

Mask2Former's masked-attention decoder with Mask2Anomaly's *global* mask attention: each
cross-attention layer has two attentions over the same memory, ``multihead_attn_foreground``
(a query may attend where the sigmoid of its current mask is ≥ 0.5: positions with sigmoid
``< 0.5`` are blocked) and ``multihead_attn_background`` (positions with sigmoid ``> 0.5`` are
blocked); their outputs are summed, added to the queries and layer-normed. A query whose mask
blocks every position of a level attends everywhere instead (per attention, head and query).
Each cross-attention layer also owns ``fusion_layer`` (Conv2d(2Q, Q, 1); 200 → 100 upstream),
which the official forward never calls but the released checkpoint holds.

Per layer ``i`` (9 layers): cross-attention on level ``i mod 3`` (res5, res4, res3 of the pixel
decoder, each with its sine position embedding on the keys and ``level_embed`` added to the
memory), then self-attention, then the FFN; all post-norm, queries carrying ``query_embed`` as
their position. Before the first layer and after every layer the prediction heads run on
``decoder_norm(queries)``: ``class_embed`` (``num_classes + 1`` logits) and ``mask_embed``
(3-layer MLP) dotted with the mask features; the masks, bilinearly resized to the next layer's
level, give that layer's attention masks. 10 prediction sets in all.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .pixel_decoder import sine_position_embedding

NUM_FEATURE_LEVELS = 3


def _xavier(module: nn.Module) -> None:
    for parameter in module.parameters():
        if parameter.dim() > 1:
            nn.init.xavier_uniform_(parameter)


def multihead_attention(attention: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        mask: torch.Tensor | None = None) -> torch.Tensor:
    """``nn.MultiheadAttention``'s forward (sequence first: ``(L, N, E)`` queries, ``(S, N, E)``
    keys and values) with its own parameters, but ``mask`` is additive and broadcast over heads:
    ``(N, 1, L, S)`` (``-inf`` where blocked) instead of a boolean mask repeated for each head,
    which the module would expand to ``N·heads`` copies and convert to floats on every call."""
    length, n, embed = query.shape
    heads = attention.num_heads
    w_q, w_k, w_v = attention.in_proj_weight.chunk(3)
    b_q, b_k, b_v = attention.in_proj_bias.chunk(3)

    def split_heads(x: torch.Tensor) -> torch.Tensor:  # (L, N, E) → (N, heads, L, E / heads)
        return x.view(x.shape[0], n, heads, embed // heads).permute(1, 2, 0, 3)

    q, k, v = split_heads(F.linear(query, w_q, b_q)), split_heads(F.linear(key, w_k, b_k)), split_heads(F.linear(value, w_v, b_v))
    dropout = attention.dropout if attention.training else 0.0
    if mask is not None and mask.dtype != q.dtype:  # under autocast
        mask = mask.to(q.dtype)
    attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout)  # (N, heads, L, E / heads)
    return attention.out_proj(attended.permute(2, 0, 1, 3).reshape(length, n, embed))


class SelfAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, dropout: float = 0.0):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        _xavier(self)

    def forward(self, tgt: torch.Tensor, query_pos: torch.Tensor) -> torch.Tensor:
        q = k = tgt + query_pos
        return self.norm(self.dropout(multihead_attention(self.self_attn, q, k, tgt)).add_(tgt))


class GlobalCrossAttentionLayer(nn.Module):
    def __init__(self, d_model: int, nhead: int, num_queries: int = 100, dropout: float = 0.0):
        super().__init__()
        self.multihead_attn_foreground = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.multihead_attn_background = nn.MultiheadAttention(d_model, nhead, dropout=dropout)
        self.norm = nn.LayerNorm(d_model)
        self.dropout = nn.Dropout(dropout)
        self.fusion_layer = nn.Conv2d(2 * num_queries, num_queries, kernel_size=1)  # in the checkpoint, unused
        self.fusion_layer.requires_grad_(False)  # never in the forward: no gradient to wait for (DDP) or to apply
        _xavier(self)

    def forward(self, tgt, memory, foreground_mask, background_mask, pos, query_pos) -> torch.Tensor:
        """Masks: additive, ``(N, 1, Q, S)`` (:meth:`GlobalMaskTransformerDecoder.attention_masks`)."""
        query, key = tgt + query_pos, memory + pos
        foreground = multihead_attention(self.multihead_attn_foreground, query, key, memory, foreground_mask)
        background = multihead_attention(self.multihead_attn_background, query, key, memory, background_mask)
        return self.norm(self.dropout(background.add_(foreground)).add_(tgt))


class FFNLayer(nn.Module):
    def __init__(self, d_model: int, dim_feedforward: int = 2048, dropout: float = 0.0):
        super().__init__()
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.dropout = nn.Dropout(dropout)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm = nn.LayerNorm(d_model)
        _xavier(self)

    def forward(self, tgt: torch.Tensor) -> torch.Tensor:
        return self.norm(self.dropout(self.linear2(self.dropout(F.relu(self.linear1(tgt), inplace=True)))).add_(tgt))


class MLP(nn.Module):
    def __init__(self, input_dim: int, hidden_dim: int, output_dim: int, num_layers: int):
        super().__init__()
        dims = [input_dim] + [hidden_dim] * (num_layers - 1)
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dims, dims[1:] + [output_dim]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for index, layer in enumerate(self.layers):
            x = layer(x) if index == len(self.layers) - 1 else F.relu(layer(x))
        return x


def _additive_mask(blocked: torch.Tensor) -> torch.Tensor:
    """Blocked positions ``(N, Q, S)`` → an additive attention mask ``(N, 1, Q, S)`` (``-inf`` where
    blocked), except that a query blocked everywhere attends everywhere instead."""
    blocked = blocked & ~blocked.all(-1, keepdim=True)
    mask = torch.zeros(blocked.shape, dtype=torch.float32, device=blocked.device)
    return mask.masked_fill_(blocked, float("-inf")).unsqueeze(1)


class GlobalMaskTransformerDecoder(nn.Module):
    """``forward([res5, res4, res3] features, mask_features) -> {"pred_logits", "pred_masks", "aux_outputs"}``."""

    def __init__(self, in_channels: int = 256, num_classes: int = 19, *, hidden_dim: int = 256, num_queries: int = 100,
                 nheads: int = 8, dim_feedforward: int = 2048, dec_layers: int = 9, mask_dim: int = 256):
        super().__init__()
        if in_channels != hidden_dim:
            raise ValueError(f"the decoder's input channels ({in_channels}) must equal hidden_dim ({hidden_dim}): "
                             "Mask2Anomaly's checkpoint has no input projections")
        self.num_heads = nheads
        self.num_layers = dec_layers
        self.hidden_dim = hidden_dim
        self.transformer_self_attention_layers = nn.ModuleList(SelfAttentionLayer(hidden_dim, nheads) for _ in range(dec_layers))
        self.transformer_cross_attention_layers = nn.ModuleList(
            GlobalCrossAttentionLayer(hidden_dim, nheads, num_queries) for _ in range(dec_layers))
        self.transformer_ffn_layers = nn.ModuleList(FFNLayer(hidden_dim, dim_feedforward) for _ in range(dec_layers))
        self.decoder_norm = nn.LayerNorm(hidden_dim)
        self.num_queries = num_queries
        self.query_feat = nn.Embedding(num_queries, hidden_dim)
        self.query_embed = nn.Embedding(num_queries, hidden_dim)
        self.level_embed = nn.Embedding(NUM_FEATURE_LEVELS, hidden_dim)
        self.input_proj = nn.ModuleList(nn.Sequential() for _ in range(NUM_FEATURE_LEVELS))  # identities: no keys
        self.class_embed = nn.Linear(hidden_dim, num_classes + 1)
        self.mask_embed = MLP(hidden_dim, hidden_dim, mask_dim, 3)

    def prediction_heads(self, output: torch.Tensor, mask_features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Queries ``(Q, N, C)`` → class logits ``(N, Q, K + 1)`` and mask logits ``(N, Q, H/4, W/4)``."""
        decoded = self.decoder_norm(output).transpose(0, 1)
        n, channels, height, width = mask_features.shape
        # (N, C, H·W) as a view in either memory layout (channels-last: a transposed operand of the product)
        if mask_features.is_contiguous():
            pixels = mask_features.flatten(2)
        else:
            pixels = mask_features.permute(0, 2, 3, 1).reshape(n, -1, channels).transpose(1, 2)
        masks = torch.bmm(self.mask_embed(decoded), pixels).view(n, -1, height, width)
        return self.class_embed(decoded), masks

    def attention_masks(self, masks: torch.Tensor, size) -> tuple[torch.Tensor, torch.Tensor]:
        """Additive masks ``(N, 1, Q, h·w)`` of the foreground attention (blocked where the
        sigmoid of the mask, resized to the level, is < 0.5) and the background attention (> 0.5);
        one for all heads."""
        probability = F.interpolate(masks, size=size, mode="bilinear", align_corners=False).sigmoid().flatten(2)
        return _additive_mask(probability < 0.5), _additive_mask(probability > 0.5)

    def forward(self, features: list[torch.Tensor], mask_features: torch.Tensor) -> dict:
        if len(features) != NUM_FEATURE_LEVELS:
            raise ValueError(f"the transformer decoder takes {NUM_FEATURE_LEVELS} feature levels, got {len(features)}")
        src, pos, sizes = [], [], []
        for level, x in enumerate(features):
            sizes.append(tuple(x.shape[-2:]))
            pos.append(sine_position_embedding(x, self.hidden_dim // 2).flatten(2).permute(2, 0, 1))
            src.append((self.input_proj[level](x).flatten(2) + self.level_embed.weight[level][None, :, None]).permute(2, 0, 1))
        n = src[0].shape[1]
        query_pos = self.query_embed.weight.unsqueeze(1).repeat(1, n, 1)
        output = self.query_feat.weight.unsqueeze(1).repeat(1, n, 1)

        classes, masks = self.prediction_heads(output, mask_features)
        predictions = [(classes, masks)]
        for i in range(self.num_layers):
            level = i % NUM_FEATURE_LEVELS
            foreground, background = self.attention_masks(masks, sizes[level])
            output = self.transformer_cross_attention_layers[i](output, src[level], foreground, background, pos[level], query_pos)
            output = self.transformer_self_attention_layers[i](output, query_pos)
            output = self.transformer_ffn_layers[i](output)
            classes, masks = self.prediction_heads(output, mask_features)
            predictions.append((classes, masks))
        return {
            "pred_logits": predictions[-1][0],
            "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]],
        }
