"""RigL: sparse from the start, with periodic drop-by-magnitude / grow-by-gradient mask updates.

How to use:
    >>> method = RigL.from_model(model, sparsity=0.9, total_steps=steps, distribution="erk", targets="cnn-fld")
    >>> method.attach(optimizer)
    >>> for step, batch in enumerate(loader):
    ...     method.begin_step(step)                 # update steps keep the dense gradient (pruned coordinates too)
    ...     loss_fn(model(batch)).backward()        # other steps: gradients masked as they accumulate
    ...     method.step(step, optimizer)            # on update steps, reads the dense gradient, drops/grows, masks it
    ...     optimizer.step(); optimizer.zero_grad() # post-hook zeroes the pruned weights

Suggested hyperparameters:
    ``update_interval`` (dT) = 100 steps, ``alpha`` = 0.3, ``end_fraction`` = 0.75 (updates stop at 75% of
    training), ERK distribution with a random initial mask. For extended training scale the steps, the LR
    schedule and ``total_steps`` together (``end_fraction`` stays a fraction).

Technical details:
    The mask is imposed from step 0 at the target sparsity. At update step ``t`` (``t % dT == 0``, ``0 < t <
    T_end``) every layer drops ``round(f(t) * n_active)`` of its active weights with the smallest ``|w|``,
    ``f(t) = alpha/2 (1 + cos(pi t / T_end))`` (:func:`rigl_drop_fraction`), and grows the same number of
    positions, among those not active after the drop, with the largest ``|dense gradient|``. The number of
    non-zeros of every layer stays constant. Grown weights start at exactly 0 and their optimizer state
    (momentum, Adam moments) is zeroed. The dense gradient is read only on update steps
    (:meth:`needs_dense_grad`): on those steps the engine's gradient hooks leave the gradient dense and ``step`` masks
    it after the drop/grow (before clipping); on every other step the hooks zero the pruned coordinates as backward
    accumulates them and ``step`` returns without touching any gradient. With dense weight tensors,
    autograd's convolution and matmul backward produce the full weight gradient on every step anyway (a
    masked gradient is not cheaper to compute), so the dense gradient adds no backward cost: what update steps
    add is the drop/grow top-k, measured in ``benchmarks/vision_step_time.py``. Under DDP the gradient is
    already all-reduced, so every rank computes the same mask. A NaN or inf at a pruned coordinate of the dense
    gradient is set to 0 before growth (never grown); a frozen parameter (gradual unfreezing) or one without a
    gradient on that step keeps its mask.

Attribution:
    Evci, Gale, Menick, Castro, Elsen, "Rigging the Lottery: Making All Tickets Winners" (ICML 2020).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from ..core import SparseMasks, TargetSpec, compute_masks, validate_sparsity
from ..core.masks import _local_mask, local_tensor, magnitudes
from ._base import MaskMethod, dense_masks, full_tensor, zero_state_at_


def rigl_drop_fraction(step: int, alpha: float, end_step: int) -> float:
    """Cosine-decayed drop fraction ``alpha/2 (1 + cos(pi step / end_step))``; 0 from ``end_step`` on."""
    if end_step <= 0:
        raise ValueError(f"RigL end_step must be positive, got {end_step}.")
    if step >= end_step:
        return 0.0
    return alpha / 2 * (1 + math.cos(math.pi * step / end_step))


def rigl_is_update_step(step: int, interval: int, end_step: int) -> bool:
    """RigL updates every ``interval`` steps, strictly after step 0 and strictly before ``end_step``."""
    if interval <= 0:
        raise ValueError(f"RigL update interval must be a positive number of steps, got {interval}.")
    return 0 < step < end_step and step % interval == 0


class RigL(MaskMethod):
    """Rigging the Lottery.

    Args:
        masks: Masks bound to the model at the target sparsity (see :meth:`from_model`).
        total_steps: Optimizer steps of the whole run.
        update_interval: Steps between mask updates (dT).
        alpha: Initial drop fraction.
        end_fraction: Updates stop at ``end_fraction * total_steps`` (T_end).
    """

    settings_names = ("total_steps", "update_interval", "alpha", "end_step")

    def __init__(self, masks: SparseMasks, total_steps: int, update_interval: int = 100, alpha: float = 0.3, end_fraction: float = 0.75):
        super().__init__(masks, active=True)
        if total_steps <= 0:
            raise ValueError(f"total_steps must be positive, got {total_steps}.")
        if not 0 < end_fraction <= 1:
            raise ValueError(f"RigL end_fraction must be in (0, 1], got {end_fraction}.")
        if not 0 <= alpha <= 1:
            raise ValueError(f"RigL alpha (drop fraction) must be in [0, 1], got {alpha}.")
        if update_interval <= 0:
            raise ValueError(f"RigL update interval must be a positive number of steps, got {update_interval}.")
        self.total_steps, self.update_interval, self.alpha = int(total_steps), int(update_interval), float(alpha)
        self.end_step = max(1, int(end_fraction * total_steps))
        self._reference = {name: m.clone() for name, m in masks.items()}

    @classmethod
    def from_model(
        cls,
        model: nn.Module,
        sparsity: float,
        total_steps: int,
        distribution: str = "erk",
        targets: TargetSpec | str | None = None,
        init: str = "random",
        seed: int = 0,
        **kwargs,
    ) -> RigL:
        """Builds the initial mask at ``sparsity``: per-layer budgets from ``distribution``, positions either
        random (``init="random"``, as RigL does; a seeded generator, so every rank draws the same) or by
        ``|w|`` (``init="magnitude"``)."""
        validate_sparsity(sparsity)
        if init not in ("random", "magnitude"):
            raise ValueError(f"RigL init must be 'random' or 'magnitude', got {init!r}.")
        masks = dense_masks(model, targets)
        if init == "magnitude":
            scores = magnitudes(masks.params)
        else:
            gen = torch.Generator().manual_seed(seed)
            scores = {name: torch.rand(p.shape, generator=gen) for name, p in masks.params.items()}
        masks.update_(compute_masks(scores, sparsity, distribution))
        return cls(masks, total_steps, **kwargs)

    def is_update_step(self, step: int) -> bool:
        return rigl_is_update_step(step, self.update_interval, self.end_step)

    def needs_dense_grad(self, step: int) -> bool:
        return self.is_update_step(step)

    @torch.no_grad()
    def schedule(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        if not self.is_update_step(step):
            return None
        fraction = rigl_drop_fraction(step, self.alpha, self.end_step)
        trainable = [p for p in self.masks.params.values() if p.requires_grad]
        if trainable and all(p.grad is None for p in trainable):
            raise RuntimeError(
                "RigL needs the dense gradient on update steps, and no masked parameter has one: call step() after "
                "backward() (and begin_step() before the forward pass)."
            )
        new_masks, grown_at = {}, {}
        for name, param in self.masks.params.items():
            mask = self.masks[name]
            if not param.requires_grad or param.grad is None:
                # Frozen (gradual unfreezing; a left-over zero .grad does not count) or unused this step: no gradient
                # to grow by, so its mask stays.
                new_masks[name] = mask.clone()
                continue
            weight, grad = full_tensor(param.detach()), full_tensor(param.grad.detach())
            n_active = int(mask.sum())
            n_drop = int(round(fraction * n_active))
            if n_drop == 0 or n_active == mask.numel():
                new_masks[name] = mask.clone()
                continue
            flat_mask = mask.reshape(-1)
            # Drop: the n_drop active weights of smallest magnitude.
            drop_scores = torch.where(flat_mask, weight.abs().reshape(-1), torch.full_like(flat_mask, float("inf"), dtype=weight.dtype))
            drop_idx = torch.topk(drop_scores.float(), n_drop, largest=False, sorted=False).indices
            after_drop = flat_mask.clone()
            after_drop[drop_idx] = False
            # Grow: among positions inactive after the drop, the n_drop largest |dense gradient|.
            grow_scores = torch.where(after_drop, torch.full_like(flat_mask, -1.0, dtype=torch.float32), grad.abs().reshape(-1).float())
            grow_idx = torch.topk(grow_scores, n_drop, largest=True, sorted=False).indices
            new = after_drop.clone()
            new[grow_idx] = True
            grown = torch.zeros_like(flat_mask)
            grown[grow_idx] = True
            new_masks[name] = new.view_as(mask)
            grown_at[name] = grown.view_as(mask)
        self._impose(new_masks, optimizer)
        # Grown weights start at 0 (a dropped-and-regrown weight restarts too), and so does their state.
        for name, grown in grown_at.items():
            param = self.masks.params[name]
            local_tensor(param.data).masked_fill_(_local_mask(grown, param).to(param.device), 0)
            if optimizer is not None:
                zero_state_at_(optimizer, param, grown)
        return {"event": "drop_grow", "step": step, "fraction": fraction, "sparsity": self.masks.sparsity(), "iou": self.last_iou}
