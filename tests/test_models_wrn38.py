"""RPL's WiderResNet38 host: module tree, checkpoint layouts, numerics, freezing, the registry."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from diffeel.errors import DiffeelError
from diffeel.models import RPLWiderResNet38, create_model, list_models, scoring_logits
from model_fixtures import randomise_batch_norms

DATA = Path(__file__).parent / "data"
TINY = 16  # width divisor of the test network: same module tree, 1/16 of the channels


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return randomise_batch_norms(RPLWiderResNet38(width_divisor=TINY)).eval()


@pytest.fixture(scope="module")
def images():
    return torch.randn(2, 3, 40, 56, generator=torch.Generator().manual_seed(2))


def test_full_width_state_matches_the_official_module_tree():
    """Key names and shapes of the real network equal those of RPL's DeepWV3Plus (recorded from it)."""
    official = dict(line.split() for line in (DATA / "rpl_wrn38_state_keys.txt").read_text().splitlines())
    with torch.device("meta"):
        model = RPLWiderResNet38()
    ours = {key: "x".join(map(str, value.shape)) or "scalar" for key, value in model.state_dict().items()}
    assert ours == official


# An independent transcription of DeepWV3Plus + residual module from the architecture description,
# written functionally over the state dict: it shares no code with diffeel.models.
def _bn(x, state, prefix, relu=True):
    x = F.batch_norm(x, state[prefix + "running_mean"], state[prefix + "running_var"], state[prefix + "weight"], state[prefix + "bias"], False, 0.0, 1e-5)
    return F.relu(x) if relu else x


def _block(x, state, prefix, stride, dilation):
    activated = _bn(x, state, prefix + "bn1.0.")
    shortcut = F.conv2d(activated, state[prefix + "proj_conv.weight"], stride=stride) if prefix + "proj_conv.weight" in state else x
    if prefix + "convs.conv3.weight" in state:  # bottleneck 1×1 (stride) - 3×3 (dilated) - 1×1
        y = F.conv2d(activated, state[prefix + "convs.conv1.weight"], stride=stride)
        y = F.conv2d(_bn(y, state, prefix + "convs.bn2.0."), state[prefix + "convs.conv2.weight"], padding=dilation, dilation=dilation)
        y = F.conv2d(_bn(y, state, prefix + "convs.bn3.0."), state[prefix + "convs.conv3.weight"])
    else:
        y = F.conv2d(activated, state[prefix + "convs.conv1.weight"], stride=stride, padding=dilation, dilation=dilation)
        y = F.conv2d(_bn(y, state, prefix + "convs.bn2.0."), state[prefix + "convs.conv2.weight"], padding=dilation, dilation=dilation)
    return y + shortcut


def _aspp(x, state, prefix):
    pooled = _bn(F.conv2d(x.mean((2, 3), keepdim=True), state[prefix + "img_conv.0.weight"]), state, prefix + "img_conv.1.")
    branches = [pooled.expand(-1, -1, *x.shape[-2:])]
    for index, rate in enumerate((0, 12, 24, 36)):
        weight = state[f"{prefix}features.{index}.0.weight"]
        branches.append(_bn(F.conv2d(x, weight, padding=rate, dilation=max(rate, 1)), state, f"{prefix}features.{index}.1."))
    return torch.cat(branches, 1)


def reference_forward(state, images):
    up = lambda x, size: F.interpolate(x, size=size, mode="bilinear", align_corners=True)  # noqa: E731
    x = F.conv2d(images, state["mod1.conv1.weight"], padding=1)
    x = F.max_pool2d(x, 3, 2, 1)
    for stage, (blocks, dilation, stride) in enumerate([(3, 1, 1), (3, 1, 1), (6, 1, 2), (3, 2, 1), (1, 4, 1), (1, 4, 1)], start=2):
        if stage == 3:
            m2 = x
            x = F.max_pool2d(x, 3, 2, 1)
        for block in range(blocks):
            x = _block(x, state, f"mod{stage}.block{block + 1}.", stride if block == 0 else 1, dilation)
    dec0 = torch.cat([F.conv2d(m2, state["bot_fine.weight"]), up(F.conv2d(_aspp(x, state, "aspp."), state["bot_aspp.weight"]), m2.shape[-2:])], 1)
    res = F.conv2d(up(F.conv2d(_aspp(x, state, "residual_block.atten_aspp."), state["residual_block.bot_atten_aspp.weight"]), m2.shape[-2:]),
                   state["residual_block.atten_aspp_final.weight"])

    def final(y):
        y = _bn(F.conv2d(y, state["final.0.weight"], padding=1), state, "final.1.")
        y = _bn(F.conv2d(y, state["final.3.weight"], padding=1), state, "final.4.")
        return up(F.conv2d(y, state["final.6.weight"]), images.shape[-2:])

    return final(dec0), final(dec0 + res)


def test_forward_equals_an_independent_transcription(tiny, images):
    with torch.inference_mode():
        out = tiny(images)
        expected = reference_forward(tiny.state_dict(), images)
    assert out[0].shape == out[1].shape == (2, 19, 40, 56)
    assert torch.allclose(out.host_logits, expected[0], atol=1e-5, rtol=1e-4)
    assert torch.allclose(out.rpl_logits, expected[1], atol=1e-5, rtol=1e-4)
    assert not torch.allclose(out[0], out[1])


def test_channels_last_inference_equals_eager(tiny, images):
    fast = RPLWiderResNet38(width_divisor=TINY).eval()
    fast.load_state_dict(tiny.state_dict())
    fast = fast.to(memory_format=torch.channels_last)
    with torch.inference_mode():
        eager = tiny(images)
        optimised = fast(images.contiguous(memory_format=torch.channels_last))
    assert torch.allclose(eager.rpl_logits, optimised.rpl_logits, atol=1e-5)


def _rpl_file(model, path):
    torch.save({"model": {"branch1." + k: v for k, v in model.state_dict().items()}, "optimizer": {}, "epoch": 3, "iteration": 7}, path)
    return path


def _nvidia_file(model, path):
    state = {"module." + k: v for k, v in model.state_dict().items() if not k.startswith("residual_block.")}
    state["module.criterion.nll_loss.weight"] = torch.ones(19)
    torch.save({"state_dict": state, "epoch": 170, "mean_iu": 0.81}, path)
    return path


def test_rpl_layout_loads_strictly_and_reproduces_outputs(tiny, images, tmp_path):
    loaded = create_model("rpl_wrn38", checkpoint=_rpl_file(tiny, tmp_path / "res.pth"), width_divisor=TINY)
    with torch.inference_mode():
        assert torch.equal(loaded(images).rpl_logits, tiny(images).rpl_logits)
    assert loaded.residual_trained


def test_nvidia_layout_initialises_the_residual_module_as_rpl(tiny, images, tmp_path):
    torch.manual_seed(5)
    kaiming = RPLWiderResNet38(width_divisor=TINY).residual_block.atten_aspp_final.weight.detach().clone()
    torch.manual_seed(5)
    loaded = create_model("rpl_wrn38", checkpoint=_nvidia_file(tiny, tmp_path / "cityscapes_best.pth"), width_divisor=TINY)
    for (name, copied), original in zip(loaded.residual_block.atten_aspp.state_dict().items(), tiny.aspp.state_dict().values()):
        assert torch.equal(copied, original), name
    assert torch.equal(loaded.residual_block.bot_atten_aspp.weight, tiny.bot_aspp.weight)
    assert torch.equal(loaded.residual_block.atten_aspp_final.weight, kaiming)  # Kaiming, seeded by the global seed
    assert not loaded.residual_trained
    with torch.inference_mode():
        assert torch.equal(loaded(images).host_logits, tiny(images).host_logits)
        # an untrained residual would give meaningless scores: scoring uses the closed model's logits
        assert torch.equal(scoring_logits(loaded, images), tiny(images).host_logits)
        assert torch.equal(scoring_logits(tiny, images), tiny(images).rpl_logits)


def test_diffeel_layout_round_trips(tiny, images, tmp_path):
    path = tmp_path / "checkpoint.pt"
    torch.save({"model": tiny.state_dict(), "config": {"recipe": "rpl+eel"}, "step": 10}, path)
    loaded = create_model("rpl_wrn38", checkpoint=path, width_divisor=TINY)
    with torch.inference_mode():
        assert torch.equal(loaded(images).rpl_logits, tiny(images).rpl_logits)


@pytest.mark.parametrize("damage, phrase", [
    (lambda s: s.pop("branch1.mod4.block3.convs.conv2.weight"), "key 'mod4.block3.convs.conv2.weight' is missing"),
    (lambda s: s.__setitem__("branch1.mod8.block1.bn1.0.weight", torch.ones(3)), "key 'mod8.block1.bn1.0.weight' is unexpected"),
    (lambda s: s.pop("branch1.residual_block.bot_atten_aspp.weight"), "key 'residual_block.bot_atten_aspp.weight' is missing"),
])
def test_a_missing_or_unexpected_key_is_named(tiny, tmp_path, damage, phrase):
    state = {"branch1." + k: v for k, v in tiny.state_dict().items()}
    damage(state)
    torch.save({"model": state}, tmp_path / "bad.pth")
    with pytest.raises(DiffeelError, match=phrase):
        create_model("rpl_wrn38", checkpoint=tmp_path / "bad.pth", width_divisor=TINY)


def test_another_width_or_architecture_is_refused(tiny, tmp_path):
    with pytest.raises(DiffeelError, match=r"'mod1.conv1.weight' has shape \[4, 3, 3, 3\] in the file but \[8, 3, 3, 3\]"):
        create_model("rpl_wrn38", checkpoint=_rpl_file(tiny, tmp_path / "res.pth"), width_divisor=8)
    small = create_model("small_deeplab")
    torch.save({"model": small.state_dict()}, tmp_path / "small.pt")
    with pytest.raises(DiffeelError, match="does not fit rpl_wrn38: key 'mod1.conv1.weight' is missing"):
        create_model("rpl_wrn38", checkpoint=tmp_path / "small.pt", width_divisor=TINY)


@pytest.mark.parametrize("content, phrase", [(b"not a checkpoint", "could not be read"), (None, "could not be read"), (b"", "could not be read")])
def test_corrupt_or_truncated_checkpoint(tiny, tmp_path, content, phrase):
    path = tmp_path / "broken.pth"
    if content is None:  # a real checkpoint cut in half
        _rpl_file(tiny, path)
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    else:
        path.write_bytes(content)
    with pytest.raises(DiffeelError, match=phrase):
        create_model("rpl_wrn38", checkpoint=path, width_divisor=TINY)


def test_host_is_frozen_by_module_and_out1_never_moves(images):
    torch.manual_seed(0)
    model = randomise_batch_norms(RPLWiderResNet38(width_divisor=TINY))
    model.train()
    host_state = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith("residual_block.")}
    residual_bn = model.residual_block.atten_aspp.features[1][1]
    residual_mean = residual_bn.running_mean.clone()
    with torch.no_grad():
        before = model(images).host_logits.clone()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    out = model(images)
    out.rpl_logits.logsumexp(1).mean().backward()
    assert all(p.grad is None for name, p in model.named_parameters() if not name.startswith("residual_block."))
    assert all(p.grad is not None for p in model.residual_block.parameters())
    optimizer.step()
    with torch.no_grad():
        after = model(images).host_logits
    assert torch.equal(before, after)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in host_state.items())  # BN statistics included
    assert not torch.equal(residual_mean, residual_bn.running_mean)  # the residual module's BN trains
    assert all(not m.training for m in model.host_modules()) and model.residual_block.training


def test_registry_lists_and_refuses_unknown_names():
    assert {"rpl_wrn38", "small_deeplab", "small_rpl"} <= set(list_models())
    with pytest.raises(DiffeelError, match="unknown model 'wrn99'"):
        create_model("wrn99")
    with pytest.raises(DiffeelError, match="does not take these options"):
        create_model("rpl_wrn38", depth=3)


# --- the any-host adapter: a factory defined here -------------------------------------------

class PlainSegmenter(torch.nn.Module):
    """A user's segmenter: logits only."""

    def __init__(self, classes: int = 19):
        super().__init__()
        self.head = torch.nn.Conv2d(3, classes, 1)

    def forward(self, images):
        return self.head(images)


def make_segmenter(classes: int = 19):
    torch.manual_seed(3)
    return PlainSegmenter(classes)


def not_a_module():
    return "model"


def test_factory_by_file_path_and_module_name(tmp_path, images):
    spec = f"{__file__}:make_segmenter"
    model = create_model(spec)
    assert isinstance(model, torch.nn.Module) and not model.training
    with torch.inference_mode():
        assert scoring_logits(model, images).shape == (2, 19, 40, 56)
    trained = make_segmenter()
    torch.nn.init.constant_(trained.head.bias, 0.5)
    torch.save({"state_dict": {"module." + k: v for k, v in trained.state_dict().items()}}, tmp_path / "user.pth")
    loaded = create_model(spec, checkpoint=tmp_path / "user.pth")
    assert torch.equal(loaded.head.bias, trained.head.bias)
    torch.save({"model": {"head.weight": trained.head.weight}}, tmp_path / "partial.pth")
    with pytest.raises(DiffeelError, match="key 'head.bias' is missing"):
        create_model(spec, checkpoint=tmp_path / "partial.pth")
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        assert isinstance(create_model("test_models_wrn38:make_segmenter", classes=5).head, torch.nn.Conv2d)
    finally:
        sys.path.remove(str(Path(__file__).parent))


@pytest.mark.parametrize("spec, phrase", [
    ("no_such_package_xyz.models:build", "could not import no_such_package_xyz.models"),
    (f"{__file__}:missing_factory", "has no callable 'missing_factory'"),
    (f"{__file__}:not_a_module", "returned a str, not a torch.nn.Module"),
    ("/nowhere/model.py:build", "does not exist"),
])
def test_factory_errors(spec, phrase):
    with pytest.raises(DiffeelError, match=phrase):
        create_model(spec)


def test_models_command_lists_every_registered_model(capsys):
    from diffeel.cli import main

    assert main(["models"]) == 0
    printed = capsys.readouterr().out
    assert all(f"{name}: " in printed for name in list_models()) and "package.module:factory" in printed
