"""Evaluation metrics: exact streaming pixel metrics (more in later modules)."""

from .pixel import PROTOCOLS, PixelMetrics, Protocol, UndefinedMetricWarning, pixel_metrics

__all__ = ["PixelMetrics", "pixel_metrics", "Protocol", "PROTOCOLS", "UndefinedMetricWarning"]
