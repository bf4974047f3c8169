"""Distillation losses from the dense original to its pruned copy on unlabeled text.

All terms are means over tokens and blocks, so their scale does not depend on the batch size:

- ``hidden``: for every block ``l`` (not the embeddings, which are not pruned),
  ``||h_s - h_t||^2 / ||h_t||^2`` over the batch (relative squared error), averaged over blocks.
  Relative, because the blocks of a pretrained encoder differ in scale by an order of magnitude and a plain
  MSE would train only the loudest one.
- ``attention``: KL(teacher || student) of every head's attention distribution, per query token, averaged
  over blocks (TinyBERT / MiniLM-style; needs ``attn_implementation="eager"`` to get the probabilities).
- ``logit``: KL(softmax(t / T) || softmax(s / T)) * T^2 of the MLM logits at every position (oBERT).
- ``mlm``: cross-entropy of the student on masked tokens (labels from the MLM collator).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

LOSS_TERMS = ("hidden", "attention", "logit", "mlm")


@dataclass(frozen=True)
class LossWeights:
    hidden: float = 1.0
    attention: float = 0.0
    logit: float = 0.0
    mlm: float = 0.0

    def active(self) -> dict[str, float]:
        return {k: getattr(self, k) for k in LOSS_TERMS if getattr(self, k) > 0}


def hidden_state_loss(student: tuple[Tensor, ...], teacher: tuple[Tensor, ...], mask: Tensor | None = None) -> Tensor:
    """Mean over blocks of the relative squared error of each block's output (index 0, the embeddings, skipped)."""
    losses = []
    for s, t in zip(student[1:], teacher[1:]):
        t = t.detach().to(s.dtype)
        if mask is not None:
            keep = mask.bool()
            s, t = s[keep], t[keep]
        losses.append((s - t).pow(2).sum() / t.pow(2).sum().clamp_min(1e-12))
    return torch.stack(losses).mean()


def attention_loss(student: tuple[Tensor, ...], teacher: tuple[Tensor, ...], mask: Tensor | None = None) -> Tensor:
    """Mean over blocks of KL(teacher || student) of the attention probabilities, per head and query token."""
    losses = []
    for s, t in zip(student, teacher):
        if s is None or t is None:
            raise ValueError(
                "The model returned no attention probabilities: attention_weight > 0 needs eager attention "
                "(the model is loaded with attn_implementation='eager' for that)."
            )
        t = t.detach().to(s.dtype)
        kl = (t * (t.clamp_min(1e-12).log() - s.clamp_min(1e-12).log())).sum(-1)  # [batch, heads, query]
        if mask is not None:
            weights = mask[:, None, :].to(kl.dtype).expand_as(kl)
            losses.append((kl * weights).sum() / weights.sum().clamp_min(1))
        else:
            losses.append(kl.mean())
    return torch.stack(losses).mean()


def logit_loss(student: Tensor, teacher: Tensor, temperature: float, mask: Tensor | None = None) -> Tensor:
    """KL(softmax(t / T) || softmax(s / T)) * T^2 at every (unpadded) position."""
    vocab = student.shape[-1]
    s, t = student.reshape(-1, vocab), teacher.detach().to(student.dtype).reshape(-1, vocab)
    if mask is not None:
        keep = mask.reshape(-1).bool()
        s, t = s[keep], t[keep]
    log_s = F.log_softmax(s / temperature, dim=-1)
    log_t = F.log_softmax(t / temperature, dim=-1)
    return F.kl_div(log_s, log_t, reduction="batchmean", log_target=True) * temperature**2


def distillation_losses(
    student_out,
    teacher_out,
    weights: LossWeights,
    temperature: float,
    attention_mask: Tensor | None = None,
    labels: Tensor | None = None,
) -> tuple[Tensor, dict[str, Tensor]]:
    """The weighted total and each active term (unweighted), from two model outputs of the same input.

    ``student_out`` and ``teacher_out`` are transformers outputs called with ``output_hidden_states=True``
    (and ``output_attentions=True`` when the attention term is on).
    """
    terms: dict[str, Tensor] = {}
    if weights.hidden > 0:
        terms["hidden"] = hidden_state_loss(student_out.hidden_states, teacher_out.hidden_states, attention_mask)
    if weights.attention > 0:
        terms["attention"] = attention_loss(student_out.attentions, teacher_out.attentions, attention_mask)
    if weights.logit > 0:
        terms["logit"] = logit_loss(student_out.logits, teacher_out.logits, temperature, attention_mask)
    if weights.mlm > 0:
        if labels is None:
            raise ValueError("mlm_weight > 0 needs MLM labels in the batch.")
        logits = student_out.logits
        terms["mlm"] = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    total = sum(getattr(weights, name) * value for name, value in terms.items())
    return total, terms
