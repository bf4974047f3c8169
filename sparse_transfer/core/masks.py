"""Binary masks over named parameters, enforced exactly.

How enforcement works, and why this mechanism:

    for each optimizer step:
        backward()                      # as autograd accumulates each parameter's gradient, a post-accumulate-grad
                                        # hook zeroes its pruned coordinates: clipping, grad-norm logging, DDP's
                                        # all-reduce and the optimizer all see the gradient that is applied
        optimizer.step()                # pruned coordinates have no gradient, hence no Adam moment or momentum
        [post-step hook] weight[pruned] := 0   # exact zeros, also against weight decay quirks

Masks address parameters by fully qualified name and hold the model they were bound to. At attach and at every
check (:meth:`check`, :meth:`violations`, :meth:`measured_sparsity`, the Trainer's per-log check) they look the
parameters up again by name: if one was replaced (``load_state_dict(assign=True)``, a new module, ``to_empty``,
``.to()`` with ``overwrite_module_params_on_conversion``, ``fully_shard``), the masks follow it when the attached
optimizer holds the new tensor (or no optimizer is attached yet), and otherwise stop with an error naming the
parameter. Enforcement never multiplies a value by the mask in floating point (``inf * 0`` is NaN): it multiplies
the weights' bit patterns, viewed as integers of the same width, by 0 or 1, which selects exactly (a NaN or inf at a
pruned coordinate becomes +0.0) and keeps ``torch._foreach_mul_``'s single fused kernel on a GPU.

The masks live outside the model: the model's state dict keeps its ordinary keys (no ``weight_orig``, no mask
buffers), so a checkpoint of an enforced model loads in plain transformers or timm with its zeros in place, and the
forward pass costs nothing extra (``torch.nn.utils.prune`` recomputes ``weight_orig * mask`` in a forward pre-hook
instead). Gradient accumulation, ``GradScaler`` skipped steps and accelerate's ``AcceleratedOptimizer`` are all
covered. Under FSDP2 (``fully_shard``) parameters are DTensors: each rank enforces its local shard with the matching
slice of the mask, and counts are reduced over all ranks. A mask is one ``bool`` (1 byte) per prunable weight while
training and 1 bit per weight on disk (:attr:`SparseMasks.multiplier` trades 4 more bytes on a GPU for fewer kernel
launches).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import weakref
from collections.abc import Iterator, Mapping

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .distributions import compute_masks
from .targets import TargetSpec, select_targets

logger = logging.getLogger(__name__)

MASKS_FILE_FORMAT = "sparse_transfer.masks"
MASKS_FILE_VERSION = "2"  # 2: checksum and model fingerprint in the metadata
MASKS_NAME = "sparse_masks.safetensors"

# Signed integers of each element width: a float tensor viewed as one of these keeps its bit pattern, and an
# integer multiply by 0 or 1 then selects exactly, whatever the float value (NaN and inf included).
_INT_OF_WIDTH = {1: torch.int8, 2: torch.int16, 4: torch.int32, 8: torch.int64}

_FSDP_HINT = (
    "Shard the model with FSDP2 instead (torch.distributed.fsdp.fully_shard, or fsdp_config={'fsdp_version': 2} in "
    "the Trainer / accelerate), which keeps each parameter under its own name; bind the masks before sharding."
)


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


def _checksum(packed: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> str:
    """SHA-256 over every metadata field but the checksum itself (version, sparsity, model fingerprint...), and the
    names, shapes and bits: no field can be edited, added or removed without failing it."""
    h = hashlib.sha256()
    h.update(json.dumps(sorted((k, v) for k, v in metadata.items() if k != "checksum")).encode())
    for name in sorted(packed):
        h.update(name.encode())
        h.update(json.dumps(list(shapes[name])).encode())
        h.update(packed[name].contiguous().numpy().tobytes())
    return h.hexdigest()


def weights_fingerprint(weights: Mapping[str, Tensor]) -> str:
    """SHA-256 (first 16 hex digits) of the dtypes, shapes and bytes of ``weights`` in name order: which checkpoint a
    mask file was saved beside."""
    h = hashlib.sha256()
    for name in sorted(weights):  # names only order the tensors: a head's prefix (bert.) keeps the order and hash
        tensor = weights[name].detach().cpu().contiguous()
        h.update(f"{tensor.dtype}:{tuple(tensor.shape)}".encode())
        h.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return h.hexdigest()[:16]


def _file_problem(packed: Mapping[str, Tensor], shapes: Mapping[str, tuple[int, ...]], metadata: Mapping[str, str]) -> str:
    """What is wrong with a mask file's data against its metadata, or ``""``."""
    missing = sorted(set(shapes) - set(packed))
    extra = sorted(set(packed) - set(shapes))
    if missing or extra:
        return f"lists masks its data lacks ({missing[:3]}) or holds data it does not list ({extra[:3]})."
    for name, tensor in packed.items():
        if tensor.dtype != torch.uint8 or tensor.dim() != 1:
            return (f"stores {name} as {tensor.dtype} with shape {tuple(tensor.shape)}; masks are packed bits, one "
                    "uint8 vector per parameter.")
        expected = (math.prod(shapes[name]) + 7) // 8
        if tensor.numel() != expected:
            return f"stores {tensor.numel()} bytes for {name} of shape {shapes[name]}, which needs {expected}."
    if "fingerprint" in metadata and metadata["fingerprint"] != _fingerprint(shapes):
        return "has a names-and-shapes fingerprint that does not match its own shapes: the metadata was edited."
    if metadata.get("version") == "1":
        if "checksum" in metadata or "model_fingerprint" in metadata:
            return ("says it is version 1 but carries version-2 fields (checksum, model fingerprint): its version was "
                    "edited.")
        return ""
    if metadata.get("checksum") != _checksum(packed, shapes, metadata):
        return ("fails its checksum: its bits or metadata changed after it was saved (a flipped byte, a partial "
                "copy, or an edit).")
    return ""


# ------------------------------------------------------------------------------------------------ helpers
_DTENSOR: tuple[type, ...] | None = None


def is_dtensor(tensor: object) -> bool:
    """Whether ``tensor`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2-sharded parameter or gradient)."""
    global _DTENSOR
    if _DTENSOR is None:
        try:
            from torch.distributed.tensor import DTensor

            _DTENSOR = (DTensor,)
        except ImportError:  # builds without distributed support
            _DTENSOR = ()
    return isinstance(tensor, _DTENSOR)


def local_tensor(tensor: Tensor) -> Tensor:
    """The part of ``tensor`` this process holds: the local shard of a DTensor, else the tensor itself."""
    return tensor.to_local() if is_dtensor(tensor) else tensor


def nonfinite_names(tensors: Mapping[str, Tensor]) -> list[str]:
    """Names of the tensors that hold a NaN or inf (of a DTensor, this process's shard), read with one
    synchronization."""
    flags = [torch.isfinite(local_tensor(t.detach())).all() for t in tensors.values()]
    if not flags:
        return []
    finite = torch.stack([f.to(flags[0].device) for f in flags]).tolist()
    return [name for name, ok in zip(tensors, finite) if not ok]


def _bits(tensor: Tensor) -> Tensor:
    """``tensor``'s memory as integers of the same width (no copy); integer tensors are returned as they are."""
    if tensor.is_floating_point():
        return tensor.view(_INT_OF_WIDTH[tensor.element_size()])
    return tensor


def _local_mask(mask: Tensor, param: Tensor) -> Tensor:
    """The slice of the full ``mask`` that matches ``param``'s local shard (a view: in-place mask updates show)."""
    if not is_dtensor(param):
        return mask
    from torch.distributed.tensor import Replicate, Shard
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset

    if not all(isinstance(p, (Shard, Replicate)) for p in param.placements):
        raise ValueError(f"Masks support Shard and Replicate placements only, got {param.placements}.")
    shape, offset = compute_local_shape_and_global_offset(param.shape, param.device_mesh, param.placements)
    return mask[tuple(slice(o, o + s) for o, s in zip(offset, shape))]


def _refuse_meta(params: Mapping[str, Tensor], what: str) -> None:
    meta = [name for name, p in params.items() if p.is_meta]
    if meta:
        raise ValueError(
            f"{meta[0]} is on the meta device (no values), so there is nothing to {what}: materialize the model first "
            "(to_empty + load the weights), or build the masks from the real checkpoint and bind them to this model."
        )


def _overwrite_hint() -> str:
    flags = []
    if torch.__future__.get_overwrite_module_params_on_conversion():
        flags.append("set_overwrite_module_params_on_conversion(True)")
    if torch.__future__.get_swap_module_params_on_conversion():
        flags.append("set_swap_module_params_on_conversion(True)")
    if not flags:
        return ""
    return (
        f" torch.__future__.{' and '.join(flags)} is on: every .to()/.float()/load_state_dict, including the Trainer's "
        "own move of the model after it built the optimizer, then replaces parameters; turn it off."
    )


def _optimizer_param_ids(optimizer: torch.optim.Optimizer) -> set[int]:
    return {id(p) for group in optimizer.param_groups for p in group["params"]}


def _through_wrappers(masks: Mapping[str, Tensor], model: nn.Module, named: Mapping[str, Tensor]) -> dict[str, Tensor] | None:
    """``masks`` renamed to ``model``'s parameter names through peft's wrapper segments (``base_model.model.``,
    ``.base_layer``), if every name maps to exactly one parameter; else ``None`` (and the caller reports the names)."""
    from .targets import _adapter_param_ids, canonical_name

    adapters = _adapter_param_ids(model)
    by_canonical: dict[str, str] = {}
    for name, param in named.items():
        if id(param) in adapters:
            continue
        key = canonical_name(name)
        if key in by_canonical:
            return None
        by_canonical[key] = name
    renamed = {}
    for name, mask in masks.items():
        target = name if name in named else by_canonical.get(canonical_name(name))
        if target is None or target in renamed:
            return None
        renamed[target] = mask
    return renamed


def magnitudes(params: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """``|w|`` of each tensor, to rank weights by; ``ValueError`` if one holds NaN or inf, which topk would rank
    above every weight and keep."""
    scores = {name: p.detach().abs() for name, p in params.items()}
    bad = nonfinite_names(scores)
    if bad:
        count = int((~torch.isfinite(scores[bad[0]])).sum())
        raise ValueError(
            f"{bad[0]} holds {count} NaN or inf weight(s), which have no magnitude to rank: load finite weights "
            "(a diverged checkpoint cannot be pruned by magnitude)."
        )
    return scores


def _refuse_fsdp1(model: nn.Module) -> None:
    for module in model.modules():
        if type(module).__name__ == "FullyShardedDataParallel":
            raise ValueError(
                "This model is wrapped in FSDP1 (FullyShardedDataParallel), which flattens parameters into shared "
                "buffers, so masks cannot address them by name and pruned weights would go unenforced. " + _FSDP_HINT
            )


class _HookHandles:
    """Detaches what one :meth:`SparseMasks.attach` registered (gradient hooks and the optimizer hooks).

    A handle of an earlier attach that a later one superseded does nothing: removing it must not tear down the
    enforcement of the optimizer attached since.
    """

    def __init__(self, masks: SparseMasks, generation: int):
        self._masks, self._generation = masks, generation

    def remove(self) -> None:
        if self._masks is not None and self._masks._generation == self._generation:
            self._masks.detach()
        self._masks = None


class SparseMasks:
    """Fixed boolean masks (``True`` = kept) over named parameters of one model.

    Example:
        >>> masks = SparseMasks.from_magnitude(model, sparsity=0.9, targets="bert")
        >>> masks.apply_()                 # pruned weights := 0
        >>> masks.attach(optimizer)        # ... and they stay exactly 0 after every step
        >>> masks.violations()             # 0: reads the model's current parameters by name
        >>> masks.save("masks.safetensors")

    Args:
        masks: Boolean (or 0/1) tensors by fully qualified parameter name.
        model: If given, the masks are bound to its parameters at once (see :meth:`bind`).

    Attributes:
        enforcing: Whether the masks are imposed (default ``True``). Mask methods release them while training
            dense (GMP before its first cut, AC/DC's decompressed phases); the hooks then do nothing.
        keep_dense_grads: While ``True`` the gradient hooks leave gradients dense, for a method that reads the
            gradient of pruned weights on this step (RigL's growth, see ``MaskMethod.begin_step``); the method
            masks them itself once it has read them.
    """

    #: What the hooks multiply bit patterns by. ``"uint8"``: a uint8 view of each bool mask (no copy, 1 byte per
    #: weight). ``"float"``: a cached copy of each mask as integers of the weights' width (+4 bytes per fp32 weight),
    #: which lets ``torch._foreach_mul_`` run its fused multi-tensor kernel: with mixed dtypes it falls back to one
    #: kernel per tensor, and on a GPU those launches are ~1 ms per step for ResNet-50 (5% of a batch-32 step on an
    #: H200; ``benchmarks/vision_step_time.py --device cuda``). ``"auto"``: ``"float"`` for parameters on a CUDA
    #: device, ``"uint8"`` elsewhere (on CPU both cost the same). Results are bit-identical either way.
    multiplier: str = "uint8"

    def __init__(self, masks: Mapping[str, Tensor], model: nn.Module | None = None):
        self._masks: dict[str, Tensor] = {}
        for name, mask in masks.items():
            if mask.dtype != torch.bool:
                if not torch.all((mask == 0) | (mask == 1)):
                    raise ValueError(f"Mask for {name} must be boolean or 0/1, found other values.")
                mask = mask.to(torch.bool)
            self._masks[name] = mask
        if not self._masks:
            raise ValueError("SparseMasks needs at least one mask.")
        self.enforcing = True
        self.keep_dense_grads = False
        self.grads_masked_in_backward = False  # set by the gradient hooks; read and reset by mask methods
        self._model: nn.Module | None = None
        self._params: dict[str, nn.Parameter] = {}
        self._local: dict[str, Tensor] = {}  # name -> the slice of the mask matching the local (shard of the) parameter
        self._copies: dict[str, tuple[Tensor, tuple, Tensor]] = {}  # name -> (local mask, its version, int copy)
        self._optimizer: torch.optim.Optimizer | None = None
        self._hooks: list = []  # the optimizer hooks of the current attach
        self._grad_hooks: dict[str, tuple[Tensor, object]] = {}  # name -> (parameter, handle) of its gradient hook
        self._fired: dict[str, weakref.ref | None] = {}  # name -> the gradient its hook saw since the last step
        self._dense_pending: set[str] = set()  # gradients a hook left dense for a method, not masked since
        self._generation = 0
        self._warned_outside: list[str] = []
        self._warned_missed = False
        if model is not None:
            self.bind(model)

    # ----------------------------------------------------------------------------------------- creation
    @classmethod
    def from_zeros(cls, model: nn.Module, targets: TargetSpec | str | None = None) -> SparseMasks:
        """Masks read from a sparse checkpoint's zeros: ``weight != 0`` on every target."""
        params = select_targets(model, targets)
        _refuse_meta(params, "read its zeros")
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
        """Masks that keep the largest ``|weight|`` under a distribution (see :func:`compute_masks`).

        The masks are computed and bound, not applied: the weights are unchanged until :meth:`apply_` or
        :meth:`attach` zeroes the pruned ones.
        """
        params = select_targets(model, targets)
        _refuse_meta(params, "rank its weights by magnitude")
        return cls(compute_masks(magnitudes(params), sparsity, distribution, **kwargs), model)

    # ------------------------------------------------------------------------------------------ binding
    def bind(self, model: nn.Module) -> SparseMasks:
        """Binds the masks to ``model``'s parameters by name, checking names and shapes.

        The masks keep ``model`` and look its parameters up by name again at every check (:meth:`check`).
        """
        _refuse_fsdp1(model)
        named = dict(model.named_parameters(remove_duplicate=False))
        missing = [name for name in self._masks if name not in named]
        if missing:
            renamed = _through_wrappers(self._masks, model, named)
            if renamed is not None:  # masks of the unwrapped model bound to its peft-wrapped self
                self._masks = renamed
                missing = []
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
        self._model = model
        self._set_params({name: named[name] for name in self._masks})
        return self

    def _set_params(self, params: dict[str, nn.Parameter]) -> None:
        for name, param in params.items():
            mask = self._masks[name]
            if mask.is_meta:
                raise ValueError(
                    f"The mask of {name} is on the meta device (it was built on a model without values): build the "
                    "masks from real weights, or with dense_masks(), which makes them on the CPU."
                )
            if param.shape != mask.shape:
                raise ValueError(
                    f"Mask for {name} has shape {tuple(mask.shape)} but the parameter has shape "
                    f"{tuple(param.shape)}: the masks were made for a different model."
                )
            if not param.is_floating_point():
                raise ValueError(f"{name} is a {param.dtype} parameter; only floating-point weights can be masked.")
            if mask.device != param.device and param.device.type != "meta":  # a mask on meta would lose its values
                self._masks[name] = mask.to(param.device)
        self._params = params
        self._local = {name: _local_mask(self._masks[name], p) for name, p in params.items()}
        self._copies.clear()
        if self._optimizer is not None:  # attached: the gradient hooks move to the new tensors
            self._register_grad_hooks()

    def check(self) -> None:
        """Confirms that the masks act on the model's current parameters, and that the optimizer holds them.

        Each parameter is looked up by name in the bound model. One that was replaced is followed (re-bound by name)
        when no optimizer is attached (:meth:`attach` then zeroes its pruned weights) or when the attached optimizer
        holds the new tensor and its pruned weights are already zero (a sharded or moved copy); otherwise training
        went, or would go, to tensors without the masks, and this raises ``RuntimeError`` naming the parameter and
        the fix. Nothing is repaired silently: :meth:`violations` counts what the model holds.
        """
        if self._model is None:
            raise RuntimeError("These masks are not bound to a model; call masks.bind(model) first.")
        live = {}
        for name in self._masks:
            try:
                live[name] = self._model.get_parameter(name)
            except AttributeError:
                raise RuntimeError(
                    f"{name} is no longer a parameter of the model the masks are bound to (was its module replaced "
                    "by one without it, or the model wrapped?). Bind the masks to the model as it is now."
                ) from None
        stale = [name for name, param in live.items() if param is not self._params[name]]
        if stale:
            if self._optimizer is not None:
                held = _optimizer_param_ids(self._optimizer)
                orphans = [name for name in stale if id(live[name]) not in held]
                if orphans:
                    raise RuntimeError(
                        f"{orphans[0]} (and {len(orphans) - 1} more) was replaced after the masks were attached "
                        "(load_state_dict(assign=True), a new module, to_empty, .to() that overwrites parameters, or "
                        "sharding), but the optimizer still holds the old tensor: the model's weights would not train "
                        "and the masks would guard a tensor the model no longer uses. Replace parameters before "
                        "creating the optimizer, then call masks.attach(optimizer) (SparseTrainer does both)."
                        + _overwrite_hint()
                    )
            sharded = all(is_dtensor(live[name]) for name in stale)
            logger.log(
                logging.INFO if sharded else logging.WARNING,
                "%d masked parameter(s) were replaced (e.g. %s%s); the masks now follow the new tensors by name.",
                len(stale), stale[0], ", sharded" if sharded else "",
            )
            self._set_params(live)
            if self._optimizer is not None and self.enforcing:
                # Training is under way: the new tensors must already hold the zeros (a sharded copy of the same
                # weights does). Zeroing them here would hide that they were trained or loaded without the masks.
                bad = self._count(lambda w, m: (w[~m] != 0).sum(), names=stale)
                if bad:
                    raise RuntimeError(
                        f"{stale[0]} (and {len(stale) - 1} more) was replaced while the masks were attached, and {bad} "
                        "of its pruned weights are not zero: it was trained or loaded without the masks. Replace "
                        "parameters before creating the optimizer, then call masks.attach(optimizer)." + _overwrite_hint()
                    )
                self.mask_grads_()
                self.mask_optimizer_state_(self._optimizer)
        if self._optimizer is not None:
            self._check_in_optimizer(self._optimizer)

    def _check_in_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """Warns about masked parameters that require grad but that ``optimizer`` does not hold: it never updates them
        (their zeros are safe from it), but whatever trains them does so without the masks' hooks."""
        held = _optimizer_param_ids(optimizer)
        outside = [name for name, p in self._params.items() if p.requires_grad and id(p) not in held]
        if outside and outside != self._warned_outside:
            logger.warning(
                "%s (and %d more masked parameter(s)) requires grad but is not in the optimizer the masks are attached "
                "to: that optimizer never updates it, and another one would train it without the masks (the next "
                "violations() check would catch it). Build the optimizer over all the model's parameters.",
                outside[0], len(outside) - 1,
            )
        self._warned_outside = outside

    def _check_bound(self) -> None:
        if not self._params:
            raise RuntimeError("These masks are not bound to a model; call masks.bind(model) first.")
        if self.multiplier not in ("auto", "float", "uint8"):
            raise ValueError(f"SparseMasks.multiplier must be 'auto', 'float' or 'uint8', got {self.multiplier!r}.")

    def _multiplier(self, name: str, target: Tensor) -> Tensor:
        """What ``_bits(target)`` is multiplied by: a uint8 view of the local mask, or a cached integer copy."""
        mask = self._local[name]
        if mask.device != target.device:  # the model moved (e.g. .to("cuda") after the masks were made)
            self._masks[name] = self._masks[name].to(target.device)
            mask = self._local[name] = _local_mask(self._masks[name], self._params[name])
        if self.multiplier == "float" or (self.multiplier == "auto" and target.device.type == "cuda"):
            dtype = _bits(target).dtype
            hit = self._copies.get(name)
            # Rebuilt whenever the mask changes: replaced (another tensor) or written in place (its version counter).
            if hit is None or hit[0] is not mask or hit[1] != (mask._version, dtype):
                hit = self._copies[name] = (mask, (mask._version, dtype), mask.to(dtype))
            return hit[2]
        self._copies.pop(name, None)
        return mask.view(torch.uint8)

    @torch.no_grad()
    def _select_(self, tensors: dict[str, Tensor]) -> None:
        """Zeroes the pruned coordinates of ``tensors`` (local tensors by mask name) exactly, in one fused call."""
        if not tensors:
            return
        targets = list(tensors.values())
        multipliers = [self._multiplier(name, t) for name, t in tensors.items()]
        torch._foreach_mul_([_bits(t) for t in targets], multipliers)

    # -------------------------------------------------------------------------------------- enforcement
    @torch.no_grad()
    def apply_(self) -> None:
        """Sets every pruned weight to exactly zero (NaN and inf included)."""
        self._check_bound()
        self._select_({name: local_tensor(p.data) for name, p in self._params.items()})

    @torch.no_grad()
    def mask_grads_(self) -> None:
        """Zeroes the gradients of pruned weights exactly (parameters without a gradient are skipped)."""
        self._check_bound()
        self._select_({name: local_tensor(p.grad) for name, p in self._params.items() if p.grad is not None})
        self._dense_pending.clear()

    @torch.no_grad()
    def zero_nonfinite_pruned_grads_(self) -> None:
        """Sets NaN and inf at pruned coordinates of the gradients to 0, keeping every other pruned value: run before a
        method reads a dense gradient (RigL's growth, AC/DC's release), so an overflow is never grown or released."""
        self._check_bound()
        for name, p in self._params.items():
            if p.grad is not None:
                grad = local_tensor(p.grad)
                grad.masked_fill_(~self._local[name].to(grad.device) & ~torch.isfinite(grad), 0)

    @torch.no_grad()
    def mask_optimizer_state_(self, optimizer: torch.optim.Optimizer) -> None:
        """Zeroes the optimizer state (momentum, Adam moments, ...) of pruned weights."""
        optimizer = getattr(optimizer, "optimizer", optimizer)  # accelerate's AcceleratedOptimizer
        self._check_bound()
        for name, param in self._params.items():
            for value in optimizer.state.get(param, {}).values():
                if isinstance(value, Tensor) and value.shape == param.shape and value.is_floating_point():
                    self._select_({name: local_tensor(value)})

    def _grad_hook(self, name: str):
        def hook(param: Tensor) -> None:
            if param.grad is not None and param.grad.layout != torch.strided:
                raise RuntimeError(
                    f"{name} received a {param.grad.layout} gradient (e.g. nn.Embedding(sparse=True)); masks need dense "
                    "gradients: make the module produce dense ones (sparse=False) or leave it out of the targets."
                )
            self._fired[name] = weakref.ref(param.grad) if param.grad is not None else None
            if self.keep_dense_grads:  # left dense for the method, which masks it (mask_grads_) once it has read it
                self._dense_pending.add(name)
                return
            if self.enforcing and param.grad is not None:
                grad = local_tensor(param.grad)
                with torch.no_grad():
                    _bits(grad).mul_(self._multiplier(name, grad))
                self.grads_masked_in_backward = True

        return hook

    def _register_grad_hook(self, name: str, param: Tensor) -> None:
        frozen = not param.requires_grad
        if frozen:  # a hook can only be registered while the tensor requires grad; it stays for when it is unfrozen
            param.requires_grad_(True)
        try:
            self._grad_hooks[name] = (param, param.register_post_accumulate_grad_hook(self._grad_hook(name)))
        finally:
            if frozen:
                param.requires_grad_(False)

    def _register_grad_hooks(self) -> None:
        for _, handle in self._grad_hooks.values():
            handle.remove()
        self._grad_hooks = {}
        for name, param in self._params.items():
            self._register_grad_hook(name, param)

    @torch.no_grad()
    def _pre_step(self, *_) -> None:
        """Masks the gradients that no hook masked since the last step: the safety net behind the gradient hooks."""
        fired, pending = self._fired, self._dense_pending
        self._fired, self._dense_pending = {}, set()
        if not self.enforcing:
            return
        # A gradient is masked if its hook saw this very tensor since the last step (and did not leave it dense for a
        # method). Any other gradient (assigned by hand, replaced after backward, or a tensor whose hooks PyTorch no
        # longer runs) is checked here, and masked if a pruned coordinate is non-zero.
        candidates = {
            name: local_tensor(p.grad)
            for name, p in self._params.items()
            if p.grad is not None and p.requires_grad
            and (name in pending or fired.get(name) is None or fired[name]() is not p.grad)
        }
        missed = {
            name: grad for name, grad in candidates.items()
            if bool((grad[~self._local[name].to(grad.device)] != 0).any())
        }
        if not missed:
            return  # e.g. a zero gradient kept from an earlier step (zero_grad(set_to_none=False), an unused layer)
        self._select_(missed)
        if set(missed) <= pending:
            logger.warning(
                "Gradients kept dense for a mask method were not masked by it before the optimizer step (was "
                "method.step(step, optimizer) skipped after method.begin_step(step)?); masked at the step instead."
            )
        elif not self._warned_missed:
            self._warned_missed = True
            logger.warning(
                "%d masked parameter(s) (e.g. %s) hold a gradient that did not go through their gradient hook since "
                "the last optimizer step, so its pruned coordinates were masked only at the step: clipping and the "
                "logged grad_norm included them. Either the gradient was assigned to .grad by hand (or kept from an "
                "earlier step), or the tensor was swapped in place (torch.__future__.set_swap_module_params_on_"
                "conversion(True) makes .to()/load_state_dict do that, and PyTorch then runs no gradient hook on "
                "it): turn that flag off.",
                len(missed), next(iter(missed)),
            )

    def _post_step(self, *_) -> None:
        if self.enforcing:
            self.apply_()

    def attach(self, optimizer: torch.optim.Optimizer) -> _HookHandles:
        """Enforces the masks on every step of ``optimizer``.

        Checks that the masks act on the model's current parameters and that ``optimizer`` holds every masked
        parameter that requires grad; registers a post-accumulate-grad hook on each masked parameter, frozen ones
        included (its gradient is masked as soon as backward has accumulated it), a pre-step hook that masks any
        gradient no hook saw (assigned by hand, or a tensor PyTorch swapped in place; with a warning, since clipping
        saw it unmasked) and a post-step hook that zeroes pruned weights; applies the masks and clears the pruned
        coordinates of any existing optimizer state. Attaching again moves the hooks to the new optimizer. Returns a
        handle whose ``remove()`` detaches them (a no-op once a later attach superseded it).
        """
        inner = getattr(optimizer, "optimizer", optimizer)
        self.detach()
        self.check()
        self._check_in_optimizer(inner)
        self._optimizer = inner
        self._register_grad_hooks()
        self._hooks = [inner.register_step_pre_hook(self._pre_step), inner.register_step_post_hook(self._post_step)]
        self._generation += 1
        if self.enforcing:
            self.apply_()
            self.mask_grads_()
            self.mask_optimizer_state_(inner)
        return _HookHandles(self, self._generation)

    def detach(self) -> None:
        """Removes the hooks of :meth:`attach` (the masks stay bound)."""
        for handle in self._hooks:
            handle.remove()
        for _, handle in self._grad_hooks.values():
            handle.remove()
        self._hooks, self._grad_hooks, self._fired, self._dense_pending = [], {}, {}, set()
        self._optimizer = None
        self._generation += 1

    @property
    def optimizer(self) -> torch.optim.Optimizer | None:
        """The optimizer the masks are attached to (``None`` before :meth:`attach`)."""
        return self._optimizer

    @torch.no_grad()
    def update_(self, masks: Mapping[str, Tensor], optimizer: torch.optim.Optimizer | None = None) -> None:
        """Replaces some or all masks in place (for methods whose mask changes: AC/DC, GMP, RigL).

        While enforcing, the new masks are applied to the weights and gradients at once, and to the optimizer
        state (``optimizer``'s, else the attached one's).
        """
        for name, mask in masks.items():
            if name not in self._masks:
                raise KeyError(f"No mask named {name!r}; these masks cover {len(self._masks)} other parameters.")
            if mask.shape != self._masks[name].shape:
                raise ValueError(f"New mask for {name} has shape {tuple(mask.shape)}, expected {tuple(self._masks[name].shape)}.")
            self._masks[name].copy_(mask)
        if self._params and self.enforcing:
            self.apply_()
            self.mask_grads_()
            optimizer = optimizer if optimizer is not None else self._optimizer
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
        """The bound parameters by name (empty before :meth:`bind`); :meth:`check` re-reads them from the model."""
        return dict(self._params)

    @property
    def model(self) -> nn.Module | None:
        """The model the masks are bound to."""
        return self._model

    def numel(self) -> int:
        return sum(m.numel() for m in self._masks.values())

    def num_kept(self) -> int:
        return int(sum(int(m.sum()) for m in self._masks.values()))

    def sparsity(self) -> float:
        """Fraction of masked-out (pruned) positions over all masks."""
        return 1.0 - self.num_kept() / self.numel()

    def layer_sparsity(self) -> dict[str, float]:
        return {name: 1.0 - int(m.sum()) / m.numel() for name, m in self._masks.items()}

    @torch.no_grad()
    def _count(self, count_fn, names: list[str] | None = None) -> int:
        """``sum(count_fn(local weights, local mask))`` over the model's current parameters (all, or ``names``),
        summed over all ranks when they are sharded (a collective then: every rank must call it)."""
        if names is None:
            self.check()
        total, sharded = 0, None
        for name in names if names is not None else self._params:
            param = self._params[name]
            local = local_tensor(param.detach())
            total += int(count_fn(local, self._local[name].to(local.device)))
            if is_dtensor(param):
                sharded = param
        if sharded is not None:
            from torch.distributed.tensor import Shard

            if any(not isinstance(p, Shard) for p in sharded.placements):
                raise ValueError("Counting over replicated (HSDP) meshes is not supported; shard on one mesh dimension.")
            counts = torch.tensor([total], dtype=torch.int64, device=local.device)
            torch.distributed.all_reduce(counts, group=sharded.device_mesh.get_group())
            total = int(counts.item())
        return total

    def violations(self) -> int:
        """Number of pruned weights of the model as it is now (looked up by name) that are not exactly zero."""
        return self._count(lambda w, m: (w[~m] != 0).sum())

    def measured_sparsity(self) -> float:
        """Fraction of exact zeros over the masked weights of the model as it is now (over all ranks if sharded)."""
        return 1.0 - self._count(lambda w, m: (w != 0).sum()) / self.numel()

    def violations_in(self, state_dict: Mapping[str, Tensor]) -> int:
        """Number of pruned weights that are not exactly zero in a (full, gathered) ``state_dict`` about to be saved.

        Keys are matched by name, also under a prefix (``model.``, ``module.``); a masked weight missing from the
        state dict is an error.
        """
        count = 0
        for name, mask in self._masks.items():
            value = state_dict.get(name)
            if value is None:
                found = [key for key in state_dict if key.endswith("." + name)]
                if len(found) != 1:
                    raise KeyError(f"The state dict to check has no single entry for the masked weight {name}.")
                value = state_dict[found[0]]
            value = value.full_tensor() if is_dtensor(value) else value
            count += int((value.detach()[~mask.to(value.device)] != 0).sum())
        return count

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
        """Loads masks saved by :meth:`state_dict` (same names and shapes) and applies them if bound and enforcing."""
        unknown = set(state_dict) - set(self._masks)
        missing = set(self._masks) - set(state_dict)
        if unknown or missing:
            raise ValueError(
                f"Mask state does not match these masks: missing {sorted(missing)[:3]}, unexpected {sorted(unknown)[:3]}."
            )
        self.update_(state_dict)

    def save(self, path: str | os.PathLike, model: nn.Module | None = None) -> None:
        """Saves the masks to a safetensors file, 1 bit per weight, with what is needed to refuse a wrong file.

        The metadata holds the names and shapes, the sparsity, a SHA-256 checksum over names, shapes and bits, and,
        the fingerprint of the masked weights as they are now in ``model`` (default: the bound model), i.e. of the
        weights saved beside the file: :meth:`load` with a model refuses a file made for other weights. The file is
        written to a temporary name and renamed, so an interrupted save leaves no half file.
        """
        packed = {name: pack_bits(m.detach().cpu()) for name, m in self._masks.items()}
        shapes = self.shapes()
        metadata = {
            "format": MASKS_FILE_FORMAT,
            "version": MASKS_FILE_VERSION,
            "shapes": json.dumps(shapes),
            "fingerprint": _fingerprint(shapes),
            "sparsity": f"{self.sparsity():.6f}",
        }
        if model is not None:
            weights = {name: model.get_parameter(name) for name in self._masks}
        elif self._params:
            self.check()
            weights = self._params
        else:
            weights = {}
        if weights and not any(is_dtensor(p) for p in weights.values()):  # sharded: the fingerprint would need a gather
            metadata["model_fingerprint"] = weights_fingerprint({n: p.detach() for n, p in weights.items()})
        metadata["checksum"] = _checksum(packed, shapes, metadata)  # last: it covers every other field
        path = os.fspath(path)
        tmp = f"{path}.tmp"
        save_file(packed, tmp, metadata=metadata)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike, model: nn.Module | None = None, check_fingerprint: bool = True) -> SparseMasks:
        """Loads masks written by :meth:`save`; binds them to ``model`` (checking names and shapes) if given.

        Refuses, naming the problem: a file that is not a mask file or of an unknown format version, a checksum that
        does not match (a flipped byte), bits stored in another dtype or length than :meth:`save` writes, metadata
        that disagrees with the data (names, shapes, sparsity), and, with ``model`` and ``check_fingerprint``, a file
        saved beside other weights than ``model``'s (:meth:`check_fingerprint`). To apply a file's masks to another
        model on purpose, ``SparseMasks.load(path).bind(model)``.
        """
        path = os.fspath(path)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"No mask file at {path}.")
        from safetensors import safe_open

        try:
            with safe_open(path, framework="pt") as f:
                metadata = f.metadata() or {}
        except Exception as err:  # safetensors raises its own error types for a damaged header
            raise ValueError(f"{path} is not a readable safetensors file ({err}); it may be truncated or damaged.") from None
        if metadata.get("format") != MASKS_FILE_FORMAT:
            raise ValueError(f"{path} is not a sparse_transfer mask file (its metadata has no format={MASKS_FILE_FORMAT!r}).")
        version = metadata.get("version")
        if version not in ("1", MASKS_FILE_VERSION):
            raise ValueError(
                f"{path} is a mask file of format version {version!r}; this sparse_transfer reads versions 1 and "
                f"{MASKS_FILE_VERSION}. Upgrade sparse_transfer, or re-save the masks with this version."
            )
        try:
            shapes = {name: tuple(shape) for name, shape in json.loads(metadata["shapes"]).items()}
        except (KeyError, ValueError, TypeError, AttributeError):
            raise ValueError(f"{path}: the mask file's metadata has no readable 'shapes'.") from None
        for name, shape in shapes.items():
            if not all(type(d) is int and d >= 0 for d in shape) or math.prod(shape) == 0:
                raise ValueError(f"{path}: the shape {list(shape)} of {name} is not a non-empty tensor shape; the file was edited.")
        try:
            packed = load_file(path)
        except Exception as err:
            raise ValueError(f"{path}: the mask data cannot be read ({err}); the file is damaged.") from None
        problem = _file_problem(packed, shapes, metadata)
        if problem:
            raise ValueError(f"{path} {problem} Refusing to load it as masks; re-save the masks from their source.")
        if version == "1":
            logger.warning("%s has no checksum (mask file version 1): re-save it to protect it.", path)
        masks = cls({name: unpack_bits(packed[name], shapes[name]) for name in shapes})
        stored_sparsity = metadata.get("sparsity")
        try:
            claimed = float(stored_sparsity) if stored_sparsity is not None else None
        except ValueError:
            claimed = math.nan
        if claimed is not None and not abs(claimed - masks.sparsity()) <= 1e-6:  # NaN fails too
            raise ValueError(
                f"{path} says its sparsity is {stored_sparsity} but its bits hold {masks.sparsity():.6f}: the metadata "
                "disagrees with the data. Refusing to load it; re-save the masks from their source."
            )
        masks.saved_model_fingerprint = metadata.get("model_fingerprint")
        masks._source = path
        if model is not None:
            masks.bind(model)
            if check_fingerprint:
                masks.check_fingerprint()
        return masks

    def check_fingerprint(self) -> None:
        """Raises ``ValueError`` if these masks were loaded from a file saved beside other weights than the bound
        model's (see :meth:`save`); files without a model fingerprint pass."""
        expected = getattr(self, "saved_model_fingerprint", None)
        if expected is None:
            return
        self.check()
        actual = weights_fingerprint({n: p.detach() for n, p in self._params.items()})
        if actual != expected:
            raise ValueError(
                f"{getattr(self, '_source', 'The mask file')} was saved beside other weights than this "
                f"{type(self._model).__name__}'s (model fingerprint {expected} vs {actual}): it belongs to another "
                "model or checkpoint of the same architecture. Use the mask file saved with these weights; to apply "
                "these masks to this model on purpose, SparseMasks.load(path).bind(model)."
            )

    def __repr__(self) -> str:
        return f"{type(self).__name__}({len(self)} parameters, {self.numel():,} weights, sparsity={self.sparsity():.4f})"
