"""Training: a seeded, resumable loop and the recipes of the paper's experiments."""

from .loop import TrainConfig, train
from .recipes import RECIPES

__all__ = ["TrainConfig", "train", "RECIPES"]
