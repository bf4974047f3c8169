"""Masked LoRA: peft adapters that keep every zero of a sparse base model.

A plain LoRA adds a dense low-rank update ``s * B A`` to each adapted weight, so training it on a pruned model and
merging it (``merge_and_unload``) revives the pruned weights. Masked LoRA multiplies the update by the base weight's
sparsity mask ``M`` (``M = W != 0`` when the adapter is created):

    W_eff = W + M * (s * B A)

so what trains is exactly what merges: after ``merge_and_unload()`` every pruned weight is exactly ``0`` and the
merged model computes what the adapter model computed (to float rounding). The same construction is used by SQFT's
SparsePEFT and LoSA; here it is built on peft's own extension points rather than a fork:

* :class:`SparseLoraConfig` is a ``peft.LoraConfig`` that registers the masked layers with peft's custom-module
  dispatch (``LoraConfig._register_custom_module``). ``get_peft_model``, ``save_pretrained``,
  ``PeftModel.from_pretrained(..., config=SparseLoraConfig.from_pretrained(path))``, ``merge_and_unload``, ``merge``,
  ``unmerge``, ``unload``, ``disable_adapter`` and ``add_adapter`` all work as for any LoRA.
* :class:`SparseLoraLinear` and :class:`SparseLoraConv2d` are peft's ``lora.Linear`` / ``lora.Conv2d`` whose delta
  weight is masked. Their forward computes ``F.linear(x, W + M * s B A)`` in one matmul (as LoRA would after merging);
  with LoRA dropout active it computes ``base(x) + F.linear(dropout(x), M * s B A)`` instead, which is exact too.
* The saved ``adapter_config.json`` records each adapted layer's mask (kept count and a SHA-256 of its bits, key
  ``sparse_masks``); loading the adapter on a base whose zeros differ is refused, naming the layer.

Example:
    >>> from peft import get_peft_model
    >>> from sparse_transfer.lora import SparseLoraConfig, load_sparse_lora
    >>> config = SparseLoraConfig(r=8, lora_alpha=16, target_modules=["query", "value"], task_type="SEQ_CLS")
    >>> model = get_peft_model(sparse_bert, config)          # trains like any peft model
    >>> model.save_pretrained("adapter")                     # peft's own files, the masks recorded
    >>> model = load_sparse_lora(sparse_bert_again, "adapter")
    >>> merged = model.merge_and_unload()                    # every pruned weight still exactly 0

Costs, honestly: the masked update needs the dense gradient of the adapted weight (``g^T x``) to mask it, which plain
LoRA never forms, so a training step costs about what full fine-tuning of the adapted layers costs in compute (not in
memory: no optimizer state or gradient is kept for the base weights). The fused forward keeps one ``W_eff`` per
adapted layer alive for the backward pass. ``benchmarks/sparse_lora.py`` measures both against plain LoRA.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from peft import LoraConfig, PeftModel
from peft.tuners.lora import layer as lora_layer
from peft.tuners.tuners_utils import BaseTunerLayer
from torch import Tensor, nn

from .core.masks import pack_bits

__all__ = [
    "SparseLoraConfig",
    "SparseLoraConv2d",
    "SparseLoraLinear",
    "is_masked_lora_layer",
    "load_sparse_lora",
    "lora_layers",
    "mask_record",
    "unmasked_lora_layers",
    "untracked_batchnorms",
]

# peft init schemes that rewrite the base weights (PiSSA, OLoRA, CorDA, LoftQ, LoRA-GA, EVA, MiCA subtract or
# replace part of W): they would densify a pruned base before training starts.
_BASE_REWRITING_INITS = ("pissa", "olora", "corda", "loftq", "lora_ga", "eva", "mica", "orthogonal")


def mask_record(mask: Tensor) -> str:
    """``"<kept>/<numel>:<sha256 of the packed bits, 16 hex digits>"``: what an adapter records of one layer's mask."""
    packed = pack_bits(mask.detach().cpu())
    digest = hashlib.sha256(packed.numpy().tobytes()).hexdigest()[:16]
    return f"{int(mask.sum())}/{mask.numel()}:{digest}"


@dataclass
class SparseLoraConfig(LoraConfig):
    """A ``peft.LoraConfig`` for masked LoRA: every adapted ``nn.Linear`` / ``nn.Conv2d`` keeps its base's zeros.

    Takes every ``LoraConfig`` argument. Refused, with the reason: ``use_dora`` and the other LoRA variants (their
    update is not ``B A`` and is not masked here), init schemes that rewrite the base weights (PiSSA, OLoRA, LoftQ,
    ...), and target layers other than ``nn.Linear`` / ``nn.Conv2d`` (embeddings, GPT-2's ``Conv1D``, grouped convs).

    Args:
        sparse_masks: Filled in by peft when the adapter is created: for each adapted module, its mask's kept count
            and checksum. Saved in ``adapter_config.json``; when the adapter is loaded again, each base layer's zeros
            must match it. Leave it ``None``.
    """

    # Declared as a LoRA variant (peft's own mechanism): a stock peft layer asked to take a masked adapter (e.g.
    # add_adapter(name, SparseLoraConfig(...)) on layers that already hold a plain LoRA) then refuses ("unsupported
    # variant combination ('masked_lora',)") instead of training it unmasked. Only the masked layers accept it.
    masked_lora: bool = field(
        default=True,
        metadata={"is_lora_variant": True, "help": "Marks a masked LoRA (sparse_transfer.lora); always True."},
    )
    sparse_masks: dict[str, str] | None = field(
        default=None,
        metadata={
            "help": "Recorded per adapted module when the adapter is created: '<kept>/<numel>:<checksum>' of the base "
            "weight's non-zero mask. A base whose zeros differ is refused when the adapter is loaded."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if not self.masked_lora:
            raise ValueError("SparseLoraConfig(masked_lora=False) is a plain LoRA: use peft.LoraConfig for that.")
        variants = [name for name in ("use_dora", "use_bdlora", "arrow_config", "velora_config", "monteclora_config",
                                      "kasa_config", "alora_invocation_tokens", "mica") if getattr(self, name, None)]
        if variants:
            raise ValueError(
                f"SparseLoraConfig does not support {variants}: masked LoRA masks the plain low-rank update B A. Use "
                "plain low-rank settings (r, lora_alpha, lora_dropout, use_rslora, target_modules)."
            )
        init = self.init_lora_weights
        if isinstance(init, str) and init.lower() != "gaussian" and init.lower().startswith(_BASE_REWRITING_INITS):
            raise ValueError(
                f"init_lora_weights={init!r} rewrites the base weights before training, which would densify a pruned "
                "base. Use init_lora_weights=True (the default) or 'gaussian'."
            )
        if self.target_parameters:
            raise ValueError(
                "SparseLoraConfig does not support target_parameters (LoRA on raw nn.Parameters): target the "
                "modules with target_modules."
            )
        # Custom dispatch is checked before peft's own layers, first match wins: Linear and Conv2d get the masked
        # layers, anything else an explicit refusal rather than peft's (unmasked) default.
        self._register_custom_module({nn.Linear: SparseLoraLinear, nn.Conv2d: SparseLoraConv2d, nn.Module: _Unsupported})

    @classmethod
    def from_peft_type(cls, **kwargs) -> SparseLoraConfig:
        # peft picks the config class from peft_type ("LORA" -> LoraConfig), which would drop sparse_masks.
        if kwargs.get("peft_type", "LORA") != "LORA":
            raise ValueError(f"Not a LoRA adapter config (peft_type={kwargs.get('peft_type')!r}).")
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str, subfolder: str | None = None, **kwargs) -> SparseLoraConfig:
        """Loads a masked LoRA adapter's config (local folder or Hub id). A plain LoRA adapter is refused: loading it
        as masked would change what it computes."""
        config = super().from_pretrained(pretrained_model_name_or_path, subfolder=subfolder, **kwargs)
        if not config.sparse_masks:
            raise ValueError(
                f"{pretrained_model_name_or_path} is a plain LoRA adapter (its adapter_config.json has no "
                "'sparse_masks' record), not a masked one: load it with peft.PeftModel.from_pretrained. (Merging a plain "
                "LoRA into a sparse base revives its pruned weights.)"
            )
        return config


class _MaskedLoraMixin:
    """The masked delta shared by :class:`SparseLoraLinear` and :class:`SparseLoraConv2d`."""

    sparse_lora_mask: Tensor

    def _init_mask(self, config: LoraConfig, target_name: str) -> None:
        weight = self.get_base_layer().weight
        if weight.device.type == "meta":
            raise ValueError(
                f"Masked LoRA on {target_name!r}: the base weight is on the meta device, so its zeros are unknown. "
                "Load the base model's weights before adding the adapter."
            )
        if not weight.dtype.is_floating_point or type(weight.data) is not Tensor:
            raise ValueError(
                f"Masked LoRA on {target_name!r}: the base weight is a {type(weight.data).__name__} of {weight.dtype} "
                "(quantized or wrapped), whose zeros cannot be read as a mask. Adapt a floating-point base."
            )
        if "sparse_lora_mask" not in self._buffers:
            # Not persistent: the mask is the base's own zeros, recorded in the adapter config, never a second copy.
            self.register_buffer("sparse_lora_mask", weight.detach() != 0, persistent=False)
        if not isinstance(config, SparseLoraConfig):
            raise ValueError(
                f"{target_name!r} holds a masked LoRA, and a plain LoRA ({type(config).__name__}) cannot be added beside "
                "it (the layer would compute it masked). Add adapters with SparseLoraConfig; load saved masked adapters "
                "with sparse_transfer.lora.load_sparse_lora(model, path, adapter_name=...)."
            )
        self._check_mask_current(target_name)
        record = mask_record(self.sparse_lora_mask)
        if not config.sparse_masks:  # a new adapter: record the masks it is created with
            config.sparse_masks = {}
            config._recording_masks = True
        expected = config.sparse_masks.get(target_name)
        if expected is None and getattr(config, "_recording_masks", False):
            config.sparse_masks[target_name] = record
        elif expected is None:
            raise ValueError(
                f"The masked LoRA adapter's record has no mask for {target_name!r} (it records "
                f"{len(config.sparse_masks)} layers): the adapter was trained on other layers, or its "
                "adapter_config.json was edited. Load it on the model it was trained on, with the same target_modules."
            )
        elif expected != record:
            raise ValueError(
                f"The masked LoRA adapter was trained on a base whose {target_name!r} had mask {expected} (kept/"
                f"total:checksum); this base's zeros give {record}. Load the adapter on the sparse model it was "
                "trained on (same pruned weights), or train a new adapter for this one."
            )

    def _check_mask_current(self, target_name: str = "") -> None:
        """Refuses a base weight whose zeros moved since the mask was taken (weights loaded into the base after the
        adapter was created): merging would then write the update onto pruned weights."""
        if self.merged:
            return
        weight = self.get_base_layer().weight
        if weight.device.type == "meta":
            return
        moved = int(((weight.detach() != 0) != self.sparse_lora_mask).sum())
        if moved:
            raise ValueError(
                f"The base weight of {target_name or type(self).__name__} no longer has the zeros its masked LoRA was "
                f"created with ({moved:,} positions differ): weights were loaded or changed after get_peft_model. Load "
                "the sparse weights first, then add the adapter."
            )

    def merge(self, safe_merge: bool = False, adapter_names: list[str] | None = None) -> None:
        self._check_mask_current()
        super().merge(safe_merge=safe_merge, adapter_names=adapter_names)

    def update_layer(self, adapter_name: str, r: int, lora_alpha: int, config: LoraConfig, **kwargs) -> None:
        # peft's conv layers do not pass target_name on to update_layer; __init__ kept it.
        target_name = kwargs.get("target_name") or getattr(self, "_sparse_target_name", None) or adapter_name
        self._init_mask(config, target_name)
        super().update_layer(adapter_name, r, lora_alpha, config=config, **kwargs)

    def get_delta_weight(self, adapter: str) -> Tensor:
        """peft's ``s * B A`` with every pruned coordinate exactly 0 (``where``, so a NaN/inf there stays out too).
        peft's merge, unmerge, ``merge_and_unload`` and weighted-adapter arithmetic all go through this."""
        weight = self.get_base_layer().weight
        # Outside autocast and cast to the base's dtype once, here: the forward adds exactly this tensor to W, and so
        # does the merge, so the merged model computes what the adapter model computed, in half precision too.
        with torch.autocast(weight.device.type, enabled=False):
            delta = super().get_delta_weight(adapter)
        delta = torch.where(self.sparse_lora_mask, delta, delta.new_zeros(()))
        return delta.to(weight.dtype) if weight.dtype.is_floating_point else delta

    def _adapters_to_apply(self) -> list[str]:
        return [a for a in self.active_adapters if a in self.lora_A.keys()]

    def _dropout_active(self, adapter: str) -> bool:
        dropout = self.lora_dropout[adapter]
        return isinstance(dropout, nn.Dropout) and dropout.p > 0 and dropout.training

    def _check_plain_call(self, args: tuple, kwargs: dict) -> None:
        if kwargs.get("adapter_names") is not None:
            raise ValueError(
                "Masked LoRA does not support mixed-adapter batches (adapter_names=...): peft computes them with the "
                "unmasked update. Set one adapter with set_adapter and call the model per adapter."
            )
        if args or kwargs:
            raise TypeError(f"{type(self).__name__} takes only the input tensor, got extra arguments.")

    def _call_base(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        """The base layer's computation with ``weight`` and ``bias`` in place of its own: ``F.linear`` / the conv
        directly for a plain ``nn.Linear`` / ``nn.Conv2d`` without hooks; otherwise the layer's own forward (a subclass
        such as timm's padding-same conv, or one with hooks) through ``torch.func.functional_call``, so that the
        adapter model computes exactly what the merged model (the same layer with merged weights) computes."""
        base = self.get_base_layer()
        plain = (
            type(base).forward is type(self)._plain_forward
            and not (base._forward_hooks or base._forward_pre_hooks)
            and not (nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks)
        )
        if plain:
            return self._apply_weight(x, weight, bias)
        params = {"weight": weight}
        if base.bias is not None:
            params["bias"] = bias if bias is not None else torch.zeros_like(base.bias)
        return torch.func.functional_call(base, params, (x,))

    def _lora_bias(self, adapter: str, dtype: torch.dtype) -> Tensor | None:
        return (self.lora_B[adapter].bias * self.scaling[adapter]).to(dtype) if self.lora_bias[adapter] else None

    def _add_bias(self, result: Tensor, bias: Tensor) -> Tensor:
        return result + (bias.view(1, -1, *([1] * (result.dim() - 2))) if self._channels_first else bias)

    def forward(self, x: Tensor, *args: Any, **kwargs: Any) -> Tensor:
        if self.disable_adapters or self.merged or not self._adapters_to_apply():
            return super().forward(x, *args, **kwargs)
        self._check_plain_call(args, kwargs)
        base = self.get_base_layer()
        adapters = self._adapters_to_apply()
        if any(self._dropout_active(a) for a in adapters):
            # Dropout applies to the adapter's input only, so the update is computed beside the base: exact for every
            # layer whose forward is linear in its weight (nn.Linear, nn.Conv2d and their usual subclasses).
            result = base(x)
            out_dtype = result.dtype
            for a in adapters:
                delta = self.get_delta_weight(a)
                xa = self._cast_input_dtype(x, delta.dtype)
                update = self._call_base(self.lora_dropout[a](xa), delta, None)
                extra = self._lora_bias(a, update.dtype)
                result = result + (update if extra is None else self._add_bias(update, extra)).to(out_dtype)
            return result
        # What merging writes, W + M * (s B A) (+ LoRA's bias), in one call of the base computation.
        weight = base.weight
        for a in adapters:
            weight = weight + self.get_delta_weight(a)
        result = self._call_base(self._cast_input_dtype(x, weight.dtype), weight, base.bias)
        for a in adapters:
            extra = self._lora_bias(a, result.dtype)
            if extra is not None:
                result = self._add_bias(result, extra)
        return result

    def _mixed_batch_forward(self, *args, **kwargs):  # peft's path ignores get_delta_weight
        raise ValueError("Masked LoRA does not support mixed-adapter batches (adapter_names=...).")


class SparseLoraLinear(_MaskedLoraMixin, lora_layer.Linear):
    """peft's ``lora.Linear`` with the update masked by the base weight's zeros (see the module docstring)."""

    _plain_forward = nn.Linear.forward
    _channels_first = False

    @property
    def lora_variants(self):
        return {**super().lora_variants, ("masked_lora",): None}  # the masked update is this class, no variant

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs) -> None:
        if config.fan_in_fan_out:
            raise ValueError("Masked LoRA targets nn.Linear, whose weight is (out, in): set fan_in_fan_out=False.")
        object.__setattr__(self, "_sparse_target_name", kwargs.get("target_name"))
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def _apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    def __repr__(self) -> str:
        return "sparse_" + super().__repr__()


class SparseLoraConv2d(_MaskedLoraMixin, lora_layer.Conv2d):
    """peft's ``lora.Conv2d`` with the update masked by the base weight's zeros (see the module docstring)."""

    _plain_forward = nn.Conv2d.forward
    _channels_first = True

    @property
    def lora_variants(self):
        return {**super().lora_variants, ("masked_lora",): None}

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LoraConfig, **kwargs) -> None:
        if base_layer.groups > 1:
            raise ValueError(
                f"Masked LoRA does not support grouped/depthwise convolutions ({base_layer}): peft cannot merge them. "
                "Leave these layers out of target_modules."
            )
        object.__setattr__(self, "_sparse_target_name", kwargs.get("target_name"))
        super().__init__(base_layer, adapter_name, config=config, **kwargs)

    def _apply_weight(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return self.get_base_layer()._conv_forward(x, weight, bias)

    def __repr__(self) -> str:
        return "sparse_" + super().__repr__()


class _Unsupported(nn.Module):
    def __init__(self, target: nn.Module, adapter_name: str, config: LoraConfig, **kwargs) -> None:
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        raise ValueError(
            f"Masked LoRA supports nn.Linear and nn.Conv2d targets; {kwargs.get('target_name') or 'a target'} is a "
            f"{type(base).__name__}. Leave it out of target_modules (a plain LoRA there would not keep its zeros)."
        )


def lora_layers(model: nn.Module) -> dict[str, lora_layer.LoraLayer]:
    """Every peft LoRA layer of ``model`` by module name."""
    return {name: m for name, m in model.named_modules() if isinstance(m, lora_layer.LoraLayer)}


def is_masked_lora_layer(module: nn.Module) -> bool:
    return isinstance(module, _MaskedLoraMixin)


def unmasked_lora_layers(model: nn.Module) -> list[str]:
    """Names of the plain (unmasked) LoRA layers whose base weight has zeros: the layers whose merge would revive
    pruned weights."""
    names = []
    for name, module in lora_layers(model).items():
        if is_masked_lora_layer(module) or not module.lora_A:
            continue
        weight = getattr(module.get_base_layer(), "weight", None)
        if isinstance(weight, Tensor) and weight.device.type != "meta" and bool((weight == 0).any()):
            names.append(name)
    return names


def untracked_batchnorms(model: nn.Module) -> list[str]:
    """BatchNorm layers outside ``modules_to_save`` that track running statistics: in training mode they change the
    frozen base, which the adapter file does not hold, so the saved adapter would not reproduce the trained model.
    Put them in ``modules_to_save`` (their statistics then travel with the adapter)."""
    saved = {id(m) for w in model.modules() if type(w).__name__ == "ModulesToSaveWrapper"
             for m in w.modules_to_save.modules()}
    return [name for name, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._NormBase) and m.track_running_stats and id(m) not in saved
            and ".original_module" not in name]


def load_sparse_lora(
    model: nn.Module,
    model_id: str | os.PathLike,
    adapter_name: str = "default",
    is_trainable: bool = False,
    **kwargs,
) -> PeftModel:
    """Loads a masked LoRA adapter (local folder or Hub id) onto the sparse ``model`` it was trained on.

    The same as ``PeftModel.from_pretrained(model, model_id, config=SparseLoraConfig.from_pretrained(model_id))``.
    Refuses a plain LoRA adapter and a base whose zeros differ from the masks the adapter recorded.

    Args:
        model: The sparse base model (e.g. ``AutoModelForSequenceClassification.from_pretrained(...)``).
        model_id: Folder or Hub repository holding ``adapter_config.json`` and ``adapter_model.safetensors``.
        adapter_name: Name of the adapter in the returned model.
        is_trainable: Load for further training (else inference mode).
        **kwargs: Passed to ``SparseLoraConfig.from_pretrained`` and ``PeftModel.from_pretrained`` (``revision``,
            ``token``, ``subfolder``...).
    """
    hub_keys = ("revision", "token", "subfolder", "cache_dir", "local_files_only")
    config = SparseLoraConfig.from_pretrained(str(model_id), **{k: v for k, v in kwargs.items() if k in hub_keys})
    if isinstance(model, PeftModel):  # another adapter on a model that has one: peft's load_adapter, our config
        config.inference_mode = not is_trainable
        model.add_adapter(adapter_name, config)
        model.load_adapter(str(model_id), adapter_name, is_trainable=is_trainable, **kwargs)
        return model
    return PeftModel.from_pretrained(
        model, str(model_id), adapter_name=adapter_name, is_trainable=is_trainable, config=config, **kwargs
    )
