"""A NaN in one process's copy of the start weights, under ``torchrun`` (test_ddp.py): every rank must refuse before
training, none may wait for the others. Each rank writes what it raised to ``rank{R}.txt``.

Usage: ``torchrun --nproc_per_node 2 -m tests.hf.ddp_nan_start OUT_DIR``
"""

from __future__ import annotations

import os
import sys

import torch

from sparse_transfer.hf import SparseTrainer

from .conftest import make_args, make_dataset, make_sparse_bert

if __name__ == "__main__":
    out, rank = sys.argv[1], int(os.environ.get("RANK", 0))
    model = make_sparse_bert()
    if rank == 1:
        with torch.no_grad():
            model.classifier.weight[0, 0] = float("nan")
    trainer = SparseTrainer(model=model, args=make_args(out, max_steps=2), train_dataset=make_dataset(8))
    try:
        trainer.train()
        outcome = "trained"
    except ValueError as err:
        outcome = str(err)
    with open(os.path.join(out, f"rank{rank}.txt"), "w") as f:
        f.write(outcome)
