"""What every mask-update method shares: a :class:`SparseMasks` that is enforced only while a mask is imposed.

The loop contract, the same for every method::

    method.attach(optimizer)              # once: grad mask before, weight mask after each step (while imposed)
    for step, batch in enumerate(loader):
        loss = model(batch).backward()
        method.step(step, optimizer)      # schedule: prune, compress, decompress, drop/grow (dense grads here)
        optimizer.step()                  # pre-hook masks grads, post-hook zeroes pruned weights
        optimizer.zero_grad()

``step`` is the index (from 0) of the optimizer step about to be taken. Methods hold no reference to the loop;
their whole mutable state is in ``state_dict()``, so a resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core import SparseMasks, TargetSpec, select_targets


def dense_masks(model: nn.Module, targets: TargetSpec | str | None = None) -> SparseMasks:
    """All-``True`` masks over ``model``'s targets, bound to it (a method's starting point before any pruning)."""
    params = select_targets(model, targets)
    return SparseMasks({name: torch.ones_like(p, dtype=torch.bool) for name, p in params.items()}, model)


def inner_optimizer(optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
    """The wrapped optimizer of accelerate's ``AcceleratedOptimizer`` (or the optimizer itself)."""
    return getattr(optimizer, "optimizer", optimizer)


@torch.no_grad()
def zero_momentum_(optimizer: torch.optim.Optimizer, params: list[Tensor] | None = None) -> None:
    """Zeroes SGD momentum buffers (all parameters of ``optimizer``, or only ``params``)."""
    optimizer = inner_optimizer(optimizer)
    wanted = None if params is None else {id(p) for p in params}
    for group in optimizer.param_groups:
        for p in group["params"]:
            if wanted is not None and id(p) not in wanted:
                continue
            buf = optimizer.state.get(p, {}).get("momentum_buffer")
            if isinstance(buf, Tensor):
                buf.zero_()


@torch.no_grad()
def zero_state_at_(optimizer: torch.optim.Optimizer, param: Tensor, positions: Tensor) -> None:
    """Zeroes every per-weight optimizer state tensor of ``param`` at the boolean ``positions``."""
    optimizer = inner_optimizer(optimizer)
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == positions.shape:
            value.masked_fill_(positions, 0)


class _Handles:
    def __init__(self, handles):
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class MaskMethod:
    """Base class: owns ``masks`` and whether they are imposed (``active``); subclasses implement :meth:`step`.

    Args:
        masks: Masks bound to the model being trained.
        active: Whether the masks are imposed from the start.
    """

    def __init__(self, masks: SparseMasks, active: bool):
        if not masks.params:
            raise ValueError("The masks must be bound to the model being trained: SparseMasks(..., model) or masks.bind(model).")
        self.masks = masks
        self.active = active
        self.last_iou: float | None = None  # IoU of the latest new mask with the one before it
        self._reference: dict[str, Tensor] | None = None  # the mask the next IoU compares against

    # ------------------------------------------------------------------------------------ enforcement
    def attach(self, optimizer: torch.optim.Optimizer) -> _Handles:
        """Registers the grad-mask pre-step hook and weight-mask post-step hook; both act only while active."""
        inner = inner_optimizer(optimizer)
        if self.active:
            self.masks.apply_()
            self.masks.mask_optimizer_state_(inner)

        # The engine's hooks multiply by uint8 views of the bool masks: as fast as float masks, 1 byte per weight.
        def pre(*_):
            if self.active:
                self.masks.mask_grads_()

        def post(*_):
            if self.active:
                self.masks.apply_()

        return _Handles([inner.register_step_pre_hook(pre), inner.register_step_post_hook(post)])

    def step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """Runs the schedule for optimizer step ``step``; returns a dict describing any mask event, else None."""
        raise NotImplementedError

    def needs_dense_grad(self, step: int) -> bool:
        """Whether :meth:`step` reads the gradient of pruned weights at ``step`` (only RigL, on update steps).

        A loop that cannot provide that gradient on other steps (e.g. one that masks gradients inside backward)
        only has to provide it when this is True.
        """
        return False

    @property
    def reference_mask(self) -> dict[str, Tensor] | None:
        """The latest mask computed by the method (AC/DC: the last compression, kept while decompressed)."""
        return self._reference

    # ------------------------------------------------------------------------------------------ helpers
    def _impose(self, new_masks: dict[str, Tensor], optimizer: torch.optim.Optimizer | None) -> None:
        """Imposes ``new_masks`` (weights, and optimizer state if given) and records the IoU with the last one."""
        new_masks = {name: m.to(self.masks[name].device) for name, m in new_masks.items()}
        if self._reference is not None:
            self.last_iou = SparseMasks(self._reference).iou(SparseMasks(new_masks))
        self._reference = {name: m.clone() for name, m in new_masks.items()}
        self.masks.update_(new_masks, inner_optimizer(optimizer) if optimizer is not None else None)
        self.active = True

    def magnitude_scores(self) -> dict[str, Tensor]:
        return {name: p.detach().abs() for name, p in self.masks.params.items()}

    def sparsity(self) -> float:
        """Sparsity of the imposed mask (0.0 while no mask is imposed)."""
        return self.masks.sparsity() if self.active else 0.0

    # -------------------------------------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {
            "masks": self.masks.state_dict(),
            "active": self.active,
            "last_iou": self.last_iou,
            "reference": None if self._reference is None else {n: m.cpu().clone() for n, m in self._reference.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.active = bool(state["active"])
        if self.active:
            self.masks.load_state_dict(state["masks"])
        else:  # masks released: keep the stored values without zeroing weights
            for name, mask in state["masks"].items():
                self.masks[name].copy_(mask)
        self.last_iou = state["last_iou"]
        ref = state["reference"]
        self._reference = None if ref is None else {n: m.to(self.masks[n].device).clone() for n, m in ref.items()}
