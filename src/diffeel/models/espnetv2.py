"""ESPNetv2 (Mehta et al., CVPR 2019) segmentation at s = 2.0 on Cityscapes, in plain PyTorch.

The module tree and every parameter name follow ``ESPNetv2Segmentation`` of
``model/segmentation/espnetv2.py`` in the official repository (sacmehta/EdgeNets, MIT), with its
``EESPNet`` base (``model/classification/espnetv2.py`` and ``espnetv2_config.py``) and the layers of
``nn_layers/``, so the released ``model/segmentation/model_zoo/espnetv2/espnetv2_s_2.0_city_1024x512.pth``
(a plain state dict of 526 tensors; 66.4 mIoU on Cityscapes val per the model zoo's README) loads
with strict key matching. Facts taken from those files:

- batch norms keep PyTorch's default ``eps=1e-5``; activations are per-channel PReLUs; no
  convolution has a bias except the last one. Two block families name their layers differently:
  ``nn_layers/espnet_utils.py`` (``conv`` / ``bn`` / ``act``, used by the base network) and
  ``nn_layers/cnn_utils.py`` (a ``cbr`` or ``br`` ``Sequential``, used by the decoder).
- base network, s = 2.0: channels 32, 128, 256, 512 at 1/2 .. 1/16; ``level1`` 3×3 stride-2 conv;
  ``level2_0``, ``level3_0``, ``level4_0`` downsamplers; ``level3`` 3 and ``level4`` 7 EESP blocks;
  4 branches everywhere; receptive-field limits 13, 11, 9 (``level3_0`` / ``level3`` / ``level4_0``
  use the limit of index 1, 2, 2) and 7 for ``level4``. Its ``level5`` and classifier are deleted.
- EESP block (``n = nOut / 4``): ``proj_1x1`` grouped (4) 1×1 conv to ``n``; four depth-wise 3×3
  ``spp_dw`` convolutions whose kernel sizes 3, 5, 7, 9 (3 above the limit, then sorted) become
  dilations ``(k - 1) / 2``, each added to the previous branch's output; ``br_after_cat`` on their
  concatenation, then ``conv_1x1_exp`` (grouped 1×1 conv + BN); a stride-1 block adds its input and
  ends with ``module_act``; a downsampling block (stride 2) returns before both.
- downsampler: ``cat(avg_pool(x), eesp(x))`` (3×3, stride 2, padding 1 pooling; the EESP has
  ``nOut - nIn`` channels), plus ``inp_reinf`` (3×3 CBR 3→3, then 1×1 CB 3→nOut) of the image
  average-pooled until its height equals the output's, then ``act``.
- decoder (``city``: base 16 → widths 64, 48, 32, classes; projections to ``min(classes // 2, 16)``
  = 10): ``bu_dec_l1 .. l4`` efficient pyramid pooling - a 1×1 ``projection_layer``, five depth-wise
  3×3 ``stages`` at scales 2.0, 1.5, 1.0, 0.5, 0.1 (each side ``max(ceil(side·scale), 5)``; up by
  bilinear ``align_corners=True`` then adaptive average pooling back, or pooled down then
  interpolated back), concatenated, ``merge_layer`` = BN + PReLU, channel shuffle (5 groups), a
  grouped 3×3 CBR, a 1×1 conv, and ``br`` except in ``bu_dec_l4`` (whose 1×1 conv has a bias: the
  classifier). Between them: ×2 bilinear upsampling (``align_corners=True``) plus
  ``merge_enc_dec_l2 .. l4`` on the encoder's 1/8, 1/4, 1/2 maps (a grouped 3×3 CBR, ``gcd`` groups,
  times a sigmoid channel gate from a pooled 1×1 conv), then ``bu_br_l2 .. l4`` (BN + PReLU). The
  1/2-resolution logits are resized bilinearly (``align_corners=True``) to the input size.

Channels: 20, the data loader's ``CITYSCAPE_CLASS_LIST`` (the 19 train ids, then "background").
Training uses ``CrossEntropyLoss(ignore_index=255)`` on ``labelTrainIds`` images, where every void
pixel is 255, so the 20th channel never had a positive label; the test script's ``relabel`` maps
it to void. :class:`ESPNetv2Cityscapes` drops it.

Input convention of the official ``test_segmentation.py`` (``--im-size 1024 512``): the image opened
with PIL as RGB, resized to 1024×512 with ``Image.BILINEAR``, ``to_tensor`` (/ 255) and normalised
with ImageNet's mean and std (``transforms/classification/data_transforms.py``), as the Cityscapes
loader's validation transforms do. PIL's resize of a uint8 image is a filter that widens when it
shrinks (torch's ``antialias=True``) computed in 22-bit fixed point, rounded to uint8 after each
axis; this network is sensitive enough that torch's float resize (within one grey level of PIL's)
moves the released weights' logits by up to 2.1 (0.08 to 0.16 on average; 97.2 to 99.7 % of argmax
labels kept, measured on Cityscapes and CamVid frames), so :func:`pil_bilinear_resize` reproduces
PIL's integer arithmetic, horizontal pass first as Pillow did up to version 12. Pillow 13 runs the
vertical pass first when the height shrinks much more than the width (python-pillow/Pillow#9549),
which moves about a fifth of such images' pixels by one grey level; Cityscapes (2048×1024) and
RoadAnomaly-sized (1280×720) frames take the same order in every version.
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from ..labels import NUM_CLASSES
from .loading import IMAGENET_MEAN, IMAGENET_STD, check_input_size, network_input_size, under_prefix
from .registry import register_model

INPUT_SIZE = (1024, 512)  # width, height of the released city_1024x512 model's test-time input
NETWORK_STRIDE = 32  # the encoder's downsampling: the decoder's skip connections need multiples of it
OFFICIAL_CLASSES = 20  # the 19 train ids, then "background" (never a training target)
BASE_CHANNELS = (32, 128, 256, 512)  # s = 2.0, levels 1..4 (levels 5 and the classifier are deleted)
BRANCHES = 4
RECEPTIVE_LIMITS = (13, 11, 9, 7, 5)
LEVEL_REPEATS = (3, 7)  # EESP blocks of level3, level4
DECODER_CHANNELS = (64, 48, 32)  # 4·16, 3·16, 2·16 for "city", then the classes
PYRAMID_SCALES = (2.0, 1.5, 1.0, 0.5, 0.1)
PYRAMID_MIN_SIDE = 5
PIL_PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision when it resamples 8-bit images


# --- PIL's Image.resize(size, Image.BILINEAR) on uint8 RGB, exactly --------------------------------

@lru_cache(maxsize=16)
def _pil_bilinear_taps(in_size: int, out_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pillow's taps for one axis: ``(index, weight)``, each ``(out_size, taps)``. The triangle
    filter's support widens by the reduction factor; output pixel ``i`` centres at
    ``(i + 0.5) · in / out``; its taps run from ``int(centre - support + 0.5)`` (at least 0) to
    ``int(centre + support + 0.5)`` (at most ``in``), weighted ``triangle((j - centre + 0.5) / factor)``,
    normalised to sum 1 and rounded (half up; no weight is negative) to integers of ``2^22``."""
    scale = in_size / out_size
    factor = max(scale, 1.0)
    support = 1.0 * factor
    taps = int(math.ceil(support)) * 2 + 1
    index = torch.zeros(out_size, taps, dtype=torch.long)
    weight = torch.zeros(out_size, taps, dtype=torch.int32)  # unused taps: weight 0 on pixel 0
    unit = float(1 << PIL_PRECISION_BITS)
    for i in range(out_size):
        centre = (i + 0.5) * scale
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        raw = [max(0.0, 1.0 - abs((j - centre + 0.5) / factor)) for j in range(first, last)]
        total = sum(raw)
        for k, w in enumerate(raw):
            index[i, k] = first + k
            weight[i, k] = int((w / total if total != 0.0 else w) * unit + 0.5)
    return index, weight


def _pil_resample_axis(image: torch.Tensor, out_size: int, dim: int) -> torch.Tensor:
    """One of Pillow's passes, in its int32 arithmetic: ``(2^21 + Σ value · weight) >> 22``, clipped to 0..255."""
    index, weight = _pil_bilinear_taps(image.shape[dim], out_size)
    index, weight = index.to(image.device), weight.to(image.device)
    shape = [1] * image.dim()
    shape[dim] = out_size
    total = torch.full((), 1 << (PIL_PRECISION_BITS - 1), dtype=torch.int32, device=image.device)
    for k in range(index.shape[1]):
        total = total + image.index_select(dim, index[:, k]) * weight[:, k].view(shape)
    return (total >> PIL_PRECISION_BITS).clamp(0, 255)


def pil_bilinear_resize(images: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """``(N, C, H, W)`` uint8-range images → ``size`` (height, width) as PIL's
    ``Image.resize((width, height), Image.BILINEAR)`` gives them: values rounded to uint8 first,
    the horizontal pass, then the vertical one, each rounded and clipped to uint8 (an axis already
    at its size is not resampled; Pillow 13 may run the vertical pass first, see the module
    docstring). Returns int32 values in 0..255."""
    height, width = size
    resized = images.detach().round().clamp(0, 255).to(torch.int32)
    if resized.shape[-1] != width:
        resized = _pil_resample_axis(resized, width, -1)
    if resized.shape[-2] != height:
        resized = _pil_resample_axis(resized, height, -2)
    return resized


# --- nn_layers/espnet_utils.py naming (conv / bn / act): the base network --------------------------

class ConvBnPrelu(nn.Module):
    """``conv`` (no bias, same padding, optional groups) → ``bn`` → ``act`` (PReLU)."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride=stride, padding=(kernel - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(out_channels)
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class ConvBn(nn.Module):
    """``conv`` (no bias, same padding, optional groups) → ``bn``."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, padding=(kernel - 1) // 2, bias=False, groups=groups)
        self.bn = nn.BatchNorm2d(out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BnPrelu(nn.Module):
    """``bn`` → ``act`` (PReLU)."""

    def __init__(self, channels: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels)
        self.act = nn.PReLU(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(x))


class DilatedDepthwise(nn.Module):
    """A depth-wise 3×3 ``conv`` of dilation ``dilation`` (padding = dilation), no bias."""

    def __init__(self, channels: int, stride: int, dilation: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=stride, padding=dilation, dilation=dilation, groups=channels, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


def branch_dilations(branches: int, receptive_limit: int) -> list[int]:
    """Kernel sizes 3, 5, 7, … (3 once above ``receptive_limit``), sorted, as dilations ``(k - 1) / 2``."""
    sizes = sorted(3 + 2 * i if 3 + 2 * i <= receptive_limit else 3 for i in range(branches))
    return [(size - 1) // 2 for size in sizes]


class EESP(nn.Module):
    """Extremely efficient spatial pyramid block (see the module docstring)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, branches: int = BRANCHES, receptive_limit: int = 7):
        super().__init__()
        width = out_channels // branches
        if width * branches != out_channels:
            raise ValueError(f"EESP needs out_channels divisible by {branches}, got {out_channels}")
        self.downsamples = stride == 2
        self.proj_1x1 = ConvBnPrelu(in_channels, width, 1, groups=branches)
        self.spp_dw = nn.ModuleList(DilatedDepthwise(width, stride, d) for d in branch_dilations(branches, receptive_limit))
        self.conv_1x1_exp = ConvBn(out_channels, out_channels, 1, groups=branches)
        self.br_after_cat = BnPrelu(out_channels)
        self.module_act = nn.PReLU(out_channels)  # in downsampling blocks too (the file holds it), unused there

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        reduced = self.proj_1x1(x)
        fused = [self.spp_dw[0](reduced)]
        for branch in self.spp_dw[1:]:
            fused.append(branch(reduced) + fused[-1])
        expanded = self.conv_1x1_exp(self.br_after_cat(torch.cat(fused, 1)))
        if self.downsamples:
            return expanded
        if expanded.shape == x.shape:
            expanded = expanded + x
        return self.module_act(expanded)


class Downsampler(nn.Module):
    """``act(cat(avg_pool(x), eesp(x)) + inp_reinf(image pooled to the output's height))``."""

    def __init__(self, in_channels: int, out_channels: int, receptive_limit: int, branches: int = BRANCHES):
        super().__init__()
        self.eesp = EESP(in_channels, out_channels - in_channels, stride=2, branches=branches, receptive_limit=receptive_limit)
        self.avg = nn.AvgPool2d(3, stride=2, padding=1)
        self.inp_reinf = nn.Sequential(ConvBnPrelu(3, 3, 3), ConvBn(3, out_channels, 1))
        self.act = nn.PReLU(out_channels)

    def forward(self, x: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        pooled = self.avg(x)
        output = torch.cat([pooled, self.eesp(x)], 1)
        reinforcement = F.avg_pool2d(image, 3, stride=2, padding=1)
        while reinforcement.shape[2] > pooled.shape[2]:
            reinforcement = F.avg_pool2d(reinforcement, 3, stride=2, padding=1)
        return self.act(output + self.inp_reinf(reinforcement))


class EESPNetBase(nn.Module):
    """The ESPNetv2 classification network (``EESPNet``) up to level 4, as the segmentation keeps it."""

    def __init__(self, channels=BASE_CHANNELS, repeats=LEVEL_REPEATS, limits=RECEPTIVE_LIMITS):
        super().__init__()
        self.level1 = ConvBnPrelu(3, channels[0], 3, stride=2)
        self.level2_0 = Downsampler(channels[0], channels[1], limits[0])
        self.level3_0 = Downsampler(channels[1], channels[2], limits[1])
        self.level3 = nn.ModuleList(EESP(channels[2], channels[2], receptive_limit=limits[2]) for _ in range(repeats[0]))
        self.level4_0 = Downsampler(channels[2], channels[3], limits[2])
        self.level4 = nn.ModuleList(EESP(channels[3], channels[3], receptive_limit=limits[3]) for _ in range(repeats[1]))


# --- nn_layers/cnn_utils.py naming (a cbr / br Sequential): the decoder -----------------------------

class SeqConvBnPrelu(nn.Module):
    """``cbr`` = (conv without bias, BN, PReLU), same padding, optional groups."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, groups: int = 1):
        super().__init__()
        self.cbr = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, kernel, padding=(kernel - 1) // 2, bias=False, groups=groups),
            nn.BatchNorm2d(out_channels), nn.PReLU(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cbr(x)


class SeqBnPrelu(nn.Module):
    """``br`` = (BN, PReLU)."""

    def __init__(self, channels: int):
        super().__init__()
        self.br = nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.br(x)


class ChannelShuffle(nn.Module):
    """Channels ``(groups, C / groups)`` transposed to ``(C / groups, groups)``."""

    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        x = x.view(batch, self.groups, channels // self.groups, height, width).transpose(1, 2)
        return x.reshape(batch, channels, height, width)


def _pyramid_side(side: int, scale: float) -> int:
    return max(int(math.ceil(side * scale)), PYRAMID_MIN_SIDE)


class EfficientPyramidPooling(nn.Module):
    """Efficient pyramid pooling (official ``EfficientPyrPool``, see the module docstring)."""

    def __init__(self, in_channels: int, projection: int, out_channels: int, last_bn_prelu: bool = True,
                 scales=PYRAMID_SCALES):
        super().__init__()
        self.scales = tuple(sorted(scales, reverse=True))
        self.stages = nn.ModuleList(nn.Conv2d(projection, projection, 3, padding=1, bias=False, groups=projection)
                                    for _ in self.scales)
        self.projection_layer = SeqConvBnPrelu(in_channels, projection, 1)
        count = len(self.scales)
        self.merge_layer = nn.Sequential(
            SeqBnPrelu(projection * count), ChannelShuffle(count),
            SeqConvBnPrelu(projection * count, projection, 3, groups=projection),
            nn.Conv2d(projection, out_channels, 1, bias=not last_bn_prelu))
        self.br = SeqBnPrelu(out_channels) if last_bn_prelu else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.projection_layer(x)
        height, width = x.shape[2:]
        levels = []
        for scale, stage in zip(self.scales, self.stages):
            size = (_pyramid_side(height, scale), _pyramid_side(width, scale))
            if scale < 1.0:
                level = stage(F.adaptive_avg_pool2d(x, size))
                level = F.interpolate(level, (height, width), mode="bilinear", align_corners=True)
            elif scale > 1.0:
                level = stage(F.interpolate(x, size, mode="bilinear", align_corners=True))
                level = F.adaptive_avg_pool2d(level, (height, width))
            else:
                level = stage(x)
            levels.append(level)
        out = self.merge_layer(torch.cat(levels, 1))
        return out if self.br is None else self.br(out)


class EfficientPointwiseConv(nn.Module):
    """``expansion_layer(x) · wt_layer(x)``: a grouped 3×3 CBR gated per channel by
    ``sigmoid(1×1 conv(global average))`` (official ``EfficientPWConv``)."""

    def __init__(self, in_channels: int, out_channels: int):
        super().__init__()
        self.wt_layer = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(in_channels, out_channels, 1, bias=False), nn.Sigmoid())
        self.expansion_layer = SeqConvBnPrelu(in_channels, out_channels, 3, groups=math.gcd(in_channels, out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expansion_layer(x) * self.wt_layer(x)


def _bn_prelu(channels: int) -> nn.Sequential:
    return nn.Sequential(nn.BatchNorm2d(channels), nn.PReLU(channels))


def _upsample(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=True)


class ESPNetv2Segmentation(nn.Module):
    """ESPNetv2's segmentation network: ``(N, 3, H, W)`` ImageNet-normalised RGB → ``(N, classes, H, W)``
    logits, for H and W divisible by 16."""

    def __init__(self, classes: int = OFFICIAL_CLASSES):
        super().__init__()
        self.base_net = EESPNetBase()
        projection = min(classes // 2, 16)
        widths = (*DECODER_CHANNELS, classes)
        self.bu_dec_l1 = EfficientPyramidPooling(BASE_CHANNELS[3], projection, widths[0])
        self.bu_dec_l2 = EfficientPyramidPooling(widths[0], projection, widths[1])
        self.bu_dec_l3 = EfficientPyramidPooling(widths[1], projection, widths[2])
        self.bu_dec_l4 = EfficientPyramidPooling(widths[2], projection, widths[3], last_bn_prelu=False)
        self.merge_enc_dec_l2 = EfficientPointwiseConv(BASE_CHANNELS[2], widths[0])
        self.merge_enc_dec_l3 = EfficientPointwiseConv(BASE_CHANNELS[1], widths[1])
        self.merge_enc_dec_l4 = EfficientPointwiseConv(BASE_CHANNELS[0], widths[2])
        self.bu_br_l2 = _bn_prelu(widths[0])
        self.bu_br_l3 = _bn_prelu(widths[1])
        self.bu_br_l4 = _bn_prelu(widths[2])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        base = self.base_net
        level1 = base.level1(x)  # 1/2
        level2 = base.level2_0(level1, x)  # 1/4
        level3 = base.level3_0(level2, x)  # 1/8
        for block in base.level3:
            level3 = block(level3)
        level4 = base.level4_0(level3, x)  # 1/16
        for block in base.level4:
            level4 = block(level4)
        decoded = self.bu_dec_l1(level4)
        decoded = self.bu_dec_l2(self.bu_br_l2(self.merge_enc_dec_l2(level3) + _upsample(decoded)))  # 1/8
        decoded = self.bu_dec_l3(self.bu_br_l3(self.merge_enc_dec_l3(level2) + _upsample(decoded)))  # 1/4
        decoded = self.bu_dec_l4(self.bu_br_l4(self.merge_enc_dec_l4(level1) + _upsample(decoded)))  # 1/2
        return F.interpolate(decoded, size=x.shape[2:], mode="bilinear", align_corners=True)


class ESPNetv2Cityscapes(nn.Module):
    """ESPNetv2 s = 2.0 on Cityscapes: RGB in 0..255 → ``(N, 19, 512, 1024)`` train-id logits.

    ``forward`` does the official test script's preprocessing (:meth:`preprocess`) and returns the
    network's logits at its output resolution (the resized input's) without the "background" channel."""

    input_normalization = "0-255"
    # The residual adapter attaches to the output of ``bu_br_l4``: the decoder's last feature map
    # (32 channels at 1/2 resolution, the upsampled decoder plus the projected level-1 encoder map,
    # after BN + PReLU), the input of ``bu_dec_l4``, the pyramid-pooling block that ends in the
    # classifier convolution.
    adapter_point = "network.bu_br_l4"

    def __init__(self, input_size: tuple[int, int] | None = INPUT_SIZE, input_scale: float = 1.0):
        super().__init__()
        self.network = ESPNetv2Segmentation(OFFICIAL_CLASSES)
        # (width, height) as PIL's resize takes it; None: the image's size × input_scale (multiples of 32)
        self.input_size, self.input_scale = check_input_size(input_size, input_scale)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """RGB ``(N, 3, H, W)`` in 0..255 → the network's input, as the script makes it: the uint8
        image resized to ``input_size`` (or scaled by ``input_scale``) by PIL's ``BILINEAR`` (:func:`pil_bilinear_resize`,
        bit-exact), / 255, minus ImageNet's mean, over its std (float32 unless ``images`` is wider)."""
        size = network_input_size(*images.shape[-2:], self.input_size, self.input_scale, NETWORK_STRIDE)
        dtype = torch.promote_types(images.dtype, torch.float32)
        resized = pil_bilinear_resize(images, size).to(dtype)
        return (resized / 255 - self.mean.to(dtype)) / self.std.to(dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.network(self.preprocess(images))[:, :NUM_CLASSES]


def espnetv2_state(state: dict, model: nn.Module | None = None) -> dict:
    """The official key layout (the released file: bare ``base_net.…``, ``bu_dec_l1.…`` keys; a
    ``module.`` prefix of a ``DataParallel`` save removed) → this model's ``network.…`` keys; a
    state dict of :class:`ESPNetv2Cityscapes` itself passes unchanged."""
    return under_prefix(state, "network.")


@register_model("espnetv2_cityscapes", "ESPNetv2 s=2.0 (CVPR 2019) on Cityscapes: loads the released "
                "espnetv2_s_2.0_city_1024x512.pth of EdgeNets; RGB 0..255 in, 19 train-id logits at 1024x512 out",
                convert=espnetv2_state)
def espnetv2_cityscapes(**options) -> ESPNetv2Cityscapes:
    return ESPNetv2Cityscapes(**options)


__all__ = ["ESPNetv2Cityscapes", "ESPNetv2Segmentation", "EESPNetBase", "INPUT_SIZE", "branch_dilations", "espnetv2_state"]
