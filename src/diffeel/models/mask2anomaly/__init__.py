"""Mask2Anomaly's host network in plain PyTorch: official module tree and key names, no detectron2,
no compiled operator."""

from .backbone import ResNet, torchvision_resnet50_to_detectron2
from .deform_attn import MSDeformAttn, ms_deform_attn
from .model import (
    PIXEL_MEAN,
    PIXEL_STD,
    UNUSED_UPSTREAM_KEYS,
    UNUSED_UPSTREAM_PATTERN,
    Mask2Anomaly,
    load_backbone_weights,
    mask2anomaly_state,
    upsample_masks,
)

__all__ = ["Mask2Anomaly", "mask2anomaly_state", "torchvision_resnet50_to_detectron2", "load_backbone_weights",
           "upsample_masks", "ms_deform_attn", "MSDeformAttn", "ResNet", "UNUSED_UPSTREAM_KEYS",
           "UNUSED_UPSTREAM_PATTERN", "PIXEL_MEAN", "PIXEL_STD"]
