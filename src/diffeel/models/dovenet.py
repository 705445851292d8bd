"""DoveNet's generator (Cong et al., CVPR 2020) in plain PyTorch, with the official key names.

The released ``latest_net_G.pth`` is a plain state dict (88 keys, no ``module.`` prefix) of the
official ``UnetGenerator`` built with ``netG s2ad``, ``norm batch`` and dropout on; this module tree
reproduces its names, so it loads with strict key matching (:func:`load_dovenet`), where the
official code skips the key check.

Layout (``ngf`` = 64 for the real network; tests use 4, which keeps every key name):

- a pix2pix U-Net with 8 down-steps (256 → 1): 4×4 convolutions of stride 2, padding 1;
  channels ``ngf, 2ngf, 4ngf, 8ngf, 8ngf, 8ngf, 8ngf, 8ngf``. Nested blocks, outermost first:
  ``model.model`` (the outermost block's ``Sequential``), then ``model.model.1``,
  ``model.model.1.model.3``, … each inner block at index 3 of its parent's ``model``.
- outermost block ``[0 conv (no bias), 1 block, 2 ReLU, 3 transposed conv (bias), 4 tanh]``;
  middle blocks ``[0 LeakyReLU 0.2, 1 conv, 2 BN, 3 block, 4 ReLU, 5 transposed conv, 6 BN,
  (7 dropout 0.5)]``; innermost ``[0 LeakyReLU, 1 conv, 2 ReLU, 3 transposed conv, 4 BN]``.
  Convolutions next to batch norm have no bias.
- dropout (0.5) closes the three middle blocks at ``8ngf`` (between the innermost block and the
  ``4ngf`` block).
- attention on the three outermost middle blocks (``ngf``, ``2ngf``, ``4ngf`` outer channels):
  ``attention = Sequential(1×1 conv (bias), sigmoid)`` over the block's concatenated output
  ``r = cat(skip, decoded)`` (``2·outer`` channels), returning ``sigmoid(conv(r)) · r``. The gate
  multiplies the whole concatenation, skip and decoded features alike.
- every non-outermost block returns ``cat(leaky_relu(x), decoded)``: the official block applies
  its first LeakyReLU *in place* to its input ``x`` before concatenating ``x``, so the skip
  carries the activated input. This port computes that explicitly (no in-place operations).

Input: the composite RGB in [-1, 1] ``(N, 3, 256, 256)`` and the foreground mask in {0, 1}
``(N, 1, 256, 256)``, concatenated as 4 channels (comp first). Output: ``tanh`` RGB in [-1, 1].

The official forward does **not** compose through the mask: the generator returns the whole
image, and the official test script scores (and saves) that raw output; ``DoveNetModel`` only
builds ``output·mask + comp·(1 - mask)`` as a visual. :class:`DoveNetGenerator` returns the same
raw output; :func:`compose` does the composition.
"""

from __future__ import annotations


import torch
from torch import nn

from ..errors import DiffeelError
from .factory import create_model
from .loading import without_common_prefix
from .registry import register_model

NUM_DOWNS = 8
INPUT_SIZE = 256  # the released generator was trained on 256×256 inputs
DROPOUT = 0.5
LEAKY_SLOPE = 0.2


class DoveNetBlock(nn.Module):
    """One level of the U-Net (the official ``UnetSkipConnectionBlock``): ``model`` and, on the
    three outermost middle levels, ``attention``."""

    def __init__(self, outer_channels: int, inner_channels: int, input_channels: int | None = None,
                 submodule: nn.Module | None = None, *, outermost: bool = False, innermost: bool = False,
                 dropout: float = 0.0, attention: bool = False):
        super().__init__()
        self.outermost = outermost
        input_channels = outer_channels if input_channels is None else input_channels
        down = nn.Conv2d(input_channels, inner_channels, 4, stride=2, padding=1, bias=False)
        if outermost:
            layers = [down, submodule, nn.ReLU(),
                      nn.ConvTranspose2d(inner_channels * 2, outer_channels, 4, stride=2, padding=1), nn.Tanh()]
        elif innermost:
            layers = [nn.LeakyReLU(LEAKY_SLOPE), down, nn.ReLU(),
                      nn.ConvTranspose2d(inner_channels, outer_channels, 4, stride=2, padding=1, bias=False),
                      nn.BatchNorm2d(outer_channels)]
        else:
            layers = [nn.LeakyReLU(LEAKY_SLOPE), down, nn.BatchNorm2d(inner_channels), submodule, nn.ReLU(),
                      nn.ConvTranspose2d(inner_channels * 2, outer_channels, 4, stride=2, padding=1, bias=False),
                      nn.BatchNorm2d(outer_channels)]
            if dropout:
                layers.append(nn.Dropout(dropout))
        if attention:  # registered before ``model``, as in the official class (same state-dict order)
            gate = outer_channels + input_channels
            self.attention = nn.Sequential(nn.Conv2d(gate, gate, 1), nn.Sigmoid())
        else:
            self.attention = None
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.outermost:
            return self.model(x)
        skip = self.model[0](x)  # the official in-place LeakyReLU: the skip is the activated input
        decoded = skip
        for layer in list(self.model)[1:]:
            decoded = layer(decoded)
        joined = torch.cat([skip, decoded], 1)
        if self.attention is not None:
            return self.attention(joined) * joined
        return joined


class DoveNetGenerator(nn.Module):
    """``forward(comp, mask) -> raw output``, all ``(N, ·, 256, 256)``: comp RGB in [-1, 1], mask in
    {0, 1}, output RGB in [-1, 1] (tanh) over the whole image (not composed through the mask; see
    :func:`compose`).

    ``ngf`` (64 = the released network, ≈ 54.8 M parameters) scales every channel count; the key
    names do not depend on it. ``dropout`` (0.5, as released) sits after the three inner ``8ngf``
    up-blocks.

    Eval mode (what :func:`load_dovenet` returns and what the blender uses) gives the deterministic
    output: running batch-norm statistics, no dropout. The official test script never calls
    ``eval()``: its generator runs in train mode (batch statistics of the single test image, dropout
    active), so its outputs are random. In train mode this module does the same as the official one.
    """

    segmenter = False  # not a per-pixel class model: diffeel score refuses it

    def __init__(self, ngf: int = 64, input_channels: int = 4, output_channels: int = 3, dropout: float = DROPOUT):
        super().__init__()
        if not isinstance(ngf, int) or ngf < 1:
            raise DiffeelError(f"ngf must be a positive whole number, got {ngf!r}")
        if not 0.0 <= dropout < 1.0:
            raise DiffeelError(f"dropout must be in [0, 1), got {dropout!r}")
        self.ngf = ngf
        block = DoveNetBlock(ngf * 8, ngf * 8, innermost=True)
        for _ in range(NUM_DOWNS - 5):
            block = DoveNetBlock(ngf * 8, ngf * 8, submodule=block, dropout=dropout)
        for outer in (ngf * 4, ngf * 2, ngf):
            block = DoveNetBlock(outer, outer * 2, submodule=block, attention=True)
        self.model = DoveNetBlock(output_channels, ngf, input_channels, block, outermost=True)

    def forward(self, comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if comp.ndim != 4 or comp.shape[1] != 3:
            raise DiffeelError(f"DoveNet's composite must be (N, 3, H, W), got shape {list(comp.shape)}")
        if mask.shape != (comp.shape[0], 1, *comp.shape[2:]):
            raise DiffeelError(f"DoveNet's mask must be (N, 1, H, W) like the composite {list(comp.shape)}, "
                               f"got shape {list(mask.shape)}")
        step = 2 ** NUM_DOWNS
        if comp.shape[2] % step or comp.shape[3] % step:
            raise DiffeelError(f"DoveNet needs a height and width that are multiples of {step} (it was trained "
                               f"at {INPUT_SIZE}×{INPUT_SIZE}), got {comp.shape[3]}×{comp.shape[2]}")
        return self.model(torch.cat([comp, mask.to(comp.dtype)], 1))


def compose(output: torch.Tensor, comp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``output·mask + comp·(1 - mask)``: the generator's pixels inside the mask, the composite's outside."""
    mask = mask.to(output.dtype)
    return output * mask + comp * (1 - mask)


def dovenet_state(state: dict, model: nn.Module | None = None) -> dict:
    """The state dict with a ``module.`` prefix (``DataParallel``) removed when every key has one.
    The released file has none, so it passes unchanged."""
    return without_common_prefix(state, "module.")


@register_model("dovenet", "DoveNet's harmonization generator (CVPR 2020): loads the released latest_net_G.pth; "
                "model(comp, mask) at 256x256", convert=dovenet_state)
def dovenet(**options) -> DoveNetGenerator:
    return DoveNetGenerator(**options)


def load_dovenet(checkpoint, *, ngf: int = 64, device="cpu", allow_pickle: bool = False) -> DoveNetGenerator:
    """A :class:`DoveNetGenerator` with ``checkpoint`` (e.g. the released ``latest_net_G.pth``)
    loaded strictly (``create_model("dovenet", checkpoint)``), on ``device``, in eval mode."""
    return create_model("dovenet", checkpoint=checkpoint, allow_pickle=allow_pickle, ngf=ngf).to(device).eval()


__all__ = ["DoveNetBlock", "DoveNetGenerator", "INPUT_SIZE", "compose", "dovenet_state", "load_dovenet"]
