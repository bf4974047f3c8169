"""Trains the tiny sparse BERT with a mask method, sharded with FSDP2 under ``torchrun`` or plain on one process.

Usage (from the repository root)::

    python -m tests.core.fsdp_train OUT_DIR --methods constant gmp rigl                      # one process, no sharding
    torchrun --nproc_per_node 2 -m tests.core.fsdp_train OUT_DIR --methods constant gmp rigl  # FSDP2, gloo, 2 CPUs

Every process takes its share of the same global batch (8 sequences) per step. For each method, rank 0 writes ``METHOD/model/`` (the full
state dict gathered from the shards, saved with ``save_pretrained``) and ``report.json`` (per step: the clipped
gradient norm, the masks' violations and measured sparsity reduced over ranks, the local pruned weights and
gradients that are not zero).
"""

from __future__ import annotations

import argparse
import json
import os

import torch
import torch.distributed as dist

from sparse_transfer import GMP, Constant, RigL, SparseMasks, dense_masks
from sparse_transfer.core.masks import local_tensor

from ..conftest import make_tiny_bert
from ..hf.conftest import make_dataset, make_sparse_bert

STEPS, GLOBAL_BATCH = 8, 8


def build(name: str):
    if name == "constant":
        model = make_sparse_bert(dropout=0.0)
        return model, Constant(SparseMasks.from_zeros(model, "bert"))
    model = make_tiny_bert(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    if name == "gmp":
        return model, GMP(dense_masks(model, "bert"), 0.8, start_step=0, end_step=6, interval=2)
    if name == "rigl":
        return model, RigL.from_model(model, 0.8, STEPS, distribution="erk", targets="bert", update_interval=2)
    raise KeyError(name)


def train(output_dir: str, method_name: str) -> None:
    world = dist.get_world_size() if dist.is_initialized() else 1
    rank = dist.get_rank() if dist.is_initialized() else 0
    model, method = build(method_name)
    if world > 1:
        from torch.distributed.fsdp import fully_shard

        for layer in model.bert.encoder.layer:
            fully_shard(layer)
        fully_shard(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    method.attach(optimizer)  # follows the sharded parameters by name
    data = make_dataset(STEPS * GLOBAL_BATCH)
    per_rank = GLOBAL_BATCH // world
    steps = []
    for step in range(STEPS):
        batch = data[step * GLOBAL_BATCH + rank * per_rank : step * GLOBAL_BATCH + (rank + 1) * per_rank]
        inputs = {k: torch.stack([torch.as_tensor(b[k]) for b in batch]) for k in batch[0]}
        method.begin_step(step)
        model(**inputs).loss.backward()
        event = method.step(step, optimizer)
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        norm = norm.full_tensor() if hasattr(norm, "full_tensor") else norm
        record = {"grad_norm": float(norm), "event": event["event"] if event else None}
        if method.active:
            record["local_pruned_grads"] = sum(
                int((local_tensor(p.grad)[~method.masks._local[n]] != 0).sum())
                for n, p in method.masks.params.items() if p.grad is not None
            )
        optimizer.step()
        optimizer.zero_grad()
        record["violations"] = method.masks.violations()
        record["measured_sparsity"] = method.masks.measured_sparsity()
        record["local_pruned_weights"] = sum(
            int((local_tensor(p.detach())[~method.masks._local[n]] != 0).sum()) for n, p in method.masks.params.items()
        )
        steps.append(record)
    if world > 1:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    else:
        state = model.state_dict()
    if rank == 0:
        violations_in_saved = method.masks.violations_in(state)
        model_to_save = make_sparse_bert(dropout=0.0)
        model_to_save.load_state_dict(state)
        model_to_save.save_pretrained(os.path.join(output_dir, "model"))
        method.masks.save(os.path.join(output_dir, "model", "sparse_masks.safetensors"))
        report = {"world_size": world, "steps": steps, "violations_in_saved": violations_in_saved,
                  "mask_sparsity": method.masks.sparsity()}
        with open(os.path.join(output_dir, "report.json"), "w") as f:
            json.dump(report, f)
    if world > 1:
        dist.barrier()  # rank 1 waits for rank 0's save before the next run (or the end of the process group)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("output_dir")
    parser.add_argument("--methods", nargs="+", default=["constant"], choices=["constant", "gmp", "rigl"])
    opts = parser.parse_args()
    torch.set_num_threads(1)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        dist.init_process_group("gloo")
    try:
        for name in opts.methods:
            os.makedirs(os.path.join(opts.output_dir, name), exist_ok=True)
            train(os.path.join(opts.output_dir, name), name)
    finally:
        if distributed:
            dist.destroy_process_group()


if __name__ == "__main__":
    main()
