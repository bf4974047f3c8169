"""Schedules against their formulas, exact zeros, RigL's constant non-zeros, and bit-identical resume per method."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparse_transfer.core import erk_densities
from sparse_transfer.core.schedules import gmp_sparsity
from sparse_transfer.methods import ACDC, GMP, Constant, RigL, acdc_boundaries, acdc_phase, dense_masks, rigl_drop_fraction
from sparse_transfer.core import SparseMasks

STEPS_PER_EPOCH = 2


def tiny_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 5),
    )


def batch(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 + step)
    return torch.randn(4, 3, 6, 6, generator=g), torch.randint(0, 5, (4,), generator=g)


def make(name: str, model: nn.Module, total_steps: int):
    if name == "constant":
        return Constant(SparseMasks.from_magnitude(model, 0.7, "uniform", targets="cnn"))
    if name == "gmp":
        return GMP(dense_masks(model, "cnn"), 0.8, start_step=2, end_step=10, interval=3)
    if name == "acdc":
        return ACDC(dense_masks(model, "cnn"), 0.8, STEPS_PER_EPOCH, total_epochs=8, warmup_epochs=1, phase_epochs=1, final_epochs=2)
    if name == "acdc_min":
        return ACDC(dense_masks(model, "cnn"), 0.8, STEPS_PER_EPOCH, total_epochs=8, warmup_epochs=1, phase_epochs=1,
                    final_epochs=2, decompressed_sparsity=0.5)
    if name == "rigl":
        return RigL.from_model(model, 0.8, total_steps, distribution="erk", targets="cnn", update_interval=2, alpha=0.3, end_fraction=0.75)
    raise KeyError(name)


METHODS = ["constant", "gmp", "acdc", "acdc_min", "rigl"]


def run(model, method, optimizer, start: int, stop: int, events: list | None = None, check_zeros: bool = True):
    loss_fn = nn.CrossEntropyLoss()
    for step in range(start, stop):
        x, y = batch(step)
        optimizer.zero_grad()
        loss_fn(model(x), y).backward()
        event = method.step(step, optimizer)
        if events is not None and event is not None:
            events.append(event)
        optimizer.step()
        if check_zeros and method.active:
            for name, p in method.masks.params.items():
                assert (p.detach()[~method.masks[name]] == 0).all(), f"pruned weight non-zero at step {step} in {name}"


def setup(name: str, total: int):
    model = tiny_cnn()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    method = make(name, model, total)
    method.attach(optimizer)
    return model, optimizer, method


@pytest.mark.parametrize("name", METHODS)
def test_resume_is_bit_identical(name, tmp_path):
    total, cut = 16, 7  # cut mid-phase for every method
    model_a, opt_a, method_a = setup(name, total)
    run(model_a, method_a, opt_a, 0, total)

    model_b, opt_b, method_b = setup(name, total)
    run(model_b, method_b, opt_b, 0, cut)
    path = tmp_path / "state.pt"
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "method": method_b.state_dict(),
                "rng": torch.get_rng_state()}, path)
    state = torch.load(path, weights_only=True)
    model_c, opt_c, method_c = setup(name, total)
    model_c.load_state_dict(state["model"])
    opt_c.load_state_dict(state["opt"])
    method_c.load_state_dict(state["method"])
    torch.set_rng_state(state["rng"])
    run(model_c, method_c, opt_c, cut, total)

    for (key, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values()):
        assert torch.equal(a, c), f"{name}: {key} differs after resume"
    for key in method_a.masks:
        assert torch.equal(method_a.masks[key], method_c.masks[key])
    assert method_a.active == method_c.active


@pytest.mark.parametrize(
    "name, other",
    [("gmp", lambda m: GMP(dense_masks(m, "cnn"), 0.5, start_step=2, end_step=10, interval=3)),
     ("acdc", lambda m: ACDC(dense_masks(m, "cnn"), 0.8, STEPS_PER_EPOCH, total_epochs=10, warmup_epochs=1,
                             phase_epochs=1, final_epochs=2)),
     ("rigl", lambda m: RigL.from_model(m, 0.8, 16, distribution="erk", targets="cnn", update_interval=4, alpha=0.3,
                                        end_fraction=0.75))],
)
def test_resume_under_other_settings_is_an_error(name, other):
    """A GMP run saved at final sparsity 0.8 would otherwise go on to 0.5 without a word."""
    model, opt, method = setup(name, 16)
    run(model, method, opt, 0, 5)
    state = method.state_dict()
    with pytest.raises(ValueError, match=r"saved by .* with other settings \(.*there, .* here\)"):
        other(tiny_cnn()).load_state_dict(state)
    make(name, tiny_cnn(), 16).load_state_dict(state)  # the same settings resume
    legacy = {k: v for k, v in state.items() if k != "settings"}  # a state saved before settings were recorded
    other(tiny_cnn()).load_state_dict(legacy)


def test_settings_given_as_numpy_numbers_save_as_plain_ones(tmp_path):
    """The state is read back with weights_only=True, which refuses numpy scalars."""
    import numpy as np

    method = ACDC(dense_masks(tiny_cnn(), "cnn"), np.float64(0.8), np.int64(STEPS_PER_EPOCH), total_epochs=np.int64(8),
                  warmup_epochs=np.int64(1), phase_epochs=np.float64(1.5), final_epochs=2, reset_momentum=np.bool_(True))
    torch.save(method.state_dict(), tmp_path / "state.pt")
    settings = torch.load(tmp_path / "state.pt", weights_only=True)["settings"]
    assert settings["total_epochs"] == 8 and settings["phase_epochs"] == 1.5 and settings["reset_momentum"] is True


@pytest.mark.parametrize("name", ["gmp", "acdc", "nm"])
def test_a_nan_weight_stops_magnitude_ranking(name):
    """A NaN has no magnitude; topk would rank it above every weight and keep it in the mask."""
    from sparse_transfer._cli import TrainingStopped
    from sparse_transfer.methods import NM

    model = tiny_cnn()
    masks = dense_masks(model, "cnn")
    method = {  # each cuts at step 0, before the NaN spreads
        "gmp": lambda: GMP(masks, 0.8, start_step=0, end_step=4, interval=1),
        "acdc": lambda: ACDC(masks, 0.8, STEPS_PER_EPOCH, total_epochs=8, warmup_epochs=0, phase_epochs=1, final_epochs=2),
        "nm": lambda: NM(masks, 2, 4, prune_step=0),
    }[name]()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    method.attach(optimizer)
    with torch.no_grad():
        model[3].weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(TrainingStopped, match=r"cannot rank weights by magnitude: 1 target\(s\) hold NaN or inf \(e.g. 3.weight\)"):
        run(model, method, optimizer, 0, 3, check_zeros=False)


@pytest.mark.parametrize("name", ["constant", "gmp", "acdc", "rigl"])
def test_final_model_exactly_sparse(name):
    model, opt, method = setup(name, 16)
    run(model, method, opt, 0, 16)
    assert method.active
    assert method.masks.violations() == 0
    expected = 0.7 if name == "constant" else 0.8
    assert abs(method.masks.sparsity() - expected) < 0.02


def test_gmp_schedule_matches_formula():
    model = tiny_cnn()
    method = GMP(dense_masks(model, "cnn"), 0.9, start_step=10, end_step=40, interval=7, initial_sparsity=0.1)
    steps = [s for s in range(60) if method.is_update_step(s)]
    assert steps == [10, 17, 24, 31, 38, 40]
    for s in steps:
        t = (s - 10) / 30
        assert method.target_sparsity(s) == pytest.approx(0.9 + (0.1 - 0.9) * (1 - t) ** 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method.attach(opt)
    events = []
    run(model, method, opt, 0, 45, events)
    assert [e["step"] for e in events] == steps
    for e in events:
        assert e["sparsity"] == pytest.approx(gmp_sparsity(e["step"], 0.1, 0.9, 10, 40), abs=2e-3)
    assert not any(method.is_update_step(s) for s in range(41, 200))


def test_gmp_masks_nest():
    model = tiny_cnn()
    method = GMP(dense_masks(model, "cnn"), 0.9, start_step=0, end_step=12, interval=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method.attach(opt)
    previous = None
    for step in range(14):
        run(model, method, opt, step, step + 1)
        current = {n: m.clone() for n, m in method.masks.items()}
        if previous is not None and method.active:
            for n in current:
                assert not (current[n] & ~previous[n]).any(), "GMP revived a pruned weight"
        previous = current


def test_acdc_phase_reference_schedule():
    # The original 100-epoch schedule: compressed at 10, 20, ..., 70; decompressed at 15, ..., 75; the last
    # decompressed phase 75-85; final compressed 85-100.
    b = acdc_boundaries(100, 10, 5, 15)
    expected = [(0, "warmup")]
    for start in range(10, 80, 10):
        expected += [(start, "compressed"), (start + 5, "decompressed")]
    expected.append((85, "final"))
    assert b == expected
    assert acdc_phase(84.9, 100) == "decompressed"
    assert acdc_phase(12.5, 100) == "compressed"
    # Extended (2.5x): same phase lengths, more cycles; the last compression before the final phase at 220.
    b25 = acdc_boundaries(250, 10, 5, 15)
    assert b25[-1] == (235, "final")
    assert (220, "compressed") in b25 and (225, "decompressed") in b25
    assert sum(1 for _, p in b25 if p == "compressed") == 22


def test_acdc_compress_decompress_events_and_momentum_reset():
    model = tiny_cnn()
    method = ACDC(dense_masks(model, "cnn"), 0.8, STEPS_PER_EPOCH, total_epochs=8, warmup_epochs=1, phase_epochs=1, final_epochs=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method.attach(opt)
    events = []
    loss_fn = nn.CrossEntropyLoss()
    for step in range(16):
        x, y = batch(step)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        event = method.step(step, opt)
        if event is not None:
            events.append(event)
            if event["event"] == "decompress":
                assert not method.active
                # pruned weights restart at 0 and every momentum buffer is zeroed
                for name, p in method.masks.params.items():
                    assert (p.detach()[~method.masks[name]] == 0).all()
                for p in model.parameters():
                    buf = opt.state[p].get("momentum_buffer")
                    assert buf is None or (buf == 0).all()
        opt.step()
    # epochs: 0 warmup, 1 C, 2 D, 3 C, 4-5 D, 6-7 final
    assert [(e["event"], e["step"] // STEPS_PER_EPOCH) for e in events] == [
        ("compress", 1), ("decompress", 2), ("compress", 3), ("decompress", 4), ("compress", 6)]
    assert events[2]["iou"] is not None and 0 < events[2]["iou"] <= 1


def test_acdc_decompression_releases_mask():
    model, opt, method = setup("acdc", 16)
    run(model, method, opt, 0, 2 * STEPS_PER_EPOCH + 1)  # into the first decompressed phase
    assert not method.active
    grown = sum(int((p.detach()[~method.masks[n]] != 0).sum()) for n, p in method.masks.params.items())
    assert grown > 0, "decompressed phase should let pruned weights move"


def test_acdc_min_sparsity_during_decompression():
    model, opt, method = setup("acdc_min", 16)
    run(model, method, opt, 0, 2 * STEPS_PER_EPOCH + 2)
    assert method.active and method.phase == "decompressed"
    assert method.masks.sparsity() == pytest.approx(0.5, abs=0.01)
    assert method.masks.violations() == 0


def test_rigl_drop_fraction_formula():
    assert rigl_drop_fraction(0, 0.3, 100) == pytest.approx(0.3)
    assert rigl_drop_fraction(50, 0.3, 100) == pytest.approx(0.15)
    assert rigl_drop_fraction(25, 0.3, 100) == pytest.approx(0.15 * (1 + math.cos(math.pi / 4)))
    assert rigl_drop_fraction(100, 0.3, 100) == 0.0


def test_rigl_constant_nnz_grown_zero_and_schedule():
    model = tiny_cnn()
    total = 24
    method = RigL.from_model(model, 0.8, total, distribution="erk", targets="cnn", update_interval=3, end_fraction=0.75)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method.attach(opt)
    per_layer = {n: int(m.sum()) for n, m in method.masks.items()}
    loss_fn = nn.CrossEntropyLoss()
    events = []
    for step in range(total):
        x, y = batch(step)
        opt.zero_grad()
        loss_fn(model(x), y).backward()
        before = {n: m.clone() for n, m in method.masks.items()}
        dense_grad = {n: p.grad.clone() for n, p in method.masks.params.items()}
        event = method.step(step, opt)
        if event is not None:
            events.append(step)
            for n, p in method.masks.params.items():
                grown = method.masks[n] & ~before[n]
                assert (p.detach()[grown] == 0).all(), "grown weights must start at 0"
                assert (opt.state[p]["momentum_buffer"][grown] == 0).all()
                if grown.any():  # grown positions were pruned, so their gradient came from the dense backward
                    assert dense_grad[n][grown].abs().sum() > 0
        opt.step()
        assert {n: int(m.sum()) for n, m in method.masks.items()} == per_layer
        assert method.masks.violations() == 0
    assert events == [3, 6, 9, 12, 15]  # every 3 steps, strictly before T_end = 18
    assert method.last_iou is not None and method.last_iou < 1.0


def test_rigl_erk_budget():
    model = tiny_cnn()
    method = RigL.from_model(model, 0.9, 10, distribution="erk", targets="cnn")
    shapes = {n: p.shape for n, p in method.masks.params.items()}
    densities = erk_densities(shapes, 0.9)
    for n, m in method.masks.items():
        assert int(m.sum()) == round(densities[n] * m.numel())
    assert method.masks.sparsity() == pytest.approx(0.9, abs=0.005)
    # the larger the layer relative to its dims, the sparser under ERK
    assert densities["3.weight"] < densities["0.weight"]


@pytest.mark.parametrize(
    "build, match",
    [
        (lambda m: GMP(dense_masks(m), 1.2, 0, 10, 1), "sparsity must be in"),
        (lambda m: GMP(dense_masks(m), 0.9, 10, 5, 1), "start_step <= end_step"),
        (lambda m: ACDC(dense_masks(m), 0.9, 10, total_epochs=20), "longer than training"),
        (lambda m: ACDC(dense_masks(m), -0.1, 10, total_epochs=100), "sparsity must be in"),
        (lambda m: RigL.from_model(m, 1.0, 100), "sparsity must be in"),
        (lambda m: RigL.from_model(m, 0.9, 100, end_fraction=1.5), "end_fraction"),
    ],
)
def test_bad_inputs(build, match):
    with pytest.raises(ValueError, match=match):
        build(tiny_cnn())


def test_rigl_reads_the_dense_gradient_only_on_update_steps():
    model = tiny_cnn()
    method = RigL.from_model(model, 0.8, 24, distribution="erk", targets="cnn", update_interval=3, end_fraction=0.75)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method.attach(opt)
    loss_fn = nn.CrossEntropyLoss()
    updates = [s for s in range(24) if method.needs_dense_grad(s)]
    assert updates == [s for s in range(24) if method.is_update_step(s)] == [3, 6, 9, 12, 15]
    for step in range(24):
        x, y = batch(step)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        if not method.needs_dense_grad(step):
            # no gradient at all: step() must not need one (a loop may skip the dense gradient here)
            saved = {n: p.grad for n, p in method.masks.params.items()}
            for p in method.masks.params.values():
                p.grad = None
            assert method.step(step, opt) is None
            for n, p in method.masks.params.items():
                p.grad = saved[n]
        else:
            assert method.step(step, opt)["event"] == "drop_grow"
        opt.step()
    # the optimizer never saw the gradient of a pruned weight: pre-hook masked it, pruned weights are exactly 0
    for n, p in method.masks.params.items():
        assert (p.grad[~method.masks[n]] == 0).all()
        assert (p.detach()[~method.masks[n]] == 0).all()
    # and an update step without the dense gradient is an error, not a silent no-op
    for p in method.masks.params.values():
        p.grad = None
    with pytest.raises(RuntimeError, match="dense gradient"):
        method.step(6, opt)
    assert not any(make("gmp", model, 24).needs_dense_grad(s) for s in range(24))
    # AC/DC reads it only at each decompression (the released weights' first step trains on their real gradient)
    acdc = make("acdc", model, 24)
    assert [s for s in range(24) if acdc.needs_dense_grad(s)] == [s for s in range(1, 24) if acdc.phase_at(s) == "decompressed" != acdc.phase_at(s - 1)]


def test_erk_densities_follow_the_formula():
    # ERK by hand: density_l = eps * (sum of dims) / (product of dims), one eps for the global budget.
    model = tiny_cnn()
    method = RigL.from_model(model, 0.9, 10, distribution="erk", targets="cnn")
    shapes = {n: tuple(p.shape) for n, p in method.masks.params.items()}
    raw = {n: sum(s) / math.prod(s) for n, s in shapes.items()}
    numel = {n: math.prod(s) for n, s in shapes.items()}
    total = sum(numel.values())
    dense = set()
    while True:  # layers whose density would exceed 1 are dense; eps re-solved over the others
        budget = 0.1 * total - sum(numel[n] for n in dense)
        eps = budget / sum(raw[n] * numel[n] for n in shapes if n not in dense)
        over = {n for n in shapes if n not in dense and eps * raw[n] > 1}
        if not over:
            break
        dense |= over
    kept = {n: int(m.sum()) for n, m in method.masks.items()}
    for n in shapes:
        expected = numel[n] if n in dense else eps * raw[n] * numel[n]
        assert abs(kept[n] - expected) <= 1, n
    assert abs(sum(kept.values()) - 0.1 * total) <= len(shapes)
    assert "0.weight" in dense or kept["0.weight"] / numel["0.weight"] > kept["3.weight"] / numel["3.weight"]


def test_enforcement_follows_a_mask_changed_in_place():
    # a mask written in place (no update_) must be enforced from the next step on: the hooks hold no copy of it
    model, opt, method = setup("constant", 8)
    run(model, method, opt, 0, 2)
    sparser = {n: m & (torch.rand(m.shape, generator=torch.Generator().manual_seed(1)) > 0.5) for n, m in method.masks.items()}
    for n, m in sparser.items():
        method.masks[n].copy_(m)  # behind the method's back: no update_, no notification
    run(model, method, opt, 2, 3)
    for n, p in method.masks.params.items():
        assert (p.detach()[~sparser[n]] == 0).all()
        assert (p.grad[~sparser[n]] == 0).all()


def test_rigl_keeps_the_mask_of_frozen_or_unused_layers_even_with_kept_zero_grads():
    model = tiny_cnn()
    method = RigL.from_model(model, 0.8, 24, distribution="erk", targets="cnn", update_interval=3)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    method.attach(opt)
    before = {n: m.clone() for n, m in method.masks.items()}
    loss_fn = nn.CrossEntropyLoss()
    for step in range(1, 10):
        if step == 2:
            model[0].weight.requires_grad_(False)  # frozen from step 2 on, keeping a zero .grad below
        method.begin_step(step)
        x, y = batch(step)
        loss_fn(model(x), y).backward()
        method.step(step, opt)
        opt.step()
        opt.zero_grad(set_to_none=False)
    assert torch.equal(method.masks["0.weight"], before["0.weight"])
    assert not torch.equal(method.masks["3.weight"], before["3.weight"])  # the trainable layers did move
