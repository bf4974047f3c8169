"""Upstream pruning loop: GMP over the oBERT targets, trained by distillation from the dense original.

Built on :class:`~sparse_transfer.hf.SparseTrainer` (``unfreeze="none"``), so checkpointing, resume (model,
optimizer, scheduler, RNG, data position), progress bars, logging and periodic evaluation are the
``transformers.Trainer``'s own; what is added here::

    masks = all-True masks over the targets; SparseTrainer.create_optimizer -> masks.attach(optimizer)
    for step in range(max_steps):
        on_step_begin:  UpstreamPruning.step(step)          # on update steps: new magnitude cut at s_t (cubic GMP),
                                                            # weights and Adam moments of pruned weights := 0
        loss = sum_k w_k * distillation_term_k(student(x), teacher(x))   # compute_loss, teacher frozen, eval mode
        optimizer.step()                                    # pre-hook grad *= mask, post-hook weight *= mask
        save:           checkpoint-N/ + sparse_masks.safetensors + upstream_state.json (written last: a checkpoint
                        without it is incomplete and never resumed from)
    after prune_end_step the mask is fixed: the "fixed-mask stretch" until max_steps.

The whole pruning state is the mask (saved in each checkpoint) and the step: the schedule is a pure function
of the step (:func:`~sparse_transfer.core.schedules.gmp_sparsity`), so a resumed run prunes at the same steps
to the same masks.
"""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
from typing import Any

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm
from transformers import TrainerCallback

from ..core import SparseMasks, compute_masks
from ..core.schedules import gmp_sparsity
from ..hf.trainer import SparseTrainer
from ..methods._base import dense_masks
from ..methods.gmp import GMP
from .losses import LossWeights, distillation_losses

logger = logging.getLogger(__name__)

UPSTREAM_STATE_NAME = "upstream_state.json"


# --------------------------------------------------------------------------------------------- pruning
class UpstreamPruning(GMP):
    """GMP (cubic schedule, global or uniform magnitude), or an N:M pattern imposed once at ``start_step``.

    N:M has no intermediate sparsities (a group keeps N of M or is unconstrained), so the cubic schedule does not
    apply to it: the pattern is cut at ``start_step`` and the rest of training recovers from it.

    Args:
        masks: All-``True`` masks bound to the student (:func:`~sparse_transfer.methods.dense_masks`).
        final_sparsity: Sparsity reached at ``end_step`` (ignored with ``nm``).
        start_step, end_step, interval, initial_sparsity: The GMP schedule.
        distribution: ``"global"``, ``"uniform"`` or ``"nm"``.
        nm: ``(N, M)`` for ``distribution="nm"``.
    """

    def __init__(
        self,
        masks: SparseMasks,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        interval: int,
        initial_sparsity: float = 0.0,
        distribution: str = "global",
        nm: tuple[int, int] | None = None,
    ):
        if distribution == "nm":
            if nm is None:
                raise ValueError("distribution='nm' needs nm=(N, M), e.g. (2, 4).")
            final_sparsity = 1.0 - nm[0] / nm[1]
        super().__init__(
            masks, final_sparsity, start_step, end_step, interval, initial_sparsity,
            "global" if distribution == "nm" else distribution,
        )
        self.nm = nm if distribution == "nm" else None

    def is_update_step(self, step: int) -> bool:
        if self.nm is not None:
            return step == self.start_step
        return super().is_update_step(step)

    def target_sparsity(self, step: int) -> float:
        if self.nm is not None:
            return self.final_sparsity if step >= self.start_step else 0.0
        return gmp_sparsity(step, self.initial_sparsity, self.final_sparsity, self.start_step, self.end_step)

    @torch.no_grad()
    def step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        if self.nm is None:
            return super().step(step, optimizer)
        if not self.is_update_step(step):
            return None
        n, m = self.nm
        self._impose(compute_masks(self.magnitude_scores(), None, "nm", n=n, m=m), optimizer)
        return {"event": "prune", "step": step, "sparsity": self.masks.sparsity(), "iou": self.last_iou}

    def resync_(self) -> None:
        """After masks were loaded from a checkpoint: mark them imposed if anything is pruned."""
        self.active = self.masks.num_kept() < self.masks.numel()
        self._reference = {name: m.clone() for name, m in self.masks.items()} if self.active else None


class PruningCallback(TrainerCallback):
    """Fires :class:`UpstreamPruning` before each optimizer step (``state.global_step`` = index of that step)."""

    def __init__(self, pruner: UpstreamPruning):
        self.pruner = pruner
        self.events: list[dict[str, Any]] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.pruner.resync_()

    def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
        event = self.pruner.step(state.global_step, optimizer)
        if event is not None:
            self.events.append(event)
            logger.info("step %d: pruned to sparsity %.4f", state.global_step, event["sparsity"])


# --------------------------------------------------------------------------------------------- trainer
def has_mlm_head(model: nn.Module) -> bool:
    """Whether ``model`` produces MLM logits (a ``*ForMaskedLM``-style model with output embeddings)."""
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None


class UpstreamTrainer(SparseTrainer):
    """SparseTrainer whose loss is distillation from a frozen dense teacher and whose mask follows GMP.

    Args:
        model: The student (a copy of the dense model), trained in place.
        args: :class:`SparseTrainingArguments` with ``unfreeze="none"``.
        teacher: The dense original; kept in eval mode without gradients.
        pruner: The :class:`UpstreamPruning` over ``masks``.
        loss_weights: Which distillation terms, with which weights.
        temperature: Logit KD temperature.
        **kwargs: Passed to ``SparseTrainer`` (datasets, collator, processing_class).
    """

    def __init__(self, model, args, teacher: nn.Module, pruner: UpstreamPruning, loss_weights: LossWeights,
                 temperature: float, mlm_probability: float = 0.15, **kwargs):
        super().__init__(model, args, masks=pruner.masks, **kwargs)
        self.mlm_masker = None
        if loss_weights.mlm > 0:
            from transformers import DataCollatorForLanguageModeling

            # Masking happens here, not in the collator: the Trainer fetches the first batch after a resume before
            # it restores the RNG state, so collator randomness would differ from the uninterrupted run. Each
            # micro-batch gets its own generator seeded by (seed, step, micro-batch), which a resume reproduces.
            self.mlm_masker = DataCollatorForLanguageModeling(
                self.processing_class, mlm=True, mlm_probability=mlm_probability
            )
        self._mask_key = (-1, 0)  # (step, micro-batch) of the last masked batch
        self.teacher = teacher.to(self.args.device).eval().requires_grad_(False)
        self.pruner = pruner
        self.loss_weights = loss_weights
        self.temperature = temperature
        self.pruning_callback = PruningCallback(pruner)
        self.add_callback(self.pruning_callback)
        # compute_loss returns a per-batch mean: let the Trainer divide by the accumulation steps.
        self.loss_is_scaled_for_ga = False
        self._term_sums: dict[str, float] = {}
        self._term_count = 0
        self.recipe_fingerprint: str | None = None

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        inputs = dict(inputs)
        labels = inputs.pop("labels", None)
        if self.mlm_masker is not None and labels is None:
            inputs["input_ids"], labels = self._mask_tokens(inputs["input_ids"], model.training)
        flags = {"output_hidden_states": True, "output_attentions": self.loss_weights.attention > 0, "return_dict": True}
        student_out = model(**inputs, **flags)
        with torch.no_grad():
            teacher_out = self.teacher(**inputs, **flags)
        total, terms = distillation_losses(
            student_out, teacher_out, self.loss_weights, self.temperature, inputs.get("attention_mask"), labels
        )
        if model.training:
            for name, value in terms.items():
                self._term_sums[name] = self._term_sums.get(name, 0.0) + float(value.detach())
            self._term_count += 1
        return (total, student_out) if return_outputs else total

    def _mask_tokens(self, input_ids: Tensor, training: bool) -> tuple[Tensor, Tensor]:
        step = self.state.global_step if training else -1 - self.state.global_step
        micro = self._mask_key[1] + 1 if self._mask_key[0] == step else 0
        self._mask_key = (step, micro)
        seed = (self.args.seed * 1_000_003 + (step + 10**9) * 4099 + micro) % (2**63)
        self.mlm_masker.generator = torch.Generator().manual_seed(seed)
        masked, labels = self.mlm_masker.torch_mask_tokens(input_ids.detach().cpu().clone())
        return masked.to(input_ids.device), labels.to(input_ids.device)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs and self._term_count:
            for name, value in self._term_sums.items():
                logs[f"kd_{name}"] = round(value / self._term_count, 6)
            self._term_sums, self._term_count = {}, 0
        super().log(logs, *args, **kwargs)

    def _save_checkpoint(self, model, trial) -> None:
        super()._save_checkpoint(model, trial)
        if not self.args.should_save:
            return
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        folder = os.path.join(self._get_output_dir(trial=trial), f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        state = {
            "global_step": self.state.global_step,
            "recipe_fingerprint": self.recipe_fingerprint,
            "pruning_events": self.pruning_callback.events,
        }
        write_json_atomic(os.path.join(folder, UPSTREAM_STATE_NAME), state)  # last: marks the checkpoint complete


# ------------------------------------------------------------------------------------------ evaluation
@torch.no_grad()
def mean_pooled_embeddings(model: nn.Module, tokenizer, sentences: list[str], batch_size: int = 32,
                           max_length: int = 128) -> Tensor:
    """Sentence embeddings as sentence-transformers' mean pooling makes them: mean of the last hidden state
    over real tokens. Works for base models and ``*ForMaskedLM`` models alike (via ``hidden_states``)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    out = []
    for start in range(0, len(sentences), batch_size):
        batch = tokenizer(sentences[start : start + batch_size], padding=True, truncation=True,
                          max_length=max_length, return_tensors="pt").to(device)
        hidden = model(**batch, output_hidden_states=True, return_dict=True).hidden_states[-1]
        weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out.append(((hidden * weights).sum(1) / weights.sum(1).clamp_min(1)).float().cpu())
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def evaluate_student(
    student: nn.Module,
    teacher: nn.Module,
    tokenizer,
    eval_blocks: Tensor | None,
    sentences: list[str],
    batch_size: int = 16,
    temperature: float = 2.0,
    attention: bool = False,
    desc: str = "evaluating",
) -> dict[str, float]:
    """Held-out measures of a (pruned) student against the dense teacher, independent of the training loss.

    Returns:
        ``heldout_hidden_loss`` (relative squared error of every block's output, mean over blocks),
        ``heldout_last_hidden_loss`` (the last block only), ``heldout_logit_loss`` (with an MLM head),
        ``heldout_attention_loss`` (if ``attention``), ``embedding_cosine`` (mean over sentences of the cosine
        between student and teacher mean-pooled embeddings) and ``embedding_cosine_min``.
    """
    was_training = student.training
    student.eval()
    teacher.eval()
    device = next(student.parameters()).device
    result: dict[str, float] = {}
    if eval_blocks is not None and len(eval_blocks):
        weights = LossWeights(hidden=1.0, attention=1.0 if attention else 0.0,
                              logit=1.0 if has_mlm_head(student) and has_mlm_head(teacher) else 0.0)
        sums: dict[str, float] = {}
        last = 0.0
        batches = range(0, len(eval_blocks), batch_size)
        for start in tqdm(batches, desc=desc, leave=False):
            ids = eval_blocks[start : start + batch_size].to(device)
            inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
            flags = {"output_hidden_states": True, "output_attentions": attention, "return_dict": True}
            s_out, t_out = student(**inputs, **flags), teacher(**inputs, **flags)
            _, terms = distillation_losses(s_out, t_out, weights, temperature)
            n = ids.shape[0]
            for name, value in terms.items():
                sums[name] = sums.get(name, 0.0) + float(value) * n
            s_last, t_last = s_out.hidden_states[-1], t_out.hidden_states[-1]
            last += float((s_last - t_last).pow(2).sum() / t_last.pow(2).sum()) * n
        for name, value in sums.items():
            result[f"heldout_{name}_loss"] = value / len(eval_blocks)
        result["heldout_last_hidden_loss"] = last / len(eval_blocks)
    if sentences:
        a = mean_pooled_embeddings(student, tokenizer, sentences)
        b = mean_pooled_embeddings(teacher, tokenizer, sentences)
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)
        result["embedding_cosine"] = float(cos.mean())
        result["embedding_cosine_min"] = float(cos.min())
    student.train(was_training)
    return result


@torch.no_grad()
def magnitude_prune_(model: nn.Module, sparsity: float, distribution: str = "global",
                     nm: tuple[int, int] | None = None, targets: str = "bert") -> SparseMasks:
    """One-shot magnitude pruning without retraining (the floor a trained run must beat); returns the masks."""
    masks = dense_masks(model, targets)
    scores = {name: p.detach().abs() for name, p in masks.params.items()}
    if distribution == "nm":
        new = compute_masks(scores, None, "nm", n=nm[0], m=nm[1])
    else:
        new = compute_masks(scores, sparsity, distribution)
    masks.update_(new)
    return masks


# --------------------------------------------------------------------------------------------- helpers
def write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2, default=str)
    os.replace(tmp, path)


def library_versions() -> dict[str, str]:
    import transformers

    from .. import __version__

    return {"sparse_transfer": __version__, "torch": str(torch.__version__), "transformers": transformers.__version__,
            "python": platform.python_version()}


def last_complete_checkpoint(output_dir: str) -> str | None:
    """Newest ``checkpoint-N`` folder whose :data:`UPSTREAM_STATE_NAME` was written (i.e. the save completed)."""
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        path = os.path.join(output_dir, name)
        if name.startswith("checkpoint-") and name[11:].isdigit() and os.path.isfile(os.path.join(path, UPSTREAM_STATE_NAME)):
            found.append((int(name[11:]), path))
    return max(found)[1] if found else None


def remove_checkpoints(output_dir: str) -> None:
    for name in os.listdir(output_dir):
        if name.startswith("checkpoint-"):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


__all__ = [
    "PruningCallback",
    "UpstreamPruning",
    "UpstreamTrainer",
    "evaluate_student",
    "has_mlm_head",
    "last_complete_checkpoint",
    "magnitude_prune_",
    "mean_pooled_embeddings",
]
