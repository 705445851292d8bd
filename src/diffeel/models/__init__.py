"""Segmentation models: RPL's WiderResNet38 host, a small DeepLabV3+ for CPU, the RPL residual
module, the model registry and checkpoint I/O."""

from .checkpoints import load_state, save_state
from .deeplab import SmallDeepLab
from .registry import scoring_logits, create_model, describe_models, input_normalization, is_mask_model, list_models, load_strict, normalise
from .rpl import RPLModel, RPLOutput
from .wider_resnet import RPLWiderResNet38

__all__ = ["SmallDeepLab", "RPLModel", "RPLOutput", "RPLWiderResNet38", "create_model", "list_models",
           "describe_models", "load_strict", "input_normalization", "is_mask_model", "normalise", "scoring_logits", "save_state", "load_state"]
