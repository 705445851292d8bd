"""Evaluation metrics: exact streaming pixel metrics, component metrics, bootstrap intervals."""

from .bootstrap import BootstrapAccumulator, image_histogram
from .components import ComponentMetrics
from .pixel import PROTOCOLS, PixelMetrics, Protocol, UndefinedMetricWarning, pixel_metrics

__all__ = [
    "PixelMetrics",
    "pixel_metrics",
    "Protocol",
    "PROTOCOLS",
    "UndefinedMetricWarning",
    "ComponentMetrics",
    "BootstrapAccumulator",
    "image_histogram",
]
