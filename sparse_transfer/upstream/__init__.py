"""Upstream pruning: turn a dense pretrained encoder into a sparse pretrained one.

``python -m sparse_transfer.upstream --model DIR --text train.txt --eval-text test.txt --sparsity 0.9
--output-dir runs/x`` prunes the six encoder linears of every block (the oBERT target set) by magnitude on the
cubic GMP schedule, holds the mask for a final stretch, and trains throughout by distillation from the dense
original on unlabeled text. The output directory is an ordinary checkpoint (``AutoModel.from_pretrained``)
with exact zeros, ``sparse_masks.safetensors``, a model card with the per-layer sparsity, ``results.json``
and the resolved recipe.

Choice of losses (measured, ``benchmarks/upstream_minilm.py --study losses``):
    LOSS_STUDY_PLACEHOLDER
"""

from .config import UpstreamArguments, load_recipe, parse_args
from .data import BlockDataset, held_out_sentences, read_text_files, tokenize_blocks
from .losses import LossWeights, attention_loss, distillation_losses, hidden_state_loss, logit_loss
from .run import RESULTS_NAME, run_upstream
from .train import (
    PruningCallback,
    UpstreamPruning,
    UpstreamTrainer,
    evaluate_student,
    magnitude_prune_,
    mean_pooled_embeddings,
)

__all__ = [
    "RESULTS_NAME",
    "BlockDataset",
    "LossWeights",
    "PruningCallback",
    "UpstreamArguments",
    "UpstreamPruning",
    "UpstreamTrainer",
    "attention_loss",
    "distillation_losses",
    "evaluate_student",
    "held_out_sentences",
    "hidden_state_loss",
    "load_recipe",
    "logit_loss",
    "magnitude_prune_",
    "mean_pooled_embeddings",
    "parse_args",
    "read_text_files",
    "run_upstream",
    "tokenize_blocks",
]
