"""The mask engine: plain PyTorch, no transformers or timm imports."""

from .distributions import (
    DISTRIBUTIONS,
    compute_masks,
    erk_densities,
    global_masks,
    nm_mask,
    random_masks,
    uniform_masks,
    validate_sparsity,
)
from .masks import MASKS_NAME, SparseMasks, pack_bits, unpack_bits
from .report import LayerSparsity, SparsityReport, sparsity_report
from .targets import BERT_ENCODER_PATTERNS, PRUNABLE_MODULE_TYPES, TargetSpec, resolve_target_spec, select_targets

__all__ = [
    "BERT_ENCODER_PATTERNS",
    "DISTRIBUTIONS",
    "MASKS_NAME",
    "PRUNABLE_MODULE_TYPES",
    "LayerSparsity",
    "SparseMasks",
    "SparsityReport",
    "TargetSpec",
    "compute_masks",
    "erk_densities",
    "global_masks",
    "nm_mask",
    "pack_bits",
    "random_masks",
    "resolve_target_spec",
    "select_targets",
    "sparsity_report",
    "uniform_masks",
    "unpack_bits",
    "validate_sparsity",
]
