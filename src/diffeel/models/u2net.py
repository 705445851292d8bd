"""U²-Net and U²-NetP, the salient-object detectors of the object extractor, in plain PyTorch.

The module tree and every parameter name follow ``model/u2net.py`` of the official repository
(xuebinqin/U-2-Net, Apache-2.0), so the released ``u2net.pth`` (176 MB) and ``u2netp.pth``
(4.7 MB) - plain state dicts saved with ``torch.save(net.state_dict())`` - load with strict key
matching (:func:`diffeel.models.loading.load_strict`). Facts taken from that file:

- ``REBNCONV``: ``conv_s1`` (3×3, bias, padding = dilation = ``dirate``) → ``bn_s1`` → ``relu_s1``.
- ``RSU7`` / ``RSU6`` / ``RSU5`` / ``RSU4`` (height L): ``rebnconvin`` (in → out), ``rebnconv1`` (out →
  mid), then ``rebnconv2 .. rebnconv{L-1}`` (mid → mid), each of ``rebnconv1 .. rebnconv{L-2}``
  followed by ``pool1 .. pool{L-2}``; ``rebnconv{L}`` with dilation 2 on ``rebnconv{L-1}``'s output;
  decoder ``rebnconv{L-1}d .. rebnconv1d`` (2·mid → mid, the last 2·mid → out) on the concatenation
  (decoded, skip), upsampled to the skip's size in between; output ``rebnconv1d + rebnconvin``.
- ``RSU4F``: no pooling; ``rebnconv1..4`` with dilations 1, 2, 4, 8, decoder ``rebnconv3d``,
  ``rebnconv2d``, ``rebnconv1d`` with dilations 4, 2, 1.
- every max pool is ``MaxPool2d(2, stride=2, ceil_mode=True)``; every upsampling is bilinear to the
  target's size (``F.upsample(..., mode='bilinear')``, i.e. ``align_corners=False``).
- ``U2NET`` (in, mid, out): encoder ``stage1`` RSU7(3, 32, 64), ``stage2`` RSU6(64, 32, 128),
  ``stage3`` RSU5(128, 64, 256), ``stage4`` RSU4(256, 128, 512), ``stage5`` and ``stage6``
  RSU4F(512, 256, 512), pools ``pool12 .. pool56``; decoder ``stage5d`` RSU4F(1024, 256, 512),
  ``stage4d`` RSU4(1024, 128, 256), ``stage3d`` RSU5(512, 64, 128), ``stage2d`` RSU6(256, 32, 64),
  ``stage1d`` RSU7(128, 16, 64); ``side1 .. side6`` 3×3 convolutions to one channel on
  ``stage1d .. stage5d`` and ``stage6``; ``outconv`` 1×1 on the six side maps.
- ``U2NETP``: ``stage1`` RSU7(3, 16, 64), every other stage mid 16, out 64 (decoders take 128).
- ``forward`` returns ``sigmoid`` of (``outconv`` fused map, side1, ..., side6), each side map
  upsampled to ``side1``'s size (the input size), as a tuple: the fused map comes first.

``width_divisor`` divides every channel count (1 = the real network): tests build a tiny
``U2NET`` with the same module tree and key names. Input: RGB divided by the image's own maximum,
then ImageNet mean / std (see :func:`diffeel.synth.extract.u2net_preprocess`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .registry import register_model

# (mid, out) channels of the encoder stages stage1..stage6 and the decoder stages stage5d..stage1d;
# a decoder stage takes the concatenation of the stage below (upsampled) and the encoder's skip.
U2NET_ENCODER = ((32, 64), (32, 128), (64, 256), (128, 512), (256, 512), (256, 512))
U2NET_DECODER = ((256, 512), (128, 256), (64, 128), (32, 64), (16, 64))
U2NETP_ENCODER = ((16, 64),) * 6
U2NETP_DECODER = ((16, 64),) * 5
RSU_HEIGHTS = (7, 6, 5, 4, 0, 0)  # stage1..stage6; 0 = RSU4F (dilated, no pooling)


def _pool() -> nn.MaxPool2d:
    return nn.MaxPool2d(2, stride=2, ceil_mode=True)


def upsample_like(source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``source`` resized bilinearly (``align_corners=False``) to ``target``'s height and width."""
    return F.interpolate(source, size=target.shape[2:], mode="bilinear", align_corners=False)


class REBNCONV(nn.Module):
    """3×3 convolution (dilation ``dirate``, same padding) → BatchNorm → ReLU."""

    def __init__(self, in_ch: int = 3, out_ch: int = 3, dirate: int = 1):
        super().__init__()
        self.conv_s1 = nn.Conv2d(in_ch, out_ch, 3, padding=dirate, dilation=dirate)
        self.bn_s1 = nn.BatchNorm2d(out_ch)
        self.relu_s1 = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu_s1(self.bn_s1(self.conv_s1(x)))


class _RSU(nn.Module):
    """Residual U-block of height ``height`` (``height - 2`` poolings), see the module docstring."""

    height = 0

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3):
        super().__init__()
        depth = self.height
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch)
        for level in range(1, depth - 1):
            self.add_module(f"pool{level}", _pool())
            self.add_module(f"rebnconv{level + 1}", REBNCONV(mid_ch, mid_ch))
        self.add_module(f"rebnconv{depth}", REBNCONV(mid_ch, mid_ch, dirate=2))
        for level in range(depth - 1, 0, -1):
            self.add_module(f"rebnconv{level}d", REBNCONV(2 * mid_ch, out_ch if level == 1 else mid_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        depth = self.height
        entry = self.rebnconvin(x)
        skips = [self.rebnconv1(entry)]
        for level in range(1, depth - 1):
            pooled = getattr(self, f"pool{level}")(skips[-1])
            skips.append(getattr(self, f"rebnconv{level + 1}")(pooled))
        decoded = getattr(self, f"rebnconv{depth}")(skips[-1])
        for level in range(depth - 1, 0, -1):
            skip = skips[level - 1]
            if decoded.shape[2:] != skip.shape[2:]:
                decoded = upsample_like(decoded, skip)
            decoded = getattr(self, f"rebnconv{level}d")(torch.cat((decoded, skip), 1))
        return decoded + entry


class RSU7(_RSU):
    height = 7


class RSU6(_RSU):
    height = 6


class RSU5(_RSU):
    height = 5


class RSU4(_RSU):
    height = 4


class RSU4F(nn.Module):
    """RSU-4 with dilated convolutions (1, 2, 4, 8) instead of pooling: the resolution never changes."""

    def __init__(self, in_ch: int = 3, mid_ch: int = 12, out_ch: int = 3):
        super().__init__()
        self.rebnconvin = REBNCONV(in_ch, out_ch)
        self.rebnconv1 = REBNCONV(out_ch, mid_ch, dirate=1)
        self.rebnconv2 = REBNCONV(mid_ch, mid_ch, dirate=2)
        self.rebnconv3 = REBNCONV(mid_ch, mid_ch, dirate=4)
        self.rebnconv4 = REBNCONV(mid_ch, mid_ch, dirate=8)
        self.rebnconv3d = REBNCONV(2 * mid_ch, mid_ch, dirate=4)
        self.rebnconv2d = REBNCONV(2 * mid_ch, mid_ch, dirate=2)
        self.rebnconv1d = REBNCONV(2 * mid_ch, out_ch, dirate=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        entry = self.rebnconvin(x)
        h1 = self.rebnconv1(entry)
        h2 = self.rebnconv2(h1)
        h3 = self.rebnconv3(h2)
        h4 = self.rebnconv4(h3)
        d3 = self.rebnconv3d(torch.cat((h4, h3), 1))
        d2 = self.rebnconv2d(torch.cat((d3, h2), 1))
        return self.rebnconv1d(torch.cat((d2, h1), 1)) + entry


def _block(height: int, in_ch: int, mid_ch: int, out_ch: int) -> nn.Module:
    return {7: RSU7, 6: RSU6, 5: RSU5, 4: RSU4, 0: RSU4F}[height](in_ch, mid_ch, out_ch)


class _U2NetBase(nn.Module):
    """Six encoder stages, five decoder stages, six side outputs fused by ``outconv``."""

    segmenter = False  # not a per-pixel class model: diffeel score refuses it

    encoder: tuple[tuple[int, int], ...] = ()
    decoder: tuple[tuple[int, int], ...] = ()

    def __init__(self, in_ch: int = 3, out_ch: int = 1, width_divisor: int = 1):
        super().__init__()
        if not isinstance(width_divisor, int) or isinstance(width_divisor, bool) or width_divisor < 1:
            raise ValueError(f"width_divisor must be a positive whole number, got {width_divisor!r}")
        width = lambda channels: max(1, channels // width_divisor)  # noqa: E731
        self.width_divisor = width_divisor
        encoder = [(width(mid), width(out)) for mid, out in self.encoder]
        decoder = [(width(mid), width(out)) for mid, out in self.decoder]
        channels = in_ch
        for index, (height, (mid, out)) in enumerate(zip(RSU_HEIGHTS, encoder), start=1):
            self.add_module(f"stage{index}", _block(height, channels, mid, out))
            if index < 6:
                self.add_module(f"pool{index}{index + 1}", _pool())
            channels = out
        side_channels = {6: channels}
        for index, (mid, out) in zip(range(5, 0, -1), decoder):
            # input: the stage below (stage6 or the previous decoder stage) + encoder stage ``index``
            self.add_module(f"stage{index}d", _block(RSU_HEIGHTS[index - 1], channels + encoder[index - 1][1], mid, out))
            side_channels[index] = channels = out
        for index in range(1, 7):
            self.add_module(f"side{index}", nn.Conv2d(side_channels[index], out_ch, 3, padding=1))
        self.outconv = nn.Conv2d(6 * out_ch, out_ch, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """``(N, 3, H, W)`` normalised RGB → seven sigmoid maps ``(N, 1, H, W)``: fused, side1..side6."""
        skips = []
        hx = x
        for index in range(1, 6):
            skips.append(getattr(self, f"stage{index}")(hx))
            hx = getattr(self, f"pool{index}{index + 1}")(skips[-1])
        deepest = self.stage6(hx)
        decoded = {6: deepest}
        hx = deepest
        for index in range(5, 0, -1):
            skip = skips[index - 1]
            hx = getattr(self, f"stage{index}d")(torch.cat((upsample_like(hx, skip), skip), 1))
            decoded[index] = hx
        d1 = self.side1(decoded[1])
        sides = [d1] + [upsample_like(getattr(self, f"side{index}")(decoded[index]), d1) for index in range(2, 7)]
        fused = self.outconv(torch.cat(sides, 1))
        return tuple(torch.sigmoid(m) for m in (fused, *sides))


class U2NET(_U2NetBase):
    """The full U²-Net (≈ 44 M parameters, ``u2net.pth``)."""

    encoder = U2NET_ENCODER
    decoder = U2NET_DECODER


class U2NETP(_U2NetBase):
    """The small U²-Net (≈ 1.1 M parameters, ``u2netp.pth``)."""

    encoder = U2NETP_ENCODER
    decoder = U2NETP_DECODER


@register_model("u2net", "U^2-Net salient object detector (Qin et al., 2020): loads the released u2net.pth; "
                "model(x) gives 7 sigmoid maps, fused first")
def u2net(**options) -> U2NET:
    return U2NET(**options)


@register_model("u2netp", "U^2-NetP, the small U^2-Net: loads the released u2netp.pth")
def u2netp(**options) -> U2NETP:
    return U2NETP(**options)
