"""A residual adapter: RPL's residual idea on any segmenter.

RPL adds a trainable residual to the decoder input of one DeepLabV3+ (:mod:`.rpl`). The adapter
does the same at one named feature module of any host: a small trainable block reads that
module's output ``f`` and the host continues from ``f + block(f)``. The block's last convolution
starts at zero, so an untrained adapter reproduces the host exactly. Like ``RPLModel`` it returns
``RPLOutput(out1, out2)``: the frozen host's logits and the adapted ones, at the input's size.

The host runs twice for both outputs (no host can be split at an arbitrary module in general):
``out1`` without autograd, ``out2`` without autograd up to the attachment point and with it from
there on, so the backward stops at the point and the host's stem keeps no activations.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DiffeelError
from .outputs import RPLOutput, RPLScoring

PROBE_SIZE = (64, 128)  # the input the attachment point's channels are read from


def _groups(channels: int) -> int:
    return math.gcd(32, channels)


class AdapterBlock(nn.Module):
    """Two 3×3 convolutions (group norm: independent of the batch size, so one image per process
    trains) and a zero-initialised 1×1 projection back to the feature's channels."""

    def __init__(self, channels: int, width: int | None = None):
        super().__init__()
        width = width or channels
        self.body = nn.Sequential(
            nn.Conv2d(channels, width, 3, padding=1, bias=False), nn.GroupNorm(_groups(width), width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False), nn.GroupNorm(_groups(width), width), nn.ReLU(inplace=True),
        )
        self.project = nn.Conv2d(width, channels, 1)
        nn.init.zeros_(self.project.weight)  # the adapted host starts as the host
        nn.init.zeros_(self.project.bias)

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        return self.project(self.body(feature))


def attachment_module(host: nn.Module, point: str) -> nn.Module:
    """The host's submodule named ``point`` (dotted, as in ``named_modules``), or one sentence."""
    modules = dict(host.named_modules())
    if not point or point not in modules:
        near = [name for name in modules if name and point and point.split(".")[-1] in name][:3]
        hint = f"; similar names: {', '.join(near)}" if near else ""
        raise DiffeelError(f"the host has no module {point!r} to attach the adapter to{hint}")
    return modules[point]


def default_point(host: nn.Module) -> str:
    """The attachment point a registered host names (``adapter_point``), or one sentence."""
    point = getattr(host, "adapter_point", None)
    if not point:
        raise DiffeelError(f"{type(host).__name__} names no adapter point; give one (--adapter-point MODULE, a name "
                           "from the host's named_modules)")
    return point


class ResidualAdapter(RPLScoring, nn.Module):
    """``forward(images) -> RPLOutput(out1, out2)`` around a frozen ``host`` with an adapter at ``point``."""

    def __init__(self, host: nn.Module, point: str | None = None, width: int | None = None):
        super().__init__()
        self.host = host.eval()
        for parameter in self.host.parameters():
            parameter.requires_grad_(False)
        self.point = point or default_point(host)
        self._attachment = [attachment_module(host, self.point)]  # a list: not registered twice as a submodule
        channels = self._probe_channels()
        self.residual_adapter = AdapterBlock(channels, width)

    @property
    def input_normalization(self) -> str:
        return getattr(self.host, "input_normalization", "imagenet")

    def _probe_channels(self) -> int:
        seen = []
        handle = self._attachment[0].register_forward_hook(lambda module, args, output: seen.append(output))
        try:
            with torch.no_grad():
                self.host(torch.zeros(1, 3, *PROBE_SIZE))
        finally:
            handle.remove()
        if len(seen) != 1 or not isinstance(seen[0], torch.Tensor) or seen[0].dim() != 4:
            raise DiffeelError(f"the adapter point {self.point!r} must run once per forward and give one (N, C, H, W) "
                               "tensor; choose another module")
        return seen[0].shape[1]

    def train(self, mode: bool = True) -> "ResidualAdapter":
        super().train(mode)
        self.host.eval()  # the host never trains; its norm statistics never move
        return self

    def trainable_parameters(self):
        return self.residual_adapter.parameters()

    def forward(self, images: torch.Tensor, outputs=("host", "rpl")) -> RPLOutput:
        out1 = out2 = None
        if "host" in outputs:
            with torch.no_grad():
                out1 = self.host(images)
        if "rpl" in outputs:
            out2 = self._adapted(images)
        return RPLOutput(self._at_input_size(out1, images), self._at_input_size(out2, images))

    def _adapted(self, images: torch.Tensor) -> torch.Tensor:
        """The host with ``f + block(f)`` at the point; autograd only from the point on."""
        wanted = torch.is_grad_enabled()

        def from_here_on(module, args):
            torch.set_grad_enabled(wanted)

        def add_residual(module, args, output):
            return output + self.residual_adapter(output)

        point = self._attachment[0]
        handles = [point.register_forward_pre_hook(from_here_on), point.register_forward_hook(add_residual)]
        try:
            with torch.no_grad():  # the frozen stem: no graph, no kept activations
                return self.host(images)
        finally:
            for handle in handles:
                handle.remove()

    @staticmethod
    def _at_input_size(logits, images):
        if logits is None or logits.shape[-2:] == images.shape[-2:]:
            return logits
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
