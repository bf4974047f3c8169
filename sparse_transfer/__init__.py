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

__all__ = [
    "DISTRIBUTIONS",
    "MASKS_NAME",
    "SparseMasks",
    "SparsityReport",
    "TargetSpec",
    "__version__",
    "compute_masks",
    "erk_densities",
    "select_targets",
    "sparsity_report",
]
