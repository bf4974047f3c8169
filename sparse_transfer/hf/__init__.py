"""Hugging Face integration: the core mask engine driven from ``transformers.Trainer``."""

from .trainer import (
    SPARSE_METHOD_STATE_NAME,
    SPARSE_TRAINER_STATE_NAME,
    GradualUnfreezeCallback,
    MaskMethodCallback,
    SparseTrainer,
    SparseTrainingArguments,
    distillation_loss,
)
from .unfreeze import UNFREEZE_MODES, GradualUnfreezer, find_encoder_blocks, unfreeze_stage

__all__ = [
    "SPARSE_METHOD_STATE_NAME",
    "SPARSE_TRAINER_STATE_NAME",
    "UNFREEZE_MODES",
    "GradualUnfreezeCallback",
    "GradualUnfreezer",
    "MaskMethodCallback",
    "SparseTrainer",
    "SparseTrainingArguments",
    "distillation_loss",
    "find_encoder_blocks",
    "unfreeze_stage",
]
