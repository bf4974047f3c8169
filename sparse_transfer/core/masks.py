"""Binary masks over named parameters, enforced exactly.

How enforcement works, and why this mechanism:

    for each optimizer step:
        backward()                      # dense gradients, pruned coordinates included
        [pre-step hook]  grad *= mask   # pruned coordinates get no gradient, hence no Adam moment or momentum
        optimizer.step()
        [post-step hook] weight *= mask # pruned weights are exactly 0 (also against weight decay quirks)

The masks live outside the model: the model's state dict keeps its ordinary keys (no ``weight_orig``, no
mask buffers), so a checkpoint of an enforced model loads in plain transformers or timm with its zeros in
place, and the forward pass costs nothing extra (``torch.nn.utils.prune`` recomputes ``weight_orig *
mask`` in a forward pre-hook instead). Optimizer hooks fire once per real step: gradient accumulation,
``GradScaler`` skipped steps and accelerate's ``AcceleratedOptimizer`` (which calls the wrapped optimizer)
are all covered, and gradients are already all-reduced under DDP when the step runs. A mask is one
``bool`` (1 byte) per prunable weight while training and 1 bit per weight on disk (``SparseMasks.multiplier``
trades 4 more bytes on a GPU for fewer kernel launches).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .distributions import compute_masks
from .targets import TargetSpec, select_targets

MASKS_FILE_FORMAT = "sparse_transfer.masks"
MASKS_FILE_VERSION = "1"
MASKS_NAME = "sparse_masks.safetensors"


def pack_bits(mask: Tensor) -> Tensor:
    """Packs a bool tensor into uint8, 8 entries per byte, most significant bit first (like ``np.packbits``)."""
    flat = mask.reshape(-1).to(torch.uint8)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor([128, 64, 32, 16, 8, 4, 2, 1], dtype=torch.uint8, device=flat.device)
    return (flat.view(-1, 8) * weights).sum(dim=1, dtype=torch.uint8)


def unpack_bits(packed: Tensor, shape: torch.Size | tuple[int, ...]) -> Tensor:
    """Inverse of :func:`pack_bits`."""
    numel = int(torch.Size(shape).numel())
    shifts = torch.arange(7, -1, -1, dtype=torch.uint8, device=packed.device)
    bits = (packed.reshape(-1, 1) >> shifts) & 1
    return bits.reshape(-1)[:numel].to(torch.bool).view(shape)


def _fingerprint(shapes: Mapping[str, tuple[int, ...]]) -> str:
    text = json.dumps(sorted((name, list(shape)) for name, shape in shapes.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class _HookHandles:
    """Removes the optimizer hooks that :meth:`SparseMasks.attach` registered."""

    def __init__(self, handles):
        self._handles = handles

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []


class SparseMasks:
    """Fixed boolean masks (``True`` = kept) over named parameters of one model.

    Example:
        >>> masks = SparseMasks.from_magnitude(model, sparsity=0.9, targets="bert")
        >>> masks.apply_()                 # pruned weights := 0
        >>> masks.attach(optimizer)        # ... and they stay exactly 0 after every step
        >>> masks.save("masks.safetensors")

    Args:
        masks: Boolean (or 0/1) tensors by fully qualified parameter name.
        model: If given, the masks are bound to its parameters at once (see :meth:`bind`).
    """

    #: What the hooks multiply weights and gradients by. ``"uint8"``: a uint8 view of each bool mask (no copy,
    #: 1 byte per weight). ``"float"``: a cached copy of each mask in its parameter's dtype (+4 bytes per fp32
    #: weight), which lets ``torch._foreach_mul_`` run its fused multi-tensor kernel: with mixed dtypes it falls
    #: back to one kernel per tensor, and on a GPU those launches are ~1 ms per step for ResNet-50 (5% of a
    #: batch-32 step on an H200; ``benchmarks/vision_step_time.py --device cuda``). ``"auto"``: ``"float"`` for
    #: parameters on a CUDA device, ``"uint8"`` elsewhere (on CPU both cost the same). The default keeps masks at
    #: 1 byte per weight; the vision trainer, whose per-GPU steps are short, uses ``"auto"``. Results are
    #: bit-identical either way (a multiply by 1 or 0).
    multiplier: str = "uint8"

    def __init__(self, masks: Mapping[str, Tensor], model: nn.Module | None = None):
        self._masks: dict[str, Tensor] = {}
        self._float_masks: dict[str, tuple[Tensor, tuple, Tensor]] = {}  # name -> (mask, its version, copy)
        for name, mask in masks.items():
            if mask.dtype != torch.bool:
                if not torch.all((mask == 0) | (mask == 1)):
                    raise ValueError(f"Mask for {name} must be boolean or 0/1, found other values.")
                mask = mask.to(torch.bool)
            self._masks[name] = mask
        if not self._masks:
            raise ValueError("SparseMasks needs at least one mask.")
        self._params: dict[str, nn.Parameter] = {}
        if model is not None:
            self.bind(model)

    # ----------------------------------------------------------------------------------------- creation
    @classmethod
    def from_zeros(cls, model: nn.Module, targets: TargetSpec | str | None = None) -> SparseMasks:
        """Masks read from a sparse checkpoint's zeros: ``weight != 0`` on every target."""
        params = select_targets(model, targets)
        return cls({name: p.detach() != 0 for name, p in params.items()}, model)

    @classmethod
    def from_magnitude(
        cls,
        model: nn.Module,
        sparsity: float | None = None,
        distribution: str = "global",
        targets: TargetSpec | str | None = None,
        **kwargs,
    ) -> SparseMasks:
        """Masks that keep the largest ``|weight|`` under a distribution (see :func:`compute_masks`)."""
        params = select_targets(model, targets)
        scores = {name: p.detach().abs() for name, p in params.items()}
        return cls(compute_masks(scores, sparsity, distribution, **kwargs), model)

    # ------------------------------------------------------------------------------------------ binding
    def bind(self, model: nn.Module) -> SparseMasks:
        """Attaches the masks to ``model``'s parameters by name, checking names and shapes."""
        named = dict(model.named_parameters(remove_duplicate=False))
        missing = [name for name in self._masks if name not in named]
        if missing:
            prefix_hint = ""
            for candidate in named:
                if candidate.endswith("." + missing[0]) or missing[0].endswith("." + candidate):
                    prefix_hint = f" (did you mean {candidate!r}? the model may be wrapped or unwrapped)"
                    break
            raise ValueError(
                f"These masks were made for a different model: {len(missing)} masked parameter(s) do not exist "
                f"in {type(model).__name__}, e.g. {missing[0]!r}{prefix_hint}."
            )
        for name, mask in self._masks.items():
            param = named[name]
            if param.shape != mask.shape:
                raise ValueError(
                    f"Mask for {name} has shape {tuple(mask.shape)} but the parameter has shape "
                    f"{tuple(param.shape)}: the masks were made for a different model."
                )
            if mask.device != param.device:
                self._masks[name] = mask.to(param.device)
        self._params = {name: named[name] for name in self._masks}
        return self

    def _bound(self) -> tuple[list[Tensor], list[Tensor]]:
        """The bound parameters and their multipliers: ``uint8`` views of the masks' memory, or cached copies in
        the parameters' dtype (see :attr:`multiplier`).

        Multiplying a float tensor by a ``bool`` tensor goes through a slow type-promotion path in PyTorch
        (about 3x the time of a float-by-float multiply on CPU); by a ``uint8`` view of the same bytes it is as
        fast as float-by-float, with no float copy of the mask (1 byte per weight). ``benchmarks/bench_enforcement.py``
        measures the hooks' share of a step.
        """
        if not self._params:
            raise RuntimeError("These masks are not bound to a model; call masks.bind(model) first.")
        if self.multiplier not in ("auto", "float", "uint8"):
            raise ValueError(f"SparseMasks.multiplier must be 'auto', 'float' or 'uint8', got {self.multiplier!r}.")
        cache = self._float_masks
        params, masks = [], []
        for name, param in self._params.items():
            mask = self._masks[name]
            if mask.device != param.device:  # the model moved (e.g. .to("cuda") after masks were made)
                mask = self._masks[name] = mask.to(param.device)
            params.append(param)
            if self.multiplier == "float" or (self.multiplier == "auto" and param.device.type == "cuda"):
                # Rebuilt whenever the mask changes: replaced (another tensor) or written in place by update_()
                # (which bumps the tensor's version counter).
                hit = cache.get(name)
                if hit is None or hit[0] is not mask or hit[1] != (mask._version, param.dtype):
                    hit = cache[name] = (mask, (mask._version, param.dtype), mask.to(param.dtype))
                masks.append(hit[2])
            else:
                cache.pop(name, None)
                masks.append(mask.view(torch.uint8))
        return params, masks

    # -------------------------------------------------------------------------------------- enforcement
    @torch.no_grad()
    def apply_(self) -> None:
        """Sets every pruned weight to exactly zero."""
        params, masks = self._bound()
        torch._foreach_mul_([p.data for p in params], masks)

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zeroes the gradients of pruned weights (parameters without a gradient are skipped)."""
        params, masks = self._bound()
        pairs = [(p.grad, m) for p, m in zip(params, masks) if p.grad is not None]
        if pairs:
            grads, grad_masks = zip(*pairs)
            torch._foreach_mul_(list(grads), list(grad_masks))

    @torch.no_grad()
    def mask_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zeroes the optimizer state (momentum, Adam moments, ...) of pruned weights."""
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
        params, masks = self._bound()
        for param, mask in zip(params, masks):
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == mask.shape:
                    value.mul_(mask)

    def attach(self, optimizer: torch.optim.Optimizer) -> _HookHandles:
        """Enforces the masks on every step of ``optimizer``.

        Registers a pre-step hook that masks gradients and a post-step hook that masks weights, applies
        the masks and clears the pruned coordinates of any existing optimizer state. Returns a handle
        whose ``remove()`` detaches the hooks.
        """
        inner = getattr(optimizer, "optimizer", optimizer)
        self.apply_()
        self.mask_grads_()
        self.mask_optimizer_state_(inner)
        handles = [
            inner.register_step_pre_hook(lambda *_: self.mask_grads_()),
            inner.register_step_post_hook(lambda *_: self.apply_()),
        ]
        return _HookHandles(handles)

    @torch.no_grad()
    def update_(self, masks: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Replaces some or all masks in place (for methods whose mask changes: AC/DC, GMP, RigL).

        The new masks are applied to the weights at once, and to ``optimizer``'s state if given.
        """
        for name, mask in masks.items():
            if name not in self._masks:
                raise KeyError(f"No mask named {name!r}; these masks cover {len(self._masks)} other parameters.")
            if mask.shape != self._masks[name].shape:
                raise ValueError(f"New mask for {name} has shape {tuple(mask.shape)}, expected {tuple(self._masks[name].shape)}.")
            self._masks[name].copy_(mask)
        if self._params:
            self.apply_()
            self.mask_grads_()
            if optimizer is not None:
                self.mask_optimizer_state_(optimizer)

    # ------------------------------------------------------------------------------------------ queries
    def __getitem__(self, name: str) -> Tensor:
        return self._masks[name]

    def __contains__(self, name: object) -> bool:
        return name in self._masks

    def __iter__(self) -> Iterator[str]:
        return iter(self._masks)

    def __len__(self) -> int:
        return len(self._masks)

    def items(self):
        return self._masks.items()

    @property
    def params(self) -> dict[str, nn.Parameter]:
        """The bound parameters by name (empty before :meth:`bind`)."""
        return dict(self._params)

    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def num_kept(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    def sparsity(self) -> float:
        """Fraction of masked-out (pruned) positions over all masks."""
        return 1.0 - self.num_kept() / self.numel()

    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - int(m.sum()) / m.numel() for name, m in self._masks.items()}

    def violations(self) -> int:
        """Number of pruned weights of the bound model that are not exactly zero (0 when enforced)."""
        params, masks = self._bound()
        return int(sum(int((p.detach()[~m.view(torch.bool)] != 0).sum()) for p, m in zip(params, masks)))

    def iou(self, other: SparseMasks) -> float:
        """Intersection over union of the kept positions of two mask sets over the same parameters."""
        inter = union = 0
        for name, mask in self._masks.items():
            other_mask = other[name].to(mask.device)
            inter += int((mask & other_mask).sum())
            union += int((mask | other_mask).sum())
        return inter / union if union else 1.0

    # -------------------------------------------------------------------------------------------- state
    def shapes(self) -> dict[str, tuple[int, ...]]:
        return {name: tuple(m.shape) for name, m in self._masks.items()}

    def state_dict(self) -> dict[str, Tensor]:
        """The masks as bool tensors on CPU, by parameter name."""
        return {name: m.detach().cpu().clone() for name, m in self._masks.items()}

    def load_state_dict(self, state_dict: Mapping[str, Tensor]) -> None:
        """Loads masks saved by :meth:`state_dict` (same names and shapes) and applies them if bound."""
        unknown = set(state_dict) - set(self._masks)
        missing = set(self._masks) - set(state_dict)
        if unknown or missing:
            raise ValueError(
                f"Mask state does not match these masks: missing {sorted(missing)[:3]}, unexpected {sorted(unknown)[:3]}."
            )
        self.update_(state_dict)

    def save(self, path: str | os.PathLike) -> None:
        """Saves the masks to a safetensors file, 1 bit per weight, with names and shapes in its metadata.

        The file is written to a temporary name and renamed, so an interrupted save leaves no half file.
        """
        tensors = {name: pack_bits(m.detach().cpu()) for name, m in self._masks.items()}
        shapes = self.shapes()
        metadata = {
            "format": MASKS_FILE_FORMAT,
            "version": MASKS_FILE_VERSION,
            "shapes": json.dumps(shapes),
            "fingerprint": _fingerprint(shapes),
            "sparsity": f"{self.sparsity():.6f}",
        }
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        save_file(tensors, tmp, metadata=metadata)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None) -> SparseMasks:
        """Loads masks written by :meth:`save`; binds them to ``model`` (checking names and shapes) if given."""
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No mask file at {path}.")
        from safetensors import safe_open

        with safe_open(path, framework="pt") as f:
            metadata = f.metadata() or {}
        if metadata.get("format") != MASKS_FILE_FORMAT:
            raise ValueError(f"{path} is not a sparse_transfer mask file (its metadata has no format={MASKS_FILE_FORMAT!r}).")
        shapes = {name: tuple(shape) for name, shape in json.loads(metadata["shapes"]).items()}
        packed = load_file(path)
        return cls({name: unpack_bits(packed[name], shapes[name]) for name in shapes}, model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} parameters, {self.numel():,} weights, sparsity={self.sparsity():.4f})"
