"""Every mask method under the Hugging Face Trainer: the issue's example, masks that really move or release, the
logged grad_norm of the applied gradient, a replaced parameter caught at the next log, bit-identical resume."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn
from transformers import TrainerCallback

from sparse_transfer import ACDC, GMP, NM, Constant, RigL, SparseTrainer, SparseTrainingArguments, dense_masks
from sparse_transfer.core import MASKS_NAME, SparseMasks
from sparse_transfer.hf import SPARSE_METHOD_STATE_NAME
from sparse_transfer.hf.trainer import CHECKPOINT_COMPLETE_NAME

from ..conftest import make_tiny_bert
from .conftest import make_args, make_dataset, make_sparse_bert

STEPS = 24  # 16 examples, 4 per step: 4 steps per epoch


def build(name: str, model: nn.Module):
    if name == "constant":
        return Constant(SparseMasks.from_zeros(model, "bert"))
    if name == "gmp":
        return GMP(dense_masks(model, "bert"), final_sparsity=0.9, start_step=0, end_step=16, interval=4)
    if name == "acdc":  # warm-up epoch 0, compressed 1, decompressed 2-3, final compressed 4-5
        return ACDC(dense_masks(model, "bert"), 0.8, steps_per_epoch=4, total_epochs=6, warmup_epochs=1, phase_epochs=1,
                    final_epochs=2)
    if name == "rigl":
        return RigL.from_model(model, 0.8, STEPS, distribution="erk", targets="bert", update_interval=4)
    if name == "nm":
        return NM(dense_masks(model, "bert"), 2, 4, prune_step=3)
    raise KeyError(name)


def start_model(name: str) -> nn.Module:
    return make_sparse_bert(dropout=0.1) if name == "constant" else make_tiny_bert()


class StepRecorder(TrainerCallback):
    """After every optimizer step: whether the mask is imposed, the mask, and the live weights of the targets."""

    def __init__(self, method):
        self.method = method
        self.active: list[bool] = []
        self.masks: list[dict[str, torch.Tensor]] = []
        self.weights: list[dict[str, torch.Tensor]] = []
        self.grad_norms: list[float] = []
        self.pruned_grads: list[int] = []

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        self.grad_norms.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))))
        if self.method.active:
            self.pruned_grads.append(sum(int((p.grad[~self.method.masks[n]] != 0).sum())
                                         for n, p in self.method.masks.params.items() if p.grad is not None))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.active.append(self.method.active)
        self.masks.append({n: m.clone() for n, m in self.method.masks.items()})
        self.weights.append({n: model.get_parameter(n).detach().clone() for n in self.method.masks})


def run(tmp_path, name, model=None, method=None, callbacks=(), resume=None, **overrides):
    model = model if model is not None else start_model(name)
    method = method if method is not None else build(name, model)
    recorder = StepRecorder(method)
    values = {"unfreeze": "none", "max_steps": STEPS, "max_grad_norm": 1e9, **overrides}
    trainer = SparseTrainer(model=model, args=make_args(tmp_path, **values), train_dataset=make_dataset(16),
                            method=method, callbacks=[recorder, *callbacks])
    trainer.train(resume_from_checkpoint=resume)
    return trainer, recorder


def test_the_issue_example_runs_gmp_under_the_trainer(tmp_path):
    model = make_tiny_bert()
    ds = make_dataset(16)
    method = GMP(dense_masks(model, "bert"), final_sparsity=0.9, start_step=0, end_step=16, interval=4)
    SparseTrainer(model=model, args=SparseTrainingArguments(output_dir=str(tmp_path), unfreeze="none", max_steps=24,
                                                            use_cpu=True, report_to=[], save_strategy="no"),
                  train_dataset=ds, method=method).train()
    assert method.masks.sparsity() == pytest.approx(0.9, abs=1e-3)
    for name, mask in method.masks.items():
        assert (model.get_parameter(name).detach()[~mask] == 0).all(), name
    assert method.masks.violations() == 0


@pytest.mark.parametrize("name", ["gmp", "acdc", "rigl", "nm", "constant"])
def test_every_method_keeps_its_zeros_and_logs_its_events(tmp_path, name):
    trainer, rec = run(tmp_path, name)
    method = trainer.method
    assert method.active
    for step, (active, masks, weights) in enumerate(zip(rec.active, rec.masks, rec.weights)):
        if active:
            for n, w in weights.items():
                assert (w[~masks[n]] == 0).all(), f"{name}: {n} has non-zero pruned weights after step {step}"
    assert rec.pruned_grads and set(rec.pruned_grads) == {0}  # the optimizer saw no gradient on a pruned weight
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert all("sparsity" in e and "mask_sparsity" in e for e in logs)
    assert all(e["mask_violations"] == 0 for e in logs if "mask_violations" in e)
    # Logs hold numbers only (TensorBoard and the like take scalars): the count of mask events, AC/DC's phase as 0/1.
    assert all(isinstance(v, (int, float)) for e in logs for k, v in e.items() if k.startswith("mask_"))
    assert sum(e["mask_events"] for e in logs) == len(trainer.method_callback.events)
    events = "".join(e["event"] for e in trainer.method_callback.events)
    expected = {"gmp": "prune", "acdc": "compress", "rigl": "drop_grow", "nm": "prune", "constant": ""}[name]
    assert expected in events
    if name == "acdc":
        assert "decompress" in events and {e["compressed"] for e in logs} == {0, 1}
    target = {"gmp": 0.9, "acdc": 0.8, "rigl": 0.8, "nm": 0.5, "constant": 0.5}[name]
    assert method.masks.sparsity() == pytest.approx(target, abs=0.01)
    assert logs[-1]["sparsity"] == pytest.approx(method.masks.measured_sparsity())


def test_acdc_decompressed_phases_really_release_the_mask(tmp_path):
    trainer, rec = run(tmp_path, "acdc")
    # steps 4-7 compressed, 8-15 decompressed, 16-23 final compressed (4 steps per epoch)
    assert rec.active[4:8] == [True] * 4 and rec.active[8:16] == [False] * 8 and rec.active[16:] == [True] * 8
    pruned = {n: ~m for n, m in rec.masks[7].items()}
    revived = sum(int((rec.weights[12][n][p] != 0).sum()) for n, p in pruned.items())
    assert revived > 0.5 * sum(int(p.sum()) for p in pruned.values())  # the released weights trained
    # the first decompressed step trained the released weights on their real (dense) gradient
    assert sum(int((rec.weights[8][n][p] != 0).sum()) for n, p in pruned.items()) > 0


def test_rigl_keeps_its_non_zero_count_while_the_mask_moves(tmp_path):
    trainer, rec = run(tmp_path, "rigl")
    counts = [{n: int(m.sum()) for n, m in masks.items()} for masks in rec.masks]
    assert all(c == counts[0] for c in counts)
    moved = [i for i in range(1, STEPS) if any(not torch.equal(rec.masks[i][n], rec.masks[i - 1][n]) for n in counts[0])]
    assert moved == [4, 8, 12, 16]  # update steps up to T_end = 0.75 * 24 = 18
    assert trainer.method.last_iou is not None and trainer.method.last_iou < 1.0


@pytest.mark.parametrize("name", ["constant", "rigl", "gmp"])
def test_logged_grad_norm_is_the_norm_of_the_applied_gradient(tmp_path, name):
    trainer, rec = run(tmp_path, name, logging_steps=1)
    logged = [e["grad_norm"] for e in trainer.state.log_history if "grad_norm" in e]
    assert len(logged) == STEPS
    for step, (a, b) in enumerate(zip(logged, rec.grad_norms)):
        assert a == pytest.approx(b, rel=1e-5), f"step {step}: logged {a}, applied {b}"


def test_gradual_unfreezing_and_lr_rewind_combine_with_gmp(tmp_path):
    model = make_tiny_bert()
    method = GMP(dense_masks(model, "bert"), final_sparsity=0.8, start_step=0, end_step=12, interval=2)
    trainer, rec = run(tmp_path, "gmp", model=model, method=method, unfreeze="gradual", stage_steps=4, max_steps=16)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    assert [e["unfreeze_stage"] for e in logs][::4] == [0, 1, 2, 3]
    lrs = [e["learning_rate"] for e in logs]
    assert lrs[0] == lrs[4] == lrs[8] == lrs[12] > lrs[3]  # rewound at every stage start
    assert method.masks.sparsity() == pytest.approx(0.8, abs=1e-3) and method.masks.violations() == 0


class ReplaceQuery(TrainerCallback):
    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == 2:
            model.bert.encoder.layer[0].attention.self.query = nn.Linear(32, 32)


def test_a_parameter_replaced_mid_training_stops_at_the_next_log(tmp_path):
    with pytest.raises(RuntimeError, match=r"attention\.self\.query\.weight .* was replaced after the masks were attached"):
        run(tmp_path, "constant", callbacks=[ReplaceQuery()], logging_steps=1)


@pytest.mark.parametrize("name", ["constant", "gmp", "acdc", "rigl", "nm"])
def test_resume_under_the_trainer_is_bit_identical(tmp_path, name):
    common = dict(save_strategy="steps", save_steps=10, logging_steps=1)
    full, _ = run(tmp_path / "full", name, **common)
    checkpoint = tmp_path / "full" / "checkpoint-10"  # mid-phase for every method (AC/DC: decompressed)
    assert (checkpoint / SPARSE_METHOD_STATE_NAME).is_file()
    assert (checkpoint / MASKS_NAME).is_file() == (name != "acdc")  # no mask file while the mask is released
    resumed, _ = run(tmp_path / "resumed", name, resume=str(checkpoint), **common)
    a, b = full.model.state_dict(), resumed.model.state_dict()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{name}: {key} differs after resume"
    for key in full.method.masks:
        assert torch.equal(full.method.masks[key], resumed.method.masks[key])
    assert full.method.active == resumed.method.active
    losses = [(e["step"], e["loss"]) for e in full.state.log_history if "loss" in e and e["step"] > 10]
    assert losses == [(e["step"], e["loss"]) for e in resumed.state.log_history if "loss" in e and e["step"] > 10]


def test_method_and_masks_together_is_an_error(tmp_path):
    model = make_sparse_bert()
    masks = SparseMasks.from_zeros(model, "bert")
    with pytest.raises(ValueError, match="either method=... or masks=..."):
        SparseTrainer(model=model, args=make_args(tmp_path), method=Constant(masks), masks=masks)


def test_a_method_over_another_model_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="bound to another model"):
        SparseTrainer(model=make_sparse_bert(), args=make_args(tmp_path), method=build("gmp", make_tiny_bert()))


def test_masks_over_another_model_are_an_error_not_rebound(tmp_path):
    """Re-binding another model's masks by name would zero this model where the other is pruned and let its own
    pruned weights regrow, with every check passing: it must be refused, as for method=..."""
    model, other = make_sparse_bert(), make_sparse_bert(seed=1)
    assert not torch.equal(SparseMasks.from_zeros(model, "bert").state_dict()["bert.encoder.layer.0.intermediate.dense.weight"],
                           SparseMasks.from_zeros(other, "bert").state_dict()["bert.encoder.layer.0.intermediate.dense.weight"])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="bound to another model .*SparseMasks.from_zeros\\(model\\)"):
        SparseTrainer(model=model, args=make_args(tmp_path), masks=SparseMasks.from_zeros(other, "bert"))
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())  # nothing zeroed on the way


def test_masks_of_a_submodule_whose_names_collide_are_an_error(tmp_path):
    """A model that holds another as a submodule: masks bound to the inner model find the outer model's tensors of
    the same names; masks bound to the outer model, the inner one's. Neither may be re-bound."""
    inner, outer = make_sparse_bert(seed=1, sparsity=0.9), make_sparse_bert()
    outer.add_module("teacher", inner)
    for masks, model in ((SparseMasks.from_zeros(inner, "bert"), outer), (SparseMasks.from_zeros(outer, "bert"), inner)):
        with pytest.raises(ValueError, match="bound to another model"):
            SparseTrainer(model=model, args=make_args(tmp_path), masks=masks)


def test_unbound_masks_and_masks_of_the_wrapped_model_are_bound(tmp_path):
    from peft import get_peft_model

    from sparse_transfer.lora import SparseLoraConfig

    model = make_sparse_bert()
    unbound = SparseMasks(SparseMasks.from_zeros(model, "bert").state_dict())
    trainer = SparseTrainer(model=model, args=make_args(tmp_path), masks=unbound)
    assert trainer.masks.model is model
    base = make_sparse_bert()
    masks = SparseMasks.from_zeros(base, "bert")  # over the base, then the base is wrapped: the same parameters
    wrapped = get_peft_model(base, SparseLoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    trainer = SparseTrainer(model=wrapped, args=make_args(tmp_path), masks=masks)
    assert trainer.masks.model is wrapped and trainer.masks.violations() == 0
    # the base's parameters replaced (assign=True) after the masks were bound, then wrapped: the live tensors count
    base = make_sparse_bert()
    masks = SparseMasks.from_zeros(base, "bert")
    base.load_state_dict({k: v.clone() for k, v in base.state_dict().items()}, assign=True)
    wrapped = get_peft_model(base, SparseLoraConfig(r=2, target_modules=["query", "value"], task_type="SEQ_CLS"))
    assert SparseTrainer(model=wrapped, args=make_args(tmp_path), masks=masks).masks.model is wrapped


def test_fsdp1_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="FSDP1 .* Use FSDP2"):
        SparseTrainer(model=make_sparse_bert(), args=make_args(tmp_path, fsdp="full_shard", fsdp_config={"fsdp_version": 1}))


def test_rigl_with_gradual_unfreezing_updates_only_what_trains(tmp_path):
    model = make_tiny_bert()
    method = RigL.from_model(model, 0.8, 16, distribution="erk", targets="bert", update_interval=2)
    before = {n: m.clone() for n, m in method.masks.items()}
    trainer, rec = run(tmp_path, "rigl", model=model, method=method, unfreeze="gradual", stage_steps=4, max_steps=16)
    block0 = [n for n in before if ".layer.0." in n]  # block 0 trains from stage 2 (step 8) on
    for step in range(4):  # stage 0: no encoder weight trains, so no mask moves
        assert all(torch.equal(rec.masks[step][n], before[n]) for n in before)
    assert any(not torch.equal(rec.masks[-1][n], before[n]) for n in block0)
    assert method.masks.violations() == 0


def test_a_user_frozen_block_trains_with_unfreeze_none(tmp_path):
    model = make_sparse_bert()
    model.bert.encoder.layer[0].requires_grad_(False)
    trainer, rec = run(tmp_path, "constant", model=model, max_steps=4)
    assert trainer.masks.violations() == 0 and not model.bert.encoder.layer[0].attention.self.query.weight.requires_grad


@pytest.mark.parametrize("flag", ["overwrite", "swap"])
def test_parameter_replacing_conversion_flags_are_refused(tmp_path, flag):
    setter = getattr(torch.__future__, f"set_{flag}_module_params_on_conversion")
    setter(True)
    try:
        with pytest.raises(ValueError, match=f"set_{flag}_module_params_on_conversion|Turn the flag off"):
            SparseTrainer(model=make_sparse_bert(), args=make_args(tmp_path))
    finally:
        setter(False)


@pytest.mark.parametrize("batch, accumulation", [(4, 2), (2, 2)])  # another global batch; the same one split otherwise
def test_resume_with_another_batch_layout_is_an_error(tmp_path, batch, accumulation):
    common = dict(save_strategy="steps", save_steps=4, stage_steps=3, max_steps=8)
    run(tmp_path / "first", "constant", **common)
    with pytest.raises(ValueError, match=f"batch 4 x gradient accumulation 1 x 1 process.* {batch} x {accumulation} x 1"):
        run(tmp_path / "second", "constant", resume=str(tmp_path / "first" / "checkpoint-4"),
            per_device_train_batch_size=batch, gradient_accumulation_steps=accumulation, **common)


def test_a_dense_model_with_default_masks_warns_that_training_is_dense(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="sparse_transfer.hf.trainer"):
        SparseTrainer(model=make_tiny_bert(), args=make_args(tmp_path), train_dataset=make_dataset(4))
    assert "training is dense" in caplog.text


@pytest.mark.parametrize("name", ["rigl", "acdc", "gmp"])
def test_the_gradient_safety_net_stays_silent_in_ordinary_training(tmp_path, name, caplog):
    """Clipping, accumulation and dense-gradient steps rescale or read gradients in place: none of that is a gradient
    that bypassed the hooks, so the pre-step safety net neither warns nor fires."""
    with caplog.at_level("WARNING", logger="sparse_transfer.core.masks"):
        run(tmp_path, name, max_grad_norm=0.1, gradient_accumulation_steps=2, per_device_train_batch_size=2)
    assert "gradient hook" not in caplog.text and "were not masked by it" not in caplog.text


@pytest.mark.parametrize("swapped", [SPARSE_METHOD_STATE_NAME, MASKS_NAME])
def test_resume_refuses_a_swapped_mask_or_method_file(tmp_path, swapped):
    """Today's bug: a swapped mask file silently zeroed trained weights on resume. Now it is an error."""
    import shutil

    common = dict(save_strategy="steps", save_steps=10, max_steps=12)
    run(tmp_path / "a", "gmp", **common)
    run(tmp_path / "b", "gmp", model=make_tiny_bert(seed=7), **common)  # same architecture, other weights and mask
    checkpoint = tmp_path / "a" / "checkpoint-10"
    shutil.copy(tmp_path / "b" / "checkpoint-10" / swapped, checkpoint / swapped)
    with pytest.raises(ValueError, match=f"{swapped} changed since the checkpoint was saved"):
        run(tmp_path / "resumed", "gmp", resume=str(checkpoint), **common)
    # without the completion marker's content fingerprints (an earlier version's marker), the masks are still checked
    # against the weights
    marker = checkpoint / CHECKPOINT_COMPLETE_NAME
    marker.write_text(json.dumps({"files": json.loads(marker.read_text())["files"]}))
    with pytest.raises(ValueError, match="disagrees with the checkpoint's weights|hold different masks"):
        run(tmp_path / "resumed", "gmp", resume=str(checkpoint), **common)
