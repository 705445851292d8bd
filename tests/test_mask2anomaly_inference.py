"""Mask2Anomaly inference scores: the semantic map, Eq. 3, the mask-wise EEL scores and the official
evaluation script's score (checked against a direct transcription of its formula)."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from diffeel import scores
from diffeel.labels import NUM_CLASSES
from diffeel.models.mask2anomaly_inference import (
    eq3_score,
    mask_scores,
    mask_wise_logits,
    official_anomaly_score,
    official_kept_queries,
    official_resize_shape,
    official_score_from_outputs,
    semantic_map,
)

C = NUM_CLASSES


def logits_with_top(cls, probability, generator):
    """Class logits whose softmax puts ``probability`` on ``cls`` (C + 1 = no object)."""
    rest = torch.rand(C + 1, generator=generator, dtype=torch.float64) + 0.5
    rest[cls] = 0
    probs = rest / rest.sum() * (1 - probability)
    probs[cls] = probability
    return probs.log()


# (top class, top probability) per query: kept = class in 2..10 with probability > 0.95
KEPT_NONE = [(8, 0.9), (10, 0.94), (13, 0.99), (1, 0.99), (C, 0.99), (11, 0.999)]
KEPT_ONE = [(8, 0.99), (10, 0.94), (13, 0.99), (1, 0.99), (C, 0.99), (5, 0.6)]
KEPT_THREE = [(8, 0.99), (10, 0.97), (2, 0.999), (0, 0.99), (C, 0.99), (5, 0.6)]


def make_outputs(queries, size, seed, image_size=None):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.stack([logits_with_top(cls, p, generator) for cls, p in queries])[None].float()
    masks = (torch.randn(1, len(queries), *size, generator=generator, dtype=torch.float64) * 3).float()
    outputs = {"pred_logits": logits, "pred_masks": masks}
    if image_size is not None:
        outputs["image_size"] = image_size
    return outputs


def direct_official(outputs):
    """The official score at the mask grid (no padding, no resizing), one pixel at a time."""
    logits = outputs["pred_logits"][0].double().numpy()
    masks = outputs["pred_masks"][0].double().numpy()
    probs = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    kept = [q for q in range(len(probs)) if 2 <= int(np.argmax(probs[q])) <= 10 and probs[q].max() > 0.95]
    height, width = masks.shape[1:]
    result = np.zeros((height, width))
    for y in range(height):
        for x in range(width):
            sig = [1 / (1 + math.exp(-masks[q, y, x])) for q in range(len(probs))]
            channels = [sum(probs[q, k] * sig[q] for q in range(len(probs))) for k in range(C)]
            extra = [probs[q].max() * sig[q] for q in kept]
            value = 1 - max(channels + extra)
            if len(kept) > 1 and max(extra) >= 0.5:
                value = 0.0
            result[y, x] = value
    return result, len(kept)


@pytest.mark.parametrize("queries, expected_kept", [(KEPT_NONE, 0), (KEPT_ONE, 1), (KEPT_THREE, 3)])
def test_official_score_matches_the_formula(queries, expected_kept):
    outputs = make_outputs(queries, (5, 6), seed=expected_kept)
    flipped = make_outputs(queries, (5, 6), seed=10 + expected_kept)
    assert len(official_kept_queries(outputs["pred_logits"][0])) == expected_kept
    plain, kept = direct_official(outputs)
    assert kept == expected_kept
    single = official_score_from_outputs(outputs, None, (5, 6), mask_stride=1)
    assert single.dtype == np.float32 and single.shape == (5, 6)
    np.testing.assert_allclose(single, plain, atol=2e-6)
    mirrored, _ = direct_official(flipped)
    averaged = official_score_from_outputs(outputs, flipped, (5, 6), mask_stride=1)
    np.testing.assert_allclose(averaged, (plain + mirrored[:, ::-1]) / 2, atol=2e-6)
    if expected_kept > 1:
        assert (single == 0).any() and (single > 0).any()  # the zeroing rule fired on part of the image
    if expected_kept <= 1:
        # a kept query's channel score_q·σ(m_q) never exceeds its class's semantic channel, which
        # sums that same term with the other queries' shares: without the zeroing rule (K ≤ 1) the
        # score is Eq. 3's
        classes_only = scores.mask_msp(outputs["pred_logits"], outputs["pred_masks"])[0].numpy()
        np.testing.assert_allclose(single, classes_only, atol=2e-6)

def test_official_score_crops_padding_and_resizes_in_the_host_order():
    outputs = make_outputs(KEPT_THREE, (4, 5), seed=3, image_size=(13, 18))  # padded 16×20 at stride 4
    result = official_score_from_outputs(outputs, None, (9, 11))
    logits, masks = outputs["pred_logits"][0], outputs["pred_masks"][0]
    up = torch.sigmoid(F.interpolate(masks[None], size=(16, 20), mode="bilinear", align_corners=False)[0])
    probs = torch.softmax(logits, -1)
    top, cls = probs.max(-1)
    kept = [q for q in range(len(probs)) if 2 <= int(cls[q]) <= 10 and float(top[q]) > 0.95]
    channels = torch.cat([torch.einsum("qc,qhw->chw", probs[:, :C], up), top[kept, None, None] * up[kept]])
    channels = F.interpolate(channels[None, :, :13, :18], size=(9, 11), mode="bilinear", align_corners=False)[0]
    expected = 1 - channels.amax(0)
    expected[channels[C:].amax(0) >= 0.5] = 0
    np.testing.assert_allclose(result, expected.numpy(), atol=2e-6)


def test_semantic_map_is_not_normalised():
    logits = torch.full((1, 3, C + 1), -10.0)
    logits[0, :2, 0] = 10.0  # two confident road queries
    logits[0, 2, C] = 10.0
    masks = torch.full((1, 3, 2, 2), 8.0)
    semantic = semantic_map(logits, masks)
    assert semantic.shape == (1, C, 2, 2)
    assert float(semantic[0, 0].min()) > 1.9  # two overlapping queries: almost 2
    np.testing.assert_allclose(semantic_map(logits[0], masks[0]), semantic[0])
    np.testing.assert_allclose(semantic_map(logits.numpy(), masks.numpy()), semantic.numpy())
    explicit = sum(torch.softmax(logits[0, q], -1)[:C, None, None] * torch.sigmoid(masks[0, q]) for q in range(3))
    np.testing.assert_allclose(semantic[0].numpy(), explicit.numpy(), rtol=1e-6)


def test_eq3_and_mask_scores():
    outputs = make_outputs(KEPT_THREE, (4, 5), seed=4)
    plain = scores.mask_msp(outputs["pred_logits"], outputs["pred_masks"])
    np.testing.assert_allclose(eq3_score(outputs, (4, 5), mask_stride=1).numpy(), plain.numpy(), atol=1e-6)
    padded = make_outputs(KEPT_THREE, (4, 5), seed=4, image_size=[(14, 17)])
    y_hat = mask_wise_logits(padded, (20, 30))
    assert y_hat.shape == (1, C, 20, 30)
    maps = mask_scores(padded, (20, 30), alpha=0.5)
    np.testing.assert_allclose(maps["mask_msp"].numpy(), eq3_score(padded, (20, 30)).numpy(), atol=1e-6)
    np.testing.assert_allclose(maps["energy"].numpy(), scores.energy(y_hat).numpy(), atol=1e-5)
    np.testing.assert_allclose(maps["entropy"].numpy(), scores.entropy(y_hat).numpy(), atol=1e-5)
    np.testing.assert_allclose(maps["eel"].numpy(), (0.5 * scores.entropy(y_hat) + scores.energy(y_hat)).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="unknown mask score"):
        mask_scores(padded, (20, 30), names=["msp"])


@pytest.mark.parametrize("size, expected", [((10, 40), (512, 2048)), ((1024, 2048), (1024, 2048)), ((720, 1280), (1024, 1820)),
                                            ((2000, 1000), (2048, 1024)), ((100, 1000), (205, 2048)), ((6, 9), (1024, 1536))])
def test_official_resize_shape(size, expected):
    assert official_resize_shape(*size) == expected


class FakeModel:
    """Stands in for the host: records its inputs; masks from the image, pads to ×32 like the host."""

    def __init__(self):
        self.inputs = []

    def __call__(self, images):
        self.inputs.append(images.clone())
        height, width = images.shape[-2:]
        padded = F.pad(images, (0, -width % 32, 0, -height % 32))
        features = F.avg_pool2d(padded, 4)
        red_minus_blue = (features[:, 0] - features[:, 2]) / 40
        masks = torch.stack([red_minus_blue - 2, features[:, 1] / 60 - 3, -red_minus_blue], dim=1)
        generator = torch.Generator().manual_seed(0)
        logits = torch.stack([logits_with_top(cls, p, generator) for cls, p in [(8, 0.99), (10, 0.98), (0, 0.7)]])
        return {"pred_logits": logits[None].float(), "pred_masks": masks, "image_size": (int(height), int(width))}


class Recorded(Exception):
    pass


def test_official_anomaly_score_resizes_to_1024_by_default():
    def model(images):
        raise Recorded(tuple(images.shape))

    with pytest.raises(Recorded) as seen:
        official_anomaly_score(model, np.zeros((6, 9, 3), dtype=np.uint8))
    assert seen.value.args[0] == (1, 3, 1024, 1536)


def test_official_anomaly_score_wrapper():
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, size=(6, 9, 3), dtype=np.uint8)
    image[:, :3, 0] = 255  # a blue strip on the left (BGR)
    model = FakeModel()
    result = official_anomaly_score(model, image, short_side=100, max_side=140)
    assert result.shape == (6, 9) and result.dtype == np.float32
    first, second = model.inputs
    assert first.shape == (1, 3, 93, 140) and first.dtype == torch.float32
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    expected = np.asarray(Image.fromarray(rgb).resize((140, 93), Image.BILINEAR)).transpose(2, 0, 1)
    np.testing.assert_array_equal(first[0].numpy(), expected)  # RGB, PIL bilinear, 0–255
    flipped = np.asarray(Image.fromarray(np.ascontiguousarray(rgb[:, ::-1])).resize((140, 93), Image.BILINEAR))
    np.testing.assert_array_equal(second[0].numpy(), flipped.transpose(2, 0, 1))
    reference = official_score_from_outputs(FakeModel()(first), FakeModel()(second), (6, 9))
    np.testing.assert_array_equal(result, reference)
    assert (result == 0).any() and (result > 0).any()
    assert not np.allclose(result, result[:, ::-1])  # the image is not symmetric; the flip was undone
    with pytest.raises(TypeError, match="uint8"):
        official_anomaly_score(model, image.astype(np.float32))
