"""Segmentation models: a small DeepLabV3+ for CPU, the RPL residual module, checkpoint I/O."""

from .checkpoints import load_state, save_state
from .deeplab import SmallDeepLab
from .rpl import RPLModel

__all__ = ["SmallDeepLab", "RPLModel", "save_state", "load_state"]
