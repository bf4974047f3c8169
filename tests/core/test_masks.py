import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from sparse_transfer.core import SparseMasks, pack_bits, sparsity_report, unpack_bits

from ..conftest import TinyCNN, make_tiny_bert

OPTIMIZERS = {
    "sgd": lambda p: torch.optim.SGD(p, lr=0.1),
    "sgd-momentum-wd": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=1e-2),
    "sgd-nesterov": lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    "adam": lambda p: torch.optim.Adam(p, lr=1e-2, weight_decay=1e-2),
    "adamw": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1),
    "adamw-amsgrad-foreach": lambda p: torch.optim.AdamW(p, lr=1e-2, weight_decay=0.1, amsgrad=True, foreach=True),
    "adamw-fused": lambda p: torch.optim.AdamW(p, lr=1e-2, fused=True),
}


def _assert_enforced(masks: SparseMasks, optimizer: torch.optim.Optimizer, check_grads: bool = True):
    for name, param in masks.params.items():
        pruned = ~masks[name]
        assert (param.detach()[pruned] == 0).all(), f"{name}: pruned weight revived"
        if check_grads and param.grad is not None:
            assert (param.grad[pruned] == 0).all(), f"{name}: pruned gradient not zero"
        for key, value in optimizer.state.get(param, {}).items():
            if torch.is_tensor(value) and value.shape == param.shape:
                assert (value[pruned] == 0).all(), f"{name}: optimizer state {key!r} not zero"


@pytest.mark.parametrize("optimizer_name", list(OPTIMIZERS))
@pytest.mark.parametrize("accumulation", [1, 3])
@settings(max_examples=3, deadline=None)
@given(seed=st.integers(0, 2**16), sparsity=st.floats(0.1, 0.95))
def test_pruned_weights_stay_exactly_zero(optimizer_name, accumulation, seed, sparsity):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))
    masks = SparseMasks.from_magnitude(model, sparsity, "global")
    optimizer = OPTIMIZERS[optimizer_name](model.parameters())
    masks.attach(optimizer)
    _assert_enforced(masks, optimizer)
    for _ in range(15):
        for _ in range(accumulation):
            model(torch.randn(8, 10)).pow(2).mean().backward()
        optimizer.step()
        _assert_enforced(masks, optimizer)
        optimizer.zero_grad()
    assert masks.violations() == 0
    # unpruned weights did train
    assert any((p.detach()[masks[n]] != 0).all() for n, p in masks.params.items())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_enforcement_under_cpu_autocast(dtype):
    torch.manual_seed(0)
    model = TinyCNN()
    masks = SparseMasks.from_magnitude(model, 0.8, "uniform")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    masks.attach(optimizer)
    for _ in range(5):
        with torch.autocast("cpu", dtype=dtype):
            loss = model(torch.randn(4, 3, 8, 8)).float().pow(2).mean()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        _assert_enforced(masks, optimizer)


def test_enforcement_with_low_precision_weights():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 16), nn.Tanh(), nn.Linear(16, 4)).to(torch.bfloat16)
    masks = SparseMasks.from_magnitude(model, 0.5, "global")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    masks.attach(optimizer)
    for _ in range(5):
        model(torch.randn(4, 16, dtype=torch.bfloat16)).float().sum().backward()
        optimizer.step()
        optimizer.zero_grad()
        _assert_enforced(masks, optimizer)


def test_enforcement_through_accelerate():
    from accelerate import Accelerator

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))
    masks = SparseMasks.from_magnitude(model, 0.9, "global")
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    model, optimizer = accelerator.prepare(model, torch.optim.AdamW(model.parameters(), lr=1e-2))
    masks.attach(optimizer)
    for _ in range(6):
        with accelerator.accumulate(model):
            accelerator.backward(model(torch.randn(4, 10)).pow(2).mean())
            sync_step = accelerator.sync_gradients
            optimizer.step()  # a no-op between accumulation boundaries: gradients are masked at the real step
            if sync_step:
                _assert_enforced(masks, optimizer.optimizer)
            optimizer.zero_grad()
        _assert_enforced(masks, optimizer.optimizer, check_grads=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_enforcement_on_cuda_with_grad_scaler():
    torch.manual_seed(0)
    model = TinyCNN()
    masks = SparseMasks.from_magnitude(model, 0.9, "global")
    model.cuda()  # the masks follow the parameters to the device on the next step
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    masks.attach(optimizer)
    scaler = torch.amp.GradScaler("cuda")
    for _ in range(10):
        with torch.autocast("cuda", dtype=torch.float16):
            loss = model(torch.randn(4, 3, 8, 8, device="cuda")).float().pow(2).mean()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad()
        _assert_enforced(masks, optimizer)


def test_attach_clears_existing_optimizer_state_and_remove_detaches(mlp):
    optimizer = torch.optim.SGD(mlp.parameters(), lr=0.1, momentum=0.9)
    mlp(torch.randn(4, 10)).sum().backward()
    optimizer.step()  # momentum buffers are now dense
    masks = SparseMasks.from_magnitude(mlp, 0.5, "global")
    handle = masks.attach(optimizer)
    _assert_enforced(masks, optimizer)
    handle.remove()
    optimizer.zero_grad()
    mlp(torch.randn(4, 10)).sum().backward()
    optimizer.step()
    assert masks.violations() > 0  # without the hooks nothing holds the zeros


def test_from_zeros_reads_the_checkpoint_zeros(tiny_bert):
    with torch.no_grad():
        for name, p in tiny_bert.named_parameters():
            if name.endswith("query.weight"):
                p[:, ::2] = 0
    masks = SparseMasks.from_zeros(tiny_bert, "bert")
    assert len(masks) == 12
    query = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(masks[query], tiny_bert.get_parameter(query) != 0)
    assert masks.layer_sparsity()[query] == 0.5
    # tiny but non-zero weights are kept: the mask is never guessed from a magnitude threshold
    with torch.no_grad():
        tiny_bert.get_parameter(query)[0, 1] = 1e-30
    assert SparseMasks.from_zeros(tiny_bert, "bert")[query][0, 1]


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_magnitude_pruning_refuses_non_finite_weights(mlp, bad):
    with torch.no_grad():
        mlp[0].weight[3, 4] = bad
    with pytest.raises(ValueError, match=r"0.weight holds 1 NaN or inf weight"):
        SparseMasks.from_magnitude(mlp, 0.5)
    from sparse_transfer.methods import RigL

    with pytest.raises(ValueError, match=r"0.weight holds 1 NaN or inf weight"):
        RigL.from_model(mlp, 0.5, total_steps=10, distribution="uniform", init="magnitude")


def test_update_replaces_masks_and_clears_state(mlp):
    masks = SparseMasks.from_magnitude(mlp, 0.2, "global")
    optimizer = torch.optim.Adam(mlp.parameters(), lr=1e-2)
    masks.attach(optimizer)
    mlp(torch.randn(4, 10)).sum().backward()
    optimizer.step()
    new = SparseMasks.from_magnitude(mlp, 0.8, "global")
    masks.update_(dict(new.items()), optimizer)
    assert masks.sparsity() == pytest.approx(0.8, abs=1e-3)
    _assert_enforced(masks, optimizer)


def test_float_multiplier_matches_uint8_and_follows_mask_updates():
    """The vision trainer's GPU choice (mask copies in the weights' dtype, one fused kernel) trains bit-identically
    to the uint8 views, and a copy is rebuilt when its mask is written in place or its weights change dtype."""
    results = {}
    for multiplier in ("uint8", "float"):
        torch.manual_seed(0)
        model = TinyCNN()
        masks = SparseMasks.from_magnitude(model, 0.5, "global")
        masks.multiplier = multiplier
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
        masks.attach(optimizer)
        for step in range(6):
            dtype = next(model.parameters()).dtype
            model(torch.randn(4, 3, 8, 8).to(dtype)).pow(2).mean().backward()
            optimizer.step()
            optimizer.zero_grad()
            _assert_enforced(masks, optimizer)
            if step == 2:  # a sparser mask, written in place
                masks.update_(dict(SparseMasks.from_magnitude(model, 0.8, "global").items()), optimizer)
            if step == 4:
                model.double()  # parameters change dtype: the copies must follow
        assert all(p.dtype == torch.float64 for p in masks.params.values())
        results[multiplier] = {k: v.clone() for k, v in model.state_dict().items()}
        if multiplier == "float":
            assert len(masks._copies) == len(masks) and all(c.dtype == torch.int64 for _, _, c in masks._copies.values())  # int copies of the weights width
        else:
            assert not masks._copies
    for key, value in results["uint8"].items():
        assert torch.equal(value, results["float"][key]), key


def test_unknown_multiplier_is_an_error(mlp):
    masks = SparseMasks.from_magnitude(mlp, 0.5)
    masks.multiplier = "int4"
    with pytest.raises(ValueError, match="'auto', 'float' or 'uint8'"):
        masks.apply_()


def test_masks_follow_the_model_to_another_dtype_and_device(mlp):
    masks = SparseMasks.from_magnitude(mlp, 0.5)
    mlp.to(torch.float64)
    masks.apply_()
    assert masks.violations() == 0


def test_mask_shape_mismatch_is_an_error(mlp):
    with pytest.raises(ValueError, match=r"Mask for 0.weight has shape \(3, 3\) but the parameter has shape \(20, 10\)"):
        SparseMasks({"0.weight": torch.ones(3, 3, dtype=torch.bool)}, mlp)


def test_masks_for_a_different_model_are_an_error(mlp, tmp_path):
    SparseMasks.from_magnitude(mlp, 0.5).save(tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match="made for a different model"):
        SparseMasks.load(tmp_path / "m.safetensors", TinyCNN())


def test_wrapped_model_gets_a_hint(mlp):
    masks = SparseMasks.from_magnitude(mlp, 0.5)
    wrapper = nn.Module()
    wrapper.module = mlp
    with pytest.raises(ValueError, match="did you mean 'module.0.weight'"):
        masks.bind(wrapper)


def test_non_boolean_masks_are_rejected(mlp):
    with pytest.raises(ValueError, match="boolean or 0/1"):
        SparseMasks({"0.weight": torch.full((20, 10), 0.5)}, mlp)


def test_not_a_mask_file_is_an_error(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match="not a sparse_transfer mask file"):
        SparseMasks.load(tmp_path / "model.safetensors")
    with pytest.raises(FileNotFoundError):
        SparseMasks.load(tmp_path / "missing.safetensors")


@settings(max_examples=30, deadline=None)
@given(shapes=st.lists(st.tuples(st.integers(1, 13), st.integers(1, 11)), min_size=1, max_size=4), seed=st.integers(0, 2**16))
def test_pack_and_safetensors_round_trip(tmp_path_factory, shapes, seed):
    g = torch.Generator().manual_seed(seed)
    original = {f"layer{i}.weight": torch.rand(shape, generator=g) > 0.5 for i, shape in enumerate(shapes)}
    for mask in original.values():
        packed = pack_bits(mask)
        assert packed.dtype == torch.uint8 and packed.numel() == (mask.numel() + 7) // 8
        assert torch.equal(unpack_bits(packed, mask.shape), mask)
    path = tmp_path_factory.mktemp("masks") / "m.safetensors"
    SparseMasks(original).save(path)
    loaded = SparseMasks.load(path)
    assert set(loaded) == set(original)
    for name, mask in original.items():
        assert torch.equal(loaded[name], mask)


def test_state_dict_round_trip(mlp):
    masks = SparseMasks.from_magnitude(mlp, 0.6)
    other = SparseMasks.from_magnitude(mlp, 0.1)
    other.load_state_dict(masks.state_dict())
    assert all(torch.equal(other[n], masks[n]) for n in masks)
    assert mlp[0].weight.detach()[~masks["0.weight"]].eq(0).all()
    with pytest.raises(ValueError, match="does not match"):
        other.load_state_dict({"0.weight": masks["0.weight"]})


def test_iou(mlp):
    a = SparseMasks.from_magnitude(mlp, 0.5)
    assert a.iou(a) == 1.0
    b = SparseMasks({n: ~m for n, m in a.items()})
    assert b.iou(a) == 0.0


def test_enforced_model_reloads_in_plain_transformers_with_identical_sparsity(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = make_tiny_bert()
    keys_before = set(model.state_dict())
    masks = SparseMasks.from_magnitude(model, 0.8, "global", targets="bert")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    masks.attach(optimizer)
    for _ in range(3):
        out = model(input_ids=torch.randint(0, 99, (4, 12)), labels=torch.randint(0, 2, (4,)))
        out.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    assert set(model.state_dict()) == keys_before  # no weight_orig, no mask buffers
    model.save_pretrained(tmp_path, safe_serialization=True)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path)
    for name in masks:
        assert torch.equal(reloaded.get_parameter(name) == 0, ~masks[name])
    assert sparsity_report(reloaded, "bert").target_sparsity == pytest.approx(0.8, abs=1e-4)
    assert SparseMasks.from_zeros(reloaded, "bert").sparsity() == masks.sparsity()
