"""The RPL residual module (Liu et al., ICCV 2023) around any frozen DeepLabV3+-style host.

``atten_aspp`` and ``bot_atten_aspp`` start as copies of the host's ``aspp`` and ``bot_aspp``;
``atten_aspp_final`` (1×1 to the decoder width) is Kaiming-initialised as RPL does (normal, fan_in). The residual is added to
the host's decoder input: ``out1 = final(dec0)`` (the frozen model), ``out2 = final(dec0 + res)``.
The host is frozen explicitly by module — its parameters never require gradients and it stays in
eval mode (BatchNorm statistics untouched) whatever ``train()`` is called with.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from .outputs import RPLOutput, RPLScoring  # noqa: F401  (RPLOutput: the public name stays here too)


class ResidualBlock(nn.Module):
    def __init__(self, host: nn.Module):
        super().__init__()
        self.atten_aspp = copy.deepcopy(host.aspp)
        self.bot_atten_aspp = copy.deepcopy(host.bot_aspp)
        self.atten_aspp_final = nn.Conv2d(host.bot_aspp.out_channels, host.decoder_channels, 1, bias=False)
        # RPL's initialize_weights: PyTorch's default Kaiming normal (fan_in, gain √2)
        nn.init.kaiming_normal_(self.atten_aspp_final.weight)

    def forward(self, deep: torch.Tensor, size) -> torch.Tensor:
        context = self.bot_atten_aspp(self.atten_aspp(deep))
        return self.atten_aspp_final(F.interpolate(context, size=size, mode="bilinear", align_corners=True))


def rpl_forward(host: nn.Module, residual_block: ResidualBlock, images: torch.Tensor, outputs=("host", "rpl")) -> RPLOutput:
    """``out1 = final(dec0)``, ``out2 = final(dec0 + res)``, upsampled (bilinear, corners aligned).

    The host part runs without autograd: it is frozen, and only ``res`` needs gradients.
    ``outputs`` names the logits to compute, the other field is None: scoring needs only one, and
    skipping the other saves a pass through ``final`` (and the residual branch for ``("host",)``).
    """
    with torch.no_grad():
        deep, skip = host.encode(images)
        dec0 = host.decoder_input(deep, skip)
        out1 = host.final(dec0) if "host" in outputs else None
    out2 = host.final(dec0 + residual_block(deep, skip.shape[-2:])) if "rpl" in outputs else None

    def upsample(logits):
        return None if logits is None else F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=True)

    return RPLOutput(upsample(out1), upsample(out2))


class RPLModel(RPLScoring, nn.Module):
    """``forward(images) -> RPLOutput(out1, out2)``: the frozen host's logits and the residual-corrected ones."""

    def __init__(self, host: nn.Module):
        super().__init__()
        self.host = host
        for parameter in self.host.parameters():
            parameter.requires_grad_(False)
        self.residual_block = ResidualBlock(host)
        self.host.eval()

    @property
    def input_normalization(self) -> str:
        return getattr(self.host, "input_normalization", "imagenet")

    def train(self, mode: bool = True) -> "RPLModel":
        super().train(mode)
        self.host.eval()  # the host is never trained, and its BatchNorm statistics never move
        return self

    def trainable_parameters(self):
        return self.residual_block.parameters()

    def forward(self, images: torch.Tensor, outputs=("host", "rpl")) -> RPLOutput:
        return rpl_forward(self.host, self.residual_block, images, outputs)
