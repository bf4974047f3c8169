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
    save_sparse_adapter,
    save_sparse_pretrained,
    verify_checkpoint_sparsity,
    verify_sparse_adapter,
)
from .methods import ACDC, GMP, NM, Constant, MaskMethod, RigL, acdc_phase, dense_masks, rigl_drop_fraction

# The transformers integration is imported on first use, so that the mask engine and the vision methods
# do not pay for importing transformers.
_LAZY = {
    "GradualUnfreezer": "sparse_transfer.hf",
    "MaskMethodCallback": "sparse_transfer.hf",
    "MeanPoolingBertForSequenceClassification": "sparse_transfer.hf.pooling",
    "SparseLoraConfig": "sparse_transfer.lora",
    "SparseTrainer": "sparse_transfer.hf",
    "SparseTrainingArguments": "sparse_transfer.hf",
    "distillation_loss": "sparse_transfer.hf",
    "find_encoder_blocks": "sparse_transfer.hf",
    "glue_metrics": "sparse_transfer.glue",
    "load_sparse_lora": "sparse_transfer.lora",
    "run_glue": "sparse_transfer.glue",
}


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'sparse_transfer' has no attribute {name!r}")


__all__ = [
    "ACDC",
    "Constant",
    "DISTRIBUTIONS",
    "GMP",
    "GradualUnfreezer",
    "MASKS_NAME",
    "MaskMethod",
    "MaskMethodCallback",
    "MeanPoolingBertForSequenceClassification",
    "NM",
    "RigL",
    "SparseLoraConfig",
    "SparseMasks",
    "SparseTrainer",
    "SparseTrainingArguments",
    "SparsityReport",
    "TargetSpec",
    "__version__",
    "acdc_phase",
    "check_sparsity",
    "compute_masks",
    "dense_masks",
    "distillation_loss",
    "erk_densities",
    "find_encoder_blocks",
    "glue_metrics",
    "load_sparse_lora",
    "load_sparse_masks",
    "load_state_dict_from_checkpoint",
    "push_sparse_to_hub",
    "rigl_drop_fraction",
    "run_glue",
    "save_sparse_adapter",
    "save_sparse_pretrained",
    "select_targets",
    "sparsity_report",
    "verify_checkpoint_sparsity",
    "verify_sparse_adapter",
]
