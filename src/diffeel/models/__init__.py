"""Segmentation and synthesis models in plain PyTorch, the registry, and checkpoint I/O.

Importing this package imports every model module, and each registers its factory
(:mod:`.registry`), so ``create_model`` and ``list_models`` know every name.
"""

from . import dovenet, espnet, espnetv2, mask2anomaly, u2net  # noqa: F401  (they register their models)
from .checkpoints import load_state, save_state
from .deeplab import SmallDeepLab
from .factory import create_model
from .loading import input_normalization, is_mask_model, load_strict, normalise, scoring_logits
from .registry import describe_models, list_models, register_model
from .rpl import RPLModel, RPLOutput
from .wider_resnet import RPLWiderResNet38

__all__ = ["SmallDeepLab", "RPLModel", "RPLOutput", "RPLWiderResNet38", "create_model", "list_models", "register_model",
           "describe_models", "load_strict", "input_normalization", "is_mask_model", "normalise", "scoring_logits", "save_state", "load_state"]
