"""Upstream pruning loop: a mask method over the oBERT targets, trained by distillation from the dense original.

Built on :class:`~sparse_transfer.hf.SparseTrainer` (``unfreeze="none"``), so checkpointing, resume (model,
optimizer, scheduler, RNG, data position, the method's state), progress bars, logging and periodic evaluation are
the ``transformers.Trainer``'s own, and the method is driven by the same Trainer adapter as in fine-tuning
(:class:`~sparse_transfer.hf.MaskMethodCallback`); what is added here::

    method = GMP | ACDC | RigL | NM over all-True masks on the targets    (build_method)
    for step in range(max_steps):
        loss = sum_k w_k * distillation_term_k(student(x), teacher(x))   # compute_loss, teacher frozen, eval mode
        (SparseTrainer) method.step(step): GMP cut at s_t, AC/DC (de)compression, RigL drop/grow, N:M cut
        optimizer.step()                                                 # engine: masked gradients, exact zeros
        save:           checkpoint-N/ (+ masks, method state) + upstream_state.json (written last: a checkpoint
                        without it is incomplete and never resumed from)

The whole pruning state is the method's (saved with each checkpoint by SparseTrainer) and the step, so a resumed
run prunes at the same steps to the same masks.
"""

from __future__ import annotations

import logging
import os
import shutil

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .._rundir import library_versions, write_json_atomic  # noqa: F401 - re-exported (benchmarks import them here)
from ..core import SparseMasks, compute_masks
from ..hf.trainer import SparseTrainer
from ..hf.trainer import last_complete_checkpoint as hf_last_complete_checkpoint
from ..methods import ACDC, GMP, NM, MaskMethod, RigL, dense_masks
from .losses import LossWeights, distillation_losses

logger = logging.getLogger(__name__)

UPSTREAM_STATE_NAME = "upstream_state.json"


# --------------------------------------------------------------------------------------------- methods
def build_method(args, student: nn.Module) -> MaskMethod:
    """The mask method of an upstream run (``args`` is an :class:`~sparse_transfer.upstream.UpstreamArguments`),
    over all-True masks on ``args.targets`` of ``student``; every length is in optimizer steps."""
    masks = dense_masks(student, args.targets)
    if args.method == "nm":
        n, m = args.nm_pair
        return NM(masks, n, m, prune_step=args.prune_start_step)
    if args.method == "acdc":
        warmup, phase, final = args.acdc_steps
        # One "epoch" per step: AC/DC's phase lengths are then counted in optimizer steps.
        return ACDC(masks, args.final_sparsity, steps_per_epoch=1, total_epochs=args.max_steps, warmup_epochs=warmup,
                    phase_epochs=phase, final_epochs=final, distribution=args.distribution)
    if args.method == "rigl":
        interval = args.rigl_interval if args.rigl_interval is not None else args.prune_interval
        return RigL.from_model(student, args.final_sparsity, args.max_steps, distribution=args.distribution,
                               targets=args.targets, init="magnitude", update_interval=interval, alpha=args.rigl_alpha,
                               end_fraction=args.rigl_end_fraction)
    return GMP(masks, args.final_sparsity, args.prune_start_step, args.end_step, args.prune_interval,
               args.initial_sparsity, args.distribution)


def describe_method(args) -> str:
    """One sentence on how an upstream run prunes, for the model card."""
    if args.method == "nm":
        return f"N:M {args.nm} magnitude pattern cut once at step {args.prune_start_step}, then held"
    if args.method == "acdc":
        warmup, phase, final = args.acdc_steps
        return (f"AC/DC: {args.distribution} magnitude cuts to {args.final_sparsity:.4g} alternating with dense phases "
                f"(warm-up {warmup}, phases of {phase}, final compressed {final} steps)")
    if args.method == "rigl":
        return (f"RigL at {args.final_sparsity:.4g} ({args.distribution} budget from the magnitude mask at step 0), drop/grow "
                f"every {args.rigl_interval or args.prune_interval} steps until {args.rigl_end_fraction:g} of training")
    return (f"{args.distribution} magnitude pruning on the cubic GMP schedule (sparsity {args.initial_sparsity} -> "
            f"{args.final_sparsity:.4g} from step {args.prune_start_step} to {args.end_step}, every {args.prune_interval} "
            "steps), then a fixed mask")


# --------------------------------------------------------------------------------------------- trainer
def has_mlm_head(model: nn.Module) -> bool:
    """Whether ``model`` produces MLM logits (a ``*ForMaskedLM``-style model with output embeddings)."""
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and get() is not None


class UpstreamTrainer(SparseTrainer):
    """SparseTrainer whose loss is distillation from a frozen dense teacher.

    Args:
        model: The student (a copy of the dense model), trained in place.
        args: :class:`SparseTrainingArguments` with ``unfreeze="none"``.
        teacher: The dense original; kept in eval mode without gradients.
        method: The mask method (:func:`build_method`).
        loss_weights: Which distillation terms, with which weights.
        temperature: Logit KD temperature.
        **kwargs: Passed to ``SparseTrainer`` (datasets, collator, processing_class).
    """

    def __init__(self, model, args, teacher: nn.Module, method: MaskMethod, loss_weights: LossWeights,
                 temperature: float, mlm_probability: float = 0.15, **kwargs):
        super().__init__(model, args, method=method, **kwargs)
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
        self.loss_weights = loss_weights
        self.temperature = temperature
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

    def _write_checkpoint_extras(self, output_dir: str) -> None:
        # Before the checkpoint's other files; the completion marker (written last) lists and fingerprints it.
        state = {
            "global_step": self.state.global_step,
            "recipe_fingerprint": self.recipe_fingerprint,
            "pruning_events": self.method_callback.events,
        }
        write_json_atomic(os.path.join(output_dir, UPSTREAM_STATE_NAME), state)


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
def last_complete_checkpoint(output_dir: str) -> str | None:
    """Newest complete ``checkpoint-N`` folder that also holds :data:`UPSTREAM_STATE_NAME` (a checkpoint of another
    trainer lacks it)."""
    return hf_last_complete_checkpoint(output_dir, requires=UPSTREAM_STATE_NAME)


def remove_checkpoints(output_dir: str) -> None:
    for name in os.listdir(output_dir):
        if name.startswith("checkpoint-"):
            shutil.rmtree(os.path.join(output_dir, name), ignore_errors=True)


__all__ = [
    "UpstreamTrainer",
    "build_method",
    "describe_method",
    "evaluate_student",
    "has_mlm_head",
    "last_complete_checkpoint",
    "magnitude_prune_",
    "mean_pooled_embeddings",
]
