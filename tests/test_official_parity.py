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


def seeded_image(shape, seed: int) -> torch.Tensor:
    """The recording script's seeded uint8 image (H, W, 3)."""
    return probe(shape, seed=seed, low=0.0, high=256.0).floor().clamp(max=255).to(torch.uint8)


def script_outputs(model, script: dict, name: str) -> dict:
    """diffeel's preprocessing and logits for the script's image ``name``, at the recorded pixels."""
    image = script["images"][name]
    rgb = seeded_image(image["shape"], image["seed"]).permute(2, 0, 1)[None].float()  # what scoring feeds a "0-255" model
    pixels = script["pixels"].long()
    with torch.no_grad():
        network_input, logits = model.preprocess(rgb), model(rgb)
    return {"input": network_input[0].flatten(1)[:, pixels], "input_mean": network_input[0].mean((1, 2)),
            "output": logits[0].flatten(1)[:, pixels], "output_mean": logits[0].mean((1, 2)), "shape": logits.shape}


def released_layout(keys) -> dict:
    """Name-derived weights in the layout of a file saved before PyTorch 0.4.1 (no ``num_batches_tracked``)."""
    return {name: tensor for name, tensor in name_state(keys).items() if not name.endswith("num_batches_tracked")}


def test_espnet_matches_the_official_network(tmp_path):
    """ESPNet p=2, q=8 (test/Model.py's ESPNet(20, 2, 8)): all 20 channels at the input size."""
    record = fixture("espnet")
    torch.save(released_layout(record["keys"]), tmp_path / "espnet_p_2_q_8.pth")
    model = create_model("espnet_cityscapes", checkpoint=tmp_path / "espnet_p_2_q_8.pth")
    with torch.no_grad():
        output = model.network(probe(record["input_shape"], seed=record["input_seed"]))
    assert_close(output, record["output"])


def assert_matches_script(model, script: dict, image: str) -> None:
    """diffeel's preprocessing and logits against the official script's on one recorded image; the
    script's first 19 channels (its 20th is void or background)."""
    expected, actual = script["images"][image], script_outputs(model, script, image)
    assert actual["shape"] == (1, 19, 512, 1024)
    assert_close(actual["input"], expected["input"])
    assert_close(actual["input_mean"], expected["input_mean"])
    assert_close(actual["output"], expected["output"][:19])
    assert_close(actual["output_mean"], expected["output_mean"][:19])


@pytest.mark.parametrize("image", ["small", "cityscapes"])
def test_espnet_matches_the_official_test_script(tmp_path, image):
    """The official test script's evaluateModel (cv2.imread's BGR, its mean / std, cv2.resize to
    1024×512, / 255) against diffeel's preprocessing of the same RGB image, up- (100×60) and
    down-sampled (2048×1024); the logits are the script's first 19 channels (void dropped)."""
    record = fixture("espnet")
    torch.save(released_layout(record["keys"]), tmp_path / "espnet_p_2_q_8.pth")
    model = create_model("espnet_cityscapes", checkpoint=tmp_path / "espnet_p_2_q_8.pth")
    assert_matches_script(model, record["script"], image)


def test_espnetv2_matches_the_official_network(tmp_path):
    """ESPNetv2 s = 2.0, Cityscapes (espnetv2_seg with dataset "city"): all 20 channels at the input size."""
    record = fixture("espnetv2")
    assert record["classes"] == 20
    torch.save(name_state(record["keys"]), tmp_path / "espnetv2_s_2.0_city_1024x512.pth")
    model = create_model("espnetv2_cityscapes", checkpoint=tmp_path / "espnetv2_s_2.0_city_1024x512.pth")
    with torch.no_grad():
        output = model.network(probe(record["input_shape"], seed=record["input_seed"]))
    assert_close(output, record["output"])


@pytest.mark.parametrize("image", ["exact", "small", "cityscapes"])
def test_espnetv2_matches_the_official_test_script(tmp_path, image):
    """The official test_segmentation.py's evaluate (PIL RGB, Image.BILINEAR to 1024×512, ImageNet
    mean / std) against diffeel's preprocessing of the same RGB image, at 1024×512 (not resized),
    up- (100×60) and down-sampled (2048×1024): PIL's integer resize reproduced, the logits are the
    script's first 19 channels ("background" dropped)."""
    record = fixture("espnetv2")
    torch.save(name_state(record["keys"]), tmp_path / "espnetv2_s_2.0_city_1024x512.pth")
    model = create_model("espnetv2_cityscapes", checkpoint=tmp_path / "espnetv2_s_2.0_city_1024x512.pth")
    assert_matches_script(model, record["script"], image)


def test_pil_bilinear_resize_matches_pillow():
    """pil_bilinear_resize against the installed Pillow on seeded uint8 images, up, down, one axis
    only and not at all; all of them take the horizontal pass first in every Pillow version."""
    import numpy as np
    from PIL import Image

    from diffeel.models.espnetv2 import pil_bilinear_resize

    for seed, (height, width) in enumerate([(60, 100), (1024, 2048), (720, 1280), (512, 700), (300, 1024), (512, 1024)]):
        image = seeded_image((height, width, 3), seed)
        expected = np.asarray(Image.fromarray(image.numpy()).resize((1024, 512), Image.BILINEAR))
        actual = pil_bilinear_resize(image.permute(2, 0, 1)[None].float(), (512, 1024))[0].permute(1, 2, 0)
        assert np.array_equal(actual.numpy(), expected), (height, width)


@pytest.mark.parametrize("name, fixture_name", [("espnet_cityscapes", "espnet"), ("espnetv2_cityscapes", "espnetv2")])
def test_official_layouts_load_strictly(tmp_path, name, fixture_name):
    """The official key names load as saved, with a DataParallel ``module.`` prefix, and as diffeel
    saves the model; a renamed key or a wrong shape ends in one sentence naming the key."""
    from diffeel.errors import DiffeelError

    state = released_layout(fixture(fixture_name)["keys"])
    layouts = {"bare": state, "module": {f"module.{key}": value for key, value in state.items()}}
    for layout, weights in layouts.items():
        torch.save(weights, tmp_path / f"{layout}.pth")
        model = create_model(name, checkpoint=tmp_path / f"{layout}.pth")
    torch.save(model.state_dict(), tmp_path / "diffeel.pth")
    create_model(name, checkpoint=tmp_path / "diffeel.pth")

    first = next(iter(state))
    renamed = {(key + "_renamed" if key == first else key): value for key, value in state.items()}
    torch.save(renamed, tmp_path / "renamed.pth")
    with pytest.raises(DiffeelError, match=f"key 'network.{first}' is missing") as missing:
        create_model(name, checkpoint=tmp_path / "renamed.pth")
    reshaped = dict(state, **{first: state[first][:1]})
    torch.save(reshaped, tmp_path / "reshaped.pth")
    with pytest.raises(DiffeelError, match="has shape") as wrong_shape:
        create_model(name, checkpoint=tmp_path / "reshaped.pth")
    for error in (missing, wrong_shape):
        message = str(error.value)
        assert "\n" not in message and message.count(". ") == 0, message
