"""Mask2Anomaly's forward computed the way the official code computes it, on a diffeel model's modules.

The baseline of ``host_bench.py --model mask2anomaly_r50``. It reads the same parameters as
:class:`diffeel.models.mask2anomaly.Mask2Anomaly` and follows the upstream operations step by step
(``MSDeformAttnPixelDecoder.forward_features``, ``ms_deform_attn_core_pytorch`` — the fallback the
official code takes when its CUDA operator is missing, one ``grid_sample`` per level — and
``MultiScaleMaskedTransformerDecoder_GMA.forward``): ``nn.MultiheadAttention`` modules called with
one boolean mask per head and ``need_weights`` left on, masks recomputed for each attention,
out-of-place residuals, ``torch.einsum`` for the masks, prediction heads (and their attention
masks) after the last layer too. The backbone is diffeel's, whose operations are detectron2's
(in-place ReLU and residual sums, ``F.batch_norm`` for the frozen norms).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from diffeel.models.mask2anomaly.pixel_decoder import ENCODER_FEATURES, MSDeformAttnEncoder, sine_position_embedding


def ms_deform_attn_core(value, spatial_shapes, sampling_locations, attention_weights):
    """Deformable attention sampling one level at a time (the official pure-PyTorch fallback)."""
    n, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = sampling_locations.shape
    value_list = value.split([h * w for h, w in spatial_shapes], dim=1)
    grids = 2 * sampling_locations - 1
    sampled = []
    for level, (h, w) in enumerate(spatial_shapes):
        level_value = value_list[level].flatten(2).transpose(1, 2).reshape(n * heads, channels, h, w)
        level_grid = grids[:, :, :, level].transpose(1, 2).flatten(0, 1)
        sampled.append(F.grid_sample(level_value, level_grid, mode="bilinear", padding_mode="zeros", align_corners=False))
    attention_weights = attention_weights.transpose(1, 2).reshape(n * heads, 1, queries, levels * points)
    output = (torch.stack(sampled, dim=-2).flatten(-2) * attention_weights).sum(-1).view(n, heads * channels, queries)
    return output.transpose(1, 2).contiguous()


def deformable_attention(module, query, reference_points, input_flatten, spatial_shapes):
    n, queries, _ = query.shape
    value = module.value_proj(input_flatten).view(n, input_flatten.shape[1], module.n_heads, module.d_model // module.n_heads)
    offsets = module.sampling_offsets(query).view(n, queries, module.n_heads, module.n_levels, module.n_points, 2)
    weights = module.attention_weights(query).view(n, queries, module.n_heads, module.n_levels * module.n_points)
    weights = F.softmax(weights, -1).view(n, queries, module.n_heads, module.n_levels, module.n_points)
    normalizer = torch.tensor([(w, h) for h, w in spatial_shapes], dtype=query.dtype)
    locations = reference_points[:, :, None, :, None, :] + offsets / normalizer[None, None, None, :, None, :]
    return module.output_proj(ms_deform_attn_core(value, spatial_shapes, locations, weights))


def as_float(x):
    return x if x.dtype == torch.float64 else x.float()


def pixel_decoder_forward(decoder, features):
    srcs, pos = [], []
    for index, name in enumerate(ENCODER_FEATURES):
        x = as_float(features[name])
        srcs.append(decoder.input_proj[index](x))
        pos.append(sine_position_embedding(x, decoder.conv_dim // 2))
    transformer = decoder.transformer
    shapes = [tuple(src.shape[-2:]) for src in srcs]
    src = torch.cat([s.flatten(2).transpose(1, 2) for s in srcs], 1)
    position = torch.cat([p.flatten(2).transpose(1, 2) + transformer.level_embed[level].view(1, 1, -1) for level, p in enumerate(pos)], 1)
    reference_points = MSDeformAttnEncoder.reference_points(shapes, src.device)
    for layer in transformer.encoder.layers:
        attended = deformable_attention(layer.self_attn, src + position, reference_points, src, shapes)
        src = layer.norm1(src + layer.dropout1(attended))
        src = layer.norm2(src + layer.dropout3(layer.linear2(layer.dropout2(F.relu(layer.linear1(src))))))
    n = src.shape[0]
    levels = [level.transpose(1, 2).view(n, -1, h, w) for level, (h, w) in zip(src.split([h * w for h, w in shapes], dim=1), shapes)]
    lateral = decoder.adapter_1(as_float(features["res2"]))
    fine = decoder.layer_1(lateral + F.interpolate(levels[-1], size=lateral.shape[-2:], mode="bilinear", align_corners=False))
    return decoder.mask_features(fine), levels


def prediction_heads(predictor, output, mask_features, size):
    decoded = predictor.decoder_norm(output).transpose(0, 1)
    classes = predictor.class_embed(decoded)
    masks = torch.einsum("bqc,bchw->bqhw", predictor.mask_embed(decoded), mask_features)
    resized = F.interpolate(masks, size=size, mode="bilinear", align_corners=False)
    foreground = (resized.sigmoid().flatten(2).unsqueeze(1).repeat(1, predictor.num_heads, 1, 1).flatten(0, 1) < 0.5).bool()
    background = (resized.sigmoid().flatten(2).unsqueeze(1).repeat(1, predictor.num_heads, 1, 1).flatten(0, 1) > 0.5).bool()
    return classes, masks, foreground, background


def decoder_forward(predictor, features, mask_features):
    src, pos, sizes = [], [], []
    for level, x in enumerate(features):
        sizes.append(x.shape[-2:])
        pos.append(sine_position_embedding(x, predictor.hidden_dim // 2).flatten(2).permute(2, 0, 1))
        src.append((predictor.input_proj[level](x).flatten(2) + predictor.level_embed.weight[level][None, :, None]).permute(2, 0, 1))
    n = src[0].shape[1]
    query_pos = predictor.query_embed.weight.unsqueeze(1).repeat(1, n, 1)
    output = predictor.query_feat.weight.unsqueeze(1).repeat(1, n, 1)
    classes, masks, foreground, background = prediction_heads(predictor, output, mask_features, sizes[0])
    predictions = [(classes, masks)]
    for i in range(predictor.num_layers):
        level = i % len(features)
        foreground[torch.where(foreground.sum(-1) == foreground.shape[-1])] = False
        background[torch.where(background.sum(-1) == background.shape[-1])] = False
        cross = predictor.transformer_cross_attention_layers[i]
        query, key = output + query_pos, src[level] + pos[level]
        attended = (cross.multihead_attn_background(query, key, value=src[level], attn_mask=background)[0]
                    + cross.multihead_attn_foreground(query, key, value=src[level], attn_mask=foreground)[0])
        output = cross.norm(output + cross.dropout(attended))
        attention = predictor.transformer_self_attention_layers[i]
        q = k = output + query_pos
        output = attention.norm(output + attention.dropout(attention.self_attn(q, k, value=output)[0]))
        ffn = predictor.transformer_ffn_layers[i]
        output = ffn.norm(output + ffn.dropout(ffn.linear2(ffn.dropout(F.relu(ffn.linear1(output))))))
        classes, masks, foreground, background = prediction_heads(predictor, output, mask_features, sizes[(i + 1) % len(features)])
        predictions.append((classes, masks))
    return {"pred_logits": predictions[-1][0], "pred_masks": predictions[-1][1],
            "aux_outputs": [{"pred_logits": c, "pred_masks": m} for c, m in predictions[:-1]]}


def official_style_forward(model, images):
    """``model(images)``'s ``pred_logits``, ``pred_masks`` and ``aux_outputs``, computed as upstream does."""
    features = model.backbone(model.preprocess(images))
    mask_features, levels = pixel_decoder_forward(model.sem_seg_head.pixel_decoder, features)
    return decoder_forward(model.sem_seg_head.predictor, levels, mask_features)
