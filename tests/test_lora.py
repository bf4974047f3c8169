"""Masked LoRA (sparse_transfer.lora): what trains is what merges, and every pruned weight stays exactly 0."""

import copy
import json
import warnings

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from torch import nn

from sparse_transfer import SparseMasks
from sparse_transfer.lora import (
    SparseLoraConfig,
    SparseLoraConv2d,
    SparseLoraLinear,
    load_sparse_lora,
    mask_record,
    unmasked_lora_layers,
)
from tests.conftest import TinyCNN, make_tiny_bert

ENCODER_LINEARS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def sparse_bert(seed=0, sparsity=0.9):
    model = make_tiny_bert(seed=seed)
    SparseMasks.from_magnitude(model, sparsity, targets="bert").apply_()
    return model


def zero_positions(model):
    return {n: (p == 0).clone() for n, p in model.named_parameters() if "encoder" in n and n.endswith("weight")}


def revived(model, zeros):
    params = dict(model.named_parameters())
    return sum(int((params[n][z] != 0).sum()) for n, z in zeros.items())


def train_steps(model, steps=5, lr=1e-2, seed=0):
    torch.manual_seed(seed)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    x = torch.randint(0, 99, (4, 8))
    y = torch.tensor([0, 1, 0, 1])
    model.train()
    for _ in range(steps):
        model(input_ids=x, labels=y).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    return x


def config(**kw):
    return SparseLoraConfig(**{"r": 4, "lora_alpha": 8, "target_modules": ENCODER_LINEARS, "task_type": "SEQ_CLS", **kw})


def test_masked_lora_trains_and_merges_with_exact_zeros(tmp_path):
    base = sparse_bert()
    zeros = zero_positions(base)
    model = get_peft_model(base, config())
    layers = [m for m in model.modules() if isinstance(m, SparseLoraLinear)]
    assert len(layers) == 12
    x = train_steps(model)
    with torch.no_grad():
        adapted = model(input_ids=x).logits
    merged = model.merge_and_unload()
    assert revived(merged, zeros) == 0
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, adapted, rtol=1e-5, atol=1e-6)
    # The update really trained the kept weights.
    changed = sum(int((p != make_p).sum()) for (n, p), make_p in
                  zip(merged.named_parameters(), sparse_bert().parameters()) if n in zeros)
    assert changed > 0


def test_plain_lora_revives_pruned_weights_which_masked_lora_does_not():
    """The problem being solved, measured: peft's own LoRA densifies a pruned base on merge."""
    base = sparse_bert()
    zeros = zero_positions(base)
    plain = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=ENCODER_LINEARS, task_type="SEQ_CLS"))
    assert unmasked_lora_layers(plain)
    train_steps(plain)
    assert revived(plain.merge_and_unload(), zeros) > 1000


def test_forward_matches_the_masked_update_formula_and_grads_are_masked():
    torch.manual_seed(0)
    linear = nn.Linear(12, 10)
    with torch.no_grad():
        linear.weight[linear.weight.abs() < 0.15] = 0
    holder = nn.Sequential(linear)
    model = get_peft_model(holder, SparseLoraConfig(r=3, lora_alpha=6, target_modules=["0"], init_lora_weights="gaussian"))
    layer = model.base_model.model[0]
    assert isinstance(layer, SparseLoraLinear)
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    with torch.no_grad():
        b.normal_()
    x = torch.randn(5, 12)
    mask = linear.weight != 0
    expected = x @ (linear.weight + mask * (2.0 * b @ a)).T + linear.bias
    out = model(x)
    torch.testing.assert_close(out, expected)
    out.sum().backward()
    # The gradient of B A reaching the adapter is the masked one: recompute by hand.
    g_delta = (torch.ones(5, 10).T @ x) * mask * 2.0
    torch.testing.assert_close(b.grad, g_delta @ a.detach().T)
    torch.testing.assert_close(a.grad, b.detach().T @ g_delta)
    assert linear.weight.grad is None


def test_dropout_path_is_exact_and_merge_unmerge_round_trip():
    base = sparse_bert()
    model = get_peft_model(base, config(lora_dropout=0.2))
    x = train_steps(model, steps=3)  # trains through the dropout path, evaluates through the fused one
    with torch.no_grad():
        ref = model(input_ids=x).logits
        model.merge_adapter()
        for layer in (m for m in model.modules() if isinstance(m, SparseLoraLinear)):
            assert int((layer.base_layer.weight[~layer.sparse_lora_mask] != 0).sum()) == 0
        torch.testing.assert_close(model(input_ids=x).logits, ref, rtol=1e-5, atol=1e-6)
        model.unmerge_adapter()
        torch.testing.assert_close(model(input_ids=x).logits, ref, rtol=1e-5, atol=1e-6)
        with model.disable_adapter():
            plain = model(input_ids=x).logits
        torch.testing.assert_close(plain, sparse_bert().eval()(input_ids=x).logits, rtol=1e-5, atol=1e-6)


def test_save_load_records_the_masks_and_refuses_another_base(tmp_path):
    base = sparse_bert()
    state = {k: v.clone() for k, v in base.state_dict().items()}
    model = get_peft_model(base, config())
    x = train_steps(model)
    with torch.no_grad():
        ref = model(input_ids=x).logits
    model.save_pretrained(tmp_path / "adapter")
    saved = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert len(saved["sparse_masks"]) == 12
    query = base.bert.encoder.layer[0].attention.self.query.base_layer.weight
    assert saved["sparse_masks"]["bert.encoder.layer.0.attention.self.query"] == mask_record(query != 0)
    assert not any("mask" in k for k in __import__("safetensors.torch").torch.load_file(
        str(tmp_path / "adapter" / "adapter_model.safetensors")))  # the mask is not shipped, only recorded

    again = make_tiny_bert()
    again.load_state_dict(state)
    loaded = load_sparse_lora(again, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(loaded(input_ids=x).logits, ref)
    # The same architecture pruned differently: refused, naming a layer.
    with pytest.raises(ValueError, match="trained on a base whose 'bert.encoder.layer.0.attention"):
        load_sparse_lora(sparse_bert(seed=1), tmp_path / "adapter")
    # The dense original: refused too.
    with pytest.raises(ValueError, match="this base's zeros give"):
        load_sparse_lora(make_tiny_bert(), tmp_path / "adapter")
    # peft's explicit route works the same.
    again2 = make_tiny_bert()
    again2.load_state_dict(state)
    via_peft = PeftModel.from_pretrained(again2, tmp_path / "adapter",
                                         config=SparseLoraConfig.from_pretrained(tmp_path / "adapter"))
    with torch.no_grad():
        torch.testing.assert_close(via_peft(input_ids=x).logits, ref)


def test_plain_peft_loading_warns_by_naming_the_record(tmp_path):
    model = get_peft_model(sparse_bert(), config())
    model.save_pretrained(tmp_path / "adapter")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        PeftModel.from_pretrained(sparse_bert(), tmp_path / "adapter")
    assert any("sparse_masks" in str(w.message) for w in caught)


def test_a_plain_adapter_is_not_loaded_as_masked(tmp_path):
    plain = get_peft_model(sparse_bert(), LoraConfig(r=4, target_modules=["query"]))
    plain.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="plain LoRA adapter"):
        load_sparse_lora(sparse_bert(), tmp_path / "plain")


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"use_dora": True}, "use_dora"),
        ({"init_lora_weights": "pissa"}, "rewrites the base weights"),
        ({"init_lora_weights": "olora"}, "rewrites the base weights"),
    ],
)
def test_unsupported_settings_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        config(**kwargs)


def test_unsupported_target_types_are_refused_not_trained_plain():
    with pytest.raises(ValueError, match="supports nn.Linear and nn.Conv2d targets.*Embedding"):
        get_peft_model(sparse_bert(), config(target_modules=["word_embeddings", "query"]))


def test_conv2d_masked_lora_on_a_cnn():
    torch.manual_seed(0)
    cnn = TinyCNN()
    SparseMasks.from_magnitude(cnn, 0.8, targets="cnn").apply_()
    zeros = {n: (p == 0).clone() for n, p in cnn.named_parameters() if n.endswith("weight") and p.dim() > 1}
    before = {n: p.detach().clone() for n, p in cnn.named_parameters()}
    model = get_peft_model(cnn, SparseLoraConfig(r=4, lora_alpha=8, target_modules=["stem", "body", "head"]))
    assert isinstance(model.base_model.model.body, SparseLoraConv2d)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    x = torch.randn(2, 3, 8, 8)
    for _ in range(3):
        model(x).pow(2).sum().backward()
        opt.step()
        opt.zero_grad()
    with torch.no_grad():
        ref = model(x)
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(x), ref, rtol=1e-5, atol=1e-5)
    params = dict(merged.named_parameters())
    assert sum(int((params[n][z] != 0).sum()) for n, z in zeros.items()) == 0
    assert all(bool((params[n][~z] != before[n][~z]).any()) for n, z in zeros.items())  # the kept weights trained


def test_grouped_conv_is_refused():
    model = nn.Sequential(nn.Conv2d(4, 4, 3, groups=4))
    with pytest.raises(ValueError, match="grouped/depthwise"):
        get_peft_model(model, SparseLoraConfig(r=4, target_modules=["0"]))


def test_mixed_adapter_batches_are_refused():
    model = get_peft_model(sparse_bert(), config()).eval()
    with pytest.raises(ValueError, match="mixed-adapter"):
        model(input_ids=torch.randint(0, 99, (2, 4)), adapter_names=["default", "default"])


def test_two_adapters_and_bf16_autocast_keep_zeros():
    base = sparse_bert()
    zeros = zero_positions(base)
    model = get_peft_model(base, config(task_type=None))
    model.add_adapter("second", config(r=2, task_type=None))
    model.base_model.set_adapter(["default", "second"])
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    x = torch.randint(0, 99, (2, 6))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        model(input_ids=x, labels=torch.tensor([0, 1])).loss.backward()
    merged = model.merge_and_unload(adapter_names=["default", "second"])
    assert revived(merged, zeros) == 0


# ---------------------------------------------------------------------------------------------- attacked from outside
def test_a_masked_adapter_cannot_be_added_onto_plain_lora_layers_nor_a_plain_one_beside_masked_ones():
    plain = get_peft_model(sparse_bert(), LoraConfig(r=4, target_modules=["query"]))
    with pytest.raises(ValueError, match="masked_lora"):
        plain.add_adapter("masked", config(target_modules=["query"], task_type=None))
    masked = get_peft_model(sparse_bert(), config(target_modules=["query"], task_type=None))
    with pytest.raises(ValueError, match="a plain LoRA .*cannot be added beside"):
        masked.add_adapter("plain", LoraConfig(r=4, target_modules=["query"]))


def test_load_adapter_routes(tmp_path):
    trained = get_peft_model(sparse_bert(), config(target_modules=["query"], task_type=None))
    trained.save_pretrained(tmp_path / "masked")
    get_peft_model(sparse_bert(), LoraConfig(r=4, target_modules=["query"])).save_pretrained(tmp_path / "plain")
    model = get_peft_model(sparse_bert(), config(target_modules=["query"], task_type=None))
    with pytest.raises(ValueError, match="cannot be added beside"):  # peft's load_adapter reads a plain LoraConfig
        model.load_adapter(tmp_path / "masked", "other")
    assert load_sparse_lora(model, tmp_path / "masked", adapter_name="other") is model
    assert "other" in model.peft_config and model.peft_config["other"].sparse_masks
    with pytest.raises(ValueError, match="trained on a base whose"):
        load_sparse_lora(get_peft_model(sparse_bert(seed=2), config(target_modules=["query"], task_type=None)),
                         tmp_path / "masked", adapter_name="other")


def test_an_incomplete_mask_record_is_refused(tmp_path):
    from sparse_transfer.hub import verify_sparse_adapter

    get_peft_model(sparse_bert(), config(task_type=None)).save_pretrained(tmp_path / "ad")
    path = tmp_path / "ad" / "adapter_config.json"
    saved = json.loads(path.read_text())
    saved["sparse_masks"].pop("bert.encoder.layer.1.output.dense")
    path.write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="no mask for 'bert.encoder.layer.1.output.dense'"):
        load_sparse_lora(sparse_bert(), tmp_path / "ad")
    with pytest.raises(ValueError, match="have no mask in adapter_config.json"):
        verify_sparse_adapter(tmp_path / "ad")


def test_lora_bias_trains_through_the_dropout_path_and_matches_the_merge():
    model = get_peft_model(sparse_bert(), config(lora_bias=True, lora_dropout=0.5, task_type=None))
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p)
    x = torch.randint(0, 99, (2, 6))
    model.train()
    model(input_ids=x).logits.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters() if "lora_B" in n and
               n.endswith("bias"))
    model.eval()
    with torch.no_grad():
        ref = model(input_ids=x).logits
        torch.testing.assert_close(model.merge_and_unload()(input_ids=x).logits, ref, rtol=1e-5, atol=1e-5)


class ScaledLinear(nn.Linear):
    def forward(self, x):
        return super().forward(x) * 2.0


def test_a_linear_subclass_with_its_own_forward_and_hooks_computes_what_the_merge_computes():
    torch.manual_seed(0)
    net = nn.Sequential(ScaledLinear(8, 8))
    with torch.no_grad():
        net[0].weight[net[0].weight.abs() < 0.2] = 0
    calls = []
    net[0].register_forward_hook(lambda *args: calls.append(1))
    model = get_peft_model(net, SparseLoraConfig(r=2, target_modules=["0"]))
    with torch.no_grad():
        model.base_model.model[0].lora_B["default"].weight.normal_()
    x = torch.randn(3, 8)
    with torch.no_grad():
        adapted = model(x)
        assert calls
        torch.testing.assert_close(model.merge_and_unload()(x), adapted)


def test_weights_loaded_after_the_adapter_was_created_are_refused_at_merge():
    model = get_peft_model(make_tiny_bert(), config(task_type=None))  # dense base: the mask keeps everything
    sparse = dict(sparse_bert().named_parameters())
    with torch.no_grad():  # the zeros arrive afterwards
        for name, param in model.named_parameters():
            plain = name.replace("base_model.model.", "").replace(".base_layer", "")
            if "lora_" not in name and plain in sparse:
                param.copy_(sparse[plain])
    with pytest.raises(ValueError, match="no longer has the zeros its masked LoRA was created with"):
        model.merge_and_unload()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_merge_is_exactly_the_adapter_model(dtype):
    model = get_peft_model(sparse_bert().to(dtype), config(task_type=None)).eval()
    for name, p in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.3)
    x = torch.randint(0, 99, (2, 6))
    with torch.no_grad():
        adapted = model(input_ids=x).logits
        for safe in (False, True):
            merged = copy.deepcopy(model).merge_and_unload(safe_merge=safe)
            assert torch.equal(merged(input_ids=x).logits, adapted)
