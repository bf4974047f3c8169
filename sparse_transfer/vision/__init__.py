"""Sparse pretraining of timm models (AC/DC, GMP, RigL, constant mask) on ImageNet-style data."""

from .config import METHODS, VisionArguments, load_recipe, parse_args
from .train import train

__all__ = ["METHODS", "VisionArguments", "load_recipe", "parse_args", "train"]
