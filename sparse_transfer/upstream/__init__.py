"""Upstream pruning: turn a dense pretrained encoder into a sparse pretrained one.

``python -m sparse_transfer.upstream --model DIR --text train.txt --eval-text test.txt --sparsity 0.9
--output-dir runs/x`` prunes the six encoder linears of every block (the oBERT target set) by magnitude on the
cubic GMP schedule (``--method gmp``, the default; ``acdc``, ``rigl`` and ``nm`` drive the other mask methods through
the same Trainer adapter), holds the mask for a final stretch, and trains throughout by distillation from the dense
original on unlabeled text. The output directory is an ordinary checkpoint (``AutoModel.from_pretrained``)
with exact zeros, ``sparse_masks.safetensors``, a model card with the per-layer sparsity, ``results.json``
and the resolved recipe.

Choice of losses, measured (``nice -n 10 python benchmarks/upstream_minilm.py --study losses``; results in
``benchmarks/results/upstream/losses_*.json``): all-MiniLM-L6-v2 to 90% global sparsity in 30 steps (GMP to step
20, 8 blocks of 64 tokens per step, WikiText-2 valid), measured on held-out WikiText-2 test (64 blocks, 256
lines); "hidden" is the relative squared error of the blocks' outputs (mean over the 6 blocks), "last" that of
the last block, "cosine" the cosine between sparse and dense mean-pooled sentence embeddings:

    =========================================  ======  ======  ======  =============
    losses (learning rate)                     hidden  last    cosine  wall (2 CPUs)
    =========================================  ======  ======  ======  =============
    magnitude only, no training (floor)        0.905   2.752   0.169   -
    hidden states (1e-4)                       0.777   2.139   0.182   757 s
    hidden states + attention KL (1e-4)        0.793   2.219   0.182   1234 s
    hidden states (5e-4)                       0.526   1.034   0.203   1141 s
    =========================================  ======  ======  ======  =============

Adding the attention term bought nothing on any measure (slightly worse hidden and last-block error, equal
cosine) while it needs eager attention instead of the fused SDPA kernel, so the default is the hidden-state term of
every block, ``hidden_weight=1``, ``attention_weight=0``. The learning rate mattered far more than the loss
(5e-4 roughly halves the last-block error of 1e-4), so the recipes use 5e-4. For models with an MLM head the
logit KD term (``logit_weight=1``, T=2, as oBERT distils) is added by default; that term could not be measured
here (the only real encoder on this machine has no MLM head), and neither could the MLM loss (``mlm_weight``,
off by default). The wall times were taken on 2 cores shared with other jobs (the two 1e-4 runs overlapped
with the 5e-4 run for part of the time), so they do not measure the cost of a term.
"""

from .config import UpstreamArguments, load_recipe, parse_args
from .data import BlockDataset, held_out_sentences, read_text_files, tokenize_blocks
from .losses import LossWeights, attention_loss, distillation_losses, hidden_state_loss, logit_loss
from .run import RESULTS_NAME, run_upstream
from .train import (
    UpstreamTrainer,
    build_method,
    evaluate_student,
    magnitude_prune_,
    mean_pooled_embeddings,
)

__all__ = [
    "RESULTS_NAME",
    "BlockDataset",
    "LossWeights",
    "UpstreamArguments",
    "UpstreamTrainer",
    "attention_loss",
    "build_method",
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
