"""diffeel: open-set anomaly segmentation of road scenes in every weather (ComsAmy, DiffEEL)."""

__version__ = "0.1.0"
