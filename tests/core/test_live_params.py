"""Masks that check themselves: replaced parameters are followed or refused, never silently unenforced; gradients are
masked before clipping reads them; NaN and inf at pruned coordinates end as exact zeros."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from sparse_transfer.core import SparseMasks

from .test_masks import OPTIMIZERS, _assert_enforced


def mlp(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))


def train(model: nn.Module, optimizer, steps: int = 3) -> None:
    for _ in range(steps):
        model(torch.randn(8, 10)).pow(2).mean().backward()
        optimizer.step()
        optimizer.zero_grad()


def live_violations(model: nn.Module, masks: SparseMasks) -> int:
    """Non-zero pruned weights counted on the model itself, by name: independent of the masks' own bookkeeping."""
    return sum(int((model.get_parameter(n).detach()[~m.cpu()] != 0).sum()) for n, m in masks.items())


# ------------------------------------------------------------------------------ replaced after attach: refused
@pytest.mark.parametrize(
    "replace",
    [
        lambda m: m.load_state_dict(mlp(seed=1).state_dict(), assign=True),
        lambda m: m.__setitem__(0, nn.Linear(10, 20)),
    ],
    ids=["load_state_dict-assign", "new-module"],
)
def test_parameters_replaced_after_attach_are_an_error_not_a_silent_zero(replace):
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    masks.attach(optimizer)
    replace(model)
    with pytest.raises(RuntimeError, match=r"0\.weight .* was replaced after the masks were attached"):
        masks.violations()
    with pytest.raises(RuntimeError, match="optimizer still holds the old tensor"):
        masks.check()


def test_to_empty_on_the_same_device_is_seen_by_the_check():
    """``to_empty`` without a device change keeps the parameter objects but fills them with garbage: the check reads
    the live weights, so the lost zeros show."""
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    masks.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(1.0)  # what empty memory may hold; to_empty(device="cpu") reuses the objects the same way
    model.to_empty(device="cpu")
    assert masks.violations() == live_violations(model, masks)
    model[0].weight.data.fill_(1.0)
    assert masks.violations() == live_violations(model, masks) > 0


def test_overwriting_dtype_conversion_after_attach_is_an_error():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    masks.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    torch.__future__.set_overwrite_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
    finally:
        torch.__future__.set_overwrite_module_params_on_conversion(False)
    with pytest.raises(RuntimeError, match="was replaced after the masks were attached"):
        masks.violations()


# --------------------------------------------------------------------- replaced before attach: followed by name
def test_parameters_replaced_before_attach_are_followed_by_name(caplog):
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    model.load_state_dict(mlp(seed=1).state_dict(), assign=True)  # new, dense tensors
    with caplog.at_level("WARNING", logger="sparse_transfer.core.masks"):
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
        masks.attach(optimizer)
    assert "now follow the new tensors" in caplog.text
    assert all(masks.params[n] is model.get_parameter(n) for n in masks)
    train(model, optimizer)
    assert live_violations(model, masks) == 0 and masks.violations() == 0


def test_a_new_optimizer_over_replaced_parameters_is_followed_on_reattach():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    masks.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    model[0] = nn.Linear(10, 20)  # replaced: the old optimizer would train the old tensor
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks.attach(optimizer)
    train(model, optimizer)
    assert live_violations(model, masks) == 0
    _assert_enforced(masks, optimizer)


def test_replaced_parameters_held_by_the_attached_optimizer_are_followed():
    """The optimizer already holds the new tensors (as accelerate's FSDP2 preparation does): the masks follow."""
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks.attach(optimizer)
    old = list(model.parameters())
    train(model, optimizer, steps=1)
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()}, assign=True)  # same values, new tensors
    for group in optimizer.param_groups:  # swap the optimizer's references, as a wrapper would
        group["params"] = [dict(zip(map(id, old), model.parameters()))[id(p)] for p in group["params"]]
    masks.check()
    train(model, optimizer)
    assert live_violations(model, masks) == 0 and masks.violations() == 0


def test_meta_model_materialized_with_to_empty_keeps_its_masks():
    reference = mlp()
    masks = SparseMasks.from_magnitude(reference, 0.8)
    expected = {n: m.clone() for n, m in masks.items()}
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))
    masks.bind(model)  # the masks stay on the CPU: moving them to meta would lose them
    model.to_empty(device="cpu")
    model.load_state_dict(reference.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks.attach(optimizer)
    train(model, optimizer)
    assert all(torch.equal(masks[n], expected[n]) for n in expected)
    assert live_violations(model, masks) == 0


def test_a_removed_parameter_is_an_error():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    model[2] = nn.Identity()
    with pytest.raises(RuntimeError, match="2.weight is no longer a parameter"):
        masks.violations()


def test_fsdp1_is_refused_with_the_fix():
    model = mlp()
    wrapper = type("FullyShardedDataParallel", (nn.Module,), {})()  # same class name: FSDP1 needs a process group
    wrapper.add_module("_fsdp_wrapped_module", model)
    with pytest.raises(ValueError, match="FSDP1 .* flattens parameters.* FSDP2"):
        SparseMasks.from_magnitude(model, 0.5).bind(wrapper)


# -------------------------------------------------------------------------- gradients masked before clipping
@pytest.mark.parametrize("accumulation", [1, 3])
def test_gradients_are_masked_before_clipping_reads_them(accumulation):
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks.attach(optimizer)
    for _ in range(accumulation):
        model(torch.randn(8, 10)).pow(2).mean().backward()
    for name, param in masks.params.items():  # before any optimizer hook has run
        assert (param.grad[~masks[name]] == 0).all(), name
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)
    dense_norm_of_applied = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert float(norm) == pytest.approx(float(dense_norm_of_applied))


def test_dense_gradient_steps_keep_gradients_until_the_method_masks_them():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    masks.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    masks.keep_dense_grads = True
    model(torch.randn(8, 10)).pow(2).mean().backward()
    assert any((p.grad[~masks[n]] != 0).any() for n, p in masks.params.items())
    masks.mask_grads_()
    assert all((p.grad[~masks[n]] == 0).all() for n, p in masks.params.items())


# --------------------------------------------------------------------------------------- NaN and inf select
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16, torch.float64])
@pytest.mark.parametrize("multiplier", ["uint8", "float"])
@pytest.mark.parametrize("bad", [float("inf"), float("-inf"), float("nan")])
def test_non_finite_weights_at_pruned_coordinates_become_exact_zeros(dtype, multiplier, bad):
    model = mlp().to(dtype)
    masks = SparseMasks.from_magnitude(model, 0.5)
    masks.multiplier = multiplier
    weight = model[0].weight
    pruned = ~masks["0.weight"]
    kept_before = weight.detach()[~pruned].clone()
    with torch.no_grad():
        weight[pruned] = bad
    masks.apply_()
    assert (weight.detach()[pruned] == 0).all() and not weight.detach()[pruned].isnan().any()
    assert torch.equal(weight.detach()[~pruned], kept_before)  # kept weights untouched, bit for bit
    assert masks.violations() == 0


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
def test_an_inf_gradient_at_a_pruned_coordinate_does_not_poison_the_model(optimizer_name):
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    pruned = ~masks["0.weight"]
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    masks.attach(optimizer)
    # An fp16-style overflow: inf (and a NaN) in the gradient, only at pruned coordinates.
    poison = torch.zeros(20, 10)
    poison[pruned] = float("inf")
    poison[tuple(pruned.nonzero()[0])] = float("nan")
    model[0].weight.register_hook(lambda grad: grad + poison)
    for _ in range(3):
        model(torch.randn(8, 10)).pow(2).mean().backward()
        assert (model[0].weight.grad[pruned] == 0).all()
        optimizer.step()
        optimizer.zero_grad()
    for param in model.parameters():
        assert torch.isfinite(param).all()
    _assert_enforced(masks, optimizer)
    assert masks.violations() == 0


# ------------------------------------------------------------------------- found by attacking from outside
def test_a_swapped_tensor_whose_hooks_no_longer_run_is_masked_at_the_step_with_a_warning(caplog):
    """``set_swap_module_params_on_conversion`` swaps tensors in place and PyTorch then runs no gradient hook on them:
    the pre-step safety net masks the gradient before the optimizer reads it, and says why clipping saw it dense."""
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    masks.attach(optimizer)
    torch.__future__.set_swap_module_params_on_conversion(True)
    try:
        model.to(torch.float64)
    finally:
        torch.__future__.set_swap_module_params_on_conversion(False)
    with caplog.at_level("WARNING", logger="sparse_transfer.core.masks"):
        for _ in range(2):
            model(torch.randn(8, 10, dtype=torch.float64)).pow(2).mean().backward()
            optimizer.step()
            _assert_enforced(masks, optimizer)
            optimizer.zero_grad()
    assert "set_swap_module_params_on_conversion" in caplog.text


def test_a_gradient_assigned_by_hand_is_masked_before_the_optimizer_reads_it():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    masks.attach(optimizer)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()
    _assert_enforced(masks, optimizer)


def test_a_replacement_trained_without_the_masks_is_reported_not_repaired():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks.attach(optimizer)
    model[2] = nn.Linear(20, 2)  # dense, and the optimizer is given it: it trains without hooks until the next check
    optimizer.add_param_group({"params": list(model[2].parameters())})
    train(model, optimizer)
    with pytest.raises(RuntimeError, match=r"2\.weight .* pruned weights are not zero: it was trained or loaded without"):
        masks.violations()


def test_violations_count_what_the_model_holds_without_repairing_it():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.8)
    dense = {k: v.clone() for k, v in mlp(seed=1).state_dict().items()}
    model.load_state_dict(dense, assign=True)
    expected = live_violations(model, masks)
    assert expected > 0
    assert masks.violations() == expected == live_violations(model, masks)  # counted, not zeroed
    assert all(torch.equal(v, mlp(seed=1).state_dict()[k]) for k, v in dense.items())


def test_the_handle_of_a_superseded_attach_does_not_detach_the_new_one():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.5)
    first = masks.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    masks.attach(optimizer)
    first.remove()
    assert masks.optimizer is optimizer
    train(model, optimizer)
    _assert_enforced(masks, optimizer, check_grads=False)
    assert live_violations(model, masks) == 0


def test_frozen_parameters_can_be_attached_and_are_masked_once_unfrozen():
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.5)
    model[0].requires_grad_(False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks.attach(optimizer)
    assert not model[0].weight.requires_grad
    model[0].requires_grad_(True)
    model(torch.randn(8, 10)).pow(2).mean().backward()
    assert (model[0].weight.grad[~masks["0.weight"]] == 0).all()  # the hook registered while frozen ran


def test_dense_masks_on_a_meta_model_survive_to_empty_and_zeros_of_a_meta_model_are_an_error():
    from sparse_transfer.methods import dense_masks

    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))
    masks = dense_masks(model)
    with pytest.raises(ValueError, match="meta device .* nothing to read its zeros"):
        SparseMasks.from_zeros(model)
    model.to_empty(device="cpu")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    masks.attach(optimizer)
    assert masks.violations() == 0 and masks.sparsity() == 0.0


def test_a_dense_step_whose_method_never_ran_is_masked_at_the_optimizer_step(caplog):
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    masks.attach(optimizer)
    masks.keep_dense_grads = True  # what begin_step does for a RigL update step
    model(torch.randn(8, 10)).pow(2).mean().backward()
    with caplog.at_level("WARNING", logger="sparse_transfer.core.masks"):
        optimizer.step()
    assert "method.step(step, optimizer) skipped" in caplog.text
    _assert_enforced(masks, optimizer)


def test_a_gradient_replaced_after_backward_is_masked_before_the_step(caplog):
    model = mlp()
    masks = SparseMasks.from_magnitude(model, 0.5)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    masks.attach(optimizer)
    model(torch.randn(8, 10)).pow(2).mean().backward()
    with torch.no_grad():
        for p in model.parameters():
            p.grad = p.grad + 1.0  # a new tensor, after the hooks ran
    with caplog.at_level("WARNING", logger="sparse_transfer.core.masks"):
        optimizer.step()
    assert "did not go through their gradient hook" in caplog.text
    _assert_enforced(masks, optimizer)


class WithAux(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.main, self.aux = nn.Linear(10, 10), nn.Linear(10, 10)

    def forward(self, x, use_aux=False):
        return self.aux(x) if use_aux else self.main(x)


def test_no_false_alarm_for_kept_zero_gradients_of_an_unused_layer(caplog):
    model = WithAux()
    masks = SparseMasks.from_magnitude(model, 0.5)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    masks.attach(optimizer)
    with caplog.at_level("WARNING", logger="sparse_transfer.core.masks"):
        for step in range(4):
            model(torch.randn(4, 10), use_aux=step == 0).pow(2).mean().backward()
            optimizer.step()
            optimizer.step()  # twice on the same gradient
            optimizer.zero_grad(set_to_none=False)  # aux keeps a zero .grad while unused
    assert "gradient hook" not in caplog.text
    _assert_enforced(masks, optimizer)


def test_a_sparse_gradient_is_a_clear_error():
    from sparse_transfer.core import TargetSpec

    model = nn.Sequential(nn.Embedding(20, 8, sparse=True))
    masks = SparseMasks.from_magnitude(model, 0.5, targets=TargetSpec(module_types=(nn.Embedding,)))
    masks.attach(torch.optim.SGD(model.parameters(), lr=0.1))
    with pytest.raises(RuntimeError, match=r"0\.weight received a torch.sparse_coo gradient .* \(sparse=False\)"):
        model(torch.tensor([1, 2])).sum().backward()
