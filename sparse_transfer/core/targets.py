"""Which parameters of a model are prunable.

A target is a parameter addressed by its fully qualified name (``bert.encoder.layer.3.output.dense.weight``),
selected by the type of the module that owns it and by include/exclude regular expressions over that name.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, replace

from torch import nn

logger = logging.getLogger(__name__)

PRUNABLE_MODULE_TYPES: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv1d, nn.Conv2d)

# The six linears per encoder block that Neural Magic's oBERT prunes, in BERT/RoBERTa/ELECTRA naming
# (``layer.N.attention.self.query``...) and in DistilBERT naming (``layer.N.attention.q_lin``...).
BERT_ENCODER_PATTERNS: tuple[str, ...] = (
    r"(^|\.)layer\.\d+\.attention\.self\.(query|key|value)\.weight$",
    r"(^|\.)layer\.\d+\.attention\.output\.dense\.weight$",
    r"(^|\.)layer\.\d+\.intermediate\.dense\.weight$",
    r"(^|\.)layer\.\d+\.output\.dense\.weight$",
    r"(^|\.)layer\.\d+\.attention\.(q_lin|k_lin|v_lin|out_lin)\.weight$",
    r"(^|\.)layer\.\d+\.ffn\.(lin1|lin2)\.weight$",
)


@dataclass(frozen=True)
class TargetSpec:
    """Selects the prunable parameters of a model.

    Args:
        module_types: Modules whose ``parameter_name`` parameter may be pruned. Subclasses count.
        include: Regular expressions (``re.search``) over parameter names; a parameter is kept if any
            matches. Empty means every parameter of a matching module. Each pattern must match at
            least one parameter, so a typo is an error rather than a silently dense layer.
        exclude: Regular expressions; a parameter matching any of them is dropped.
        first_last_dense: Keep the first and the last selected layer (in registration order, which
            for timm and torchvision CNNs is the stem conv and the classifier) dense.
        parameter_name: Name of the parameter on each module; ``"weight"`` for all built-in layers.
        strict: Require every ``include`` pattern to match. Presets that cover several model families
            (each family matches only some of the patterns) turn it off.
    """

    module_types: tuple[type[nn.Module], ...] = PRUNABLE_MODULE_TYPES
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    first_last_dense: bool = False
    parameter_name: str = "weight"
    strict: bool = True

    @classmethod
    def bert_encoder(cls) -> TargetSpec:
        """The oBERT target set: query, key, value, attention output, intermediate, output of every block."""
        return cls(module_types=(nn.Linear,), include=BERT_ENCODER_PATTERNS, strict=False)

    @classmethod
    def cnn(cls, first_last_dense: bool = False) -> TargetSpec:
        """Every conv and linear weight, optionally with the first and last layer dense."""
        return cls(first_last_dense=first_last_dense)

    def with_(self, **changes) -> TargetSpec:
        return replace(self, **changes)


TARGET_PRESETS = {
    "bert": TargetSpec.bert_encoder,
    "all": TargetSpec.cnn,
    "cnn": TargetSpec.cnn,
    "cnn-fld": lambda: TargetSpec.cnn(first_last_dense=True),
}


_warned_tied: set[str] = set()  # tied parameters already named in a warning, once per process


def resolve_target_spec(targets: TargetSpec | str | None) -> TargetSpec:
    """Turns a preset name (``"bert"``, ``"cnn"``, ``"cnn-fld"``, ``"all"``) or ``None`` (= ``"all"``) into a spec."""
    if targets is None:
        return TargetSpec()
    if isinstance(targets, TargetSpec):
        return targets
    if isinstance(targets, str):
        try:
            return TARGET_PRESETS[targets]()
        except KeyError:
            raise ValueError(
                f"Unknown target preset {targets!r}; use one of {sorted(TARGET_PRESETS)} or pass a TargetSpec."
            ) from None
    raise TypeError(f"targets must be a TargetSpec, a preset name or None, got {type(targets).__name__}.")


# Name segments that peft inserts around a wrapped module: ``base_model.model.`` in front, ``.base_layer`` for the
# module a LoRA layer wraps, ``.modules_to_save.<adapter>`` for a trained copy of a head.
_PEFT_PREFIX = re.compile(r"^base_model\.model\.")
_PEFT_SEGMENTS = re.compile(r"\.base_layer(?=\.|$)|\.modules_to_save\.[^.]+(?=\.|$)")


def canonical_name(name: str) -> str:
    """``name`` as it reads in the unwrapped model: peft's wrapper segments removed, so that target patterns written
    for ``bert.encoder.layer.0.attention.self.query.weight`` also select
    ``base_model.model.bert.encoder.layer.0.attention.self.query.base_layer.weight``."""
    return _PEFT_SEGMENTS.sub("", _PEFT_PREFIX.sub("", name))


def _adapter_param_ids(model: nn.Module) -> set[int]:
    """Parameters that belong to peft adapters (``lora_A``, ``lora_B``...) or to the frozen ``original_module`` that a
    trained head copy replaces: never pruning targets. Duck-typed, so this module does not import peft."""
    ids: set[int] = set()
    for module in model.modules():
        if type(module).__name__ == "ModulesToSaveWrapper":
            # Its "adapter" is the trained copy of the wrapped module (a head): that copy is the module now, and a
            # target if the original was; the frozen original is not.
            original = getattr(module, "original_module", None)
            if isinstance(original, nn.Module):
                ids.update(id(p) for p in original.parameters())
            continue
        for layer_name in getattr(module, "adapter_layer_names", ()):
            sub = getattr(module, layer_name, None)
            if isinstance(sub, (nn.Module, nn.ParameterDict)):
                ids.update(id(p) for p in sub.parameters())
    return ids


def select_targets(model: nn.Module, targets: TargetSpec | str | None = None) -> dict[str, nn.Parameter]:
    """Returns the prunable parameters of ``model`` by fully qualified name, in registration order.

    Patterns are matched against :func:`canonical_name`, so they work through peft wrappers; adapter weights (LoRA's
    ``A`` and ``B``) are never targets. The returned names are the model's own.

    Raises:
        ValueError: if nothing is selected, or if an ``include`` pattern matches no parameter.
    """
    spec = resolve_target_spec(targets)
    include = [re.compile(p) for p in spec.include]
    exclude = [re.compile(p) for p in spec.exclude]
    matched_patterns: set[str] = set()
    selected: dict[str, nn.Parameter] = {}
    seen: set[int] = _adapter_param_ids(model)
    # A tensor shared by several modules (an MLM decoder tied to the word embeddings) goes by the name it was first
    # registered under: the one model.named_parameters() gives, and the one save_pretrained keeps (it drops the
    # tied copies), so that its mask can be saved and checked against the checkpoint.
    owner_names: dict[int, str] = {}
    for param_name, param in model.named_parameters(remove_duplicate=False):
        owner_names.setdefault(id(param), param_name)
    for module_name, module in model.named_modules():
        if not isinstance(module, spec.module_types):
            continue
        param = getattr(module, spec.parameter_name, None)
        if not isinstance(param, nn.Parameter) or id(param) in seen:
            continue
        name = f"{module_name}.{spec.parameter_name}" if module_name else spec.parameter_name
        owner = owner_names.get(id(param), name)
        readable = {canonical_name(name), canonical_name(owner)}
        if include:
            hits = [p.pattern for p in include if any(p.search(r) for r in readable)]
            if not hits:
                continue
            matched_patterns.update(hits)
        if any(p.search(r) for p in exclude for r in readable):
            continue
        seen.add(id(param))
        if owner != name and owner not in _warned_tied:
            _warned_tied.add(owner)
            logger.warning(
                "%s is tied to %s: pruning it prunes both, and its mask goes by %s (the name checkpoints keep). To "
                "keep it dense, exclude it: TargetSpec(exclude=(%r,)) (on the command line, a --targets preset that "
                "leaves it out, such as 'bert').", name, owner, owner, re.escape(canonical_name(name)) + "$",
            )
        selected[owner] = param
    missing = [p.pattern for p in include if p.pattern not in matched_patterns]
    if missing and spec.strict:
        raise ValueError(
            f"Target pattern(s) {missing} matched no parameter of {type(model).__name__}. "
            "Check the names with `model.named_parameters()` or `python -m sparse_transfer.inspect`."
        )
    if spec.first_last_dense and len(selected) >= 2:
        names = list(selected)
        for name in (names[0], names[-1]):
            del selected[name]
    if not selected:
        raise ValueError(
            f"No prunable parameter found in {type(model).__name__} for {spec}. Widen `include`/`module_types` "
            "or pick another preset (for BERT-family encoders 'bert', for CNNs 'cnn')."
        )
    return selected
