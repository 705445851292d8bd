"""A small DeepLabV3+ in plain PyTorch that trains on a CPU in minutes.

Same structure and module names as the DeepLabV3+ host RPL uses (``aspp``, ``bot_aspp``,
``bot_fine``, ``final``), scaled down: a 4-stage convolutional encoder (output stride 8, last stage
dilated), ASPP with image pooling + 1×1 + three dilated 3×3 branches, and a decoder that fuses a
1/4-resolution skip. Any host that provides :meth:`encode`, :meth:`decoder_input` and ``final``
(and ``aspp`` / ``bot_aspp`` to copy) works with :class:`~diffeel.models.rpl.RPLModel`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import NUM_CLASSES
from .loading import IMAGENET_MEAN, IMAGENET_STD
from .registry import register_model
from .rpl import RPLModel


def conv_bn_relu(in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel, stride, padding, dilation=dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling; concatenation order as in RPL's host: pooling branch first."""

    def __init__(self, in_channels: int, channels: int, rates=(2, 4, 6)):
        super().__init__()
        self.img_pooling = nn.AdaptiveAvgPool2d(1)
        self.img_conv = conv_bn_relu(in_channels, channels, kernel=1)
        self.features = nn.ModuleList([conv_bn_relu(in_channels, channels, kernel=1)] + [conv_bn_relu(in_channels, channels, dilation=r) for r in rates])
        self.out_channels = channels * (len(rates) + 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = F.interpolate(self.img_conv(self.img_pooling(x)), size=x.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([pooled] + [branch(x) for branch in self.features], dim=1)


class DeepLabV3PlusDecoder:
    """DeepLabV3+'s decoder input, shared by every host here: needs ``aspp``, ``bot_aspp``, ``bot_fine``."""

    def decoder_input(self, deep: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``dec0`` = [bot_fine(skip), bot_aspp(aspp(deep)) upsampled to the skip's size]."""
        context = F.interpolate(self.bot_aspp(self.aspp(deep)), size=skip.shape[-2:], mode="bilinear", align_corners=True)
        return torch.cat([self.bot_fine(skip), context], dim=1)


class SmallDeepLab(DeepLabV3PlusDecoder, nn.Module):
    """``forward(images) -> logits`` at input size; images are RGB float in 0..1, (B, 3, H, W)."""

    input_normalization = "unit"  # it normalises inside
    adapter_point = "bot_aspp"  # a residual adapter corrects the context features, as RPL's module does

    def __init__(self, num_classes: int = NUM_CLASSES, width: int = 16):
        super().__init__()
        w = width
        self.stem = conv_bn_relu(3, w, stride=2)  # 1/2
        self.layer1 = nn.Sequential(conv_bn_relu(w, 2 * w, stride=2), conv_bn_relu(2 * w, 2 * w))  # 1/4, skip
        self.layer2 = nn.Sequential(conv_bn_relu(2 * w, 4 * w, stride=2), conv_bn_relu(4 * w, 4 * w))  # 1/8
        self.layer3 = nn.Sequential(conv_bn_relu(4 * w, 6 * w, dilation=2), conv_bn_relu(6 * w, 6 * w, dilation=2))  # 1/8
        self.aspp = ASPP(6 * w, 4 * w)
        self.bot_aspp = nn.Conv2d(self.aspp.out_channels, 4 * w, 1, bias=False)
        self.bot_fine = nn.Conv2d(2 * w, w, 1, bias=False)
        self.decoder_channels = 5 * w
        self.final = nn.Sequential(conv_bn_relu(self.decoder_channels, 4 * w), nn.Conv2d(4 * w, num_classes, 1))
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(deep features at 1/8 for ASPP, skip features at 1/4)."""
        x = (images - self.mean) / self.std
        skip = self.layer1(self.stem(x))
        return self.layer3(self.layer2(skip)), skip

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        deep, skip = self.encode(images)
        logits = self.final(self.decoder_input(deep, skip))
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)


@register_model("small_deeplab", "the demo's small DeepLabV3+ for CPUs (diffeel train --recipe demo-closed)")
def small_deeplab(**options) -> SmallDeepLab:
    return SmallDeepLab(**options)


@register_model("small_rpl", "the RPL module around the small DeepLab (diffeel train --recipe demo-rpl / demo-rpl+eel)")
def small_rpl(**options) -> RPLModel:
    return RPLModel(SmallDeepLab(**options))
