"""Data-parallel SparseTrainer: 2 CPU processes (gloo, torchrun) against 1 process with the same global batch."""

from __future__ import annotations

import json
import os

import torch
from safetensors.torch import load_file

from sparse_transfer.core import select_targets

from ..torchrun import torchrun
from .conftest import make_sparse_bert
from .ddp_train import train


def launch(output_dir, per_device_batch: int, processes: int, timeout: float = 300) -> None:
    os.makedirs(output_dir, exist_ok=True)
    arguments = [str(output_dir), "--per-device-batch", str(per_device_batch)]
    torchrun("tests.hf.ddp_train", arguments, processes, timeout, fresh=[str(output_dir)])


def test_two_processes_match_one_with_the_same_global_batch(tmp_path):
    os.makedirs(tmp_path / "one")
    train(str(tmp_path / "one"), per_device_batch=4)  # the reference: one process, in this one
    launch(tmp_path / "two", per_device_batch=2, processes=2)

    single = load_file(tmp_path / "one" / "rank0.safetensors")
    ranks = [load_file(tmp_path / "two" / f"rank{r}.safetensors") for r in range(2)]
    reports = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]
    single_report = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert single_report["world_size"] == 1
    for report in reports:
        assert report["world_size"] == 2 and report["parallel_mode"] == "distributed"
        assert report["global_step"] == 8 and report["steps_per_stage"] == 2
        # The same stages and LRs as one process, every step: pruned weights exactly zero, frozen ones gradient-free.
        assert [s["trainable"] for s in report["steps"]] == [s["trainable"] for s in single_report["steps"]]
        assert [s["lr"] for s in report["steps"]] == [s["lr"] for s in single_report["steps"]]
        assert all(s["nonzero_pruned"] == 0 and s["frozen_with_grad"] == [] for s in report["steps"])
        assert all(s["pruned_grads"] == 0 for s in report["steps"])  # masked before the all-reduce and clipping
    # Every stage was reached: 2 steps each; with the embeddings frozen, the final stage trains what stage 2 does.
    counts = [s["trainable"] for s in single_report["steps"]]
    assert counts[0::2] == counts[1::2] and counts[0] < counts[2] < counts[4] == counts[6]

    # Every rank ends with bit-identical weights, with the pruned ones exactly zero.
    assert ranks[0].keys() == ranks[1].keys() == single.keys()
    for name in ranks[0]:
        assert torch.equal(ranks[0][name], ranks[1][name]), name
    initial = make_sparse_bert(dropout=0.0)
    for name, param in select_targets(initial, "bert").items():
        pruned = param.detach() == 0
        assert pruned.float().mean() > 0.2, name
        for weights in (*ranks, single):
            assert torch.all(weights[name][pruned] == 0), name
    # ... and the same result as one process with the same global batch, up to the all-reduce's summation order.
    for name in single:
        if name.endswith("attention.self.key.bias"):
            continue  # its exact gradient is 0 (softmax ignores a per-query constant): AdamW amplifies rounding noise
        torch.testing.assert_close(ranks[0][name], single[name], rtol=1e-4, atol=5e-5, msg=name)


def test_a_nan_start_on_one_process_stops_every_process_before_training(tmp_path):
    """The check is summed over the processes: the rank without the NaN stops too, instead of waiting for the other
    at DDP's first collective."""
    torchrun("tests.hf.ddp_nan_start", [str(tmp_path)], processes=2, timeout=180, fresh=[str(tmp_path)])
    for rank, where in ((0, "on another process"), (1, "classifier.weight")):
        outcome = (tmp_path / f"rank{rank}.txt").read_text()
        assert "1 parameter(s) of the model hold NaN or inf before training" in outcome and where in outcome, outcome


def test_a_checkpoint_is_marked_complete_after_every_process_wrote_into_it(tmp_path):
    from sparse_transfer.hf.trainer import check_checkpoint_untouched, checkpoint_is_complete

    torchrun("tests.hf.ddp_checkpoint", [str(tmp_path)], processes=2, timeout=180, fresh=[str(tmp_path)])
    checkpoint = tmp_path / "checkpoint-2"
    assert {"rng_state_0.pth", "rng_state_1.pth"} <= set(os.listdir(checkpoint))
    assert checkpoint_is_complete(checkpoint)
    check_checkpoint_untouched(checkpoint)  # raises if a file was added after the marker
