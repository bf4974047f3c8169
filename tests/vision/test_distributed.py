"""Two CPU processes (gloo, launched with torchrun): every rank ends with the same masks and weights."""

from __future__ import annotations

import json

import pytest

from ..torchrun import torchrun

COMMON = [
    "--model", "test_resnet", "--epochs", "2", "--batch_size", "4", "--lr", "0.1", "--lr_warmup_epochs", "1",
    "--train_size_start", "16", "--train_size_end", "16", "--eval_size", "16", "--eval_resize", "18",
    "--resize_multiple", "16", "--num_workers", "0", "--no_progress", "--crop_scale_min", "0.5",
]
CASES = {
    # RigL: the mask depends on the all-reduced dense gradient, the first thing to diverge if DDP were wrong
    "rigl": ["--method", "rigl", "--sparsity", "0.8", "--distribution", "erk", "--rigl_interval_steps", "2"],
    "acdc": ["--method", "acdc", "--sparsity", "0.8", "--epochs", "4", "--acdc_warmup_epochs", "1",
             "--acdc_phase_epochs", "1", "--acdc_final_epochs", "1"],
}


@pytest.mark.parametrize("name", ["rigl", pytest.param("acdc", marks=pytest.mark.slow)])
def test_two_process_ddp_keeps_ranks_identical(tmp_path, image_folder, name):
    out = tmp_path / name
    arguments = [*COMMON, *CASES[name], "--data", image_folder, "--output_dir", str(out)]
    torchrun("sparse_transfer.vision", arguments, timeout=240, fresh=[str(out)])
    results = json.loads((out / "results.json").read_text())
    assert results["complete"] and results["num_processes"] == 2
    # 36 images / (4 per device x 2 processes): the data really was split between the ranks
    assert results["steps_per_epoch"] == 4
    digests = results["rank_digests"]  # sha256 of every weight, buffer and mask, computed on each rank
    assert len(digests) == 2 and digests[0] == digests[1]
    assert results["final_sparsity"] == pytest.approx(0.8, abs=0.01)
