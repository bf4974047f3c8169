"""Sparsity reporting: per-target table, global sparsity, all-zero output channels."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from torch import Tensor, nn

from .targets import TargetSpec, select_targets


@dataclass
class LayerSparsity:
    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    zero_channels: int
    channels: int

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0


@dataclass
class SparsityReport:
    """Sparsity of a model's targets and of the whole model.

    ``zero_channel_fraction`` is the fraction of output channels (rows of a linear, filters of a conv)
    whose weights are all exactly zero.
    """

    layers: list[LayerSparsity] = field(default_factory=list)
    model_numel: int = 0
    model_nonzeros: int = 0

    @property
    def target_numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def target_nonzeros(self) -> int:
        return sum(layer.nonzeros for layer in self.layers)

    @property
    def target_sparsity(self) -> float:
        return 1.0 - self.target_nonzeros / self.target_numel if self.target_numel else 0.0

    @property
    def model_sparsity(self) -> float:
        return 1.0 - self.model_nonzeros / self.model_numel if self.model_numel else 0.0

    @property
    def zero_channel_fraction(self) -> float:
        channels = sum(layer.channels for layer in self.layers)
        return sum(layer.zero_channels for layer in self.layers) / channels if channels else 0.0

    def to_dict(self) -> dict:
        return {
            "target_sparsity": self.target_sparsity,
            "model_sparsity": self.model_sparsity,
            "zero_channel_fraction": self.zero_channel_fraction,
            "target_numel": self.target_numel,
            "target_nonzeros": self.target_nonzeros,
            "model_numel": self.model_numel,
            "model_nonzeros": self.model_nonzeros,
            "layers": [dict(asdict(layer), shape=list(layer.shape), sparsity=layer.sparsity) for layer in self.layers],
        }

    def format_table(self) -> str:
        name_width = max([len("parameter")] + [len(layer.name) for layer in self.layers])
        header = f"{'parameter':<{name_width}}  {'shape':>18}  {'params':>11}  {'non-zeros':>11}  {'sparsity':>8}  {'zero ch.':>8}"
        lines = [header, "-" * len(header)]
        for layer in self.layers:
            lines.append(
                f"{layer.name:<{name_width}}  {'x'.join(map(str, layer.shape)):>18}  {layer.numel:>11,}  "
                f"{layer.nonzeros:>11,}  {layer.sparsity:>8.2%}  {layer.zero_channels / max(layer.channels, 1):>8.2%}"
            )
        lines.append("-" * len(header))
        lines.append(
            f"targets: {len(self.layers)} tensors, {self.target_numel:,} weights, sparsity {self.target_sparsity:.2%}, "
            f"all-zero output channels {self.zero_channel_fraction:.2%}"
        )
        lines.append(f"whole model: {self.model_numel:,} parameters, sparsity {self.model_sparsity:.2%}")
        return "\n".join(lines)


@torch.no_grad()
def layer_sparsity(name: str, weight: Tensor) -> LayerSparsity:
    weight = weight.detach()
    nonzero = weight != 0
    channels = weight.shape[0] if weight.dim() >= 2 else 0
    zero_channels = int((~nonzero.reshape(channels, -1).any(dim=1)).sum()) if channels else 0
    return LayerSparsity(name, tuple(weight.shape), weight.numel(), int(nonzero.sum()), zero_channels, channels)


def sparsity_report(
    model: nn.Module | Mapping[str, Tensor], targets: TargetSpec | str | Iterable[str] | None = None
) -> SparsityReport:
    """Builds a :class:`SparsityReport`.

    Args:
        model: A module, or a state dict (name -> tensor) such as a loaded checkpoint.
        targets: For a module, a :class:`TargetSpec` or preset name. For a state dict, a preset name
            (``"bert"`` selects by name; anything else selects every weight of two or more dims that is
            not an embedding) or an explicit list of tensor names.
    """
    if isinstance(model, nn.Module):
        tensors = {name: p for name, p in model.named_parameters()}
        names = list(select_targets(model, targets))
    else:
        tensors = dict(model)
        names = _state_dict_targets(tensors, targets)
    report = SparsityReport(layers=[layer_sparsity(name, tensors[name]) for name in names])
    for tensor in tensors.values():
        if tensor.is_floating_point():
            report.model_numel += tensor.numel()
            report.model_nonzeros += int(torch.count_nonzero(tensor))
    return report


def _state_dict_targets(tensors: Mapping[str, Tensor], targets) -> list[str]:
    if targets is not None and not isinstance(targets, (str, TargetSpec)):
        names = list(targets)
        unknown = [n for n in names if n not in tensors]
        if unknown:
            raise ValueError(f"Target tensors not in the checkpoint: {unknown[:3]}")
        return names
    spec = TargetSpec.bert_encoder() if targets == "bert" else targets
    if isinstance(spec, TargetSpec) and spec.include:
        patterns = [re.compile(p) for p in spec.include]
        return [n for n in tensors if any(p.search(n) for p in patterns)]
    return [
        name
        for name, t in tensors.items()
        if name.endswith("weight") and t.dim() >= 2 and t.is_floating_point() and "embed" not in name
    ]
