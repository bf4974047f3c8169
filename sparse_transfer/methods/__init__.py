"""Mask-update methods over the mask engine, plain PyTorch: Constant, GMP, AC/DC, RigL, N:M one-shot.

Each is a small class with ``attach(optimizer)``, ``begin_step(step)`` (before the forward pass), ``step(step,
optimizer)`` (after ``backward()``, before clipping and ``optimizer.step()``) and ``state_dict()`` /
``load_state_dict()``; see :mod:`sparse_transfer.methods._base`. Every loop drives them through that contract.
"""

from ._base import MaskMethod, dense_masks, zero_momentum_
from .acdc import ACDC, acdc_boundaries, acdc_phase
from .constant import Constant
from .gmp import GMP
from .nm import NM
from .rigl import RigL, rigl_drop_fraction, rigl_is_update_step

__all__ = [
    "ACDC",
    "GMP",
    "Constant",
    "MaskMethod",
    "NM",
    "RigL",
    "acdc_boundaries",
    "acdc_phase",
    "dense_masks",
    "rigl_drop_fraction",
    "rigl_is_update_step",
    "zero_momentum_",
]
