"""SparseTrainer: stages, LR rewind, frozen parameters, exact zeros, resume, distillation, bad arguments."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from transformers import BertForSequenceClassification, TrainerCallback, TrainingArguments

from sparse_transfer.core import MASKS_NAME, SparseMasks, select_targets
from sparse_transfer.hf import (
    SPARSE_TRAINER_STATE_NAME,
    SparseTrainer,
    distillation_loss,
)

from .conftest import make_args, make_dataset, make_sparse_bert

LR = 1e-2
EMBEDDINGS = {f"bert.embeddings.{k}_embeddings.weight" for k in ("word", "position", "token_type")}
BLOCK_WEIGHTS = [
    {
        f"bert.encoder.layer.{i}.{m}.weight"
        for m in ("attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                  "intermediate.dense", "output.dense")
    }
    for i in range(2)
]


def expected_trainable(names, stage: int, unfreeze_embeddings: bool = False) -> set[str]:
    """Issue 3's schedule written out for the 2-block tiny BERT, by name."""
    trainable = {n for n in names if n.endswith(".bias") or "LayerNorm." in n}
    trainable |= {"classifier.weight", "bert.pooler.dense.weight"}
    if stage >= 1:
        trainable |= BLOCK_WEIGHTS[1]
    if stage >= 2:
        trainable |= BLOCK_WEIGHTS[0]
    if stage >= 3:
        trainable = set(names) - (set() if unfreeze_embeddings else EMBEDDINGS)
    return trainable


def rewind_lr(step: int, steps_per_stage: int, lr: float = LR, end_factor: float = 0.0) -> float:
    """The LR of optimizer step ``step`` (from 0): linear decay within each stage, rewound at each stage start."""
    return lr * (1.0 - (1.0 - end_factor) * (step % steps_per_stage) / steps_per_stage)


class Recorder(TrainerCallback):
    """Records, for every optimizer step, what trained, the LR used, and a copy of the weights after the step.

    ``masks_before`` are the masks read from the model before training; pruned weights are checked with ``== 0``
    after every step.
    """

    def __init__(self, masks_before: dict[str, torch.Tensor] | None = None):
        self.masks_before = masks_before or {}
        self.requires_grad: list[set[str]] = []
        self.has_grad: list[set[str]] = []
        self.lrs: list[list[float]] = []
        self.weights: list[dict[str, torch.Tensor]] = []

    @staticmethod
    def snapshot(model) -> dict[str, torch.Tensor]:
        return {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.weights.append(self.snapshot(model))

    def on_pre_optimizer_step(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.requires_grad.append({n for n, p in model.named_parameters() if p.requires_grad})
        self.has_grad.append({n for n, p in model.named_parameters() if p.grad is not None})
        self.lrs.append([group["lr"] for group in optimizer.param_groups])

    def on_step_end(self, args, state, control, model=None, **kwargs):
        params = dict(model.named_parameters())
        for name, mask in self.masks_before.items():
            assert torch.all(params[name].detach()[~mask] == 0), f"{name} has non-zero pruned weights"
        self.weights.append(self.snapshot(model))


def bert_masks(model) -> dict[str, torch.Tensor]:
    return {n: p.detach() != 0 for n, p in select_targets(model, "bert").items()}


def run(tmp_path, model=None, dataset=None, callbacks=(), teacher_model=None, masks=None, resume=None, **overrides):
    model = model if model is not None else make_sparse_bert()
    trainer = SparseTrainer(
        model=model,
        args=make_args(tmp_path, **overrides),
        train_dataset=dataset if dataset is not None else make_dataset(),
        callbacks=list(callbacks),
        teacher_model=teacher_model,
        masks=masks,
    )
    trainer.train(resume_from_checkpoint=resume)
    return trainer


def train_log(trainer) -> list[dict]:
    return [entry for entry in trainer.state.log_history if "loss" in entry]


# ----------------------------------------------------------------------------------------- the schedule
@pytest.mark.parametrize("unfreeze_embeddings", [False, True])
def test_gradual_schedule_step_by_step(tmp_path, unfreeze_embeddings):
    """16 examples, batch 4: 4 steps per epoch = per stage, 4 stages (L + 2), 16 optimizer steps."""
    model = make_sparse_bert()
    masks = bert_masks(model)
    names = [n for n, _ in model.named_parameters()]
    recorder = Recorder(masks)
    # weight_decay > 0: a frozen weight that reached the optimizer step would move.
    trainer = run(tmp_path, model, callbacks=[recorder], weight_decay=0.1, unfreeze_embeddings=unfreeze_embeddings)

    steps_per_stage, num_steps = 4, 16
    assert trainer.steps_per_stage == steps_per_stage and trainer.state.global_step == num_steps
    assert len(recorder.requires_grad) == num_steps and len(recorder.weights) == num_steps + 1
    log = train_log(trainer)
    assert [entry["step"] for entry in log] == list(range(1, num_steps + 1))
    for step in range(num_steps):
        stage = step // steps_per_stage
        trainable = expected_trainable(names, stage, unfreeze_embeddings)
        assert recorder.requires_grad[step] == trainable, f"step {step}"
        # Frozen parameters get no gradient at all (autograd skipped them); trainable ones do.
        assert recorder.has_grad[step] == trainable, f"step {step}"
        # LR against the formula: rewound at every stage start, no warm-up, the same in every param group.
        expected_lr = rewind_lr(step, steps_per_stage)
        assert recorder.lrs[step] == pytest.approx([expected_lr] * len(recorder.lrs[step]), rel=1e-12)
        assert log[step]["learning_rate"] == pytest.approx(expected_lr, rel=1e-12)
        assert log[step]["unfreeze_stage"] == stage
        assert log[step]["mask_violations"] == 0
        assert log[step]["sparsity"] == pytest.approx(0.5, abs=1e-6)
        before, after = recorder.weights[step], recorder.weights[step + 1]
        for name in names:
            if name not in trainable:  # bit-identical: no update, no weight decay, no momentum
                assert torch.equal(before[name], after[name]), f"frozen {name} moved at step {step}"
            elif before[name].dim() == 2:  # every trainable matrix moves (biases may start at 0 with ~0 gradient)
                assert not torch.equal(before[name], after[name]), f"trainable {name} did not move at step {step}"
    # The first LR of each stage is the initial one: no warm-up.
    assert [log[s * steps_per_stage]["learning_rate"] for s in range(4)] == [LR] * 4
    # A block unfrozen late was frozen until its stage and trained after it.
    query0 = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(recorder.weights[0][query0], recorder.weights[8][query0])
    assert not torch.equal(recorder.weights[8][query0], recorder.weights[16][query0])
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(recorder.weights[0][word], recorder.weights[16][word]) != unfreeze_embeddings

    # Exact zeros at the end, in the weights and in AdamW's moments.
    params = dict(trainer.model.named_parameters())
    for name, mask in masks.items():
        assert torch.all(params[name].detach()[~mask] == 0)
        for value in trainer.optimizer.state[params[name]].values():
            if value.shape == mask.shape:
                assert torch.all(value[~mask] == 0)
    assert trainer.masks.violations() == 0


def test_unfreeze_none_trains_everything_from_the_first_step(tmp_path):
    model = make_sparse_bert()
    names = {n for n, _ in model.named_parameters()}
    recorder = Recorder(bert_masks(model))
    trainer = run(tmp_path, model, callbacks=[recorder], unfreeze="none", lr_scheduler_type="linear", num_train_epochs=1)
    assert all(trainable == names for trainable in recorder.requires_grad)
    assert trainer.unfreezer is None
    assert [e["learning_rate"] for e in train_log(trainer)] == pytest.approx([LR * (1 - s / 4) for s in range(4)])


def test_lr_end_factor(tmp_path):
    trainer = run(tmp_path, stage_steps=2, max_steps=8, lr_end_factor=0.1)
    lrs = [e["learning_rate"] for e in train_log(trainer)]
    assert lrs == pytest.approx([rewind_lr(s, 2, end_factor=0.1) for s in range(8)], rel=1e-12)
    assert trainer.lr_scheduler.get_last_lr()[0] == pytest.approx(LR)  # the next step would start a new stage


def test_lr_follows_the_step_after_a_skipped_optimizer_step(tmp_path, monkeypatch):
    """fp16's GradScaler skips steps with inf gradients; the Trainer then does not step the scheduler but still
    counts the step. The LR must stay in phase with the stages (simulated here on CPU: steps 1 and 5 'skipped')."""
    from accelerate import Accelerator

    steps = []
    monkeypatch.setattr(Accelerator, "optimizer_step_was_skipped", property(lambda self: steps[-1] in (1, 5)))

    class StepProbe(TrainerCallback):
        def on_pre_optimizer_step(self, args, state, control, **kwargs):
            steps.append(state.global_step)

    recorder = Recorder()
    trainer = run(tmp_path, callbacks=[StepProbe(), recorder], stage_steps=3, max_steps=9)
    assert steps == list(range(9))
    assert [lrs[0] for lrs in recorder.lrs] == pytest.approx([rewind_lr(s, 3) for s in range(9)], rel=1e-12)
    assert [e["learning_rate"] for e in train_log(trainer)] == pytest.approx([rewind_lr(s, 3) for s in range(9)])


@pytest.mark.parametrize(
    "overrides, steps_per_stage, num_steps",
    [
        (dict(stage_steps=3, max_steps=12), 3, 12),
        (dict(stage_steps=3, num_train_epochs=2), 3, 8),  # the schedule ends early: stage 2 is the last one reached
        (dict(stage_epochs=0.5, num_train_epochs=2), 2, 8),
        (dict(stage_epochs=1.5, num_train_epochs=6), 6, 24),
        # Gradient accumulation: stages count optimizer steps (8 batches of 2 = 4 optimizer steps per epoch).
        (dict(per_device_train_batch_size=2, gradient_accumulation_steps=2, num_train_epochs=4), 4, 16),
    ],
)
def test_stage_length_in_steps_and_epochs(tmp_path, overrides, steps_per_stage, num_steps):
    model = make_sparse_bert()
    names = [n for n, _ in model.named_parameters()]
    recorder = Recorder(bert_masks(model))
    trainer = run(tmp_path, model, callbacks=[recorder], **overrides)
    assert trainer.steps_per_stage == steps_per_stage
    assert trainer.state.global_step == num_steps == len(recorder.requires_grad)
    log = train_log(trainer)
    for step in range(num_steps):
        stage = min(step // steps_per_stage, 3)
        assert recorder.requires_grad[step] == expected_trainable(names, stage), f"step {step}"
        assert log[step]["unfreeze_stage"] == stage
        assert log[step]["learning_rate"] == pytest.approx(rewind_lr(step, steps_per_stage), rel=1e-12)


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    """Batch 2 x 2 accumulation steps trains like batch 4 (no dropout: the same function of the same data)."""
    one = run(tmp_path / "one", make_sparse_bert(dropout=0.0), per_device_train_batch_size=4)
    two = run(
        tmp_path / "two", make_sparse_bert(dropout=0.0), per_device_train_batch_size=2, gradient_accumulation_steps=2
    )
    assert one.state.global_step == two.state.global_step == 16
    # The logged loss is the mean over the 4 examples of a step in both runs (not the sum of 2 micro-batch means).
    assert [e["loss"] for e in train_log(two)] == pytest.approx([e["loss"] for e in train_log(one)], rel=1e-4)
    for (name, a), b in zip(one.model.named_parameters(), two.model.parameters()):
        if name.endswith("attention.self.key.bias"):
            continue  # its exact gradient is 0 (softmax ignores a per-query constant): AdamW amplifies rounding noise
        torch.testing.assert_close(a, b, rtol=1e-4, atol=5e-5, msg=name)
    assert two.masks.violations() == 0


def test_masks_can_be_given_explicitly(tmp_path):
    """Explicit masks win over the model's zeros: a dense model comes out exactly as sparse as the masks."""
    model = make_sparse_bert(sparsity=0.0)
    masks = SparseMasks.from_magnitude(model, 0.75, "uniform", targets="bert")
    trainer = run(tmp_path, model, masks=masks, max_steps=4, stage_steps=1)
    assert trainer.masks is masks and masks.violations() == 0
    assert trainer.measured_sparsity() == pytest.approx(0.75)
    assert train_log(trainer)[0]["sparsity"] == pytest.approx(0.75)


def test_user_callbacks_see_the_stage_of_the_coming_step(tmp_path):
    seen = []

    class StageProbe(TrainerCallback):
        def on_step_begin(self, args, state, control, model=None, **kwargs):
            seen.append(model.bert.encoder.layer[1].output.dense.weight.requires_grad)

    run(tmp_path, callbacks=[StageProbe()], stage_steps=2, max_steps=4)
    assert seen == [False, False, True, True]


def test_warns_when_training_ends_before_the_schedule(tmp_path, caplog):
    with caplog.at_level("WARNING", logger="sparse_transfer.hf.trainer"):
        run(tmp_path, num_train_epochs=2)
    assert "before the last unfreezing stage ends" in caplog.text


# ------------------------------------------------------------------------------------------------ resume
def test_resume_mid_stage_is_bit_identical(tmp_path):
    """Stop after step 5 (mid stage 1, mid epoch 2), resume, and end with exactly the uninterrupted weights.

    Dropout is on, so this also needs the RNG state, the data order and the AdamW moments restored.
    """
    common = dict(stage_steps=3, max_steps=12, save_strategy="steps", save_steps=5, weight_decay=0.1)
    full = run(tmp_path / "full", **common)
    checkpoint = tmp_path / "full" / "checkpoint-5"
    assert (checkpoint / MASKS_NAME).is_file() and (checkpoint / SPARSE_TRAINER_STATE_NAME).is_file()

    model = make_sparse_bert()
    recorder = Recorder(bert_masks(model))
    resumed = run(tmp_path / "resumed", model, callbacks=[recorder], resume=str(checkpoint), **common)
    assert resumed.state.global_step == 12
    assert len(recorder.requires_grad) == 7  # steps 5..11 only
    names = [n for n, _ in model.named_parameters()]
    assert recorder.requires_grad[0] == expected_trainable(names, 1)  # step 5 is in stage 1
    full_state, resumed_state = full.model.state_dict(), resumed.model.state_dict()
    assert full_state.keys() == resumed_state.keys()
    for name in full_state:
        assert torch.equal(full_state[name], resumed_state[name]), name
    full_lrs = [(e["step"], e["learning_rate"]) for e in train_log(full)]
    resumed_lrs = [(e["step"], e["learning_rate"]) for e in train_log(resumed)]
    assert resumed_lrs == full_lrs


def test_resume_with_other_masks_than_the_run_started_with_is_an_error(tmp_path):
    """masks= at another sparsity on resume would otherwise be replaced by the checkpoint's without a word."""
    common = dict(stage_steps=1, max_steps=4, save_strategy="steps", save_steps=2)
    run(tmp_path / "first", **common)
    checkpoint = tmp_path / "first" / "checkpoint-2"
    model = make_sparse_bert()
    masks = SparseMasks.from_magnitude(model, 0.75, "uniform", targets="bert")
    with pytest.raises(ValueError, match=r"trained with other masks than this trainer's \(50.00% vs 75.00% sparse"):
        run(tmp_path / "resumed", model, masks=masks, resume=str(checkpoint), **common)
    resumed = run(tmp_path / "again", make_sparse_bert(), masks=SparseMasks.load(checkpoint / MASKS_NAME),
                  resume=str(checkpoint), **common)
    assert resumed.state.global_step == 4 and resumed.masks.violations() == 0


def test_a_model_with_nan_weights_is_refused_before_training(tmp_path):
    model = make_sparse_bert()
    with torch.no_grad():
        model.bert.encoder.layer[0].intermediate.dense.weight[0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"1 parameter\(s\) of the model hold NaN or inf before training \(e.g. "
                                         r"bert.encoder.layer.0.intermediate.dense.weight\)"):
        run(tmp_path, model, max_steps=2)


def test_checkpoint_loads_in_plain_transformers(tmp_path):
    trainer = run(tmp_path, stage_steps=1, max_steps=4, save_strategy="steps", save_steps=4)
    reloaded = BertForSequenceClassification.from_pretrained(tmp_path / "checkpoint-4")
    for name, mask in bert_masks(trainer.model).items():
        weight = dict(reloaded.named_parameters())[name]
        assert torch.all(weight.detach()[~mask] == 0)
        assert torch.equal(weight.detach(), dict(trainer.model.named_parameters())[name].detach())
    masks = SparseMasks.load(tmp_path / "checkpoint-4" / MASKS_NAME, reloaded)
    assert masks.violations() == 0 and masks.sparsity() == pytest.approx(0.5)


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(stage_steps=4), "3 optimizer steps per stage, this run would use 4"),
        (dict(unfreeze="none", lr_scheduler_type="linear"), "unfreeze='gradual', this run uses unfreeze='none'"),
        (dict(unfreeze_embeddings=True), "different unfreezing schedule"),
    ],
)
def test_resume_with_a_different_schedule_is_an_error(tmp_path, change, message):
    common = dict(stage_steps=3, max_steps=6, save_strategy="steps", save_steps=3)
    run(tmp_path / "first", **common)
    with pytest.raises(ValueError, match=message):
        run(tmp_path / "second", resume=str(tmp_path / "first" / "checkpoint-3"), **{**common, **change})


# ------------------------------------------------------------------------------------------ distillation
def test_distillation_loss_values():
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(5, 3, generator=generator), torch.randn(5, 3, generator=generator)
    for temperature in (1.0, 2.0, 5.5):
        p_teacher = F.softmax(teacher / temperature, dim=-1)
        log_p_student = F.log_softmax(student / temperature, dim=-1)
        manual = (p_teacher * (p_teacher.log() - log_p_student)).sum(-1).mean() * temperature**2
        assert distillation_loss(student, teacher, temperature).item() == pytest.approx(manual.item(), rel=1e-5)
    assert distillation_loss(teacher, teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    # Token-level logits: every position is an example.
    tokens_s, tokens_t = torch.randn(2, 4, 3, generator=generator), torch.randn(2, 4, 3, generator=generator)
    assert distillation_loss(tokens_s, tokens_t, 2.0).item() == pytest.approx(
        distillation_loss(tokens_s.reshape(8, 3), tokens_t.reshape(8, 3), 2.0).item(), rel=1e-6
    )
    # One output (regression): mean squared error.
    assert distillation_loss(student[:, :1], teacher[:, :1], 2.0).item() == pytest.approx(
        F.mse_loss(student[:, :1], teacher[:, :1]).item()
    )
    with pytest.raises(ValueError, match="same output head"):
        distillation_loss(student, teacher[:, :2], 2.0)


def test_distillation_loss_mixes_hardness(tmp_path):
    student, teacher = make_sparse_bert(dropout=0.0), make_sparse_bert(seed=1, sparsity=0.0, dropout=0.0)
    trainer = SparseTrainer(
        model=student,
        args=make_args(tmp_path, distill_hardness=0.25, distill_temperature=3.0),
        train_dataset=make_dataset(),
        teacher_model=teacher,
    )
    batch = trainer.data_collator(make_dataset(4))
    student.train()
    loss = trainer.compute_loss(student, batch)
    with torch.no_grad():
        outputs = student(**batch)
        kd = distillation_loss(outputs.logits, teacher(**batch).logits, 3.0)
    assert loss.item() == pytest.approx(0.25 * kd.item() + 0.75 * outputs.loss.item(), rel=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_distillation_trains_the_student_towards_the_teacher(tmp_path):
    data = make_dataset(16)
    teacher = make_sparse_bert(seed=1, sparsity=0.0, dropout=0.0)
    with torch.no_grad():  # a confident teacher: a freshly initialised tiny BERT's logits are nearly uniform
        teacher.classifier.weight.mul_(100.0)
    student = make_sparse_bert(dropout=0.0)
    batch = {k: torch.stack([torch.as_tensor(d[k]) for d in data]) for k in ("input_ids", "attention_mask")}

    def kd_to_teacher() -> float:
        with torch.no_grad():
            return distillation_loss(student(**batch).logits, teacher(**batch).logits, 2.0).item()

    before = kd_to_teacher()
    trainer = run(tmp_path, student, dataset=data, teacher_model=teacher, distill_hardness=1.0, unfreeze="none",
                  lr_scheduler_type="linear", learning_rate=1e-2, num_train_epochs=8)
    student.eval()
    assert kd_to_teacher() < 0.5 * before
    assert trainer.masks.violations() == 0
    # Pure distillation (hardness 1): the logged training loss is the distillation loss, not the task loss.
    assert math.isfinite(train_log(trainer)[-1]["loss"])


# -------------------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(unfreeze="sometimes"), ValueError, r"unfreeze must be one of \['gradual', 'none'\]"),
        (dict(stage_steps=0), ValueError, "stage_steps must be a positive"),
        (dict(stage_epochs=0), ValueError, "stage_epochs must be positive"),
        (dict(lr_end_factor=1.5), ValueError, r"lr_end_factor must be in \[0, 1\]"),
        (dict(distill_hardness=-0.1), ValueError, r"distill_hardness must be in \[0, 1\]"),
        (dict(distill_temperature=0), ValueError, "distill_temperature must be positive"),
        (dict(warmup_steps=2), ValueError, "'rewind' has no warm-up.*lr_scheduler_type='linear'"),
        (dict(lr_scheduler_type="sideways"), ValueError, "sideways"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        make_args(tmp_path, **kwargs)


def test_bad_trainer_inputs(tmp_path, sparse_bert, dataset):
    with pytest.raises(TypeError, match="needs SparseTrainingArguments"):
        SparseTrainer(model=sparse_bert, args=TrainingArguments(str(tmp_path), use_cpu=True, report_to=[]))
    with pytest.raises(ValueError, match="model_init is not supported"):
        SparseTrainer(args=make_args(tmp_path), model_init=make_sparse_bert)
    with pytest.raises(ValueError, match="distill_hardness=0.*ignored"):
        SparseTrainer(model=sparse_bert, args=make_args(tmp_path), teacher_model=make_sparse_bert())
    with pytest.raises(ValueError, match="needs a teacher_model"):
        SparseTrainer(model=sparse_bert, args=make_args(tmp_path, distill_hardness=0.5))
    for other in (
        SparseMasks({"bert.encoder.layer.0.attention.self.query.weight": torch.ones(16, 16, dtype=torch.bool)}),
        SparseMasks({"encoder.layer.0.attention.self.query.weight": torch.ones(32, 32, dtype=torch.bool)}),
    ):
        with pytest.raises(ValueError, match="different model"):
            SparseTrainer(model=sparse_bert, args=make_args(tmp_path), masks=other)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ValueError, match="No encoder blocks found.*encoder_blocks_pattern"):
        SparseTrainer(model=mlp, args=make_args(tmp_path, mask_targets="all"))


def test_stage_epochs_without_a_length_is_an_error(tmp_path):
    from torch.utils.data import IterableDataset

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(make_dataset())

    with pytest.raises(ValueError, match="no length.*set stage_steps"):
        run(tmp_path, dataset=Stream(), max_steps=4)
    trainer = run(tmp_path, dataset=Stream(), max_steps=4, stage_steps=1)
    assert trainer.state.global_step == 4


def test_plain_trainer_optimizer_would_miss_later_stages(tmp_path, sparse_bert, dataset, caplog):
    """An optimizer built while the first stage was frozen is flagged: its missing parameters would never train."""
    unfrozen = [p for n, p in sparse_bert.named_parameters() if "encoder.layer" not in n or n.endswith("bias")]
    optimizer = torch.optim.AdamW(unfrozen, lr=LR)
    with caplog.at_level("WARNING", logger="sparse_transfer.hf.trainer"):
        SparseTrainer(
            model=sparse_bert, args=make_args(tmp_path, max_steps=1), train_dataset=dataset, optimizers=(optimizer, None)
        ).train()
    assert "will never train" in caplog.text
