"""Mask2Anomaly's backbone: detectron2's ResNet-50 with frozen batch norm, in plain PyTorch.

Key layout (detectron2): ``stem.conv1.{weight, norm.*}``, then ``res2`` … ``res5`` with 3, 4, 6, 3
bottleneck blocks ``{i}.{shortcut, conv1, conv2, conv3}.{weight, norm.*}`` (``shortcut`` only in
each stage's first block). Every convolution is bias-free and owns its normalisation as ``norm``
(detectron2's ``Conv2d`` wrapper); the norms are ``FrozenBatchNorm2d``: four buffers ``weight``,
``bias``, ``running_mean``, ``running_var``, no ``num_batches_tracked``.

Config facts (Mask2Anomaly's ``Base-Cityscapes-SemanticSegmentation.yaml`` and anomaly configs):
depth 50, stem 64 channels, ``STRIDE_IN_1X1: False`` (the stride of a stage's first block sits in
its 3×3 convolution, as in torchvision), no dilation, one group, ``FREEZE_AT: 5`` (everything
frozen, hence frozen BN). Stem: 7×7 stride-2 convolution, ReLU, 3×3 stride-2 max pool.

:func:`torchvision_resnet50_to_detectron2` maps a torchvision-layout ResNet-50 (e.g. the Barlow
Twins weights Mask2Anomaly starts from) onto these names, as detectron2's
``convert-torchvision-to-d2`` tool does.
"""

from __future__ import annotations

import re
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import DiffeelError

RESNET50_BLOCKS = (3, 4, 6, 3)
STAGES = ("res2", "res3", "res4", "res5")


class FrozenBatchNorm2d(nn.Module):
    """Batch norm with fixed statistics and affine terms, all four held as buffers."""

    def __init__(self, num_features: int, eps: float = 1e-5):
        super().__init__()
        self.num_features = num_features
        self.eps = eps
        self.register_buffer("weight", torch.ones(num_features))
        self.register_buffer("bias", torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(x, self.running_mean, self.running_var, self.weight, self.bias, False, 0.0, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}"


class Conv2dNorm(nn.Conv2d):
    """A convolution followed by its own ``norm`` and an optional activation (detectron2's
    ``Conv2d`` wrapper: same parameter names, ``weight`` / ``bias`` then ``norm.*``)."""

    def __init__(self, *args, norm: nn.Module | None = None, activation: Callable[[torch.Tensor], torch.Tensor] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.norm = norm
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.norm is not None:
            x = self.norm(x)
        if self.activation is not None:
            x = self.activation(x)
        return x


def _frozen_conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, padding: int = 0) -> Conv2dNorm:
    conv = Conv2dNorm(in_channels, out_channels, kernel, stride=stride, padding=padding, bias=False, norm=FrozenBatchNorm2d(out_channels))
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")  # detectron2's c2_msra_fill
    return conv


class BasicStem(nn.Module):
    def __init__(self, in_channels: int = 3, out_channels: int = 64):
        super().__init__()
        self.conv1 = _frozen_conv(in_channels, out_channels, 7, stride=2, padding=3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool2d(F.relu(self.conv1(x), inplace=True), kernel_size=3, stride=2, padding=1)


class BottleneckBlock(nn.Module):
    """1×1 → 3×3 (carries the stride) → 1×1, plus the identity or a projection ``shortcut``."""

    def __init__(self, in_channels: int, out_channels: int, bottleneck_channels: int, stride: int = 1):
        super().__init__()
        # registered first, as in detectron2 (same state-dict order)
        self.shortcut = _frozen_conv(in_channels, out_channels, 1, stride=stride) if in_channels != out_channels else None
        self.conv1 = _frozen_conv(in_channels, bottleneck_channels, 1)
        self.conv2 = _frozen_conv(bottleneck_channels, bottleneck_channels, 3, stride=stride, padding=1)
        self.conv3 = _frozen_conv(bottleneck_channels, out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # in place on the fresh outputs of the norms, which no backward pass reads
        out = self.conv3(F.relu(self.conv2(F.relu(self.conv1(x), inplace=True)), inplace=True))
        return F.relu(out.add_(x if self.shortcut is None else self.shortcut(x)), inplace=True)


class ResNet(nn.Module):
    """``forward(x) -> {"res2": stride 4, "res3": 8, "res4": 16, "res5": 32}``; channels
    ``256, 512, 1024, 2048`` divided by ``width_divisor``."""

    def __init__(self, width_divisor: int = 1, blocks=RESNET50_BLOCKS):
        super().__init__()
        if not isinstance(width_divisor, int) or width_divisor < 1 or 64 % width_divisor:
            raise ValueError(f"width_divisor must be a whole number dividing 64, got {width_divisor!r}")
        stem_channels = 64 // width_divisor
        self.stem = BasicStem(3, stem_channels)
        in_channels, out_channels, bottleneck = stem_channels, 256 // width_divisor, 64 // width_divisor
        self.out_channels = {}
        for index, (name, count) in enumerate(zip(STAGES, blocks)):
            stride = 1 if index == 0 else 2
            stage = [BottleneckBlock(in_channels if b == 0 else out_channels, out_channels, bottleneck, stride if b == 0 else 1)
                     for b in range(count)]
            self.add_module(name, nn.Sequential(*stage))
            self.out_channels[name] = out_channels
            in_channels, out_channels, bottleneck = out_channels, out_channels * 2, bottleneck * 2

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(x)
        features = {}
        for name in STAGES:
            x = getattr(self, name)(x)
            features[name] = x
        return features


# torchvision keys that the frozen detectron2 backbone has no place for: the ImageNet classifier
# (absent from Barlow Twins' file, present in torchvision's) and BatchNorm's step counters, which
# FrozenBatchNorm2d never reads.
TORCHVISION_UNUSED = re.compile(r"fc\.(weight|bias)|(.*\.)?num_batches_tracked")
_TV_STEM = re.compile(r"(conv1\.weight)|bn1\.(weight|bias|running_mean|running_var)")
_TV_BLOCK = re.compile(r"layer([1-4])\.(\d+)\.(?:conv([1-3])\.weight|bn([1-3])\.(weight|bias|running_mean|running_var)"
                       r"|downsample\.0\.weight|downsample\.1\.(weight|bias|running_mean|running_var))")


def torchvision_resnet50_to_detectron2(state: dict, prefix: str = "") -> dict:
    """A torchvision-layout ResNet-50 state dict (``conv1.weight``, ``bn1.*``,
    ``layer1.0.conv1.weight``, ``layer1.0.bn1.*``, ``layer1.0.downsample.{0,1}.*``, …) renamed to
    :class:`ResNet`'s keys (``stem.conv1.weight``, ``stem.conv1.norm.*``, ``res2.0.conv1.weight``,
    ``res2.0.conv1.norm.*``, ``res2.0.shortcut.{weight,norm.*}``, …), each preceded by ``prefix``
    (``"backbone."`` gives the full model's names). A ``module.`` prefix on every key is removed;
    ``fc.*`` and ``num_batches_tracked`` entries are dropped (:data:`TORCHVISION_UNUSED`); any
    other key is an error naming it."""
    if state and all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    converted = {}
    for key, value in state.items():
        if TORCHVISION_UNUSED.fullmatch(key):
            continue
        stem = _TV_STEM.fullmatch(key)
        block = _TV_BLOCK.fullmatch(key)
        if stem:
            name = "stem.conv1.weight" if stem.group(1) else f"stem.conv1.norm.{stem.group(2)}"
        elif block:
            layer, index, conv, bn, bn_field, down_field = block.groups()
            stage = f"res{int(layer) + 1}.{index}"
            if conv:
                name = f"{stage}.conv{conv}.weight"
            elif bn:
                name = f"{stage}.conv{bn}.norm.{bn_field}"
            elif down_field:
                name = f"{stage}.shortcut.norm.{down_field}"
            else:
                name = f"{stage}.shortcut.weight"
        else:
            raise DiffeelError(f"key {key!r} is not part of a torchvision ResNet-50, so it cannot be converted to the detectron2 layout")
        converted[prefix + name] = value
    return converted
