"""GMP: gradual magnitude pruning on a cubic schedule, then fine-tuning at a fixed mask.

How to use:
    >>> method = GMP(dense_masks(model, "cnn-fld"), final_sparsity=0.9, start_step=2000, end_step=8000, interval=100)
    >>> method.attach(optimizer)
    >>> for step, batch in enumerate(loader):
    ...     loss_fn(model(batch)).backward()
    ...     method.step(step, optimizer)   # prunes on update steps; any loop can call it (e.g. a Trainer callback)
    ...     optimizer.step(); optimizer.zero_grad()

    ``step`` may equally be called between two optimizer steps (e.g. from a callback's ``on_step_end`` with
    the index of the next step): it only reads weights and writes masks.

Suggested hyperparameters:
    From scratch on ImageNet: prune from 20% to 80% of training (the STR config: epochs 20 to 79 of 100),
    every ``interval`` = one epoch's steps or less, initial sparsity 0, ``distribution="global"`` or
    ``"uniform"`` with the first and last layer dense.

Technical details:
    At every update step ``t`` (``start_step <= t <= end_step``, ``(t - start_step) % interval == 0``) the
    sparsity target ``s_t = s_f + (s_i - s_f)(1 - (t - t0)/(t1 - t0))^3`` is met by a fresh magnitude cut over
    the current weights. Pruned weights are already 0, so masks nest: a weight pruned once is never revived.
    The cut is also applied to the optimizer state. After ``end_step`` the mask is fixed. Before the first
    update no mask is imposed and training is dense.

Attribution:
    Zhu & Gupta, "To prune, or not to prune" (2017); the schedule as used in Kuznedelev et al. (TMLR 2024).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import SparseMasks, compute_masks, validate_sparsity
from ..core.schedules import gmp_is_update_step, gmp_sparsity
from ._base import MaskMethod


class GMP(MaskMethod):
    """Gradual magnitude pruning.

    Args:
        masks: Masks bound to the model (all ``True`` for a dense start: :func:`dense_masks`).
        final_sparsity: Target sparsity reached at ``end_step``.
        start_step: First pruning step.
        end_step: Last pruning step (the final sparsity is imposed here at the latest).
        interval: Steps between two pruning steps (``dt``).
        initial_sparsity: Sparsity imposed at ``start_step``.
        distribution: ``"global"``, ``"uniform"`` or ``"erk"`` (see :func:`compute_masks`).
    """

    settings_names = ("final_sparsity", "initial_sparsity", "start_step", "end_step", "interval", "distribution")

    def __init__(
        self,
        masks: SparseMasks,
        final_sparsity: float,
        start_step: int,
        end_step: int,
        interval: int,
        initial_sparsity: float = 0.0,
        distribution: str = "global",
    ):
        super().__init__(masks, active=False)
        self.final_sparsity = validate_sparsity(final_sparsity, "final_sparsity")
        self.initial_sparsity = validate_sparsity(initial_sparsity, "initial_sparsity")
        if start_step < 0 or end_step < start_step:
            raise ValueError(f"GMP needs 0 <= start_step <= end_step, got start_step={start_step}, end_step={end_step}.")
        if interval <= 0:
            raise ValueError(f"GMP interval must be a positive number of steps, got {interval}.")
        self.start_step, self.end_step, self.interval = int(start_step), int(end_step), int(interval)
        self.distribution = str(distribution)

    def is_update_step(self, step: int) -> bool:
        """Pruning steps: the regular grid from ``start_step``, plus ``end_step`` itself (so s_f is always met)."""
        return gmp_is_update_step(step, self.start_step, self.end_step, self.interval) or step == self.end_step

    def target_sparsity(self, step: int) -> float:
        return gmp_sparsity(step, self.initial_sparsity, self.final_sparsity, self.start_step, self.end_step)

    @torch.no_grad()
    def schedule(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        if not self.is_update_step(step):
            return None
        sparsity = self.target_sparsity(step)
        new = compute_masks(self.magnitude_scores(), sparsity, self.distribution)
        self._impose(new, optimizer)
        return {"event": "prune", "step": step, "sparsity": self.masks.sparsity(), "iou": self.last_iou}
