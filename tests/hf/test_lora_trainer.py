"""SparseTrainer on peft models: masked LoRA trains with gradual unfreezing and keeps every zero; plain LoRA is refused."""

import copy

import pytest
import torch
from peft import LoraConfig, get_peft_model
from transformers import TrainerCallback

from sparse_transfer import GMP, SparseMasks, dense_masks
from sparse_transfer.hf import SparseTrainer
from sparse_transfer.lora import SparseLoraConfig, SparseLoraLinear

from .conftest import make_args, make_dataset, make_sparse_bert

LINEARS = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


def lora_model(base, **kw):
    config = SparseLoraConfig(r=4, lora_alpha=8, target_modules=LINEARS, task_type="SEQ_CLS", modules_to_save=["pooler"], **kw)
    return get_peft_model(base, config)


def encoder_zeros(model):
    return {n: (p == 0).clone() for n, p in model.named_parameters() if "encoder" in n and n.endswith("weight")}


class RecordTrainable(TrainerCallback):
    def __init__(self, model):
        self.model = model
        self.per_step = []

    def on_step_end(self, args, state, control, **kwargs):
        self.per_step.append({n for n, p in self.model.named_parameters() if p.requires_grad})


def test_plain_lora_on_a_sparse_base_is_refused(tmp_path):
    model = get_peft_model(make_sparse_bert(sparsity=0.9), LoraConfig(r=4, target_modules=LINEARS, task_type="SEQ_CLS"))
    with pytest.raises(ValueError, match="plain LoRA.*SparseLoraConfig"):
        SparseTrainer(model, make_args(tmp_path), train_dataset=make_dataset())


def test_pruning_methods_are_refused_under_lora(tmp_path):
    model = lora_model(make_sparse_bert(sparsity=0.9))
    method = GMP(dense_masks(model, "bert"), final_sparsity=0.95, start_step=0, end_step=4, interval=2)
    with pytest.raises(ValueError, match="GMP changes the masks"):
        SparseTrainer(model, make_args(tmp_path), train_dataset=make_dataset(), method=method)


def test_masked_lora_under_gradual_unfreezing_keeps_peft_frozen_set_and_every_zero(tmp_path):
    base = make_sparse_bert(sparsity=0.9)
    zeros = encoder_zeros(base)
    reference = copy.deepcopy(base).eval()
    model = lora_model(base)
    peft_trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    trainer = SparseTrainer(model, make_args(tmp_path, num_train_epochs=4), train_dataset=make_dataset(16))
    # The "bert" preset resolves through peft's wrapped names: all 12 encoder linears, not 2.
    assert len(trainer.masks) == 12
    assert all(".base_layer.weight" in name for name in trainer.masks)
    assert trainer.masks.sparsity() == pytest.approx(0.9, abs=1e-3)
    recorder = RecordTrainable(model)
    trainer.add_callback(recorder)
    trainer.train()

    # Four stages of 4 steps (16 examples / 4 per step): head, + block 1's adapters, + block 0's, everything.
    def adapters(block):
        return {n for n in peft_trainable if f"layer.{block}." in n and "lora_" in n}

    head = peft_trainable - adapters(0) - adapters(1)
    assert head and all("modules_to_save" in n for n in head)
    assert recorder.per_step[0] == head
    assert recorder.per_step[4] == head | adapters(1)
    assert recorder.per_step[8] == head | adapters(1) | adapters(0)
    assert recorder.per_step[12] == peft_trainable
    assert all(step <= peft_trainable for step in recorder.per_step)  # the base never trains
    # LR rewound at every stage.
    lrs = [h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h]
    assert lrs[0] == lrs[4] == lrs[8] == lrs[12] == pytest.approx(1e-2)

    model.eval()
    batch = torch.stack([d["input_ids"] for d in make_dataset(4, seed=3)])
    with torch.no_grad():
        adapted = model(input_ids=batch).logits
        merged = model.merge_and_unload()
        torch.testing.assert_close(merged(input_ids=batch).logits, adapted, rtol=1e-5, atol=1e-6)
    params = dict(merged.named_parameters())
    assert sum(int((params[n][z] != 0).sum()) for n, z in zeros.items()) == 0
    moved = sum(int((params[n] != p).sum()) for n, p in reference.named_parameters() if n in zeros)
    assert moved > 0  # the adapters changed the kept weights


def test_distillation_with_a_teacher_trains_the_adapter(tmp_path):
    base = make_sparse_bert(sparsity=0.9)
    teacher = make_sparse_bert(sparsity=0.0, seed=1)
    model = lora_model(base)
    args = make_args(tmp_path, num_train_epochs=2, unfreeze="none", distill_hardness=0.5)
    trainer = SparseTrainer(model, args, train_dataset=make_dataset(16), teacher_model=teacher)
    before = {n: p.detach().clone() for n, p in model.named_parameters() if "lora_B" in n}
    trainer.train()
    assert any(not torch.equal(before[n], p) for n, p in model.named_parameters() if n in before)
    assert all(not p.requires_grad for p in teacher.parameters())


def test_resume_from_a_lora_checkpoint_matches_an_uninterrupted_run(tmp_path):
    def run(output_dir, resume=None, epochs=4):
        torch.manual_seed(0)
        model = lora_model(make_sparse_bert(sparsity=0.9, dropout=0.0))
        args = make_args(output_dir, num_train_epochs=4, save_strategy="steps", save_steps=4,
                         max_steps=-1 if epochs == 4 else epochs * 4)
        trainer = SparseTrainer(model, args, train_dataset=make_dataset(16))
        trainer.train(resume_from_checkpoint=resume)
        return {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad or "lora_" in n}

    full = run(tmp_path / "full")
    run(tmp_path / "cut", epochs=2)  # stops after 8 of the 16 steps, checkpoint-8 on disk
    resumed = run(tmp_path / "cut", resume=str(tmp_path / "cut" / "checkpoint-8"))
    assert full.keys() == resumed.keys()
    for name in full:
        torch.testing.assert_close(resumed[name], full[name], rtol=0, atol=0, msg=name)
    assert (tmp_path / "cut" / "checkpoint-16" / "adapter_model.safetensors").is_file()


def test_a_mask_file_of_the_unwrapped_model_binds_to_the_peft_model(tmp_path):
    base = make_sparse_bert(sparsity=0.9)
    SparseMasks.from_zeros(base, "bert").save(tmp_path / "m.safetensors", model=base)
    model = lora_model(base)
    masks = SparseMasks.load(tmp_path / "m.safetensors", model)  # names and fingerprint through the wrappers
    layers = {n for n, m in model.named_modules() if isinstance(m, SparseLoraLinear)}
    assert {n.removesuffix(".base_layer.weight") for n in masks} == layers
    trainer = SparseTrainer(model, make_args(tmp_path, max_steps=2), train_dataset=make_dataset(), masks=masks)
    trainer.train()
    assert trainer.masks.violations() == 0


def test_batchnorm_statistics_outside_the_adapter_are_refused(tmp_path):
    from tests.conftest import TinyCNN

    cnn = TinyCNN()
    SparseMasks.from_magnitude(cnn, 0.8, targets="cnn").apply_()
    model = get_peft_model(cnn, SparseLoraConfig(r=2, target_modules=["body"]))
    with pytest.raises(ValueError, match="BatchNorm layer.*bn.*modules_to_save"):
        SparseTrainer(model, make_args(tmp_path, unfreeze="none", mask_targets="cnn"), train_dataset=make_dataset())
    ok = get_peft_model(TinyCNN(), SparseLoraConfig(r=2, target_modules=["body"], modules_to_save=["bn"]))
    from sparse_transfer.lora import untracked_batchnorms

    assert untracked_batchnorms(ok) == []


def test_trainer_masks_must_agree_with_the_adapters_masks(tmp_path):
    # The adapter was made on a 50%-sparse base; masks that prune 90% would let the merge write onto pruned weights.
    model = lora_model(make_sparse_bert(sparsity=0.5))
    stricter = SparseMasks.from_magnitude(make_sparse_bert(sparsity=0.5), 0.9, targets="bert")
    with pytest.raises(ValueError, match="updates .* weights that the trainer's masks prune"):
        SparseTrainer(model, make_args(tmp_path), train_dataset=make_dataset(), masks=SparseMasks(stricter.state_dict()))
    # A plain LoRA on a dense base with masks that prune: refused too (the base's zeros are not what counts).
    plain = get_peft_model(make_sparse_bert(sparsity=0.0), LoraConfig(r=4, target_modules=LINEARS, task_type="SEQ_CLS"))
    masks = SparseMasks.from_magnitude(make_sparse_bert(sparsity=0.0), 0.9, targets="bert")
    with pytest.raises(ValueError, match="plain LoRA on weights these masks prune"):
        SparseTrainer(plain, make_args(tmp_path), train_dataset=make_dataset(), masks=SparseMasks(masks.state_dict()))


def test_an_adapters_bias_unfreezes_with_its_block(tmp_path):
    model = lora_model(make_sparse_bert(sparsity=0.9), lora_bias=True)
    trainer = SparseTrainer(model, make_args(tmp_path), train_dataset=make_dataset())
    stage0 = trainer.unfreezer.trainable_names(0)
    assert not any(".lora_" in n for n in stage0)
    assert any(".lora_B" in n and n.endswith("bias") and "layer.1." in n for n in trainer.unfreezer.trainable_names(1))


def test_save_model_of_a_lora_run_is_an_adapter_folder_that_pushes(tmp_path, monkeypatch, hub_login):
    import huggingface_hub

    from sparse_transfer.hub import push_sparse_to_hub, verify_sparse_adapter

    uploaded = {}
    monkeypatch.setattr(huggingface_hub, "create_repo",
                        lambda repo_id, **kw: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub, "upload_folder",
                        lambda folder_path, allow_patterns, **kw: uploaded.update(patterns=allow_patterns))
    model = lora_model(make_sparse_bert(sparsity=0.9))
    trainer = SparseTrainer(model, make_args(tmp_path, max_steps=2), train_dataset=make_dataset())
    trainer.train()
    trainer.save_model(str(tmp_path / "final"))
    names = {p.name for p in (tmp_path / "final").iterdir()}
    assert {"adapter_config.json", "adapter_model.safetensors"} <= names and "sparse_masks.safetensors" not in names
    assert len(verify_sparse_adapter(tmp_path / "final")) == 12
    push_sparse_to_hub(tmp_path / "final", "me/adapter")
    assert any("adapter_model" in p for p in uploaded["patterns"])
