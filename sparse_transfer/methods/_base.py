"""What every mask-update method shares: a :class:`SparseMasks` that is enforced only while a mask is imposed.

The loop contract, the same for every method and every loop (the vision loop, the Trainer adapter in
:mod:`sparse_transfer.hf.trainer`, the upstream pruning command, a user's own loop)::

    method.attach(optimizer)              # once: the engine's gradient hooks and post-step weight hook
    for step, batch in enumerate(loader): # step = index (from 0) of the optimizer step about to be taken
        method.begin_step(step)           # optional: tells the gradient hooks whether this step needs dense gradients
        loss = model(batch).backward()    # gradient hooks mask pruned coordinates (unless this step needs them dense)
        method.step(step, optimizer)      # the schedule: prune, compress, decompress, drop/grow; masks the gradients
                                          # it read dense. Before clipping: clipping sees the applied gradient
        optimizer.step()                  # post-hook zeroes pruned weights
        optimizer.zero_grad()

Enforcement has one path, the engine's (:class:`~sparse_transfer.core.SparseMasks`): a method only decides what
the mask is and whether it is imposed (``active`` is ``masks.enforcing``). ``step`` also prepares the next step, so
a loop that never calls ``begin_step`` still gets dense gradients where a method needs them, except on the first
step after a resume: there, a step that needs them and did not get them is an error naming the fix, never a silent
growth from zeros. Methods hold no reference to the loop; their whole mutable state is in ``state_dict()``, so a
resumed run continues bit for bit.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from ..core import SparseMasks, TargetSpec, select_targets
from ..core.masks import _local_mask, is_dtensor, local_tensor, nonfinite_names


def dense_masks(model: nn.Module, targets: TargetSpec | str | None = None) -> SparseMasks:
    """All-``True`` masks over ``model``'s targets, bound to it (a method's starting point before any pruning).

    On a model still on the meta device the masks are made on the CPU, so they survive ``to_empty``."""
    params = select_targets(model, targets)
    return SparseMasks(
        {name: torch.ones(p.shape, dtype=torch.bool, device="cpu" if p.is_meta else p.device) for name, p in params.items()},
        model,
    )


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
    """Zeroes every per-weight optimizer state tensor of ``param`` at the boolean ``positions`` (full shape)."""
    optimizer = inner_optimizer(optimizer)
    for value in optimizer.state.get(param, {}).values():
        if isinstance(value, Tensor) and value.shape == positions.shape:
            local_tensor(value).masked_fill_(_local_mask(positions, param).to(value.device), 0)


def full_tensor(tensor: Tensor) -> Tensor:
    """``tensor`` as one full tensor: an FSDP2-sharded DTensor is gathered (every rank must call this)."""
    return tensor.full_tensor() if is_dtensor(tensor) else tensor


class MaskMethod:
    """Base class: owns ``masks`` and whether they are imposed (``active``); subclasses implement :meth:`schedule`.

    Args:
        masks: Masks bound to the model being trained.
        active: Whether the masks are imposed from the start.
    """

    #: The attributes that define the method's schedule: a checkpoint resumes only under the same values.
    settings_names: tuple[str, ...] = ()

    def __init__(self, masks: SparseMasks, active: bool):
        if not masks.params:
            raise ValueError("The masks must be bound to the model being trained: SparseMasks(..., model) or masks.bind(model).")
        self.masks = masks
        self.active = active
        self.last_iou: float | None = None  # IoU of the latest new mask with the one before it
        self._reference: dict[str, Tensor] | None = None  # the mask the next IoU compares against

    @property
    def active(self) -> bool:
        """Whether the mask is imposed (the engine enforces it); ``False`` while the method trains dense."""
        return self.masks.enforcing

    @active.setter
    def active(self, value: bool) -> None:
        self.masks.enforcing = bool(value)

    # ------------------------------------------------------------------------------------ the loop contract
    def attach(self, optimizer: torch.optim.Optimizer):
        """Attaches the engine's enforcement to ``optimizer`` (see :meth:`SparseMasks.attach`); returns its handle."""
        return self.masks.attach(optimizer)

    def begin_step(self, step: int) -> None:
        """Call before the forward pass of optimizer step ``step``: the gradient hooks keep this step's gradients
        dense if :meth:`step` will read them (:meth:`needs_dense_grad`), and mask them as they accumulate otherwise."""
        self.masks.keep_dense_grads = self.needs_dense_grad(step)
        self.masks.grads_masked_in_backward = False

    @torch.no_grad()
    def step(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """Runs the schedule for optimizer step ``step`` after its backward and before clipping and the optimizer
        step; returns a dict describing any mask event, else None."""
        if (
            self.needs_dense_grad(step)
            and self.active
            and not self.masks.keep_dense_grads
            and self.masks.grads_masked_in_backward
        ):
            raise RuntimeError(
                f"{type(self).__name__} reads the dense gradient at step {step}, but the gradient hooks already masked "
                f"it during backward: call method.begin_step({step}) before the forward pass of that step (step() "
                "prepares the next step itself, so this is only needed on the first step after a resume)."
            )
        if self.masks.keep_dense_grads and self.active:
            self.masks.zero_nonfinite_pruned_grads_()  # an overflow at a pruned coordinate is never grown or released
        event = self.schedule(step, optimizer)
        if self.masks.keep_dense_grads and self.active:
            self.masks.mask_grads_()  # read dense; from here on clipping and the optimizer see the applied gradient
        self.begin_step(step + 1)
        return event

    def schedule(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        """The method's own schedule at ``step`` (prune, compress, decompress, drop/grow); see :meth:`step`."""
        raise NotImplementedError

    def needs_dense_grad(self, step: int) -> bool:
        """Whether :meth:`step` reads the gradient of pruned weights at ``step`` (RigL on update steps, AC/DC at a
        decompression). The gradient hooks leave those steps' gradients dense until :meth:`step` has run."""
        return False

    def describe(self) -> dict[str, Any]:
        """What a loop logs about the method's state beside the sparsity (e.g. AC/DC's phase)."""
        return {"mask_active": self.active}

    @property
    def reference_mask(self) -> dict[str, Tensor] | None:
        """The latest mask computed by the method (AC/DC: the last compression, kept while decompressed)."""
        return self._reference

    # ------------------------------------------------------------------------------------------ helpers
    def _impose(self, new_masks: dict[str, Tensor], optimizer: torch.optim.Optimizer | None) -> None:
        """Imposes ``new_masks`` (weights, gradients and optimizer state) and records the IoU with the last one."""
        new_masks = {name: m.to(self.masks[name].device) for name, m in new_masks.items()}
        if self._reference is not None:
            self.last_iou = SparseMasks(self._reference).iou(SparseMasks(new_masks))
        self._reference = {name: m.clone() for name, m in new_masks.items()}
        self.active = True
        self.masks.update_(new_masks, inner_optimizer(optimizer) if optimizer is not None else None)

    def magnitude_scores(self) -> dict[str, Tensor]:
        """``|w|`` of every masked weight, as full tensors (gathered when sharded).

        Raises:
            TrainingStopped: if a weight is NaN or inf: a mask ranked by magnitude would keep it as the largest.
        """
        from .._cli import TrainingStopped

        scores = {name: full_tensor(p.detach()).abs() for name, p in self.masks.params.items()}
        bad = nonfinite_names(scores)
        if bad:
            raise TrainingStopped(
                f"{type(self).__name__} cannot rank weights by magnitude: {len(bad)} target(s) hold NaN or inf (e.g. "
                f"{bad[0]}). Training diverged: try a lower learning_rate, a max_grad_norm or bf16 instead of fp16; "
                "then resume from the last checkpoint."
            )
        return scores

    def sparsity(self) -> float:
        """Sparsity of the imposed mask (0.0 while no mask is imposed)."""
        return self.masks.sparsity() if self.active else 0.0

    # -------------------------------------------------------------------------------------------- state
    def settings(self) -> dict[str, Any]:
        """The method's schedule settings (:attr:`settings_names`), as saved with its state."""
        return {name: getattr(self, name) for name in self.settings_names}

    def state_dict(self) -> dict[str, Any]:
        return {
            "method": type(self).__name__,
            "settings": self.settings(),
            "masks": self.masks.state_dict(),
            "active": self.active,
            "last_iou": self.last_iou,
            "reference": None if self._reference is None else {n: m.cpu().clone() for n, m in self._reference.items()},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("method", type(self).__name__)
        if saved != type(self).__name__:
            raise ValueError(f"This state was saved by {saved}, not {type(self).__name__}: resume with the same method.")
        saved_settings = state.get("settings")  # absent from states saved before it was recorded
        if saved_settings is not None and saved_settings != self.settings():
            changed = ", ".join(f"{k}={saved_settings.get(k)!r} there, {v!r} here" for k, v in self.settings().items()
                                if saved_settings.get(k) != v)
            raise ValueError(
                f"This state was saved by {saved} with other settings ({changed}): resuming would go on under another "
                "schedule than the one the run followed. Resume with the same settings, or train in another output "
                "folder."
            )
        self.active = bool(state["active"])
        self.masks.load_state_dict(state["masks"])  # applied only while active: released masks keep the weights
        self.last_iou = state["last_iou"]
        ref = state["reference"]
        self._reference = None if ref is None else {n: m.to(self.masks[n].device).clone() for n, m in ref.items()}
