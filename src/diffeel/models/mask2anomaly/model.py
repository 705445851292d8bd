"""Mask2Anomaly (Rai et al., ICCV 2023): Mask2Former with global mask attention, in plain PyTorch.

The module tree and key names are those of the official detectron2 ``MaskFormer`` built from
``configs/cityscapes/semantic-segmentation/anomaly_*.yaml``, so the released ``model_final.pth``
(``{'model': {...}}``) loads with strict key matching after :func:`mask2anomaly_state`:

- ``backbone.*``: detectron2's ResNet-50, frozen batch norm (:mod:`.backbone`);
- ``sem_seg_head.pixel_decoder.*``: ``MSDeformAttnPixelDecoder`` (:mod:`.pixel_decoder`);
- ``sem_seg_head.predictor.*``: ``MultiScaleMaskedTransformerDecoder_GMA`` (:mod:`.transformer_decoder`).

No compiled operator: the deformable attention is one weighted ``F.embedding_bag`` over every
level, head, point and bilinear neighbour (:func:`~.deform_attn.ms_deform_attn`).

Input: ``(N, 3, H, W)`` RGB in 0..255 (``input_normalization = "0-255"``), normalised inside with
detectron2's ImageNet mean / std, then padded with zeros at the bottom and right to a multiple of
32. Output (train and eval alike): ``pred_logits`` ``(N, Q, num_classes + 1)`` (the last class is
"no object"), ``pred_masks`` ``(N, Q, H_pad/4, W_pad/4)`` of the last decoder layer,
``aux_outputs`` (the ``dec_layers`` = 9 earlier prediction sets, first = the learnable queries'
own, for deep supervision), ``image_size`` ``(H, W)`` and ``padded_size`` ``(H_pad, W_pad)``;
:func:`upsample_masks` brings masks back to the input size as the official post-processing does.
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DiffeelError
from ...labels import NUM_CLASSES
from ..loading import load_strict, without_common_prefix
from ..mask2anomaly_inference import mask_wise_logits
from ..registry import register_model
from .backbone import ResNet, torchvision_resnet50_to_detectron2
from .pixel_decoder import MSDeformAttnPixelDecoder
from .transformer_decoder import GlobalMaskTransformerDecoder

PIXEL_MEAN = (123.675, 116.28, 103.53)
PIXEL_STD = (58.395, 57.12, 57.375)
SIZE_DIVISIBILITY = 32
COMMON_STRIDE = 4

# Entries of the official checkpoint that no part of the network reads:
UNUSED_UPSTREAM_KEYS = (
    # SetCriterion's class weights for the training cross-entropy (1 per class, 0.1 for
    # "no object"): a buffer of the loss, saved with the model because the criterion is a submodule.
    "criterion.empty_weight",
)
# Step counters of the backbone's batch norms. detectron2 releases from May 2023 on keep
# ``num_batches_tracked`` when they turn BatchNorm into FrozenBatchNorm2d (and a backbone saved
# unfrozen has it too); frozen batch norm never reads it. Older releases save none, which is the
# layout of tests/data/mask2anomaly_keys.txt; which release wrote model_final.pth is not known.
UNUSED_UPSTREAM_PATTERN = re.compile(r"backbone\..*\.num_batches_tracked")


class MaskFormerHead(nn.Module):
    """``sem_seg_head``: the pixel decoder feeding the transformer decoder (``predictor``)."""

    def __init__(self, pixel_decoder: MSDeformAttnPixelDecoder, predictor: GlobalMaskTransformerDecoder):
        super().__init__()
        self.pixel_decoder = pixel_decoder
        self.predictor = predictor

    def forward(self, features: dict[str, torch.Tensor]) -> dict:
        mask_features, multi_scale_features = self.pixel_decoder(features)
        return self.predictor(multi_scale_features, mask_features)


class Mask2Anomaly(nn.Module):
    """Mask2Anomaly's network. Defaults are the official Cityscapes model; the keyword options
    build smaller networks with the same module tree and key names (the tests use
    ``hidden_dim=16, num_queries=5, nheads=2, dec_layers=4, dim_feedforward=32, enc_layers=1,
    enc_dim_feedforward=32, enc_points=2, width_divisor=16, norm_groups=2``). Each decoder
    layer's unused ``fusion_layer`` is ``Conv2d(2·num_queries, num_queries, 1)`` (200 → 100, fixed,
    upstream).

    ``dec_layers`` counts decoder layers (9; the official config's ``DEC_LAYERS: 10`` adds one for
    the learnable queries' own prediction). ``hidden_dim`` is also the pixel decoder's width and
    the mask dimension (256 each upstream). ``freeze_backbone`` turns off the backbone's gradients
    (``FREEZE_AT: 5``); its batch norms are frozen in any case.
    """

    input_normalization = "0-255"
    classifies_masks = True  # its per-pixel logits are mask-wise (Eq. 3)

    def __init__(self, num_classes: int = NUM_CLASSES, *, hidden_dim: int = 256, num_queries: int = 100, nheads: int = 8,
                 dec_layers: int = 9, dim_feedforward: int = 2048, enc_layers: int = 6, enc_dim_feedforward: int = 1024,
                 enc_points: int = 4, width_divisor: int = 1, norm_groups: int = 32, freeze_backbone: bool = True):
        super().__init__()
        for name, value in (("num_classes", num_classes), ("hidden_dim", hidden_dim), ("num_queries", num_queries),
                            ("nheads", nheads), ("dec_layers", dec_layers), ("dim_feedforward", dim_feedforward),
                            ("enc_layers", enc_layers), ("enc_dim_feedforward", enc_dim_feedforward),
                            ("enc_points", enc_points), ("norm_groups", norm_groups)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive whole number, got {value!r}")
        if hidden_dim % nheads or hidden_dim % norm_groups or hidden_dim % 2:
            raise ValueError(f"hidden_dim ({hidden_dim}) must be even and divisible by nheads ({nheads}) and norm_groups ({norm_groups})")
        self.num_classes = num_classes
        self.num_queries = num_queries
        self.backbone = ResNet(width_divisor)
        pixel_decoder = MSDeformAttnPixelDecoder(self.backbone.out_channels, hidden_dim, hidden_dim, nheads=nheads,
                                                 enc_layers=enc_layers, dim_feedforward=enc_dim_feedforward,
                                                 n_points=enc_points, norm_groups=norm_groups)
        predictor = GlobalMaskTransformerDecoder(hidden_dim, num_classes, hidden_dim=hidden_dim, num_queries=num_queries,
                                                 nheads=nheads, dim_feedforward=dim_feedforward, dec_layers=dec_layers,
                                                 mask_dim=hidden_dim)
        self.sem_seg_head = MaskFormerHead(pixel_decoder, predictor)
        self.register_buffer("pixel_mean", torch.tensor(PIXEL_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(PIXEL_STD).view(1, 3, 1, 1), persistent=False)
        if freeze_backbone:
            self.backbone.requires_grad_(False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """Normalise RGB 0..255 and pad (zeros, bottom / right) to a multiple of 32."""
        if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
            described = f"shape {list(images.shape)}" if isinstance(images, torch.Tensor) else f"a {type(images).__name__}"
            raise DiffeelError(f"Mask2Anomaly takes images as an (N, 3, H, W) tensor of RGB values in 0..255, got {described}")
        if not images.is_floating_point():
            images = images.float()
        x = (images - self.pixel_mean.to(images.dtype)) / self.pixel_std.to(images.dtype)
        h, w = images.shape[-2:]
        pad_h, pad_w = -h % SIZE_DIVISIBILITY, -w % SIZE_DIVISIBILITY
        return F.pad(x, (0, pad_w, 0, pad_h)) if pad_h or pad_w else x

    def forward(self, images: torch.Tensor) -> dict:
        x = self.preprocess(images)
        outputs = self.sem_seg_head(self.backbone(x))
        outputs["image_size"] = tuple(images.shape[-2:])
        outputs["padded_size"] = tuple(x.shape[-2:])
        return outputs

    def scoring_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The mask-wise logits at the input size (the class map of Eq. 3), computed in float32
        from the outputs whatever precision the forward ran at."""
        outputs = self(images)
        with torch.autocast(images.device.type, enabled=False):
            return mask_wise_logits(outputs, outputs["image_size"])


def upsample_masks(masks: torch.Tensor, image_size, padded_size=None) -> torch.Tensor:
    """Mask logits at stride 4 of the padded input ``(..., H_pad/4, W_pad/4)`` → ``(..., H, W)``:
    bilinear upsampling to the padded size (``align_corners=False``), then the padding cropped
    off, as the official inference does before its semantic map."""
    if padded_size is None:
        padded_size = (masks.shape[-2] * COMMON_STRIDE, masks.shape[-1] * COMMON_STRIDE)
    h, w = image_size
    full = F.interpolate(masks.reshape(-1, 1, *masks.shape[-2:]), size=tuple(padded_size), mode="bilinear", align_corners=False)
    return full[..., :h, :w].reshape(*masks.shape[:-2], h, w)


def mask2anomaly_state(state: dict, model: nn.Module | None = None) -> dict:
    """The official checkpoint's (or a diffeel training checkpoint's) state dict → :class:`Mask2Anomaly`'s keys.

    Removes a ``module.`` prefix present on every key (a DataParallel / DDP save) and drops the
    entries the official model holds but never uses (:data:`UNUSED_UPSTREAM_KEYS`,
    :data:`UNUSED_UPSTREAM_PATTERN`, the latter only when ``model`` has no such key). Everything
    else is passed through for strict loading, which names any missing or unexpected key.
    detectron2's NumPy arrays become tensors."""
    state = without_common_prefix(state, "module.")
    expected = model.state_dict() if model is not None else {}
    converted = {}
    for key, value in state.items():
        if key in UNUSED_UPSTREAM_KEYS or (UNUSED_UPSTREAM_PATTERN.fullmatch(key) and key not in expected):
            continue
        if type(value).__module__ == "numpy":
            value = torch.as_tensor(value)
        converted[key] = value
    return converted


def load_backbone_weights(model: Mask2Anomaly, state: dict, source: str = "the backbone weights") -> None:
    """Initialise ``model.backbone`` strictly from a ResNet-50 state dict in torchvision layout
    (e.g. Barlow Twins' ``resnet50.pth``), detectron2 layout (``stem.*``, ``res2.*``…) or as full
    model keys (``backbone.*``); one sentence names the first key that does not fit."""
    state = without_common_prefix(state, "module.")
    if any(key.startswith(("layer1.", "conv1.", "bn1.")) for key in state):
        state = torchvision_resnet50_to_detectron2(state)
    elif state and all(key.startswith("backbone.") for key in state):
        state = {key[len("backbone."):]: value for key, value in state.items()}
    load_strict(model.backbone, state, source, "the Mask2Anomaly backbone")


@register_model("mask2anomaly_r50", "Mask2Anomaly (Rai et al.): Mask2Former ResNet-50 with global mask attention, "
                "plain PyTorch; loads the official model_final.pth", convert=mask2anomaly_state)
def mask2anomaly_r50(**options) -> Mask2Anomaly:
    return Mask2Anomaly(**options)

