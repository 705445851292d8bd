"""diffeel's networks against outputs recorded from the official code (tests/official/record_official_outputs.py):
the same name-derived weights (tests/official_weights.py) loaded through diffeel's own checkpoint
paths, the same input, the official outputs to float32 rounding."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from diffeel.models import create_model
from official_weights import name_state, name_tensor, probe

FIXTURES = Path(__file__).parent / "data" / "official"


def fixture(name: str) -> dict:
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def assert_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal up to float32 summation order (measured: 1e-6 to 2e-5 of the output's largest value on
    one CPU; a single wrong batch-norm statistic moves DoveNet's output by 7e-2)."""
    assert actual.shape == expected.shape
    scale = float(expected.abs().max())
    assert float((actual - expected).abs().max()) <= 1e-4 * scale, float((actual - expected).abs().max()) / scale


@pytest.mark.parametrize("layout", ["rpl_res", "rpl_nvidia"])
def test_rpl_wrn38_matches_rpl_code(tmp_path, layout):
    """RPL's DeepWV3Plus: out1 and out2, from a file in RPL's res.pth layout (branch1.*) and in
    NVIDIA's closed-set layout (module.*, the residual module mapped from the ASPP as RPL's loader
    does; atten_aspp_final, which RPL draws at random, set to the same weight on both sides)."""
    record = fixture(layout)
    wrapper = "model" if layout == "rpl_res" else "state_dict"
    torch.save({wrapper: name_state(record["keys"])}, tmp_path / "weights.pth")
    model = create_model("rpl_wrn38", checkpoint=tmp_path / "weights.pth")
    if layout == "rpl_nvidia":
        weight = model.residual_block.atten_aspp_final.weight
        with torch.no_grad():
            weight.copy_(name_tensor(record["final_key"], weight.shape))
    images = probe(record["input_shape"], seed=record["input_seed"])
    with torch.no_grad():
        out1, out2 = model(images)
    assert_close(out1, record["out1"])
    assert_close(out2, record["out2"])


@pytest.mark.parametrize("name", ["u2net", "u2netp"])
def test_u2net_matches_the_official_model(tmp_path, name):
    record = fixture(name)
    torch.save(name_state(record["keys"]), tmp_path / f"{name}.pth")  # the released files are bare state dicts
    model = create_model(name, checkpoint=tmp_path / f"{name}.pth")
    with torch.no_grad():
        maps = torch.stack(model(probe(record["input_shape"], seed=record["input_seed"])))
    assert_close(maps, record["maps"])


def test_dovenet_matches_the_official_generator(tmp_path):
    """DoveNet's s2ad U-Net generator (batch norm, dropout, attention), in eval mode on both sides."""
    record = fixture("dovenet")
    torch.save(name_state(record["keys"]), tmp_path / "latest_net_G.pth")
    model = create_model("dovenet", checkpoint=tmp_path / "latest_net_G.pth")
    comp = probe((1, 3, 256, 256), seed=record["comp_seed"])
    mask = (probe((1, 1, 256, 256), seed=record["mask_seed"], low=0.0, high=1.0) > 0.7).float()
    with torch.no_grad():
        output = model(comp, mask)
    assert_close(output, record["output"])


def test_mask2anomaly_matches_the_official_maskformer(tmp_path):
    """Mask2Anomaly's MaskFormer (detectron2 ResNet-50, MSDeformAttn pixel decoder on its pure-PyTorch
    path, GMA transformer decoder): the head's pred_logits and pred_masks, and Eq. 3's class map
    against the semantic map of the official eval forward (padding cropped)."""
    from diffeel.models.mask2anomaly_inference import mask_wise_logits

    record = fixture("mask2anomaly")
    torch.save({"model": name_state(record["keys"])}, tmp_path / "model_final.pth")
    model = create_model("mask2anomaly_r50", checkpoint=tmp_path / "model_final.pth")
    image = probe(record["image_shape"], seed=record["image_seed"], low=0.0, high=255.0)
    with torch.no_grad():
        outputs = model(image[None])
        semantic = mask_wise_logits(outputs, record["image_shape"][1:], class_weights="softmax")[0]
    assert_close(outputs["pred_logits"], record["pred_logits"])
    assert_close(outputs["pred_masks"], record["pred_masks"])
    assert_close(semantic, record["sem_seg"])


def test_mask2anomaly_official_score_matches_the_official_evaluation(tmp_path):
    """``official_anomaly_score`` against the official evaluation's channels (detectron2's predictor:
    BGR, short side to 1024, the model's semantic map plus one channel per confident query of
    classes 2..10, here all 100 after a class boost): the script's score is 1 - the largest channel,
    zeroed where an appended channel reaches 0.5 (more than one appended), averaged with the flip's."""
    import numpy as np

    from diffeel.models.mask2anomaly_inference import official_anomaly_score

    record = fixture("mask2anomaly_official_score")
    state = name_state(record["keys"])
    state[record["class_bias"]][record["boosted_class"]] += record["boost"]
    torch.save({"model": state}, tmp_path / "model_final.pth")
    model = create_model("mask2anomaly_r50", checkpoint=tmp_path / "model_final.pth")
    image_bgr = probe(record["image_shape"], seed=record["image_seed"], low=0.0, high=256.0).floor().clamp(max=255).to(torch.uint8)

    def script_score(view: str) -> np.ndarray:
        classes, extra = record[f"{view}_classes"], record[f"{view}_extra_max"]
        score = 1 - torch.maximum(classes.amax(0), extra)
        if record[f"{view}_extra_count"] > 1:
            score = score * (extra < 0.5)
        return score.numpy()

    assert record["image_extra_count"] == record["flipped_extra_count"] == 100
    expected = (script_score("image") + script_score("flipped")[:, ::-1]) / 2
    actual = official_anomaly_score(model, image_bgr.numpy())
    assert actual.shape == expected.shape and 0.2 < (expected == 0).mean() < 0.95  # the zeroing rule fired on part of it
    assert np.array_equal(actual == 0, expected == 0)
    # the class map sums 100 queries at 1024×1536 (values up to ~20): float32 error grows with it
    np.testing.assert_allclose(actual, expected, rtol=1e-3, atol=1e-4)
