"""N:M one-shot: an N-of-M magnitude pattern cut once, then training at that fixed mask.

How to use:
    >>> method = NM(dense_masks(model, "bert"), n=2, m=4, prune_step=0)
    >>> method.attach(optimizer)
    >>> ... loss.backward(); method.step(step, optimizer); optimizer.step()

Suggested hyperparameters:
    ``2:4`` (50%, the pattern NVIDIA's sparse tensor cores run) cut at the first step, then recovery by the loop's
    own loss (distillation upstream). ``prune_step > 0`` trains dense first.

Technical details:
    N:M has no intermediate sparsities (a group keeps N of M or is unconstrained), so the cubic schedule of GMP does
    not apply: the pattern is cut at ``prune_step`` from the current ``|w|`` (in groups of ``m`` consecutive weights
    along the input dimension, see :func:`~sparse_transfer.core.nm_mask`) and held to the end.

Attribution:
    Mishra et al., "Accelerating Sparse Deep Neural Networks" (2021); Zhou et al., "Learning N:M Fine-grained
    Structured Sparse Neural Networks From Scratch" (ICLR 2021).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import SparseMasks, compute_masks
from ._base import MaskMethod


class NM(MaskMethod):
    """One-shot N:M pruning at ``prune_step``, fixed afterwards.

    Args:
        masks: Masks bound to the model (all ``True`` for a dense start: :func:`dense_masks`).
        n: Weights kept in each group.
        m: Group size.
        prune_step: The optimizer step at which the pattern is cut.
    """

    settings_names = ("n", "m", "prune_step")

    def __init__(self, masks: SparseMasks, n: int, m: int, prune_step: int = 0):
        super().__init__(masks, active=False)
        if not 0 < n < m:
            raise ValueError(f"N:M pruning needs 0 < N < M, got {n}:{m}.")
        if prune_step < 0:
            raise ValueError(f"prune_step must be >= 0, got {prune_step}.")
        self.n, self.m, self.prune_step = int(n), int(m), int(prune_step)

    @property
    def final_sparsity(self) -> float:
        return 1.0 - self.n / self.m

    def is_update_step(self, step: int) -> bool:
        return step == self.prune_step

    @torch.no_grad()
    def schedule(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        if not self.is_update_step(step):
            return None
        self._impose(compute_masks(self.magnitude_scores(), None, "nm", n=self.n, m=self.m), optimizer)
        return {"event": "prune", "step": step, "sparsity": self.masks.sparsity(), "iou": self.last_iou}
