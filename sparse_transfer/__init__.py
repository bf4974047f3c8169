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
from .hub import (
    check_sparsity,
    load_sparse_masks,
    load_state_dict_from_checkpoint,
    push_sparse_to_hub,
    save_sparse_pretrained,
    verify_checkpoint_sparsity,
)

__all__ = [
    "DISTRIBUTIONS",
    "MASKS_NAME",
    "SparseMasks",
    "SparsityReport",
    "TargetSpec",
    "__version__",
    "check_sparsity",
    "compute_masks",
    "erk_densities",
    "load_sparse_masks",
    "load_state_dict_from_checkpoint",
    "push_sparse_to_hub",
    "save_sparse_pretrained",
    "select_targets",
    "sparsity_report",
    "verify_checkpoint_sparsity",
]
