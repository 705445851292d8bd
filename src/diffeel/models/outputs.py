"""The two-output convention of residual models (RPL's module, the residual adapter): imports no model."""

from __future__ import annotations

from typing import NamedTuple

import torch


class RPLOutput(NamedTuple):
    """RPL's two outputs at input size: ``out = model(x); out[0], out[1]`` reads as in RPL's code."""

    host_logits: torch.Tensor  # RPL's out1: the frozen closed-set model
    rpl_logits: torch.Tensor  # RPL's out2: with the residual; anomaly scores come from these


class RPLScoring:
    """What RPL's models score with: ``out2``, or ``out1`` while the residual module is untrained
    (a closed-set checkpoint), computed alone."""

    def scoring_logits(self, images: torch.Tensor) -> torch.Tensor:
        wanted = "rpl" if getattr(self, "residual_trained", True) else "host"
        output = self(images, outputs=(wanted,))
        return output.rpl_logits if wanted == "rpl" else output.host_logits
