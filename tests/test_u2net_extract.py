"""U²-Net (module tree, checkpoints, numerics) and the salient object extractor (official pre- and
postprocessing, mask cleaning, rejection reasons, GrabCut fallback)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from diffeel.errors import DiffeelError
from diffeel.models.loading import load_strict
from diffeel.models.u2net import U2NET, U2NETP
from diffeel.synth.extract import (
    ExtractionResult,
    SalientExtractor,
    clean_mask,
    grabcut_mask,
    rejection_reason,
    squash_resize,
    u2net_postprocess,
    u2net_preprocess,
)
from model_fixtures import randomise_batch_norms

DATA = Path(__file__).parent / "data"
TINY = 16  # width divisor of the test network: same module tree and keys, 1/16 of the channels
MEAN, STD = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Small convolutions run fastest on one thread (and do not stall on a busy machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomise_batch_norms(U2NET(width_divisor=TINY)).eval()


def square_image(shape=(96, 128), box=(28, 68, 44, 84), background=30, foreground=220):
    image = np.full((*shape, 3), background, np.uint8)
    truth = np.zeros(shape, bool)
    truth[box[0]:box[1], box[2]:box[3]] = True
    image[truth] = foreground
    return image, truth


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / (a | b).sum())


# ---------------------------------------------------------------- the network


@pytest.mark.parametrize("name, build, parameters", [("u2net", U2NET, 44_009_869), ("u2netp", U2NETP, 1_131_181)])
def test_full_width_state_matches_the_official_module_tree(name, build, parameters):
    """Key names and shapes equal those of the official U2NET / U2NETP (recorded from model/u2net.py)."""
    official = dict(line.split() for line in (DATA / f"{name}_keys.txt").read_text().splitlines())
    with torch.device("meta"):
        model = build()
    state = model.state_dict()
    ours = {key: "x".join(map(str, value.shape)) or "scalar" for key, value in state.items()}
    assert ours == official
    assert len(state) == 798 and sum(key.endswith("num_batches_tracked") for key in state) == 112
    assert sum(p.numel() for p in model.parameters()) == parameters


def test_width_divisor_keeps_the_key_names(tiny):
    with torch.device("meta"):
        full = U2NET()
    assert list(tiny.state_dict()) == list(full.state_dict())
    assert sum(p.numel() for p in tiny.parameters()) < 300_000
    with pytest.raises(ValueError, match="width_divisor"):
        U2NET(width_divisor=0)


def test_tiny_checkpoint_round_trips_strictly(tiny, tmp_path):
    path = tmp_path / "u2net_tiny.pth"
    torch.save(tiny.state_dict(), path)  # the official release layout: a plain state dict
    other = U2NET(width_divisor=TINY).eval()
    load_strict(other, torch.load(path, map_location="cpu", weights_only=True), str(path), "u2net")
    x = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        for a, b in zip(tiny(x), other(x)):
            assert torch.equal(a, b)


def test_load_strict_names_the_offending_key(tiny):
    state = tiny.state_dict()
    missing = {k: v for k, v in state.items() if k != "side3.weight"}
    with pytest.raises(DiffeelError, match=r"'side3\.weight' is missing"):
        load_strict(U2NET(width_divisor=TINY), missing, "u2net.pth", "u2net")
    extra = {**state, "module.side3.weight": state["side3.weight"]}
    with pytest.raises(DiffeelError, match=r"'module\.side3\.weight' is unexpected"):
        load_strict(U2NET(width_divisor=TINY), extra, "u2net.pth", "u2net")
    with pytest.raises(DiffeelError, match=r"'outconv\.weight' has shape"):
        load_strict(U2NET(width_divisor=TINY), {**state, "outconv.weight": torch.zeros(1, 7, 1, 1)}, "u2net.pth", "u2net")


@pytest.mark.parametrize("size", [(70, 90), (33, 47)])
def test_forward_gives_seven_sigmoid_maps_of_the_input_size(tiny, size):
    x = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        maps = tiny(x)
    assert isinstance(maps, tuple) and len(maps) == 7
    for m in maps:
        assert m.shape == (2, 1, *size)
        assert float(m.min()) > 0 and float(m.max()) < 1
    # fused first: it is outconv of the six side maps (before their sigmoid)
    logits = torch.logit(torch.cat(maps[1:], 1).double())
    fused = torch.sigmoid(F.conv2d(logits, tiny.outconv.weight.double(), tiny.outconv.bias.double()))
    assert torch.allclose(fused.float(), maps[0], atol=1e-5)


# An independent transcription of the official U2NET / U2NETP forward, written functionally over
# the state dict: it shares no code with diffeel.models.u2net.
HEIGHTS = {1: 7, 2: 6, 3: 5, 4: 4, 5: 0, 6: 0}  # 0 = RSU-4F


def _cbr(x, s, p, dilation=1):
    x = F.conv2d(x, s[p + "conv_s1.weight"], s[p + "conv_s1.bias"], padding=dilation, dilation=dilation)
    x = F.batch_norm(x, s[p + "bn_s1.running_mean"], s[p + "bn_s1.running_var"], s[p + "bn_s1.weight"],
                     s[p + "bn_s1.bias"], False, 0.0, 1e-5)
    return F.relu(x)


def _up(x, like):
    return F.interpolate(x, size=like.shape[-2:], mode="bilinear", align_corners=False)


def _down(x):
    return F.max_pool2d(x, 2, 2, ceil_mode=True)


def _rsu(x, s, p, height):
    entry = _cbr(x, s, p + "rebnconvin.")
    if height == 0:
        h1 = _cbr(entry, s, p + "rebnconv1.", 1)
        h2 = _cbr(h1, s, p + "rebnconv2.", 2)
        h3 = _cbr(h2, s, p + "rebnconv3.", 4)
        h4 = _cbr(h3, s, p + "rebnconv4.", 8)
        d = _cbr(torch.cat((h4, h3), 1), s, p + "rebnconv3d.", 4)
        d = _cbr(torch.cat((d, h2), 1), s, p + "rebnconv2d.", 2)
        return _cbr(torch.cat((d, h1), 1), s, p + "rebnconv1d.", 1) + entry
    levels = [_cbr(entry, s, p + "rebnconv1.")]
    for i in range(2, height):
        levels.append(_cbr(_down(levels[-1]), s, p + f"rebnconv{i}."))
    d = _cbr(levels[-1], s, p + f"rebnconv{height}.", 2)
    for i in range(height - 1, 0, -1):
        d = _cbr(torch.cat((_up(d, levels[i - 1]), levels[i - 1]), 1), s, p + f"rebnconv{i}d.")
    return d + entry


def reference_u2net(x, s):
    encoded, h = [], x
    for i in range(1, 6):
        encoded.append(_rsu(h, s, f"stage{i}.", HEIGHTS[i]))
        h = _down(encoded[-1])
    decoded = {6: _rsu(h, s, "stage6.", 0)}
    d = decoded[6]
    for i in range(5, 0, -1):
        d = decoded[i] = _rsu(torch.cat((_up(d, encoded[i - 1]), encoded[i - 1]), 1), s, f"stage{i}d.", HEIGHTS[i])
    sides = [F.conv2d(decoded[i], s[f"side{i}.weight"], s[f"side{i}.bias"], padding=1) for i in range(1, 7)]
    sides = [sides[0]] + [_up(side, sides[0]) for side in sides[1:]]
    fused = F.conv2d(torch.cat(sides, 1), s["outconv.weight"], s["outconv.bias"])
    return [torch.sigmoid(m) for m in [fused, *sides]]


@pytest.mark.parametrize("build, size", [(lambda: U2NET(width_divisor=TINY), (70, 90)), (U2NETP, (37, 53))])
def test_forward_matches_an_independent_transcription(build, size):
    torch.manual_seed(4)
    model = randomise_batch_norms(build()).eval()
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        ours = model(x)
        theirs = reference_u2net(x, model.state_dict())
    assert max(float((a - b).abs().max()) for a, b in zip(ours, theirs)) < 1e-5


# ---------------------------------------------------------------- official pre- and postprocessing


def reference_squash(rgb: np.ndarray, size: int = 320) -> np.ndarray:
    """scikit-image 0.14's resize(rgb, (size, size), mode='constant') via scipy: bilinear at pixel
    centres, zeros outside, clipped to the input range (exact zeros kept when the minimum is > 0)."""
    image = rgb.astype(np.float64) / 255
    rows = (np.arange(size) + 0.5) * rgb.shape[0] / size - 0.5
    cols = (np.arange(size) + 0.5) * rgb.shape[1] / size - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    out = np.dstack([ndimage.map_coordinates(image[..., c], grid, order=1, mode="grid-constant", cval=0.0) for c in range(3)])
    zeros = out == 0
    out = np.clip(out, image.min(), image.max())
    if image.min() > 0:
        out[zeros] = 0
    return out


@pytest.mark.parametrize("shape, low", [((512, 384), 0), ((97, 413), 20), ((40, 33), 5), ((320, 320), 0)])
def test_preprocessing_squashes_like_scikit_image_0_14(rng, shape, low):
    rgb = rng.integers(low, 256, size=(*shape, 3), dtype=np.uint8)
    expected = reference_squash(rgb)
    assert np.abs(squash_resize(rgb, (320, 320)) - expected).max() < 1e-12
    tensor = u2net_preprocess(rgb)
    assert tensor.shape == (1, 3, 320, 320) and tensor.dtype == torch.float32
    normalised = ((expected / expected.max() - MEAN) / STD).transpose(2, 0, 1)
    assert np.abs(tensor[0].numpy() - normalised).max() < 1e-5


def test_enlarging_darkens_the_outer_pixels_as_the_official_resize_does():
    rgb = np.full((40, 40, 3), 200, np.uint8)  # enlarged 8x: zeros outside leak into the edge
    rgb[20, 20] = 0  # (the clip to the input's range would undo it for a constant image)
    squashed = squash_resize(rgb, (320, 320))
    assert np.allclose(squashed[10:150, 10:150], 200 / 255)
    assert squashed[0, 160, 0] < 0.8 * 200 / 255 and squashed[160, -1, 0] < 0.8 * 200 / 255


def test_preprocessing_divides_by_the_image_maximum_not_255(rng):
    rgb = rng.integers(0, 129, size=(320, 320, 3), dtype=np.uint8)
    rgb[0, 0, 0] = 128  # maximum 128: the official ToTensorLab divides by it
    unit = u2net_preprocess(rgb)[0].numpy().transpose(1, 2, 0) * STD + MEAN
    assert np.allclose(unit, rgb / 128.0, atol=1e-6)
    assert not np.allclose(unit, rgb / 255.0, atol=0.1)
    assert torch.isfinite(u2net_preprocess(np.zeros((10, 10, 3), np.uint8))).all()  # black: no NaN


def test_preprocessing_rejects_bad_images():
    with pytest.raises(DiffeelError, match=r"\(H, W, 3\) uint8"):
        u2net_preprocess(np.zeros((10, 10), np.uint8))
    with pytest.raises(DiffeelError, match="empty"):
        u2net_preprocess(np.zeros((0, 10, 3), np.uint8))


def test_postprocessing_min_max_normalises_to_8_bits_at_the_original_size():
    gradient = torch.linspace(0.2, 0.7, 320).repeat(320, 1)[None, None]
    same = u2net_postprocess(gradient, (320, 320))
    expected = np.floor((gradient[0, 0] - 0.2).numpy() / np.float32(0.5) * 255) / 255  # normPRED, 8 bits (truncated)
    assert same.dtype == np.float32 and same.shape == (320, 320)
    assert np.abs(same - expected).max() <= 1 / 255 + 1e-6
    assert same.min() == 0 and same.max() == 1
    # min-max: an affine change of the map changes nothing
    assert np.array_equal(u2net_postprocess(gradient * 0.5 + 0.1, (70, 90)), u2net_postprocess(gradient, (70, 90)))
    resized = u2net_postprocess(gradient, (70, 90))
    assert resized.shape == (70, 90) and 0 <= resized.min() and resized.max() <= 1
    assert np.all(np.diff(resized[35]) >= 0)  # the gradient survives the bilinear resize
    assert not u2net_postprocess(torch.full((1, 1, 320, 320), 0.3), (5, 6)).any()  # constant: zeros
    with pytest.raises(DiffeelError, match="one"):
        u2net_postprocess(torch.zeros(2, 1, 8, 8), (8, 8))


# ---------------------------------------------------------------- masks and rejections


def test_clean_mask_keeps_the_largest_blob_with_its_holes_filled():
    probability = np.zeros((60, 80))
    probability[5:15, 5:15] = 0.9  # small blob
    probability[20:50, 30:70] = 0.8  # large blob ...
    probability[30:35, 40:45] = 0.1  # ... with a hole
    mask = clean_mask(probability)
    expected = np.zeros((60, 80), bool)
    expected[20:50, 30:70] = True
    assert mask.dtype == bool and np.array_equal(mask, expected)
    assert not clean_mask(np.where(probability > 0.5, 0.4, 0.0)).any()  # nothing above the threshold
    speck = np.zeros((60, 80))
    speck[1:4, 1:4] = 1.0
    assert not clean_mask(speck, min_area=16).any() and clean_mask(speck, min_area=9).sum() == 9


def test_rejection_reasons():
    mask = np.zeros((100, 100), bool)
    assert rejection_reason(mask) == "empty"
    mask[40:60, 40:60] = True
    assert rejection_reason(mask) is None
    cut = mask.copy()
    cut[40:60, 98:] = True  # reaches the two outermost columns (border_margin 2)
    assert rejection_reason(cut) == "border"
    assert rejection_reason(cut, border_margin=0) is None
    near = mask.copy()
    near[40:60, 60:97] = True  # three pixels away from the edge: kept
    assert rejection_reason(near) is None
    small = np.zeros((100, 100), bool)
    small[50:55, 50:55] = True  # 0.25 % of the image
    assert rejection_reason(small) == "too_small"
    assert rejection_reason(small, min_area_share=0.001) is None


def test_grabcut_finds_a_bright_square_on_a_dark_background(rng):
    image, truth = square_image()
    assert iou(grabcut_mask(image), truth) > 0.8
    noisy = np.clip(image + rng.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    assert iou(grabcut_mask(noisy), truth) > 0.8
    large = np.kron(image, np.ones((6, 6, 1), np.uint8))  # worked on at 400 px, mask resized back
    assert iou(grabcut_mask(large), np.kron(truth, np.ones((6, 6), bool))) > 0.8
    assert not grabcut_mask(np.full((50, 50, 3), 90, np.uint8)).any()  # nothing stands out


def test_extractor_without_weights_uses_grabcut_and_reports_reasons():
    extractor = SalientExtractor()
    assert extractor.method == "grabcut"
    image, truth = square_image()
    result = extractor.extract(image)
    assert isinstance(result, ExtractionResult) and result.reason is None and result.probability is None
    assert iou(result.mask, truth) > 0.8
    cut, _ = square_image(box=(30, 70, 100, 128))
    assert extractor.extract(cut).reason == "border"
    blank = extractor.extract(np.full((50, 50, 3), 90, np.uint8))
    assert blank.reason == "empty" and blank.mask is None
    with pytest.raises(DiffeelError, match="rejected the object: border"):
        extractor(cut)
    assert np.array_equal(extractor(image), result.mask)


class BrightnessSaliency(torch.nn.Module):
    """A stand-in for U²-Net: salient = brighter than the normalised mean, seven identical maps."""

    def forward(self, x):
        fused = torch.sigmoid(4 * x.mean(1, keepdim=True))
        return (fused,) * 7


def test_extractor_runs_the_model_through_the_official_processing():
    extractor = SalientExtractor(BrightnessSaliency(), batch_size=2)
    assert extractor.method == "u2net"
    image, truth = square_image()
    result = extractor.extract(image)
    assert result.reason is None and result.probability.shape == truth.shape
    assert result.probability.dtype == np.float32 and 0 <= result.probability.min() and result.probability.max() <= 1
    assert iou(result.mask, truth) > 0.9
    small, _ = square_image(box=(45, 50, 60, 65))
    cut, _ = square_image(box=(0, 40, 44, 84))
    batch = extractor.extract_many([image, small, cut])  # two batches
    assert [r.reason for r in batch] == [None, "too_small", "border"]
    assert np.array_equal(batch[0].mask, result.mask) and np.allclose(batch[0].probability, result.probability)
    assert extractor(image).dtype == bool


def test_extractor_with_a_tiny_u2net_and_bad_arguments(tiny):
    result = SalientExtractor(tiny).extract(square_image()[0])
    assert result.probability.shape == (96, 128) and result.reason in (None, "empty", "border", "too_small")
    assert (result.mask is None) == (result.reason == "empty")
    with pytest.raises(DiffeelError, match="nn.Module"):
        SalientExtractor("u2net.pth")
    with pytest.raises(DiffeelError, match="threshold"):
        SalientExtractor(threshold=1.5)
    with pytest.raises(DiffeelError, match="border_margin"):
        SalientExtractor(border_margin=-1)

    class Flat(torch.nn.Module):
        def forward(self, x):
            return x[:, :2]

    with pytest.raises(DiffeelError, match=r"\(N, 1, H, W\)"):
        SalientExtractor(Flat()).extract(square_image()[0])
