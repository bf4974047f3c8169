"""A checkpoint saved by 2 processes whose second writes its ``rng_state_1.pth`` late (test_ddp.py): the completion
marker must wait for it, or resume refuses the checkpoint as "added after the save".

Usage: ``torchrun --nproc_per_node 2 -m tests.hf.ddp_checkpoint OUT_DIR``
"""

from __future__ import annotations

import os
import sys
import time

from transformers import Trainer

from sparse_transfer.hf import SparseTrainer

from .conftest import make_args, make_dataset, make_sparse_bert

if __name__ == "__main__":
    out, rank = sys.argv[1], int(os.environ.get("RANK", 0))
    save_rng_state = Trainer._save_rng_state

    def late_rng_state(self, output_dir):
        if rank == 1:
            time.sleep(1.5)  # a slower process (or disk): rank 0 has long written everything else
        return save_rng_state(self, output_dir)

    Trainer._save_rng_state = late_rng_state
    args = make_args(out, unfreeze="none", max_steps=2, save_strategy="steps", save_steps=2, logging_steps=100,
                     per_device_train_batch_size=2)
    SparseTrainer(model=make_sparse_bert(), args=args, train_dataset=make_dataset(16)).train()
