"""sparse_transfer: exact, fast sparse transfer learning for Hugging Face and timm models."""

__version__ = "0.1.0"

from .core import (
    DISTRIBUTIONS,
    MASKS_NAME,
    SparseMasks,
    SparsityReport,
    TargetSpec,
    compute_masks,
    erk_densities,
    select_targets,
    sparsity_report,
)
from .methods import ACDC, GMP, Constant, RigL, acdc_phase, dense_masks, rigl_drop_fraction

__all__ = [
    "ACDC",
    "Constant",
    "DISTRIBUTIONS",
    "GMP",
    "MASKS_NAME",
    "RigL",
    "SparseMasks",
    "SparsityReport",
    "TargetSpec",
    "__version__",
    "acdc_phase",
    "compute_masks",
    "dense_masks",
    "erk_densities",
    "rigl_drop_fraction",
    "select_targets",
    "sparsity_report",
]
