"""Record the official networks' outputs on name-derived weights (tests/official_weights.py) into
tests/data/official/*.pt, the fixtures tests/test_official_parity.py compares diffeel with.

Not run by the test suite: it needs the official code, which is not part of diffeel. Check out each
repository at the pinned commit, then run, from the repository root:

    python tests/official/record_official_outputs.py \\
        --rpl RPL --u2net U-2-Net --dovenet Image-Harmonization-Dataset-iHarmony4 \\
        --mask2anomaly Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation \\
        --espnet ESPNet --edgenets EdgeNets

- RPL (yyliu01/RPL, commit 1a327d50e78176202a457c894a56ac6e6e6c7242): ``rpl.code/model/network.py``
  ``Network(19)`` (``branch1`` = ``DeepWV3Plus``), loaded as RPL's ``res.pth`` is (its keys), and
  NVIDIA's closed-set layout through RPL's own ``utils/pyt_utils.load_model(is_restore=True)``
  mapping (the residual module copied from the ASPP), with ``atten_aspp_final`` then set to its
  name-derived weight (RPL draws it at random);
- U^2-Net (xuebinqin/U-2-Net, commit ac7e1c817ecab7c7dff5ce6b1abba61cd213ff29): ``model/u2net.py``
  ``U2NET(3, 1)`` and ``U2NETP(3, 1)``;
- DoveNet (bcmi/Image-Harmonization-Dataset-iHarmony4, commit 0bdb51ddda979f5a38536d80c161fa5733480f25):
  ``DoveNet/models/networks.py`` ``define_G(4, 3, 64, "s2ad", norm="batch", use_dropout=True)``;
- Mask2Anomaly (shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation, commit
  5c84283281eeed95b4cf0c7e1287795309c7fd9e): ``MaskFormer`` built by detectron2 from
  ``configs/cityscapes/semantic-segmentation/anomaly_inference.yaml``: the head's ``pred_logits`` and
  ``pred_masks``, and the semantic map its eval forward returns (``sem_seg``). This one needs
  detectron2 (built from facebookresearch/detectron2, commit 02b5c4e295e990042a714712c21dc79b731e8833,
  CPU only); the deformable attention's CUDA operator is replaced by an empty module, so the
  official code takes its pure-PyTorch path, and torchvision's detection operators and timm's Swin
  layers by empty names (:func:`stub_torchvision`).
- ESPNet (sacmehta/ESPNet, commit afe71c38edaee3514ca44e0adcafdf36109bf437): ``test/Model.py``
  ``ESPNet(20, 2, 8)``, on a small input; and the whole test script: ``test/VisualizeResults.py``'s
  own ``evaluateModel`` (``cv2.imread``, its mean / std, ``cv2.resize`` to 1024×512, / 255) run on
  PNG files of a small and of a Cityscapes-sized seeded image, the network's input and output
  sampled at fixed pixels (:func:`record_script`).
- ESPNetv2 (sacmehta/EdgeNets, commit 2b232d3f7fb60658755dad1ebca0ffc895cc795e):
  ``model/segmentation/espnetv2.py`` ``espnetv2_seg`` with ``s=2.0, dataset="city"`` and the 20
  classes of ``CITYSCAPE_CLASS_LIST``, on a small input; and ``test_segmentation.py``'s own
  ``evaluate`` (PIL RGB, ``Image.BILINEAR`` resize to 1024×512, ImageNet mean / std) on PNG files of
  a 1024×512, a small and a Cityscapes-sized seeded image. Its two torchvision calls, ``to_tensor``
  and ``normalize``, are stand-ins with torchvision's arithmetic (:func:`stub_torchvision_functional`).

Every network runs in eval mode on the CPU in float32. torchvision and timm are never imported
(:func:`stub_torchvision`). Each fixture holds
the official key names and shapes (the weights are rebuilt from them), the input's shape and seed,
and the outputs.
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from official_weights import name_state, name_tensor, probe  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "data" / "official"
CLASS_BIAS, BOOSTED_CLASS, CLASS_BOOST = "sem_seg_head.predictor.class_embed.bias", 5, 15.0
SCRIPT_SIZE, SCRIPT_SAMPLES, SAMPLES_SEED = (512, 1024), 1024, 10  # the scripts' network input (H, W); pixels kept


def load_file(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def keys_and_shapes(state: dict) -> list[tuple[str, list[int]]]:
    return [(name, list(tensor.shape)) for name, tensor in state.items()]


def save(name: str, **record) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.save(record, OUT / f"{name}.pt")
    print(f"wrote {OUT / name}.pt")


def record_rpl(root: Path) -> None:
    code = root / "rpl.code"
    stub_torchvision()
    sys.path.insert(0, str(code))
    from model.network import Network
    from utils.pyt_utils import load_model

    torch.manual_seed(0)
    model = Network(19).eval()
    layout = keys_and_shapes(model.state_dict())
    images = probe((1, 3, 48, 64), seed=1)
    model.load_state_dict(name_state(layout), strict=True)
    with torch.no_grad():
        out1, out2 = model(images)
    save("rpl_res", keys=layout, input_shape=[1, 3, 48, 64], input_seed=1, out1=out1, out2=out2)

    # NVIDIA's cityscapes_best.pth layout: module.<key>, no residual module; RPL's loader maps it
    nvidia = [("module." + name[len("branch1."):], shape) for name, shape in layout if ".residual_block." not in name]
    closed = Network(19).eval()
    load_model(closed, {name: tensor for name, tensor in name_state(nvidia).items()}, is_restore=True)
    final = "branch1.residual_block.atten_aspp_final.weight"
    with torch.no_grad():
        closed.state_dict()[final].copy_(name_tensor(final, closed.state_dict()[final].shape))
        out1, out2 = closed(images)
    save("rpl_nvidia", keys=nvidia, final_key=final, input_shape=[1, 3, 48, 64], input_seed=1, out1=out1, out2=out2)
    sys.path.remove(str(code))
    for name in [name for name in sys.modules if name == "model" or name.startswith(("model.", "utils", "engine", "config"))]:
        del sys.modules[name]


def record_u2net(root: Path) -> None:
    module = load_file(root / "model" / "u2net.py", "official_u2net")
    images = probe((1, 3, 64, 64), seed=2)
    for name, build in (("u2net", module.U2NET), ("u2netp", module.U2NETP)):
        model = build(3, 1).eval()
        layout = keys_and_shapes(model.state_dict())
        model.load_state_dict(name_state(layout), strict=True)
        with torch.no_grad():
            maps = torch.stack(model(images))
        save(name, keys=layout, input_shape=[1, 3, 64, 64], input_seed=2, maps=maps)


def record_dovenet(root: Path) -> None:
    networks = load_file(root / "DoveNet" / "models" / "networks.py", "official_dovenet_networks")
    model = networks.define_G(4, 3, 64, "s2ad", norm="batch", use_dropout=True).eval()
    layout = keys_and_shapes(model.state_dict())
    model.load_state_dict(name_state(layout), strict=True)
    comp = probe((1, 3, 256, 256), seed=3)
    mask = (probe((1, 1, 256, 256), seed=4, low=0.0, high=1.0) > 0.7).float()
    with torch.no_grad():
        output = model(torch.cat([comp, mask], dim=1))
    save("dovenet", keys=layout, comp_seed=3, mask_seed=4, output=output)


def stub_torchvision() -> None:
    """RPL's network module imports torchvision's ``transforms``, detectron2 and Mask2Former import
    torchvision's detection operators (RoI pooling, NMS, deformable convolution) and timm's Swin
    layers when their modules load; the networks recorded here call none of them, and neither
    package imports beside the pinned torch, so stand-ins with those names are used (nothing of
    torchvision or timm is imported)."""
    torchvision = sys.modules.setdefault("torchvision", types.ModuleType("torchvision"))
    ops = types.ModuleType("torchvision.ops")
    ops.boxes = types.ModuleType("torchvision.ops.boxes")
    for name in ("roi_align", "deform_conv2d", "nms", "RoIPool"):
        setattr(ops, name, None)
    torchvision.ops, torchvision.transforms, torchvision.__version__ = ops, types.ModuleType("torchvision.transforms"), "0.0"
    torchvision._is_tracing = lambda: False
    sys.modules.update({"torchvision.ops": ops, "torchvision.ops.boxes": ops.boxes})
    layers = types.ModuleType("timm.models.layers")  # the Swin backbone's imports; the ResNet model uses none
    for name in ("DropPath", "to_2tuple", "trunc_normal_"):
        setattr(layers, name, None)
    for name in ("timm", "timm.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["timm.models.layers"] = layers


def record_mask2anomaly(root: Path) -> None:
    stub_torchvision()
    sys.modules.setdefault("MultiScaleDeformableAttention", types.ModuleType("MultiScaleDeformableAttention"))
    sys.path.insert(0, str(root))
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model
    from detectron2.projects.deeplab import add_deeplab_config
    from mask2former import add_maskformer2_config

    cfg = get_cfg()
    add_deeplab_config(cfg)
    add_maskformer2_config(cfg)
    cfg.merge_from_file(str(root / "configs" / "cityscapes" / "semantic-segmentation" / "anomaly_inference.yaml"))
    cfg.MODEL.DEVICE, cfg.MODEL.WEIGHTS = "cpu", ""
    model = build_model(cfg).eval()
    layout = keys_and_shapes(model.state_dict())
    model.load_state_dict(name_state(layout), strict=True)
    head = {}
    model.sem_seg_head.register_forward_hook(lambda module, inputs, outputs: head.update(outputs))
    image = probe((3, 70, 100), seed=5, low=0.0, high=255.0)  # padded to 96×128 inside
    with torch.no_grad():
        sem_seg = model([{"image": image, "height": 70, "width": 100}])[0]["sem_seg"]
    save("mask2anomaly", keys=layout, image_shape=[3, 70, 100], image_seed=5, pred_logits=head["pred_logits"],
         pred_masks=head["pred_masks"], sem_seg=sem_seg)

    # The official evaluation (anomaly_utils/anomaly_inference.py): detectron2's DefaultPredictor
    # (BGR in, short side resized to 1024 with PIL, the model's eval forward) on the image and on its
    # left-right flip; its semantic_inference appends a channel per confident query of classes 2..10.
    # A boost of class 5's logit makes the queries confident, so that those channels (and the zeroing rule) exist.
    from detectron2.engine import DefaultPredictor

    predictor = DefaultPredictor(cfg)
    state = name_state(layout)
    state[CLASS_BIAS] = state[CLASS_BIAS].clone()
    state[CLASS_BIAS][BOOSTED_CLASS] += CLASS_BOOST
    predictor.model.load_state_dict(state, strict=True)
    image_bgr = probe((40, 60, 3), seed=6, low=0.0, high=256.0).floor().clamp(max=255).to(torch.uint8).numpy()
    views = {}
    with torch.no_grad():
        for view, image in (("image", image_bgr), ("flipped", image_bgr[:, ::-1].copy())):
            channels = predictor(image)["sem_seg"]
            # what the script's score reads: the class channels, and the largest appended channel
            views[f"{view}_classes"], views[f"{view}_extra_max"] = channels[:19].clone(), channels[19:].amax(0)
            views[f"{view}_extra_count"] = channels.shape[0] - 19
    save("mask2anomaly_official_score", keys=layout, class_bias=CLASS_BIAS, boosted_class=BOOSTED_CLASS, boost=CLASS_BOOST,
         image_seed=6, image_shape=[40, 60, 3], **views)


def seeded_image(shape, seed: int) -> torch.Tensor:
    """A seeded uint8 image of ``shape`` (H, W, 3), every value 0..255 about equally likely."""
    return probe(shape, seed=seed, low=0.0, high=256.0).floor().clamp(max=255).to(torch.uint8)


class Recorder(torch.nn.Module):
    """Runs ``network`` and keeps its input and output: what a script's evaluation loop feeds it."""

    def __init__(self, network: torch.nn.Module):
        super().__init__()
        self.network, self.seen = network, []

    def forward(self, x):
        with torch.no_grad():
            out = self.network(x)
        self.seen.append((x.detach().clone(), out.detach().clone()))
        return out


def record_script(run_script, network: torch.nn.Module, images: dict) -> dict:
    """``run_script(recorder, path, image)`` for each seeded image ``{name: ((H, W, 3), seed)}`` (the
    script reads the file it is given); the network's input and output at SCRIPT_SAMPLES fixed
    pixels of its 512×1024 input (``pixels``, flat indices), plus each channel's mean."""
    height, width = SCRIPT_SIZE
    pixels = torch.randperm(height * width, generator=torch.Generator().manual_seed(SAMPLES_SEED))[:SCRIPT_SAMPLES].sort().values
    record = {"pixels": pixels.to(torch.int32), "images": {}}
    with tempfile.TemporaryDirectory() as folder:
        (Path(folder) / "maps").mkdir()  # where the scripts write their class maps
        for name, (shape, seed) in images.items():
            recorder = Recorder(network).eval()
            run_script(recorder, Path(folder) / f"{name}.png", seeded_image(shape, seed))
            (network_input, output), = recorder.seen
            assert network_input.shape[-2:] == SCRIPT_SIZE and output.shape[-2:] == SCRIPT_SIZE
            record["images"][name] = {
                "shape": list(shape), "seed": seed,
                "input": network_input[0].flatten(1)[:, pixels], "input_mean": network_input[0].mean((1, 2)),
                "output": output[0].flatten(1)[:, pixels], "output_mean": output[0].mean((1, 2)),
            }
    return record


def record_espnet(root: Path) -> None:
    import cv2
    import numpy as np

    test = root / "test"
    sys.path.insert(0, str(test))  # VisualizeResults imports Model by that name
    try:
        official = load_file(test / "Model.py", "Model")
        script = load_file(test / "VisualizeResults.py", "official_espnet_visualize")
    finally:
        sys.path.remove(str(test))
    model = official.ESPNet(20, 2, 8).eval()
    layout = keys_and_shapes(model.state_dict())
    model.load_state_dict(name_state(layout), strict=True)
    images = probe((1, 3, 48, 96), seed=7)
    with torch.no_grad():
        output = model(images)

    def run_script(recorder, path: Path, image_rgb: torch.Tensor) -> None:
        cv2.imwrite(str(path), np.ascontiguousarray(image_rgb.numpy()[:, :, ::-1]))  # the script reads BGR with cv2.imread
        args = argparse.Namespace(overlay=False, colored=False, cityFormat=False, gpu=False, modelType=1,
                                  savedir=str(path.parent / "maps"), img_extn="png")
        with torch.no_grad():
            script.evaluateModel(args, recorder, None, [str(path)])

    script_record = record_script(run_script, model, {"small": ((60, 100, 3), 8), "cityscapes": ((1024, 2048, 3), 9)})
    save("espnet", keys=layout, input_shape=[1, 3, 48, 96], input_seed=7, output=output, script=script_record)
    del sys.modules["Model"]


def stub_torchvision_functional() -> None:
    """EdgeNets' test script normalises with torchvision's ``functional.to_tensor`` (an RGB PIL image
    → ``(3, H, W)`` float, / 255) and ``functional.normalize`` (minus the mean, over the std, per
    channel); its modules also name ``transforms.Normalize`` and ``transforms.Pad`` when they load.
    These stand-ins do that arithmetic (torchvision does not import beside the pinned torch)."""
    import numpy as np

    stub_torchvision()
    transforms = sys.modules["torchvision"].transforms
    functional = types.ModuleType("torchvision.transforms.functional")
    functional.to_tensor = lambda picture: torch.from_numpy(np.array(picture, dtype=np.uint8)).permute(2, 0, 1).contiguous().float().div(255)
    functional.normalize = lambda tensor, mean, std: ((tensor - torch.as_tensor(mean, dtype=tensor.dtype).view(-1, 1, 1))
                                                      / torch.as_tensor(std, dtype=tensor.dtype).view(-1, 1, 1))
    transforms.functional, transforms.Normalize, transforms.Pad = functional, lambda **kwargs: None, None
    sys.modules.update({"torchvision.transforms": transforms, "torchvision.transforms.functional": functional})


def record_edgenets(root: Path) -> None:
    from PIL import Image

    stub_torchvision_functional()
    sys.path.insert(0, str(root))
    try:
        from data_loader.segmentation.cityscapes import CITYSCAPE_CLASS_LIST
        from model.segmentation.espnetv2 import espnetv2_seg

        script = load_file(root / "test_segmentation.py", "official_edgenets_test_segmentation")
    finally:
        sys.path.remove(str(root))
    settings = argparse.Namespace(model="espnetv2", s=2.0, dataset="city", classes=len(CITYSCAPE_CLASS_LIST), weights="",
                                  num_classes=1000, channels=3, im_size=[1024, 512])
    model = espnetv2_seg(settings).eval()
    layout = keys_and_shapes(model.state_dict())
    model.load_state_dict(name_state(layout), strict=True)
    images = probe((1, 3, 48, 96), seed=11)
    with torch.no_grad():
        output = model(images)

    def run_script(recorder, path: Path, image_rgb: torch.Tensor) -> None:
        Image.fromarray(image_rgb.numpy()).save(path)
        args = argparse.Namespace(**{**vars(settings), "savedir": str(path.parent / "maps")})
        with torch.no_grad():
            script.evaluate(args, recorder, [str(path)], device="cpu")

    script_record = record_script(run_script, model, {"exact": ((512, 1024, 3), 12), "small": ((60, 100, 3), 13),
                                                      "cityscapes": ((1024, 2048, 3), 14)})
    save("espnetv2", keys=layout, classes=settings.classes, input_shape=[1, 3, 48, 96], input_seed=11, output=output,
         script=script_record)
    for name in [name for name in sys.modules if name.split(".")[0] in ("model", "nn_layers", "utilities", "transforms", "data_loader", "commons")]:
        del sys.modules[name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rpl", type=Path, help="yyliu01/RPL checkout")
    parser.add_argument("--u2net", type=Path, help="xuebinqin/U-2-Net checkout")
    parser.add_argument("--dovenet", type=Path, help="bcmi/Image-Harmonization-Dataset-iHarmony4 checkout")
    parser.add_argument("--mask2anomaly", type=Path, help="shyam671/Mask2Anomaly-Unmasking-Anomalies-in-Road-Scene-Segmentation checkout")
    parser.add_argument("--espnet", type=Path, help="sacmehta/ESPNet checkout")
    parser.add_argument("--edgenets", type=Path, help="sacmehta/EdgeNets checkout")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one thread: the reductions' order, and so the recorded bits, do not depend on the machine
    if args.rpl:
        record_rpl(args.rpl)
    if args.u2net:
        record_u2net(args.u2net)
    if args.dovenet:
        record_dovenet(args.dovenet)
    if args.mask2anomaly:
        record_mask2anomaly(args.mask2anomaly)
    if args.espnet:
        record_espnet(args.espnet)
    if args.edgenets:
        record_edgenets(args.edgenets)


if __name__ == "__main__":
    main()
