"""AC/DC: alternating compressed / decompressed training (and AC/DC++, the same on a longer, modern recipe).

How to use:
    >>> method = ACDC(dense_masks(model, "cnn-fld"), sparsity=0.95, steps_per_epoch=len(loader),
    ...               total_epochs=100, distribution="uniform")
    >>> method.attach(optimizer)
    >>> for step, batch in enumerate(batches):          # step counts optimizer steps over the whole run
    ...     method.begin_step(step)                     # a decompression step keeps its dense gradient
    ...     loss_fn(model(batch)).backward()
    ...     method.step(step, optimizer)                # compresses / decompresses at phase boundaries
    ...     optimizer.step(); optimizer.zero_grad()

Suggested hyperparameters:
    100 epochs (1x): ``warmup_epochs=10, phase_epochs=5, final_epochs=15`` (compressed at 10, 20, ..., 70,
    decompressed at 15, 25, ..., 75, the last decompressed phase 75-85, final compressed 85-100). Longer runs
    (AC/DC++ 2.5x, 5x, 10x) keep these lengths and add cycles. Global magnitude, or uniform with the first and
    last layer dense (targets ``"cnn-fld"``). ``decompressed_sparsity`` up to 0.8 costs nothing at 0.95.

Technical details:
    ``acdc_phase(epoch, ...)`` is the pure schedule. At the first step of a compressed phase the mask is
    recomputed from the current weights (magnitude, ``distribution``) and imposed on weights and optimizer
    state. At the first step of a decompressed phase the mask is released: pruned weights restart at exactly
    0 (they were 0 under the mask), that step's gradient is left dense (:meth:`needs_dense_grad`) so they train
    on their real gradient from that step on, and, by default, every SGD momentum buffer is zeroed. With
    ``decompressed_sparsity`` > 0, one dense step is taken and then a magnitude mask at that sparsity is
    imposed for the rest of the phase (our reading of the paper's "minimum sparsity during decompression").

Attribution:
    Peste, Iofinova, Vladu, Alistarh, "AC/DC: Alternating Compressed/DeCompressed Training of Deep Neural
    Networks" (NeurIPS 2021); AC/DC++ from Kuznedelev et al. (TMLR 2024).
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch

from ..core import SparseMasks, compute_masks, validate_sparsity
from ._base import MaskMethod, zero_momentum_

PHASES = ("warmup", "compressed", "decompressed", "final")


def acdc_phase(epoch: float, total_epochs: float, warmup_epochs: float = 10, phase_epochs: float = 5, final_epochs: float = 15) -> str:
    """The AC/DC phase at ``epoch`` (fractional epochs allowed): ``"warmup"`` (dense), ``"compressed"``,
    ``"decompressed"`` or ``"final"`` (compressed fine-tune to the end).

    Compressed phases start at ``warmup + 2k * phase`` and last ``phase`` epochs, each followed by a
    decompressed phase; a compression is scheduled only if some decompressed time follows it before the
    final phase, so the last decompressed phase runs up to ``total - final`` (75-85 for the 100-epoch run).
    """
    _check_schedule(total_epochs, warmup_epochs, phase_epochs, final_epochs)
    final_start = total_epochs - final_epochs
    if epoch < warmup_epochs:
        return "warmup"
    if epoch >= final_start:
        return "final"
    cycle = math.floor((epoch - warmup_epochs) / (2 * phase_epochs))
    cycle_start = warmup_epochs + 2 * phase_epochs * cycle
    if epoch < cycle_start + phase_epochs and cycle_start + phase_epochs < final_start:
        return "compressed"
    return "decompressed"


def acdc_boundaries(total_epochs: int, warmup_epochs: int = 10, phase_epochs: int = 5, final_epochs: int = 15) -> list[tuple[int, str]]:
    """``(epoch, phase)`` at each integer epoch where the phase changes, starting with ``(0, "warmup")``."""
    out: list[tuple[int, str]] = []
    for epoch in range(int(total_epochs)):
        phase = acdc_phase(epoch, total_epochs, warmup_epochs, phase_epochs, final_epochs)
        if not out or out[-1][1] != phase:
            out.append((epoch, phase))
    return out


def _number(value) -> int | float:
    """``value`` as a plain Python ``int`` if it is a whole number of that type (numpy's too), else a ``float``."""
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _check_schedule(total, warmup, phase, final) -> None:
    if phase <= 0:
        raise ValueError(f"AC/DC phase_epochs must be positive, got {phase}.")
    if warmup < 0 or final <= 0:
        raise ValueError(f"AC/DC needs warmup_epochs >= 0 and final_epochs > 0, got {warmup} and {final}.")
    if warmup + 2 * phase + final > total:
        raise ValueError(
            f"AC/DC schedule is longer than training: warm-up {warmup} + one compressed/decompressed cycle "
            f"{2 * phase} + final {final} epochs > total_epochs={total}. Train longer or shorten the phases."
        )


class ACDC(MaskMethod):
    """Alternating compressed / decompressed training.

    Args:
        masks: Masks bound to the model (their values are replaced at the first compression).
        sparsity: Sparsity of the compressed phases.
        steps_per_epoch: Optimizer steps per epoch (turns step indices into epochs).
        total_epochs: Length of training in epochs.
        warmup_epochs: Dense warm-up.
        phase_epochs: Length of each compressed and decompressed phase.
        final_epochs: Length of the final compressed fine-tune.
        distribution: ``"global"`` or ``"uniform"`` (or ``"erk"``) magnitude cut at each compression.
        decompressed_sparsity: Minimum sparsity kept during decompressed phases (0 = fully dense).
        reset_momentum: Zero all SGD momentum buffers right after each decompression.
    """

    settings_names = ("sparsity_target", "decompressed_sparsity", "steps_per_epoch", "total_epochs", "warmup_epochs",
                      "phase_epochs", "final_epochs", "distribution", "reset_momentum")

    def __init__(
        self,
        masks: SparseMasks,
        sparsity: float,
        steps_per_epoch: int,
        total_epochs: int,
        warmup_epochs: int = 10,
        phase_epochs: int = 5,
        final_epochs: int = 15,
        distribution: str = "global",
        decompressed_sparsity: float = 0.0,
        reset_momentum: bool = True,
    ):
        super().__init__(masks, active=False)
        self.sparsity_target = validate_sparsity(sparsity)
        self.decompressed_sparsity = validate_sparsity(decompressed_sparsity, "decompressed_sparsity")
        if self.decompressed_sparsity > self.sparsity_target:
            raise ValueError(
                f"decompressed_sparsity ({decompressed_sparsity}) must not exceed the compressed sparsity ({sparsity})."
            )
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}.")
        _check_schedule(total_epochs, warmup_epochs, phase_epochs, final_epochs)
        self.steps_per_epoch = int(steps_per_epoch)
        # Plain Python numbers: the state (settings included) is read back with torch.load(weights_only=True).
        # (Fractional epochs are allowed: an int stays an int, anything else becomes a float.)
        self.total_epochs, self.warmup_epochs = _number(total_epochs), _number(warmup_epochs)
        self.phase_epochs, self.final_epochs = _number(phase_epochs), _number(final_epochs)
        self.distribution = str(distribution)
        self.reset_momentum = bool(reset_momentum)
        self.phase = "warmup"
        self._pending_min_mask = False  # decompressed with a minimum sparsity: cut after the first dense step

    def phase_at(self, step: int) -> str:
        return acdc_phase(step / self.steps_per_epoch, self.total_epochs, self.warmup_epochs, self.phase_epochs, self.final_epochs)

    def needs_dense_grad(self, step: int) -> bool:
        """At the first step of a decompressed phase the released weights train on their real gradient."""
        return step > 0 and self.phase_at(step) == "decompressed" and self.phase_at(step - 1) != "decompressed"

    def describe(self) -> dict[str, Any]:
        return dict(super().describe(), phase=self.phase, compressed=int(self.compressed))

    @property
    def compressed(self) -> bool:
        return self.phase in ("compressed", "final")

    @torch.no_grad()
    def schedule(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        phase = self.phase_at(step)
        if self._pending_min_mask and phase == "decompressed":
            self._pending_min_mask = False
            new = compute_masks(self.magnitude_scores(), self.decompressed_sparsity, self.distribution)
            self.active = True
            self.masks.update_(new, optimizer)
        if phase == self.phase:
            return None
        previous, self.phase = self.phase, phase
        if phase in ("compressed", "final") and previous not in ("compressed", "final"):
            new = compute_masks(self.magnitude_scores(), self.sparsity_target, self.distribution)
            self._impose(new, optimizer)
            return {"event": "compress", "step": step, "phase": phase, "sparsity": self.masks.sparsity(), "iou": self.last_iou}
        if phase == "decompressed":
            self.masks.apply_()  # pruned weights restart from exactly 0
            self.active = False
            self._pending_min_mask = self.decompressed_sparsity > 0
            if self.reset_momentum and optimizer is not None:
                zero_momentum_(optimizer)
            return {"event": "decompress", "step": step, "phase": phase}
        return {"event": "phase", "step": step, "phase": phase}

    def state_dict(self) -> dict[str, Any]:
        return dict(super().state_dict(), phase=self.phase, pending_min_mask=self._pending_min_mask)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        super().load_state_dict(state)
        self.phase = state["phase"]
        self._pending_min_mask = bool(state["pending_min_mask"])
