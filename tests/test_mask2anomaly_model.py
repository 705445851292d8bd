"""Mask2Anomaly's host: official key names and shapes, strict checkpoint loading, the fused
deformable-attention core against a naive per-point reference, input padding / cropping, and the
torchvision → detectron2 backbone converter.

``data/mask2anomaly_keys.txt`` lists the official model's state dict (key, shape; in order). It
was generated once by instantiating the official modules (detectron2's ``ResNet`` with
``FrozenBN``, Mask2Former's ``MSDeformAttnPixelDecoder`` and Mask2Anomaly's
``MultiScaleMaskedTransformerDecoder_GMA``, with only detectron2's registries, config decorator
and weight initialisers stubbed) at the Cityscapes anomaly configuration, plus SetCriterion's
``criterion.empty_weight``.
"""

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from diffeel.errors import DiffeelError
from diffeel.models.checkpoints import load_state, save_state
from diffeel.models.mask2anomaly import (
    PIXEL_MEAN,
    Mask2Anomaly,
    MSDeformAttn,
    ResNet,
    load_backbone_weights,
    mask2anomaly_state,
    ms_deform_attn,
    torchvision_resnet50_to_detectron2,
    upsample_masks,
)
from diffeel.models.mask2anomaly.pixel_decoder import sine_position_embedding
from diffeel.models.mask2anomaly.transformer_decoder import GlobalMaskTransformerDecoder, multihead_attention
from diffeel.models.loading import load_strict

DATA = Path(__file__).parent / "data"
TINY = dict(hidden_dim=16, num_queries=5, nheads=2, dec_layers=4, dim_feedforward=32, enc_layers=1,
            enc_dim_feedforward=32, enc_points=2, width_divisor=16, norm_groups=2)


def official_keys() -> dict[str, str]:
    return dict(line.split() for line in (DATA / "mask2anomaly_keys.txt").read_text().splitlines())


def shapes(state: dict) -> dict[str, str]:
    return {key: "x".join(map(str, value.shape)) or "scalar" for key, value in state.items()}


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Random values in every tensor (positive variances) so that each entry matters."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, tensor in list(model.named_parameters()) + list(model.named_buffers()):
            if name in ("pixel_mean", "pixel_std"):
                continue
            noise = torch.randn(tensor.shape, generator=generator)
            if name.endswith("running_var"):
                tensor.copy_(0.5 + noise.abs())
            elif name.startswith("backbone") and name.endswith("norm.weight"):
                tensor.copy_(0.5 + 0.1 * noise)
            else:
                tensor.add_(0.1 * noise)
    return model


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomised(Mask2Anomaly(**TINY)).eval()


def images(n=2, h=70, w=90, seed=1):
    return torch.rand(n, 3, h, w, generator=torch.Generator().manual_seed(seed)) * 255


# --- key names and strict loading -------------------------------------------------------------

def test_full_size_model_has_the_official_keys_and_shapes():
    official = official_keys()
    assert len(official) == 612 and official["criterion.empty_weight"] == "20"
    with torch.device("meta"):
        model = Mask2Anomaly()
    state = model.state_dict()
    assert shapes(state) == {key: shape for key, shape in official.items() if key != "criterion.empty_weight"}
    assert list(state) == [key for key in official if key != "criterion.empty_weight"]  # same order too
    assert sum(p.numel() for p in model.parameters()) == 46_503_992
    assert official["sem_seg_head.predictor.transformer_cross_attention_layers.8.fusion_layer.weight"] == "100x200x1x1"
    assert not any(p.requires_grad for p in model.backbone.parameters())  # FREEZE_AT 5


def test_tiny_model_keeps_every_key_name(tiny):
    """Same names in the same order; only the layers beyond the tiny model's counts are absent."""
    extra_decoder = tuple(f"layers.{i}." for i in range(TINY["dec_layers"], 9))
    extra_encoder = tuple(f"encoder.layers.{i}." for i in range(TINY["enc_layers"], 6))
    expected = [key for key in official_keys() if key != "criterion.empty_weight"
                and not (key.startswith("sem_seg_head.predictor.") and any(part in key for part in extra_decoder))
                and not any(part in key for part in extra_encoder)]
    assert list(tiny.state_dict()) == expected


def official_file(model: torch.nn.Module) -> dict:
    """A checkpoint laid out as the released model_final.pth: {'model': {...}} with the criterion's buffer."""
    state = dict(model.state_dict())
    state["criterion.empty_weight"] = torch.cat([torch.ones(model.num_classes), torch.tensor([0.1])])
    return {"model": state, "iteration": 4999}


def test_tiny_checkpoint_round_trips_strictly(tiny, tmp_path):
    path = tmp_path / "model_final.pth"
    save_state(path, official_file(tiny))
    state = load_state(path)["model"]
    torch.manual_seed(5)
    fresh = Mask2Anomaly(**TINY)
    load_strict(fresh, mask2anomaly_state(state, fresh), path, "mask2anomaly")
    for key, value in tiny.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key
    x = images(1, 64, 64)
    with torch.no_grad():
        assert torch.equal(fresh.eval()(x)["pred_masks"], tiny(x)["pred_masks"])


def test_missing_unexpected_and_misshaped_keys_are_named(tiny):
    fresh = Mask2Anomaly(**TINY)
    state = official_file(tiny)["model"]

    missing = dict(state)
    del missing["sem_seg_head.pixel_decoder.transformer.level_embed"]
    with pytest.raises(DiffeelError, match=r"'sem_seg_head\.pixel_decoder\.transformer\.level_embed' is missing"):
        load_strict(fresh, mask2anomaly_state(missing, fresh), "f.pth", "mask2anomaly")

    fusion = dict(state)  # the unused fusion layers are part of the official model: required
    del fusion["sem_seg_head.predictor.transformer_cross_attention_layers.0.fusion_layer.bias"]
    with pytest.raises(DiffeelError, match=r"fusion_layer\.bias' is missing"):
        load_strict(fresh, mask2anomaly_state(fusion, fresh), "f.pth", "mask2anomaly")

    unexpected = dict(state)
    unexpected["sem_seg_head.predictor.static_query.weight"] = torch.zeros(5, 16)
    with pytest.raises(DiffeelError, match=r"'sem_seg_head\.predictor\.static_query\.weight' is unexpected"):
        load_strict(fresh, mask2anomaly_state(unexpected, fresh), "f.pth", "mask2anomaly")

    criterion = dict(state)  # only the known-unused entries are dropped, not the whole criterion
    criterion["criterion.matcher.cost"] = torch.zeros(1)
    with pytest.raises(DiffeelError, match=r"'criterion\.matcher\.cost' is unexpected"):
        load_strict(fresh, mask2anomaly_state(criterion, fresh), "f.pth", "mask2anomaly")

    misshaped = dict(state)
    misshaped["sem_seg_head.predictor.class_embed.weight"] = torch.zeros(7, 16)
    with pytest.raises(DiffeelError, match=r"class_embed\.weight' has shape \[7, 16\] in the file but \[20, 16\]"):
        load_strict(fresh, mask2anomaly_state(misshaped, fresh), "f.pth", "mask2anomaly")


def test_known_unused_upstream_entries_and_prefixes_are_accepted(tiny):
    fresh = Mask2Anomaly(**TINY)
    state = official_file(tiny)["model"]
    # newer detectron2 keeps BatchNorm's counters when freezing; DDP saves add ``module.``
    state.update({key.replace(".norm.weight", ".norm.num_batches_tracked"): torch.tensor(7)
                  for key in list(state) if key.startswith("backbone.") and key.endswith(".norm.weight")})
    state = {"module." + key: value for key, value in state.items()}
    converted = mask2anomaly_state(state, fresh)
    assert "criterion.empty_weight" not in converted
    assert not any(key.endswith("num_batches_tracked") for key in converted)
    assert sum(key.endswith("fusion_layer.weight") for key in converted) == TINY["dec_layers"]
    load_strict(fresh, converted, "f.pth", "mask2anomaly")
    # a counter outside the backbone is not a known-unused entry
    with pytest.raises(DiffeelError, match="num_batches_tracked' is unexpected"):
        load_strict(fresh, mask2anomaly_state({**converted, "sem_seg_head.pixel_decoder.num_batches_tracked": torch.tensor(1)}, fresh),
                    "f.pth", "mask2anomaly")


# --- the deformable attention core ------------------------------------------------------------

def ms_deform_attn_reference(value, spatial_shapes, level_start_index, sampling_locations, attention_weights):
    """Naive multi-scale deformable attention, one point at a time (float64): pixel coordinates
    ``loc · size - 0.5`` (centres at integers), the four neighbours weighted bilinearly, zero
    outside the level."""
    value = value.detach().double().numpy()
    locations = sampling_locations.detach().double().numpy()
    weights = attention_weights.detach().double().numpy()
    shapes_ = [tuple(int(v) for v in s) for s in spatial_shapes]
    starts = [int(s) for s in level_start_index]
    n, _, heads, channels = value.shape
    _, queries, _, levels, points, _ = locations.shape
    out = np.zeros((n, queries, heads, channels))
    for b in range(n):
        for q in range(queries):
            for m in range(heads):
                for level in range(levels):
                    h, w = shapes_[level]
                    for p in range(points):
                        x = locations[b, q, m, level, p, 0] * w - 0.5
                        y = locations[b, q, m, level, p, 1] * h - 0.5
                        x0, y0 = math.floor(x), math.floor(y)
                        sample = np.zeros(channels)
                        for yy, wy in ((y0, 1 - (y - y0)), (y0 + 1, y - y0)):
                            for xx, wx in ((x0, 1 - (x - x0)), (x0 + 1, x - x0)):
                                if 0 <= yy < h and 0 <= xx < w:
                                    sample += wy * wx * value[b, starts[level] + yy * w + xx, m]
                        out[b, q, m] += weights[b, q, m, level, p] * sample
    return torch.from_numpy(out.reshape(n, queries, heads * channels))


def deform_inputs(level_shapes, n=2, queries=7, heads=2, channels=3, points=3, seed=0, dtype=torch.float32):
    """Random value, shapes, starts, locations (about a fifth outside the level) and weights."""
    generator = torch.Generator().manual_seed(seed)
    total = sum(h * w for h, w in level_shapes)
    starts = np.concatenate([[0], np.cumsum([h * w for h, w in level_shapes])[:-1]]).tolist()
    value = torch.randn(n, total, heads, channels, generator=generator, dtype=dtype)
    locations = torch.rand(n, queries, heads, len(level_shapes), points, 2, generator=generator, dtype=dtype) * 1.6 - 0.3
    locations[0, 0, 0, 0, 0] = torch.tensor([1.5, -0.7])  # far outside
    locations[0, 0, 0, 0, 1] = torch.tensor([1.0, 0.0])  # on the corner edge
    weights = torch.rand(n, queries, heads, len(level_shapes), points, generator=generator, dtype=dtype)
    return value, torch.tensor(level_shapes), torch.tensor(starts), locations, weights


@pytest.mark.parametrize("level_shapes", [
    [(7, 9), (4, 5), (2, 3)],         # odd sizes, finest first
    [(2, 3), (5, 4), (9, 7)],         # coarsest first, as the pixel decoder orders them, mixed aspect
    [(6, 11)],                        # one level
    [(3, 3), (1, 8), (8, 1), (5, 2)],  # four levels, degenerate strips
])
def test_ms_deform_attn_matches_the_naive_reference(level_shapes):
    inputs = deform_inputs(level_shapes)
    expected = ms_deform_attn_reference(*inputs)
    assert inside_and_outside(inputs[3])
    with torch.no_grad():
        ours = ms_deform_attn(*inputs)
    assert ours.shape == expected.shape and ours.dtype == torch.float32
    assert (ours.double() - expected).abs().max() < 1e-5
    pairs = ms_deform_attn(inputs[0], [tuple(s) for s in level_shapes], inputs[2].tolist(), *inputs[3:])  # plain sequences too
    assert (pairs.double() - expected).abs().max() < 1e-5
    double = ms_deform_attn(*(t.double() if t.is_floating_point() else t for t in inputs))
    assert (double - expected).abs().max() < 1e-12


def inside_and_outside(locations):
    outside = ((locations < 0) | (locations > 1)).any(-1)
    return bool(outside.any()) and bool((~outside).any())


def test_ms_deform_attn_gradients_match_finite_differences():
    value, level_shapes, starts, locations, weights = deform_inputs([(3, 4), (2, 2)], n=1, queries=2, heads=2, channels=2,
                                                                     points=2, dtype=torch.float64)
    value.requires_grad_(True)
    weights.requires_grad_(True)
    locations.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda v, loc, w: ms_deform_attn(v, level_shapes, starts, loc, w), (value, locations, weights))


def test_msdeformattn_module_starts_on_rays_and_samples_its_reference_point():
    attention = MSDeformAttn(d_model=8, n_levels=2, n_heads=4, n_points=3)
    offsets = attention.sampling_offsets.bias.view(4, 2, 3, 2)
    assert torch.allclose(offsets[0, 0], torch.tensor([[1.0, 0.0], [2.0, 0.0], [3.0, 0.0]]))  # head 0 looks right
    assert torch.allclose(offsets[1, 1, 0], torch.tensor([0.0, 1.0]), atol=1e-6)  # head 1 looks down (90°)
    assert torch.allclose(offsets[2, 0, 1], torch.tensor([-2.0, 0.0]), atol=1e-6)  # head 2 left, point 2 at 2 pixels
    diagonal = MSDeformAttn(d_model=8, n_levels=1, n_heads=8, n_points=1).sampling_offsets.bias.view(8, 2)
    assert torch.allclose(diagonal[1], torch.tensor([1.0, 1.0]))  # 45°, scaled onto the unit square's border
    assert torch.equal(attention.attention_weights.weight, torch.zeros(24, 8))
    # with zero offsets and one point on the pixel centre it returns the projected value there
    with torch.no_grad():
        attention.sampling_offsets.bias.zero_()
        attention.value_proj.weight.copy_(torch.eye(8))
        attention.value_proj.bias.zero_()
        attention.output_proj.weight.copy_(torch.eye(8))
        attention.output_proj.bias.zero_()
    source = torch.randn(1, 3 * 4 + 1, 8)
    reference = torch.tensor([[[[(1 + 0.5) / 4, (2 + 0.5) / 3], [0.5, 0.5]]]])  # pixel (row 2, col 1) of level 0
    result = attention(torch.zeros(1, 1, 8), reference, source, [(3, 4), (1, 1)], [0, 12])
    expected = 0.5 * source[0, 2 * 4 + 1] + 0.5 * source[0, 12]  # uniform weights over 2 levels × 3 points
    assert torch.allclose(result[0, 0], expected, atol=1e-6)


def test_sine_position_embedding_formula():
    embedding = sine_position_embedding(torch.zeros(2, 1, 3, 5), num_feats=4)
    assert embedding.shape == (2, 8, 3, 5)
    row, col = 1, 3
    y = (row + 1) / (3 + 1e-6) * 2 * math.pi
    x = (col + 1) / (5 + 1e-6) * 2 * math.pi
    expected = [math.sin(y), math.cos(y), math.sin(y / 100), math.cos(y / 100),
                math.sin(x), math.cos(x), math.sin(x / 100), math.cos(x / 100)]
    assert torch.allclose(embedding[1, :, row, col], torch.tensor(expected), atol=1e-5)


def test_global_mask_attention_masks():
    decoder = GlobalMaskTransformerDecoder(8, 3, hidden_dim=8, num_queries=3, nheads=2, dim_feedforward=16, dec_layers=1, mask_dim=8)
    masks = torch.tensor([[[[2.0, -1.0], [0.0, 3.0]], [[-1.0, -2.0], [-3.0, -4.0]], [[1.0, 1.0], [1.0, 1.0]]]])
    foreground, background = decoder.attention_masks(masks, (2, 2))
    assert foreground.shape == (1, 1, 3, 4)  # one mask for all heads
    blocked = lambda mask: (mask[0, 0] == float("-inf")).tolist()  # noqa: E731
    assert set(foreground.unique().tolist()) | set(background.unique().tolist()) == {0.0, float("-inf")}
    # query 0: attends where sigmoid ≥ 0.5 (foreground) / ≤ 0.5 (background): 0.5 itself in both
    assert blocked(foreground)[0] == [False, True, False, False]
    assert blocked(background)[0] == [True, False, False, True]
    # query 1 is everywhere background: its foreground attention would block all, so it attends all
    assert blocked(foreground)[1] == [False] * 4 and blocked(background)[1] == [False] * 4
    assert blocked(background)[2] == [False] * 4


@pytest.mark.parametrize("masked", [False, True])
def test_multihead_attention_equals_the_torch_module(masked):
    """The decoder's attention (own projections, one additive mask broadcast over heads) equals
    ``nn.MultiheadAttention`` called with the per-head boolean mask, as the official code calls it."""
    torch.manual_seed(0)
    attention = torch.nn.MultiheadAttention(16, 4).eval()
    torch.nn.init.normal_(attention.in_proj_bias)
    query, key, value = torch.randn(5, 2, 16), torch.randn(7, 2, 16), torch.randn(7, 2, 16)
    blocked = torch.rand(2, 5, 7) < 0.4
    blocked[0, 3] = True  # a row blocked everywhere is not passed as such: unblocked first
    blocked &= ~blocked.all(-1, keepdim=True)
    additive = torch.zeros(2, 1, 5, 7).masked_fill_(blocked[:, None], float("-inf")) if masked else None
    per_head = blocked.repeat_interleave(4, dim=0) if masked else None
    with torch.no_grad():
        expected = attention(query, key, value, attn_mask=per_head, need_weights=False)[0]
        ours = multihead_attention(attention, query, key, value, additive)
    assert ours.shape == (5, 2, 16)
    assert torch.allclose(ours, expected, atol=1e-5)
    if masked:  # the mask matters: without it the result differs
        assert not torch.allclose(multihead_attention(attention, query, key, value), expected, atol=1e-3)


# --- forward: normalisation, padding, outputs ---------------------------------------------------

def test_outputs_and_padding_for_odd_input_sizes(tiny):
    x = images(2, 70, 90)
    with torch.no_grad():
        out = tiny(x)
    assert out["image_size"] == (70, 90) and out["padded_size"] == (96, 96)
    assert out["pred_logits"].shape == (2, 5, 20)
    assert out["pred_masks"].shape == (2, 5, 24, 24)
    assert len(out["aux_outputs"]) == TINY["dec_layers"]
    assert all(a["pred_logits"].shape == (2, 5, 20) and a["pred_masks"].shape == (2, 5, 24, 24) for a in out["aux_outputs"])
    # the first prediction set comes from the learnable queries alone: the same class logits for every image
    assert torch.allclose(out["aux_outputs"][0]["pred_logits"][0], out["aux_outputs"][0]["pred_logits"][1])
    assert not torch.allclose(out["pred_logits"][0], out["pred_logits"][1])

    # padding is zeros after normalisation: the same as padding the raw image with the mean colour
    mean = torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1)
    padded = mean.expand(2, 3, 96, 96).clone()
    padded[..., :70, :90] = x
    with torch.no_grad():
        same = tiny(padded)
    assert same["image_size"] == (96, 96)
    assert torch.allclose(same["pred_masks"], out["pred_masks"], atol=1e-4)
    assert torch.allclose(same["pred_logits"], out["pred_logits"], atol=1e-4)

    full = upsample_masks(out["pred_masks"], out["image_size"], out["padded_size"])
    assert full.shape == (2, 5, 70, 90)
    expected = F.interpolate(out["pred_masks"], size=(96, 96), mode="bilinear", align_corners=False)[..., :70, :90]
    assert torch.equal(full, expected)
    assert torch.equal(upsample_masks(out["pred_masks"][0], (70, 90)), expected[0])  # (Q, h, w) and size inferred


def test_forward_equals_the_upstream_sequence_of_operations(tiny):
    """Every fused, in-place or re-laid-out step of the forward (deformable attention as one
    embedding_bag, one additive mask for all heads, channels-last) computes what the official
    code's operations compute (``benchmarks/_official_style.py``, which equals the official
    modules bit for bit), in float64 so that rounding does not hide a difference."""
    sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))
    from _official_style import official_style_forward

    model = Mask2Anomaly(**TINY)
    model.load_state_dict(tiny.state_dict())
    model = model.double().eval()
    x = images(2, 70, 90).double()
    with torch.no_grad():
        expected = official_style_forward(model, x)
        ours = model(x)
        last = model.to(memory_format=torch.channels_last)(x.contiguous(memory_format=torch.channels_last))
    pairs = [(ours, expected), (last, expected)]
    for got, want in pairs:
        for a, b in zip([got] + got["aux_outputs"], [want] + want["aux_outputs"]):
            assert (a["pred_logits"] - b["pred_logits"]).abs().max() < 1e-10
            assert (a["pred_masks"] - b["pred_masks"]).abs().max() < 1e-10
    assert ours["pred_masks"].std() > 0.1  # not a degenerate network


def test_uint8_images_and_bad_input(tiny):
    x = images(1, 32, 64).round()
    with torch.no_grad():
        assert torch.equal(tiny(x.to(torch.uint8))["pred_masks"], tiny(x)["pred_masks"])
    with pytest.raises(DiffeelError, match=r"\(N, 3, H, W\).*shape \[3, 32, 32\]"):
        tiny(torch.zeros(3, 32, 32))
    with pytest.raises(DiffeelError, match=r"shape \[1, 1, 32, 32\]"):
        tiny(torch.zeros(1, 1, 32, 32))


def test_training_reaches_the_head_but_not_the_frozen_backbone(tiny):
    model = Mask2Anomaly(**TINY)
    model.load_state_dict(tiny.state_dict())
    out = model.train()(images(1, 64, 64))
    loss = out["pred_masks"].sigmoid().mean() + out["pred_logits"].logsumexp(-1).mean() + \
        sum(a["pred_masks"].mean() for a in out["aux_outputs"])
    loss.backward()
    assert all(p.grad is None for p in model.backbone.parameters())
    encoder = model.sem_seg_head.pixel_decoder.transformer.encoder.layers[0].self_attn
    for parameter in (encoder.sampling_offsets.weight, encoder.value_proj.weight, model.sem_seg_head.predictor.query_feat.weight,
                      model.sem_seg_head.predictor.transformer_cross_attention_layers[0].multihead_attn_background.in_proj_weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
    assert model.sem_seg_head.predictor.transformer_cross_attention_layers[0].fusion_layer.weight.grad is None  # unused upstream too


def test_options_are_checked():
    with pytest.raises(ValueError, match="hidden_dim"):
        Mask2Anomaly(hidden_dim=30, nheads=8)
    with pytest.raises(ValueError, match="width_divisor"):
        Mask2Anomaly(width_divisor=3)
    with pytest.raises(ValueError, match="dec_layers"):
        Mask2Anomaly(dec_layers=0)


# --- torchvision → detectron2 -------------------------------------------------------------------

def torchvision_resnet50_state(divisor=1, seed=0, classifier=True) -> dict:
    """A random state dict in torchvision's ResNet-50 layout (``layerN.i.{conv,bn}{1,2,3}``,
    ``downsample.{0,1}`` on each layer's first block, ``fc``), channels divided by ``divisor``."""
    generator = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=generator)  # noqa: E731
    state = {}

    def bn(prefix, channels):
        state.update({f"{prefix}.weight": rand(channels), f"{prefix}.bias": rand(channels), f"{prefix}.running_mean": rand(channels),
                      f"{prefix}.running_var": rand(channels).abs() + 0.5, f"{prefix}.num_batches_tracked": torch.tensor(100)})

    width = 64 // divisor
    state["conv1.weight"] = rand(width, 3, 7, 7)
    bn("bn1", width)
    inplanes = width
    for layer, (planes, blocks) in enumerate(zip((64, 128, 256, 512), (3, 4, 6, 3)), start=1):
        planes //= divisor
        for block in range(blocks):
            prefix = f"layer{layer}.{block}"
            state[f"{prefix}.conv1.weight"] = rand(planes, inplanes, 1, 1)
            bn(f"{prefix}.bn1", planes)
            state[f"{prefix}.conv2.weight"] = rand(planes, planes, 3, 3)
            bn(f"{prefix}.bn2", planes)
            state[f"{prefix}.conv3.weight"] = rand(planes * 4, planes, 1, 1)
            bn(f"{prefix}.bn3", planes * 4)
            if block == 0:
                state[f"{prefix}.downsample.0.weight"] = rand(planes * 4, inplanes, 1, 1)
                bn(f"{prefix}.downsample.1", planes * 4)
            inplanes = planes * 4
    if classifier:
        state["fc.weight"], state["fc.bias"] = rand(1000, inplanes), rand(1000)
    return state


def test_torchvision_converter_maps_every_key_onto_the_backbone():
    torchvision = torchvision_resnet50_state(divisor=16)
    converted = torchvision_resnet50_to_detectron2(torchvision)
    backbone = ResNet(width_divisor=16)
    assert len(converted) == len(backbone.state_dict()) == len(torchvision) - 53 - 2  # counters and fc dropped
    load_strict(backbone, converted, "resnet50.pth", "the backbone")  # every key used, every shape right
    assert torch.equal(backbone.stem.conv1.weight, torchvision["conv1.weight"])
    assert torch.equal(backbone.stem.conv1.norm.running_var, torchvision["bn1.running_var"])
    assert torch.equal(backbone.res2[0].shortcut.norm.bias, torchvision["layer1.0.downsample.1.bias"])
    assert torch.equal(backbone.res3[0].conv2.weight, torchvision["layer2.0.conv2.weight"])
    assert torch.equal(backbone.res5[2].conv3.norm.weight, torchvision["layer4.2.bn3.weight"])
    assert backbone.res3[0].conv2.stride == (2, 2) and backbone.res3[0].conv1.stride == (1, 1)  # stride in the 3×3

    # full size: names and shapes only
    full = torchvision_resnet50_to_detectron2(
        {key: value.new_empty(0) for key, value in torchvision_resnet50_state(divisor=16, classifier=False).items()}, prefix="backbone.")
    with torch.device("meta"):
        model_keys = {key for key in Mask2Anomaly().state_dict() if key.startswith("backbone.")}
    assert set(full) == model_keys

    with pytest.raises(DiffeelError, match=r"'layer5\.0\.conv1\.weight' is not part of a torchvision ResNet-50"):
        torchvision_resnet50_to_detectron2({**torchvision, "layer5.0.conv1.weight": torch.zeros(1)})


def test_load_backbone_weights_reads_each_layout(tiny):
    model = Mask2Anomaly(**TINY)
    torchvision = {"module." + key: value for key, value in torchvision_resnet50_state(divisor=16, classifier=False).items()}
    load_backbone_weights(model, torchvision, "barlow.pth")
    assert torch.equal(model.backbone.res4[5].conv3.weight, torchvision["module.layer3.5.conv3.weight"])
    full_keys = {key: value for key, value in tiny.state_dict().items() if key.startswith("backbone.")}
    load_backbone_weights(model, full_keys)
    assert torch.equal(model.backbone.res4[5].conv3.weight, tiny.backbone.res4[5].conv3.weight)
    with pytest.raises(DiffeelError, match=r"barlow\.pth does not fit the Mask2Anomaly backbone: key 'res5\.2\.conv3\.norm\.bias' is missing"):
        load_backbone_weights(model, {k: v for k, v in torchvision.items() if k != "module.layer4.2.bn3.bias"}, "barlow.pth")
