"""DoveNet: the generator (official key names, strict loading, numerics) and the harmonization blenders."""

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from diffeel.errors import DiffeelError
from diffeel.geometry import Camera
from diffeel.labels import ANOMALY_TRAIN_ID, TRAIN_ID
from diffeel.models.checkpoints import load_state, save_state
from diffeel.models.dovenet import DoveNetGenerator, compose, dovenet_state, load_dovenet
from diffeel.models.loading import load_strict
from diffeel.synth import BankObject, CopyPasteSynthesizer, IlluminationBlender, ObjectBank, Placement
from diffeel.synth.harmonize import (
    ChainBlender,
    DoveNetBlender,
    PoissonBlender,
    context_window,
    harmonize,
    make_blender,
    poisson_blend,
)

DATA = Path(__file__).parent / "data"
SIZE = 256


def calibrated(ngf=4, seed=0):
    """A tiny generator with random weights and batch-norm statistics gathered on random inputs,
    so eval mode gives non-trivial activations at every level."""
    torch.manual_seed(seed)
    model = DoveNetGenerator(ngf=ngf)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    with torch.no_grad():
        for norm in norms:
            norm.momentum = None  # cumulative average
            norm.weight.uniform_(0.5, 1.5)
            norm.bias.normal_(0.0, 0.2)
        model.train()
        model(torch.rand(2, 3, SIZE, SIZE) * 2 - 1, (torch.rand(2, 1, SIZE, SIZE) > 0.5).float())
    for norm in norms:
        norm.momentum = 0.1
    return model.eval()


def inputs(batch=1, seed=1):
    generator = torch.Generator().manual_seed(seed)
    comp = torch.rand(batch, 3, SIZE, SIZE, generator=generator) * 2 - 1
    mask = torch.zeros(batch, 1, SIZE, SIZE)
    mask[:, :, 70:190, 90:160] = 1
    return comp, mask


@pytest.fixture(scope="module")
def tiny():
    return calibrated()


# ---------------------------------------------------------------- the generator

def test_full_generator_has_the_official_keys_and_shapes():
    official = dict(line.split() for line in (DATA / "dovenet_keys.txt").read_text().splitlines())
    assert len(official) == 88
    with torch.device("meta"):
        model = DoveNetGenerator()
    ours = {key: "x".join(map(str, value.shape)) or "scalar" for key, value in model.state_dict().items()}
    assert ours == official
    assert sum(p.numel() for p in model.parameters()) == 54_759_939


def test_tiny_generator_keeps_the_key_names():
    official = [line.split()[0] for line in (DATA / "dovenet_keys.txt").read_text().splitlines()]
    assert list(DoveNetGenerator(ngf=4).state_dict()) == official  # same names, same order


def test_checkpoint_round_trips_strictly(tiny, tmp_path):
    path = tmp_path / "latest_net_G.pth"
    save_state(path, tiny.state_dict())
    loaded = load_dovenet(path, ngf=4)
    assert not loaded.training
    comp, mask = inputs()
    with torch.no_grad():
        assert torch.equal(loaded(comp, mask), tiny(comp, mask))
    # a DataParallel file, and a file without num_batches_tracked (PyTorch < 0.4.1), load too
    old = {("module." + key): value for key, value in tiny.state_dict().items() if not key.endswith("num_batches_tracked")}
    save_state(path, old)
    load_dovenet(path, ngf=4)


def test_strict_loading_names_the_offending_key(tiny, tmp_path):
    state = tiny.state_dict()
    missing = {key: value for key, value in state.items() if key != "model.model.1.attention.0.weight"}
    with pytest.raises(DiffeelError, match=r"'model\.model\.1\.attention\.0\.weight' is missing"):
        load_strict(DoveNetGenerator(ngf=4), missing, "g.pth", "dovenet")
    with pytest.raises(DiffeelError, match=r"'model\.model\.9\.weight' is unexpected"):
        load_strict(DoveNetGenerator(ngf=4), {**state, "model.model.9.weight": torch.zeros(1)}, "g.pth", "dovenet")
    save_state(tmp_path / "g.pth", state)
    with pytest.raises(DiffeelError, match="has shape"):
        load_dovenet(tmp_path / "g.pth", ngf=8)  # a tiny file does not fit the wider network
    save_state(tmp_path / "empty.pth", {"epoch": torch.tensor(3), "config": {"a": 1}})
    with pytest.raises(DiffeelError, match="holds no model weights"):
        load_dovenet(tmp_path / "empty.pth", ngf=4)


def test_eval_output_is_deterministic_bounded_and_not_composed(tiny):
    comp, mask = inputs(batch=2)
    with torch.no_grad():
        first, second = tiny(comp, mask), tiny(comp, mask)
    assert torch.equal(first, second)
    assert first.shape == (2, 3, SIZE, SIZE)
    assert first.abs().max() <= 1 and first.std() > 1e-3
    # the official forward returns the raw tanh output over the whole image: it does not compose
    assert not torch.allclose(first * (1 - mask), comp * (1 - mask))
    composed = compose(first, comp, mask)
    assert torch.equal(composed * (1 - mask), comp * (1 - mask))
    assert torch.equal(composed * mask, first * mask)


def test_train_mode_uses_dropout_like_the_official_test():
    model = calibrated(seed=2).train()
    comp, mask = inputs(batch=2)
    with torch.no_grad():
        torch.manual_seed(0)
        a = model(comp, mask)
        torch.manual_seed(1)
        b = model(comp, mask)
    assert not torch.equal(a, b)


def test_bad_shapes_are_one_sentence_errors(tiny):
    comp, mask = inputs()
    with pytest.raises(DiffeelError, match="multiples of 256"):
        tiny(comp[..., :128], mask[..., :128])
    with pytest.raises(DiffeelError, match=r"mask must be \(N, 1, H, W\)"):
        tiny(comp, mask[:, :, :, :128])
    with pytest.raises(DiffeelError, match="composite must be"):
        tiny(comp[:, :2], mask)


# An independent transcription of the official generator, written functionally over the state dict
# from the architecture (it shares no code with diffeel.models.dovenet). A non-outermost level at
# prefix p: a = leaky_relu(x) (the official in-place LeakyReLU makes the skip carry a), down conv,
# BN, the inner level, ReLU, transposed conv, BN; output cat(a, decoded), gated by sigmoid(1×1 conv)
# on the three outermost levels.
def _bn(x, state, prefix):
    return F.batch_norm(x, state[prefix + "running_mean"], state[prefix + "running_var"],
                        state[prefix + "weight"], state[prefix + "bias"], False, 0.0, 1e-5)


def _up(x, state, key, bias=None):
    return F.conv_transpose2d(F.relu(x), state[key], bias, stride=2, padding=1)


def _level(x, state, prefix):
    a = F.leaky_relu(x, 0.2)
    down = F.conv2d(a, state[prefix + "model.1.weight"], stride=2, padding=1)
    if prefix + "model.4.running_mean" in state:  # innermost: no norm on the way down
        decoded = _bn(_up(down, state, prefix + "model.3.weight"), state, prefix + "model.4.")
    else:
        inner = _level(_bn(down, state, prefix + "model.2."), state, prefix + "model.3.")
        decoded = _bn(_up(inner, state, prefix + "model.5.weight"), state, prefix + "model.6.")
    joined = torch.cat([a, decoded], 1)
    if prefix + "attention.0.weight" in state:
        gate = F.conv2d(joined, state[prefix + "attention.0.weight"], state[prefix + "attention.0.bias"])
        joined = torch.sigmoid(gate) * joined
    return joined


def _reference(comp, mask, state):
    x = F.conv2d(torch.cat([comp, mask], 1), state["model.model.0.weight"], stride=2, padding=1)
    inner = _level(x, state, "model.model.1.")
    return torch.tanh(_up(inner, state, "model.model.3.weight", state["model.model.3.bias"]))


def test_numerics_match_an_independent_transcription():
    ngf = 4
    model = calibrated(ngf=ngf, seed=5)
    comp, mask = inputs(batch=2, seed=6)
    with torch.no_grad():
        ours, reference = model(comp, mask), _reference(comp, mask, model.state_dict())
    assert torch.allclose(ours, reference, atol=1e-5, rtol=0)
    # the numbers: three attention levels (ngf, 2ngf, 4ngf gates) and three dropout levels
    gates = [key for key in model.state_dict() if key.endswith("attention.0.weight")]
    assert [model.state_dict()[key].shape[0] for key in gates] == [2 * ngf, 4 * ngf, 8 * ngf]
    assert sum(isinstance(m, nn.Dropout) for m in model.modules()) == 3


def test_dovenet_state_strips_data_parallel_prefix(tiny):
    state = {"module." + key: value for key, value in tiny.state_dict().items()}
    assert list(dovenet_state(state)) == list(tiny.state_dict())


# ---------------------------------------------------------------- the blenders

WIDTH, ROWS = 256, 128
ROAD, SIDEWALK, SKY = TRAIN_ID["road"], TRAIN_ID["sidewalk"], TRAIN_ID["sky"]


def scene(seed=3):
    rng = np.random.default_rng(seed)
    image = rng.integers(60, 200, (ROWS, WIDTH, 3), dtype=np.uint8)
    labels = np.full((ROWS, WIDTH), SIDEWALK, np.uint8)
    labels[:54] = SKY
    labels[60:, 40:216] = ROAD
    return image, labels


def blob(h=30, w=24, colour=(230, 40, 40), seed=4):
    rng = np.random.default_rng(seed)
    rgb = np.clip(np.array(colour) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:h, :w]
    mask = ((yy - h / 2) / (h / 2)) ** 2 + ((xx - w / 2) / (w / 2)) ** 2 <= 1
    return rgb, mask


def test_blender_changes_only_mask_pixels_and_is_deterministic(tiny):
    image, _ = scene()
    rgb, mask = blob()
    placement = Placement(60, 100, 30, 24, 89)
    blender = DoveNetBlender(tiny)
    out = blender(image, rgb, mask, placement)
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.array_equal(out[~mask], rgb[~mask])
    assert not np.array_equal(out[mask], rgb[mask])
    assert np.array_equal(out, blender(image, rgb, mask, placement))
    assert np.array_equal(out, harmonize(image, rgb, mask, placement, tiny))


def test_blender_switches_and_strength(tiny):
    image, _ = scene()
    rgb, mask = blob()
    placement = Placement(60, 100, 30, 24, 89)
    assert np.array_equal(DoveNetBlender(tiny, enabled=False)(image, rgb, mask, placement), rgb)
    assert np.array_equal(DoveNetBlender(tiny, strength=0.0)(image, rgb, mask, placement), rgb)
    full = DoveNetBlender(tiny)(image, rgb, mask, placement).astype(int)
    half = DoveNetBlender(tiny, strength=0.5)(image, rgb, mask, placement).astype(int)
    assert np.abs(half - (rgb + (full - rgb) / 2)).max() <= 1
    with pytest.raises(DiffeelError, match="strength"):
        DoveNetBlender(tiny, strength=1.5)
    with pytest.raises(DiffeelError, match="needs a generator or a checkpoint"):
        DoveNetBlender()
    with pytest.raises(DiffeelError, match="placement is"):
        DoveNetBlender(tiny)(image, rgb, mask, Placement(60, 100, 20, 24, 79))


class Identity(nn.Module):
    """A 'generator' that returns its composite: harmonization must then change nothing."""

    def forward(self, comp, mask):
        return comp


def test_identity_generator_keeps_the_object_with_keep_detail():
    image, _ = scene()
    rgb, mask = blob(h=90, w=70)  # window 180 px: the 256 grid is finer, detail kept exactly
    placement = Placement(20, 100, 90, 70, 109)
    assert np.array_equal(DoveNetBlender(Identity())(image, rgb, mask, placement), rgb)
    big = np.random.default_rng(0).integers(0, 256, (400, 600, 3), dtype=np.uint8)
    rgb, mask = blob(h=300, w=200)  # window 600 → 256: only the change is resized, so still exact
    placement = Placement(50, 200, 300, 200, 349)
    assert np.array_equal(DoveNetBlender(Identity())(big, rgb, mask, placement), rgb)
    blurred = DoveNetBlender(Identity(), keep_detail=False)(big, rgb, mask, placement)
    assert not np.array_equal(blurred, rgb)  # resizing the 256×256 result back loses detail


def test_context_window_is_square_inside_and_holds_the_box():
    placement = Placement(60, 100, 30, 24, 89)
    rows, cols = context_window((ROWS, WIDTH), placement)
    assert (rows.stop - rows.start, cols.stop - cols.start) == (60, 60)
    assert rows.start <= 60 and rows.stop >= 90 and cols.start <= 100 and cols.stop >= 124
    corner = Placement(0, 0, 30, 24, 29)  # shifted inside, still square
    rows, cols = context_window((ROWS, WIDTH), corner)
    assert (rows.start, rows.stop, cols.start, cols.stop) == (0, 60, 0, 60)
    tall = Placement(10, 5, 100, 40, 109)  # window larger than the image: clipped
    rows, cols = context_window((ROWS, WIDTH), tall)
    assert (rows.start, rows.stop) == (0, ROWS) and cols.stop - cols.start == 200


def test_blender_handles_boxes_at_and_over_the_border(tiny):
    image, _ = scene()
    rgb, mask = blob()
    for placement, poisson in ((Placement(0, 0, 30, 24, 29), True), (Placement(-10, -8, 30, 24, 19), False),
                               (Placement(ROWS - 20, WIDTH - 10, 30, 24, ROWS + 9), True)):
        out = DoveNetBlender(tiny, poisson=poisson)(image, rgb, mask, placement)
        assert out.shape == rgb.shape and np.array_equal(out[~mask], rgb[~mask])
        assert not np.array_equal(out[mask], rgb[mask])
    assert np.array_equal(DoveNetBlender(tiny)(image, rgb, mask, Placement(ROWS + 5, 0, 30, 24, ROWS + 34)), rgb)


def test_poisson_blend_moves_the_object_toward_the_scene_and_survives_borders():
    image = np.full((ROWS, WIDTH, 3), 100, np.uint8)
    rgb = np.full((30, 24, 3), 250, np.uint8)
    mask = np.zeros((30, 24), bool)
    mask[3:27, 3:21] = True
    placement = Placement(60, 100, 30, 24, 89)
    out = poisson_blend(image, rgb, mask, placement)
    assert np.array_equal(out[~mask], rgb[~mask])
    assert np.abs(out[mask].astype(int) - 100).max() <= 2  # a flat object takes the flat scene's colour
    full = np.ones((30, 24), bool)
    for placement in (Placement(0, 0, 30, 24, 29), Placement(ROWS - 30, WIDTH - 24, 30, 24, ROWS - 1),
                      Placement(-5, WIDTH - 20, 30, 24, 24)):
        out = PoissonBlender()(image, rgb, full, placement)  # the mask reaches the image border
        seen = out[max(0, -placement.top):, :WIDTH - placement.left]  # rows and columns inside the image
        assert out.shape == rgb.shape and np.abs(seen.astype(int) - 100).max() <= 2
        assert np.array_equal(out[:max(0, -placement.top)], rgb[:max(0, -placement.top)])  # outside: unchanged
    assert np.array_equal(PoissonBlender(enabled=False)(image, rgb, full, Placement(0, 0, 30, 24, 29)), rgb)


def test_chain_order_and_switches(tiny):
    image, _ = scene()
    rgb, mask = blob()
    placement = Placement(60, 100, 30, 24, 89)
    lit = IlluminationBlender()(image, rgb, mask, placement)
    dove = DoveNetBlender(tiny)
    chained = ChainBlender(IlluminationBlender(), dove)(image, rgb, mask, placement)
    assert np.array_equal(chained, dove(image, lit, mask, placement))  # illumination first, then DoveNet
    built = make_blender(dovenet=tiny)
    assert [type(stage).__name__ for stage in built.stages] == ["IlluminationBlender", "DoveNetBlender"]
    assert np.array_equal(built(image, rgb, mask, placement), chained)
    assert np.array_equal(make_blender(dovenet=None)(image, rgb, mask, placement), lit)
    assert np.array_equal(make_blender(illumination=False, dovenet=None)(image, rgb, mask, placement), rgb)
    assert [type(s).__name__ for s in make_blender(illumination=0.3, dovenet=dove, poisson=True).stages] == \
        ["IlluminationBlender", "DoveNetBlender", "PoissonBlender"]


def test_checkpoint_path_builds_the_blender(tiny, tmp_path):
    save_state(tmp_path / "latest_net_G.pth", tiny.state_dict())
    image, _ = scene()
    rgb, mask = blob()
    placement = Placement(60, 100, 30, 24, 89)
    from_file = make_blender(illumination=False, dovenet=tmp_path / "latest_net_G.pth", ngf=4)
    assert np.array_equal(from_file(image, rgb, mask, placement), DoveNetBlender(tiny)(image, rgb, mask, placement))
    assert load_state(tmp_path / "latest_net_G.pth").keys() == tiny.state_dict().keys()


def test_synthesizer_labels_stay_exact_with_dovenet(tiny):
    image, labels = scene()
    camera = Camera.for_size(WIDTH, ROWS)
    rgb, mask = blob(h=40, w=30)
    bank = ObjectBank([BankObject(rgb, mask, "crate", (0.8, 1.2), "crate")])
    plain = CopyPasteSynthesizer(bank, 2, camera, harmonize=False).synthesize(image, labels, 7)
    dove = CopyPasteSynthesizer(bank, 2, camera, harmonize=DoveNetBlender(tiny)).synthesize(image, labels, 7)
    chain = CopyPasteSynthesizer(bank, 2, camera, harmonize=make_blender(dovenet=tiny, poisson=True)).synthesize(image, labels, 7)
    assert (plain.labels == ANOMALY_TRAIN_ID).sum() > 0
    for result in (dove, chain):
        assert np.array_equal(result.labels, plain.labels)
        assert [o.placement for o in result.objects] == [o.placement for o in plain.objects]
        changed = np.any(result.image != plain.image, axis=2)
        assert changed.any() and not changed[plain.labels != ANOMALY_TRAIN_ID].any()  # only object pixels differ
