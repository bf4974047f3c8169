"""Mask computation: how many weights each layer keeps and which ones.

Every function here is pure: it takes tensors (weights or scores) by name and returns boolean masks by
name, ``True`` where a weight is kept. ``sparsity`` is always the fraction of zeros.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

DISTRIBUTIONS = ("global", "uniform", "erk", "nm", "random")


def validate_sparsity(sparsity: float, name: str = "sparsity") -> float:
    """Checks ``0 <= sparsity < 1`` and returns it as a float."""
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)):
        raise TypeError(f"{name} must be a number in [0, 1), got {sparsity!r}.")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(
            f"{name} must be in [0, 1) (the fraction of weights set to zero), got {sparsity}. "
            "For 90% sparsity pass 0.9."
        )
    return float(sparsity)


def num_zeros(numel: int, sparsity: float) -> int:
    """Number of weights a layer of ``numel`` weights prunes at ``sparsity`` (rounded to nearest)."""
    return int(round(sparsity * numel))


def topk_mask(scores: Tensor, n_keep: int) -> Tensor:
    """Boolean mask of the shape of ``scores`` keeping exactly the ``n_keep`` largest entries."""
    flat = scores.reshape(-1)
    mask = torch.zeros(flat.numel(), dtype=torch.bool, device=scores.device)
    if n_keep >= flat.numel():
        mask.fill_(True)
    elif n_keep > 0:
        mask[torch.topk(flat, n_keep, sorted=False).indices] = True
    return mask.view(scores.shape)


def uniform_masks(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """Every layer at the same sparsity, keeping its largest scores."""
    sparsity = validate_sparsity(sparsity)
    return {name: topk_mask(s, s.numel() - num_zeros(s.numel(), sparsity)) for name, s in scores.items()}


def global_masks(scores: Mapping[str, Tensor], sparsity: float) -> dict[str, Tensor]:
    """One threshold across all layers: keeps exactly the ``N - round(sparsity N)`` largest scores overall."""
    sparsity = validate_sparsity(sparsity)
    if not scores:
        return {}
    device = next(iter(scores.values())).device
    flat = torch.cat([s.detach().reshape(-1).float().to(device) for s in scores.values()])
    keep = topk_mask(flat, flat.numel() - num_zeros(flat.numel(), sparsity))
    masks, offset = {}, 0
    for name, s in scores.items():
        masks[name] = keep[offset : offset + s.numel()].view(s.shape).to(s.device)
        offset += s.numel()
    return masks


def erk_densities(
    shapes: Mapping[str, torch.Size | tuple[int, ...]], sparsity: float, power_scale: float = 1.0
) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities (fraction of weights kept) per layer for a global ``sparsity`` budget.

    The density of a layer is ``eps * (sum of its dims / product of its dims) ** power_scale``, with one
    ``eps`` solved so that the kept weights add up to ``(1 - sparsity) * N``. A layer whose density would
    exceed 1 is made dense and ``eps`` is solved again over the rest (Evci et al., RigL, 2020).
    """
    sparsity = validate_sparsity(sparsity)
    numels = {name: int(torch.Size(shape).numel()) for name, shape in shapes.items()}
    raw = {name: (sum(shape) / numels[name]) ** power_scale for name, shape in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = 0.0  # weights the non-dense layers must keep in total
        divisor = 0.0
        for name, n in numels.items():
            if name in dense:
                budget -= n * sparsity
            else:
                budget += n * (1.0 - sparsity)
                divisor += raw[name] * n
        if divisor == 0:
            raise ValueError(f"ERK cannot meet sparsity {sparsity}: every layer had to be made dense.")
        eps = budget / divisor
        over = {name for name in numels if name not in dense and eps * raw[name] > 1.0}
        if not over:
            break
        dense |= over
    return {name: 1.0 if name in dense else eps * raw[name] for name in numels}


def erk_masks(scores: Mapping[str, Tensor], sparsity: float, power_scale: float = 1.0) -> dict[str, Tensor]:
    """Keeps the largest scores of each layer at its ERK density."""
    densities = erk_densities({n: s.shape for n, s in scores.items()}, sparsity, power_scale)
    return {name: topk_mask(s, int(round(densities[name] * s.numel()))) for name, s in scores.items()}


def nm_mask(scores: Tensor, n: int, m: int, name: str = "tensor") -> Tensor:
    """N:M semi-structured mask: in every group of ``m`` consecutive weights along the input dimension
    (dim 1, the input channels of a conv), keep the ``n`` largest scores."""
    if not 0 < n < m:
        raise ValueError(f"N:M sparsity needs 0 < N < M, got N={n}, M={m} (for 2:4 pass n=2, m=4).")
    if scores.dim() < 2:
        raise ValueError(f"N:M sparsity needs a weight with an input dimension; {name} has shape {tuple(scores.shape)}.")
    in_features = scores.shape[1]
    if in_features % m:
        raise ValueError(
            f"N:M sparsity groups weights along the input dimension, but {name} has {in_features} inputs, "
            f"which is not divisible by M={m}. Exclude this layer from the targets or choose another M."
        )
    # Put the input dimension last so that groups are m consecutive input channels at one kernel position.
    moved = scores.movedim(1, -1)
    groups = moved.reshape(-1, m)
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, torch.topk(groups, n, dim=1).indices, True)
    return keep.view(moved.shape).movedim(-1, 1).contiguous()


def random_masks(
    shapes: Mapping[str, torch.Size | tuple[int, ...]], sparsity: float, generator: torch.Generator | None = None
) -> dict[str, Tensor]:
    """A random baseline: every layer at ``sparsity``, its kept positions drawn uniformly."""
    sparsity = validate_sparsity(sparsity)
    masks = {}
    for name, shape in shapes.items():
        numel = int(torch.Size(shape).numel())
        scores = torch.rand(numel, generator=generator)
        masks[name] = topk_mask(scores, numel - num_zeros(numel, sparsity)).view(shape)
    return masks


def compute_masks(
    scores: Mapping[str, Tensor],
    sparsity: float | None = None,
    distribution: str = "global",
    *,
    n: int | None = None,
    m: int | None = None,
    erk_power_scale: float = 1.0,
    generator: torch.Generator | None = None,
) -> dict[str, Tensor]:
    """Computes masks from scores (usually ``|weight|``) with one of :data:`DISTRIBUTIONS`.

    Args:
        scores: Score per weight, by parameter name; larger is kept first.
        sparsity: Fraction of zeros in [0, 1). For ``"nm"`` it may be omitted (it is ``1 - n/m``).
        distribution: ``"global"`` (one threshold), ``"uniform"`` (same sparsity per layer), ``"erk"``,
            ``"nm"`` (N:M along the input dimension) or ``"random"``.
        n, m: The N and M of ``"nm"``.
        erk_power_scale: Exponent of the ERK raw density.
        generator: Random generator for ``"random"``.
    """
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"Unknown sparsity distribution {distribution!r}; use one of {DISTRIBUTIONS}.")
    scores = {name: s.detach() for name, s in scores.items()}
    if distribution == "nm":
        if n is None or m is None:
            raise ValueError("The 'nm' distribution needs n and m (for 2:4 sparsity: n=2, m=4).")
        if sparsity is not None and abs(sparsity - (1 - n / m)) > 1e-9:
            raise ValueError(f"{n}:{m} sparsity is {1 - n / m}; got conflicting sparsity={sparsity}.")
        return {name: nm_mask(s, n, m, name) for name, s in scores.items()}
    if sparsity is None:
        raise ValueError(f"The {distribution!r} distribution needs a sparsity in [0, 1).")
    if distribution == "global":
        return global_masks(scores, sparsity)
    if distribution == "uniform":
        return uniform_masks(scores, sparsity)
    if distribution == "erk":
        return erk_masks(scores, sparsity, erk_power_scale)
    masks = random_masks({name: s.shape for name, s in scores.items()}, sparsity, generator)
    return {name: masks[name].to(s.device) for name, s in scores.items()}
