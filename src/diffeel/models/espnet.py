"""ESPNet (Mehta et al., ECCV 2018), the Cityscapes model with the light decoder, in plain PyTorch.

The module tree and every parameter name follow the ``ESPNet`` class (``classes=20, p=2, q=8``) of
``test/Model.py`` in the official repository (sacmehta/ESPNet, MIT), so the released
``pretrained/decoder/espnet_p_2_q_8.pth`` (a plain state dict of 189 tensors, saved before PyTorch
kept ``num_batches_tracked``) loads with strict key matching. Facts taken from that file:

- every batch norm has ``eps=1e-3``; every activation is a per-channel PReLU; no convolution has a bias;
  a ``k×k`` convolution of dilation ``d`` is padded by ``(k - 1) // 2 · d``.
- ESP block (``n = nOut // 5``, ``n1 = nOut - 4n``): ``c1`` reduces to ``n`` channels (1×1, or 3×3
  of stride 2 when it downsamples), then ``d1`` (→ ``n1``) and ``d2, d4, d8, d16`` (→ ``n``) are 3×3
  convolutions of those dilations on the reduced map, merged as ``cat(d1, d2, d2+d4, d2+d4+d8,
  d2+d4+d8+d16)`` (hierarchical fusion); the residual block adds its input when ``add`` and ends
  with ``bn`` = BatchNorm + PReLU; the downsampler ends with ``bn`` and ``act`` directly.
- encoder: ``level1`` 3×3 stride-2 conv 3→16; ``sample1`` / ``sample2`` the image average-pooled
  (3×3, stride 2, padding 1) once / twice; ``b1`` on ``cat(level1, sample1)`` (19);
  ``level2_0`` downsampler 19→64, ``level2`` p = 2 residual blocks; ``b2`` on ``cat(level2,
  level2_0, sample2)`` (131); ``level3_0`` downsampler 131→128, ``level3`` q = 8 blocks; ``b3`` on
  ``cat(level3_0, level3)`` (256); ``classifier`` 1×1 256→classes.
- decoder: ``up_l3`` (2×2 stride-2 transposed conv) on ``br`` (batch norm) of the encoder's
  classifier output; ``level3_C`` 1×1 131→classes on ``b2``'s output; ``combine_l2_l3`` = BatchNorm +
  PReLU then an ESP block without residual (2·classes → classes) on ``cat(level3_C, up_l3)``;
  ``up_l2`` = transposed conv + BatchNorm + PReLU; ``conv`` (3×3, 16 + classes → classes) on
  ``cat(up_l2, level1)``; ``classifier`` = transposed conv to the input resolution.

Channels: 20, the 19 Cityscapes train ids and a 20th for everything else. The training README tells
users to map the label images' 255 (void) to an "undefined class id", so with ``classes=20`` void
pixels were trained as class 19; the official test script's ``relabel`` turns 19 back into void
(label id 0) and its palette paints it black. :class:`ESPNetCityscapes` drops that channel.

Input convention of the official ``test/VisualizeResults.py``: the image read with ``cv2.imread``
(BGR, 0..255); per channel, in BGR order, minus ``mean = (72.3923111, 82.90893555, 73.15840149)``
and divided by ``std = (45.3192215, 46.15289307, 44.91483307)`` (the training set's statistics);
``cv2.resize`` to 1024×512 (its default ``INTER_LINEAR``); then divided by 255, as the training
code's ``ToTensor`` does after normalising.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import NUM_CLASSES
from .loading import check_input_size, network_input_size, under_prefix
from .registry import register_model

BN_EPS = 1e-3
BGR_MEAN = (72.3923111, 82.90893555, 73.15840149)
BGR_STD = (45.3192215, 46.15289307, 44.91483307)
INPUT_SIZE = (1024, 512)  # width, height the official script resizes every image to
NETWORK_STRIDE = 8  # the encoder's downsampling: other sizes do not come back to the input's
OFFICIAL_CLASSES = 20  # the 19 train ids, then void (trained as class 19)
DILATIONS = (1, 2, 4, 8, 16)


def _conv(in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2 * dilation,
                     dilation=dilation, bias=False)


class Conv(nn.Module):
    """A bias-free convolution held as ``conv`` (the official ``C`` and ``CDilated``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, dilation: int = 1):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel, stride, dilation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class BnPrelu(nn.Module):
    """``bn`` (eps 1e-3) then ``act`` (PReLU)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, eps=BN_EPS)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class ConvBnPrelu(nn.Module):
    """``conv`` (no bias, same padding) then ``bn`` (eps 1e-3) and ``act`` (PReLU) (official ``CBR``)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1):
        super().__init__()
        self.conv = _conv(in_channels, out_channels, kernel, stride)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class _SpatialPyramid(nn.Module):
    """Reduce to ``n`` channels with ``c1``, then ``d1 .. d16`` dilated 3×3 convolutions, fused
    hierarchically and concatenated (``nOut`` channels)."""

    def __init__(self, in_channels: int, out_channels: int, reduce_kernel: int, reduce_stride: int):
        super().__init__()
        branch = out_channels // 5
        self.c1 = Conv(in_channels, branch, reduce_kernel, reduce_stride)
        self.d1 = Conv(branch, out_channels - 4 * branch, 3, dilation=1)
        self.d2 = Conv(branch, branch, 3, dilation=2)
        self.d4 = Conv(branch, branch, 3, dilation=4)
        self.d8 = Conv(branch, branch, 3, dilation=8)
        self.d16 = Conv(branch, branch, 3, dilation=16)

    def pyramid(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.c1(x)
        fused = [self.d1(reduced)]
        running = None
        for layer in (self.d2, self.d4, self.d8, self.d16):
            running = layer(reduced) if running is None else running + layer(reduced)
            fused.append(running)
        return torch.cat(fused, 1)


class EspDownsampler(_SpatialPyramid):
    """ESP downsampler (official ``DownSamplerB``): a 3×3 stride-2 ``c1``, the pyramid, ``bn``, ``act``."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__(in_channels, out_channels, 3, 2)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.pyramid(x)))


class EspBlock(_SpatialPyramid):
    """ESP block (official ``DilatedParllelResidualBlockB``): a 1×1 ``c1``, the pyramid, the input
    added when ``add``, then ``bn`` (BatchNorm + PReLU)."""

    def __init__(self, in_channels: int, out_channels: int, add: bool = True):
        super().__init__(in_channels, out_channels, 1, 1)
        self.bn = BnPrelu(out_channels)
        self.add = add

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        merged = self.pyramid(x)
        return self.bn(x + merged if self.add else merged)


class ImagePyramid(nn.Module):
    """The image average-pooled (3×3, stride 2, padding 1) ``times`` times (official ``InputProjectionA``)."""

    def __init__(self, times: int):
        super().__init__()
        self.pool = nn.ModuleList(nn.AvgPool2d(3, stride=2, padding=1) for _ in range(times))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for pool in self.pool:
            x = pool(x)
        return x


class EspNetEncoder(nn.Module):
    """ESPNet-C (official ``ESPNet_Encoder``); in the full model only its modules are used."""

    def __init__(self, classes: int = OFFICIAL_CLASSES, p: int = 2, q: int = 8):
        super().__init__()
        self.level1 = ConvBnPrelu(3, 16, 3, 2)
        self.sample1 = ImagePyramid(1)
        self.sample2 = ImagePyramid(2)
        self.b1 = BnPrelu(16 + 3)
        self.level2_0 = EspDownsampler(16 + 3, 64)
        self.level2 = nn.ModuleList(EspBlock(64, 64) for _ in range(p))
        self.b2 = BnPrelu(128 + 3)
        self.level3_0 = EspDownsampler(128 + 3, 128)
        self.level3 = nn.ModuleList(EspBlock(128, 128) for _ in range(q))
        self.b3 = BnPrelu(256)
        self.classifier = Conv(256, classes, 1)


class EspNet(nn.Module):
    """ESPNet with the light decoder (official ``ESPNet``): ``(N, 3, H, W)`` normalised BGR →
    ``(N, classes, H, W)`` logits, for H and W divisible by 8."""

    def __init__(self, classes: int = OFFICIAL_CLASSES, p: int = 2, q: int = 8):
        super().__init__()
        self.encoder = EspNetEncoder(classes, p, q)
        self.level3_C = Conv(128 + 3, classes, 1)
        self.br = nn.BatchNorm2d(classes, eps=BN_EPS)
        self.conv = ConvBnPrelu(16 + classes, classes, 3)
        self.up_l3 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False))
        self.combine_l2_l3 = nn.Sequential(BnPrelu(2 * classes), EspBlock(2 * classes, classes, add=False))
        self.up_l2 = nn.Sequential(nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False), BnPrelu(classes))
        self.classifier = nn.ConvTranspose2d(classes, classes, 2, stride=2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        encoder = self.encoder
        level1 = encoder.level1(x)  # 1/2
        level1_cat = encoder.b1(torch.cat([level1, encoder.sample1(x)], 1))
        level2_down = encoder.level2_0(level1_cat)  # 1/4
        level2 = level2_down
        for block in encoder.level2:
            level2 = block(level2)
        level2_cat = encoder.b2(torch.cat([level2, level2_down, encoder.sample2(x)], 1))
        level3_down = encoder.level3_0(level2_cat)  # 1/8
        level3 = level3_down
        for block in encoder.level3:
            level3 = block(level3)
        level3_cat = encoder.b3(torch.cat([level3_down, level3], 1))
        decoded = self.up_l3(self.br(encoder.classifier(level3_cat)))  # 1/4, class space
        decoded = self.up_l2(self.combine_l2_l3(torch.cat([self.level3_C(level2_cat), decoded], 1)))  # 1/2
        return self.classifier(self.conv(torch.cat([decoded, level1], 1)))


class ESPNetCityscapes(nn.Module):
    """ESPNet p=2, q=8 on Cityscapes: RGB in 0..255 → ``(N, 19, 512, 1024)`` train-id logits.

    ``forward`` does the official script's preprocessing (:meth:`preprocess`) and returns the
    network's logits at its output resolution (the resized input's) without the void channel."""

    input_normalization = "0-255"
    # The residual adapter attaches to the output of ``conv``: the decoder's last feature map
    # (1/2 resolution, the upsampled class-space decoder fused with level-1 features), the input of
    # the final transposed-conv classifier. ESPNet's decoder works in class space throughout, so
    # there is no wider decoder feature map to use.
    adapter_point = "network.conv"

    def __init__(self, input_size: tuple[int, int] | None = INPUT_SIZE, input_scale: float = 1.0):
        super().__init__()
        self.network = EspNet(OFFICIAL_CLASSES, p=2, q=8)
        # (width, height) as cv2.resize takes it; None: the image's size × input_scale (multiples of 8)
        self.input_size, self.input_scale = check_input_size(input_size, input_scale)
        self.register_buffer("bgr_mean", torch.tensor(BGR_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("bgr_std", torch.tensor(BGR_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB ``(N, 3, H, W)`` in 0..255 → the network's input: BGR, minus the mean, over the std,
        resized bilinearly to ``input_size`` or scaled by ``input_scale`` (``align_corners=False``: cv2's ``INTER_LINEAR`` on
        float images), divided by 255 - in the script's order."""
        bgr = images.flip(1)
        normalised = (bgr - self.bgr_mean.to(images.dtype)) / self.bgr_std.to(images.dtype)
        height, width = network_input_size(*images.shape[-2:], self.input_size, self.input_scale, NETWORK_STRIDE)
        if normalised.shape[-2:] != (height, width):
            normalised = F.interpolate(normalised, size=(height, width), mode="bilinear", align_corners=False)
        return normalised / 255

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(images))[:, :NUM_CLASSES]


def espnet_state(state: dict, model: nn.Module | None = None) -> dict:
    """The official key layout (the released file: bare ``encoder.…``, ``level3_C.…`` keys; a
    ``module.`` prefix of a ``DataParallel`` save removed) → this model's ``network.…`` keys; a
    state dict of :class:`ESPNetCityscapes` itself passes unchanged."""
    return under_prefix(state, "network.")


@register_model("espnet_cityscapes", "ESPNet p=2 q=8 (ECCV 2018) on Cityscapes: loads the released "
                "pretrained/decoder/espnet_p_2_q_8.pth; RGB 0..255 in, 19 train-id logits at 1024x512 out",
                convert=espnet_state)
def espnet_cityscapes(**options) -> ESPNetCityscapes:
    return ESPNetCityscapes(**options)


__all__ = ["BGR_MEAN", "BGR_STD", "ESPNetCityscapes", "EspNet", "EspNetEncoder", "INPUT_SIZE", "espnet_state"]
