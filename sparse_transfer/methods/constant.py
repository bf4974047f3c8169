"""Constant: a fixed mask, enforced on every optimizer step.

How to use:
    >>> masks = SparseMasks.from_zeros(model, targets="cnn")   # the zeros of a sparse checkpoint
    >>> method = Constant(masks)
    >>> method.attach(optimizer)                                # pruned weights stay exactly 0
    >>> ... loss.backward(); method.step(step, optimizer); optimizer.step()

Suggested hyperparameters:
    None: the mask comes from the sparse model being fine-tuned (``from_zeros``) or from a magnitude cut.

Technical details:
    Gradients of pruned weights are zeroed before each step and the weights after it, so neither momentum,
    Adam moments nor weight decay can move them. ``step`` does nothing; it exists so that every method is
    driven the same way.

Attribution:
    Standard sparse fine-tuning at a fixed mask, as in Kuznedelev et al., "Accurate Neural Network Pruning
    Requires Rethinking Sparse Optimization" (TMLR 2024).
"""

from __future__ import annotations

from typing import Any

import torch

from ..core import SparseMasks
from ._base import MaskMethod


class Constant(MaskMethod):
    """A fixed mask.

    Args:
        masks: Masks bound to the model.
    """

    def __init__(self, masks: SparseMasks):
        super().__init__(masks, active=True)

    def schedule(self, step: int, optimizer: torch.optim.Optimizer | None = None) -> dict[str, Any] | None:
        return None
