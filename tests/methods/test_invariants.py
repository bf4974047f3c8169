"""Property tests: every method x every optimizer keeps the engine's invariants at every step of a plain loop.

While a mask is imposed: pruned weights are exactly 0 after each step, their gradients are exactly 0 before clipping
(also when an inf lands on a pruned coordinate), their optimizer state is 0, the check reads the live parameters, and
RigL keeps each layer's non-zero count.
"""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparse_transfer.core import SparseMasks
from sparse_transfer.methods import ACDC, GMP, NM, Constant, RigL, dense_masks

from ..core.test_masks import OPTIMIZERS

STEPS, STEPS_PER_EPOCH = 14, 2


def model_for(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4),
    )


def method_for(name: str, model: nn.Module, sparsity: float):
    if name == "constant":
        return Constant(SparseMasks.from_magnitude(model, sparsity, "global", targets="cnn"))
    if name == "gmp":
        return GMP(dense_masks(model, "cnn"), sparsity, start_step=1, end_step=9, interval=2)
    if name == "acdc":
        return ACDC(dense_masks(model, "cnn"), sparsity, STEPS_PER_EPOCH, total_epochs=7, warmup_epochs=1, phase_epochs=1,
                    final_epochs=2)
    if name == "rigl":
        return RigL.from_model(model, sparsity, STEPS, distribution="erk", targets="cnn", update_interval=3)
    return NM(dense_masks(model, "cnn-fld"), 2, 4, prune_step=2)  # the stem (3 inputs) has no group of 4


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("name", ["constant", "gmp", "acdc", "rigl", "nm"])
@settings(max_examples=2, deadline=None)
@given(seed=st.integers(0, 2**16), sparsity=st.floats(0.3, 0.95), poison=st.booleans())
def test_invariants_hold_at_every_step(name, optimizer_name, seed, sparsity, poison):
    model = model_for(seed)
    method = method_for(name, model, sparsity)
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    method.attach(optimizer)
    if poison:
        # An fp16-style overflow at every pruned coordinate of the first masked layer's gradient, on the steps whose gradient
        # is masked (on a dense-gradient step a released or grown weight would really train on that inf).
        name0 = next(iter(method.masks))

        def overflow(grad):
            if method.masks.keep_dense_grads or not method.active:
                return grad
            return torch.where(method.masks[name0], grad, torch.full_like(grad, float("inf")))

        model.get_parameter(name0).register_hook(overflow)
    counts = {n: int(m.sum()) for n, m in method.masks.items()} if name == "rigl" else None
    generator = torch.Generator().manual_seed(seed)
    for step in range(STEPS):
        method.begin_step(step)
        x = torch.randn(4, 3, 6, 6, generator=generator)
        model(x).pow(2).mean().backward()
        method.step(step, optimizer)
        if method.active:
            for n, p in method.masks.params.items():
                assert (p.grad[~method.masks[n]] == 0).all(), f"step {step}: {n} pruned gradient before clipping"
        torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad()
        for p in model.parameters():
            assert not p.isnan().any(), f"step {step}: NaN in the model"
        if method.active:
            assert method.masks.violations() == 0
            for n, p in method.masks.params.items():
                pruned = ~method.masks[n]
                assert (model.get_parameter(n).detach()[pruned] == 0).all(), f"step {step}: {n}"
                for key, value in optimizer.state.get(p, {}).items():
                    if torch.is_tensor(value) and value.shape == p.shape:
                        assert (value[pruned] == 0).all(), f"step {step}: {n} state {key!r}"
        if counts is not None:
            assert {n: int(m.sum()) for n, m in method.masks.items()} == counts
    assert method.active
