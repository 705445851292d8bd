"""RPL's host in plain PyTorch: DeepLabV3+ on WiderResNet38-A2 (output stride 8) with RPL's residual module.

The module tree and every parameter name are those of RPL's ``DeepWV3Plus`` (itself NVIDIA's
semantic-segmentation Cityscapes model plus ``residual_block``), so the released checkpoints load
with strict key matching (:func:`rpl_wrn38_state` maps the checkpoint layouts):

- trunk: ``mod1`` (3×3 conv) → ``pool2`` → ``mod2`` (3 blocks, 128) → ``pool3`` → ``mod3`` (3, 256)
  → ``mod4`` (6, 512, first block stride 2) → ``mod5`` (3, 1024, dilation 2) → ``mod6`` (bottleneck
  2048, dilation 4, channel dropout 0.3) → ``mod7`` (bottleneck 4096, dilation 4, dropout 0.5);
  pre-activation identity blocks (``bn1`` = BN + ReLU, ``convs``, 1×1 ``proj_conv`` shortcut where
  the shape changes), no bias anywhere;
- head: ``aspp`` (image pooling first, then 1×1 and 3×3 at rates 12/24/36), ``bot_aspp``,
  ``bot_fine`` on ``mod2``'s output (1/2 resolution: the decoder runs there), ``final``;
- ``residual_block``: RPL's ``atten_aspp`` / ``bot_atten_aspp`` / ``atten_aspp_final``.

``width_divisor`` divides every channel count (1 = the real network), which gives tests a tiny
network with the same module tree and key names.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from ..labels import NUM_CLASSES
from .deeplab import ASPP, DeepLabV3PlusDecoder
from .loading import without_common_prefix
from .registry import register_model
from .rpl import ResidualBlock, RPLOutput, RPLScoring, rpl_forward

# (channels of each block, number of blocks, dilation, first-block stride, channel dropout) for mod2..mod7
WRN38_STAGES = (
    ((128, 128), 3, 1, 1, 0.0),
    ((256, 256), 3, 1, 1, 0.0),
    ((512, 512), 6, 1, 2, 0.0),
    ((512, 1024), 3, 2, 1, 0.0),
    ((512, 1024, 2048), 1, 4, 1, 0.3),
    ((1024, 2048, 4096), 1, 4, 1, 0.5),
)
ASPP_RATES = (12, 24, 36)  # RPL's rates (6, 12, 18) doubled for output stride 8


def _bn_relu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.ReLU(inplace=True))


class IdentityResidualBlock(nn.Module):
    """A pre-activation block: ``convs(bn1(x)) + shortcut``, the shortcut being ``x`` or
    ``proj_conv(bn1(x))``. Two 3×3 convolutions, or 1×1-3×3-1×1 when ``channels`` has three entries;
    the stride sits in ``conv1``, the dilation in the 3×3 convolutions."""

    def __init__(self, in_channels: int, channels: tuple[int, ...], stride: int = 1, dilation: int = 1, dropout: float = 0.0):
        super().__init__()
        self.bn1 = _bn_relu(in_channels)
        if len(channels) == 2:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 3, stride, padding=dilation, dilation=dilation, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, padding=dilation, dilation=dilation, bias=False)),
            ]
        else:
            layers = [
                ("conv1", nn.Conv2d(in_channels, channels[0], 1, stride, bias=False)),
                ("bn2", _bn_relu(channels[0])),
                ("conv2", nn.Conv2d(channels[0], channels[1], 3, 1, padding=dilation, dilation=dilation, bias=False)),
                ("bn3", _bn_relu(channels[1])),
                ("conv3", nn.Conv2d(channels[1], channels[2], 1, bias=False)),
            ]
        if dropout:
            layers.insert(len(layers) - 1, ("dropout", nn.Dropout2d(dropout)))  # before the last convolution
        self.convs = nn.Sequential(OrderedDict(layers))
        if stride != 1 or in_channels != channels[-1]:
            self.proj_conv = nn.Conv2d(in_channels, channels[-1], 1, stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = self.bn1(x)
        shortcut = self.proj_conv(activated) if hasattr(self, "proj_conv") else x
        return self.convs(activated) + shortcut


class RPLWiderResNet38(DeepLabV3PlusDecoder, RPLScoring, nn.Module):
    """``forward(normalised images) -> RPLOutput(host_logits, rpl_logits)``, both ``(N, 19, H, W)``.

    Input: RGB / 255 normalised with the ImageNet mean and std, any size. The host (everything but
    ``residual_block``) is frozen by module: no gradients, eval mode whatever ``train()`` says.
    """

    input_normalization = "imagenet"
    host_module_names = ("mod1", "mod2", "mod3", "mod4", "mod5", "mod6", "mod7", "aspp", "bot_fine", "bot_aspp", "final")

    def __init__(self, num_classes: int = NUM_CLASSES, width_divisor: int = 1):
        super().__init__()
        if not isinstance(width_divisor, int) or width_divisor < 1:
            raise ValueError(f"width_divisor must be a positive whole number, got {width_divisor!r}")
        width = lambda channels: max(1, channels // width_divisor)  # noqa: E731
        self.width_divisor = width_divisor
        self.mod1 = nn.Sequential(OrderedDict(conv1=nn.Conv2d(3, width(64), 3, 1, padding=1, bias=False)))
        self.pool2 = nn.MaxPool2d(3, stride=2, padding=1)
        self.pool3 = nn.MaxPool2d(3, stride=2, padding=1)
        in_channels = width(64)
        for index, (channels, blocks, dilation, stride, dropout) in enumerate(WRN38_STAGES):
            channels = tuple(width(c) for c in channels)
            stage = []
            for block in range(blocks):
                stage.append((f"block{block + 1}", IdentityResidualBlock(in_channels, channels, stride if block == 0 else 1, dilation, dropout)))
                in_channels = channels[-1]
            self.add_module(f"mod{index + 2}", nn.Sequential(OrderedDict(stage)))
        self.aspp = ASPP(in_channels, width(256), rates=ASPP_RATES)
        self.bot_fine = nn.Conv2d(width(128), width(48), 1, bias=False)
        self.bot_aspp = nn.Conv2d(self.aspp.out_channels, width(256), 1, bias=False)
        self.decoder_channels = width(256) + width(48)
        self.final = nn.Sequential(
            nn.Conv2d(self.decoder_channels, width(256), 3, padding=1, bias=False), nn.BatchNorm2d(width(256)), nn.ReLU(inplace=True),
            nn.Conv2d(width(256), width(256), 3, padding=1, bias=False), nn.BatchNorm2d(width(256)), nn.ReLU(inplace=True),
            nn.Conv2d(width(256), num_classes, 1, bias=False),
        )
        self.residual_block = ResidualBlock(self)
        for module in self.host_modules():
            module.requires_grad_(False)
        self.train()

    def host_modules(self) -> list[nn.Module]:
        return [getattr(self, name) for name in self.host_module_names]

    def train(self, mode: bool = True) -> "RPLWiderResNet38":
        super().train(mode)
        for module in self.host_modules():
            module.eval()  # frozen host: its BatchNorm statistics and dropout never move
        return self

    def encode(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(``mod7`` features at 1/8 for the ASPPs, ``mod2`` features at 1/2 for the decoder)."""
        m2 = self.mod2(self.pool2(self.mod1(images)))
        deep = self.mod7(self.mod6(self.mod5(self.mod4(self.mod3(self.pool3(m2))))))
        return deep, m2

    def forward(self, images: torch.Tensor, outputs=("host", "rpl")) -> RPLOutput:
        return rpl_forward(self, self.residual_block, images, outputs)


_NVIDIA_TRAINING_ONLY = ("criterion.", "dsn.", "final2.")


def rpl_wrn38_state(state: dict, model: RPLWiderResNet38) -> dict:
    """Map a checkpoint's keys to :class:`RPLWiderResNet38`'s. Three layouts are read:

    - RPL's released ``res.pth``: ``{'model': {'branch1.<key>': ...}, 'optimizer', 'epoch', 'iteration'}``.
    - NVIDIA's ``cityscapes_best.pth`` (the closed-set model RPL starts from): ``{'state_dict':
      {'module.<key>': ...}}`` without a residual module, whose training-only entries (``criterion``,
      ``dsn``, ``final2``) are dropped. The residual module is initialised as RPL does: ``atten_aspp``
      and ``bot_atten_aspp`` copy ``aspp`` and ``bot_aspp``; ``atten_aspp_final`` keeps its Kaiming
      initialisation (seeded by the global torch seed).
    - diffeel's own training checkpoints: ``{'model': {...}, 'config': {...}}``, plain keys.
    """
    state = without_common_prefix(state, "module.branch1.", "branch1.", "module.")
    state = {key: value for key, value in state.items() if not key.startswith(_NVIDIA_TRAINING_ONLY)}
    model.residual_trained = any(key.startswith("residual_block.") for key in state)
    if not model.residual_trained:
        for key in list(state):
            if key.startswith(("aspp.", "bot_aspp.")):
                state["residual_block." + key.replace("aspp", "atten_aspp", 1)] = state[key].clone()
        state["residual_block.atten_aspp_final.weight"] = model.residual_block.atten_aspp_final.weight.detach().clone()
    return state


@register_model("rpl_wrn38", "RPL (ICCV 2023): DeepLabV3+ on WiderResNet38-A2, output stride 8, with the residual module; "
                "loads RPL's res.pth, NVIDIA's cityscapes_best.pth or a diffeel training checkpoint", convert=rpl_wrn38_state)
def rpl_wrn38(**options) -> RPLWiderResNet38:
    return RPLWiderResNet38(**options)

