"""Tiny sparse BERTs and in-memory datasets for the SparseTrainer tests (built in-process, never downloaded)."""

from __future__ import annotations

import pytest
import torch

from sparse_transfer.core import SparseMasks
from sparse_transfer.hf import SparseTrainingArguments

from ..conftest import make_tiny_bert

# Tiny models gain nothing from a second intra-op thread, and on a busy 2-core machine OpenMP's spinning
# threads make them several times slower.
torch.set_num_threads(1)

VOCAB = 99
SEQ_LEN = 8


def make_sparse_bert(seed: int = 0, sparsity: float = 0.5, dropout: float | None = None, **overrides):
    """The 2-layer, hidden-32 BERT of tests/conftest.py with zeros written into its six encoder linears per block.

    ``dropout=0`` turns off hidden and attention dropout (for comparisons across batch layouts).
    """
    if dropout is not None:
        overrides.update(hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)
    model = make_tiny_bert(seed=seed, **overrides)
    SparseMasks.from_magnitude(model, sparsity, "global", targets="bert").apply_()
    return model


def make_dataset(n: int = 16, seed: int = 0, num_labels: int = 2) -> list[dict]:
    """``n`` random token sequences whose label is a simple function of the tokens (so the model can learn)."""
    generator = torch.Generator().manual_seed(seed)
    data = []
    for _ in range(n):
        ids = torch.randint(1, VOCAB, (SEQ_LEN,), generator=generator)
        data.append(
            {
                "input_ids": ids,
                "attention_mask": torch.ones(SEQ_LEN, dtype=torch.long),
                "labels": int(ids[0] % num_labels),
            }
        )
    return data


def make_args(output_dir, **overrides) -> SparseTrainingArguments:
    """Deterministic CPU arguments: 4 examples per step, logging every step, no checkpoints unless asked."""
    values = dict(
        output_dir=str(output_dir),
        use_cpu=True,
        seed=0,
        per_device_train_batch_size=4,
        learning_rate=1e-2,
        num_train_epochs=4,
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
    )
    values.update(overrides)
    return SparseTrainingArguments(**values)


@pytest.fixture
def sparse_bert():
    return make_sparse_bert()


@pytest.fixture
def dataset():
    return make_dataset()
