"""Trains the tiny sparse BERT with gradual unfreezing, on one process or under ``torchrun`` (test_ddp.py).

Usage (from the repository root)::

    python -m tests.hf.ddp_train OUT_DIR --per-device-batch 4
    torchrun --nproc_per_node 2 -m tests.hf.ddp_train OUT_DIR --per-device-batch 2

Every rank writes ``rank{R}.safetensors`` (its final weights) and ``rank{R}.json`` (what it checked at every
step: pruned weights ``== 0`` after the step, no gradient on frozen parameters before it, the stage and LR).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
from safetensors.torch import save_file
from transformers import TrainerCallback

from sparse_transfer.core import select_targets
from sparse_transfer.hf import SparseTrainer

from .conftest import make_args, make_dataset, make_sparse_bert


class Checker(TrainerCallback):
    def __init__(self, masks: dict[str, torch.Tensor]):
        self.masks = masks
        self.steps: list[dict] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        frozen_with_grad = [n for n, p in model.named_parameters() if not p.requires_grad and p.grad is not None]
        trainable = sum(p.requires_grad for p in model.parameters())
        params = dict(model.named_parameters())
        # after DDP's all-reduce and clipping, before the optimizer: the gradient of a pruned weight is exactly 0
        pruned_grads = sum(int((params[n].grad[~m] != 0).sum()) for n, m in self.masks.items() if params[n].grad is not None)
        self.steps.append(
            {"frozen_with_grad": frozen_with_grad, "trainable": trainable, "lr": optimizer.param_groups[0]["lr"],
             "pruned_grads": pruned_grads}
        )

    def on_step_end(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        self.steps[-1]["nonzero_pruned"] = sum(int((params[n].detach()[~m] != 0).sum()) for n, m in self.masks.items())


def train(output_dir: str, per_device_batch: int) -> None:
    """Trains 8 steps (4 stages of 2) and writes this rank's weights and step checks to ``output_dir``."""
    model = make_sparse_bert(dropout=0.0)  # no dropout: 1 and 2 processes compute the same function
    masks = {n: p.detach() != 0 for n, p in select_targets(model, "bert").items()}
    checker = Checker(masks)
    args = make_args(
        output_dir,
        per_device_train_batch_size=per_device_batch,
        stage_steps=2,
        max_steps=8,
        weight_decay=0.1,
        # Only under torchrun: naming a backend makes accelerate expect a process group even for one process.
        ddp_backend="gloo" if int(os.environ.get("WORLD_SIZE", "1")) > 1 else None,
    )
    trainer = SparseTrainer(model=model, args=args, train_dataset=make_dataset(16), callbacks=[checker])
    trainer.train()

    rank = args.process_index
    state = {n: p.detach().contiguous() for n, p in trainer.model.state_dict().items()}
    save_file(state, os.path.join(output_dir, f"rank{rank}.safetensors"))
    report = {
        "world_size": args.world_size,
        "global_step": trainer.state.global_step,
        "steps_per_stage": trainer.steps_per_stage,
        "steps": checker.steps,
        "parallel_mode": str(args.parallel_mode.value),
    }
    with open(os.path.join(output_dir, f"rank{rank}.json"), "w") as f:
        json.dump(report, f)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--per-device-batch", type=int, required=True)
    opts = parser.parse_args()
    torch.set_num_threads(1)
    train(opts.output_dir, opts.per_device_batch)


if __name__ == "__main__":
    main()
