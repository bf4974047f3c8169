"""Gradual unfreezing, back to front, for sparse transfer of transformer encoders.

The schedule of the paper (section 4.3; RECIPES.md section 1), with ``L`` encoder blocks:

    stage 0        head (classifier, pooler) + every bias and LayerNorm
    stage k=1..L   + the weights of encoder block L-k (blocks unfrozen earlier stay unfrozen)
    stage L+1      everything (embedding tables only if ``unfreeze_embeddings``)

Parameters are sorted into four groups once, by name and owning module:

* always trainable: biases and normalization layers (``nn.LayerNorm`` and any ``*LayerNorm``/``*RMSNorm``
  module), everywhere including the embeddings' LayerNorm;
* block ``i``: the remaining parameters of encoder block ``i`` (its linear weights, the sparse ones);
* embeddings: ``nn.Embedding`` tables and the remaining parameters of modules whose name starts with
  ``embed`` (e.g. ELECTRA's ``embeddings_project``);
* head: everything else (classifier, pooler, DistilBERT's ``pre_classifier``...), trained from stage 0.

On a peft model (any module with adapters, e.g. LoRA) only the parameters peft left trainable take part: block
``i`` is then the adapters inside encoder block ``i``, the head is what ``modules_to_save`` trains, and the frozen
base never gets ``requires_grad`` back.

The stage is a pure function of the optimizer step (:func:`unfreeze_stage`), so a resumed run lands in the
same stage without any saved counter; :class:`GradualUnfreezer` still has ``state_dict``/``load_state_dict``
to check that a resumed run uses the same schedule. This module knows nothing of transformers.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from torch import nn

UNFREEZE_MODES = ("gradual", "none")

# Names under which the encoders we know keep their block list, most specific first; used only to choose
# between several candidate ModuleLists (e.g. an encoder-decoder), never required.
_PREFERRED_BLOCK_LISTS = ("encoder.layer", "transformer.layer", "encoder.layers", "layers", "layer", "blocks", "h")


def unfreeze_stage(step: int, steps_per_stage: int, num_stages: int) -> int:
    """The unfreezing stage that optimizer step ``step`` (counted from 0) trains in.

    Stages last ``steps_per_stage`` steps each; the last stage (everything trainable) goes on until the end
    of training, however long that is.
    """
    if steps_per_stage <= 0:
        raise ValueError(f"steps_per_stage must be positive, got {steps_per_stage}.")
    if num_stages <= 0:
        raise ValueError(f"num_stages must be positive, got {num_stages}.")
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    return min(step // steps_per_stage, num_stages - 1)


def _is_block_list(module: nn.Module) -> bool:
    children = list(module.children())
    return (
        isinstance(module, nn.ModuleList)
        and len(children) > 0
        and len({type(c) for c in children}) == 1
        and any(True for _ in module.parameters())
    )


def find_encoder_blocks(model: nn.Module, pattern: str | None = None) -> list[tuple[str, nn.Module]]:
    """Finds the transformer blocks of an encoder, front to back.

    Without ``pattern``: the model's ``nn.ModuleList`` of same-typed blocks. If there are several candidates,
    the one with a conventional name (``encoder.layer`` for BERT/RoBERTa/ELECTRA, ``transformer.layer`` for
    DistilBERT, ``layers``, ``blocks``, ``h``) wins, then the one holding the most parameters.

    With ``pattern`` (a regular expression searched in fully qualified module names): if it matches a
    ``ModuleList``, its children are the blocks; otherwise every matching module that is not inside
    another matching module is a block, in registration order.

    Args:
        model: The model, e.g. a ``BertForSequenceClassification``.
        pattern: Optional override, e.g. ``r"encoder\\.layer$"`` or ``r"encoder\\.layer\\.\\d+$"``.

    Returns:
        ``(qualified_name, module)`` for each block, first block (next to the embeddings) first.

    Raises:
        ValueError: if no block is found, naming the fix.
    """
    named = list(model.named_modules())
    if pattern is not None:
        regex = re.compile(pattern)
        hits = [(name, module) for name, module in named if name and regex.search(name)]
        if len(hits) >= 1 and isinstance(hits[0][1], nn.ModuleList):
            list_name, block_list = hits[0]
            blocks = [(f"{list_name}.{child}", m) for child, m in block_list.named_children()]
        else:
            blocks = []
            for name, module in hits:
                if not any(name.startswith(outer + ".") for outer, _ in blocks):
                    blocks.append((name, module))
        if not blocks:
            raise ValueError(
                f"encoder_blocks_pattern {pattern!r} matched no module of {type(model).__name__}. It is a regular "
                "expression searched in module names (see `model.named_modules()`), e.g. r'encoder\\.layer$'."
            )
        return blocks

    candidates = [(name, module) for name, module in named if _is_block_list(module)]
    if not candidates:
        raise ValueError(
            f"No encoder blocks found in {type(model).__name__}: it has no nn.ModuleList of same-typed layers. "
            "Pass `encoder_blocks_pattern` (a regular expression over module names, e.g. r'encoder\\.layer$') "
            "or use `unfreeze='none'` for ordinary fine-tuning."
        )

    def rank(item: tuple[str, nn.Module]) -> tuple[int, int]:
        name, module = item
        preferred = next(
            (i for i, suffix in enumerate(_PREFERRED_BLOCK_LISTS) if name == suffix or name.endswith("." + suffix)),
            len(_PREFERRED_BLOCK_LISTS),
        )
        return (preferred, -sum(p.numel() for p in module.parameters()))

    list_name, block_list = min(candidates, key=rank)
    return [(f"{list_name}.{child}", m) for child, m in block_list.named_children()]


def _is_norm(module: nn.Module) -> bool:
    name = type(module).__name__.lower()
    return isinstance(module, (nn.LayerNorm, nn.GroupNorm)) or name.endswith("layernorm") or name.endswith("rmsnorm")


class GradualUnfreezer:
    """Sets ``requires_grad`` on a model's parameters stage by stage, back to front.

    Frozen parameters get ``requires_grad=False``: autograd then computes no weight gradient for them, their
    ``.grad`` stays ``None`` and torch optimizers skip them entirely (no step, no weight decay, no momentum).

    Example:
        >>> unfreezer = GradualUnfreezer(model)          # finds model.bert.encoder.layer
        >>> unfreezer.num_stages                         # L + 2
        4
        >>> unfreezer.set_stage_(0)                      # head + biases + LayerNorms

    Args:
        model: The model whose parameters are frozen and unfrozen.
        blocks: Encoder blocks front to back as returned by :func:`find_encoder_blocks`; found automatically
            if ``None``.
        unfreeze_embeddings: Whether the final stage also trains the embedding tables.
        encoder_blocks_pattern: Passed to :func:`find_encoder_blocks` when ``blocks`` is ``None``.
    """

    def __init__(
        self,
        model: nn.Module,
        blocks: list[tuple[str, nn.Module]] | None = None,
        unfreeze_embeddings: bool = False,
        encoder_blocks_pattern: str | None = None,
    ):
        self.model = model
        self.unfreeze_embeddings = unfreeze_embeddings
        self.blocks = blocks if blocks is not None else find_encoder_blocks(model, encoder_blocks_pattern)
        self.stage: int | None = None
        # peft freezes the base and leaves the adapters (and modules_to_save) trainable: that set is the whole
        # universe of what may train here, or the unfreezer would train the base dense beside the adapters.
        self.adapters_only = any(hasattr(m, "adapter_layer_names") for m in model.modules())
        managed = [(n, p) for n, p in model.named_parameters() if p.requires_grad or not self.adapters_only]
        if not managed:
            raise ValueError("The peft model has no trainable parameter (inference_mode?): nothing to unfreeze.")

        always, embeddings, head = [], [], []
        block_weights: list[list[str]] = [[] for _ in self.blocks]
        norm_params = {id(p) for m in model.modules() if _is_norm(m) for p in m.parameters(recurse=False)}
        embedding_tables = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding)}
        block_prefixes = [name + "." for name, _ in self.blocks]
        embed_component = re.compile(r"(^|\.)embed[^.]*\.")
        for name, param in managed:
            # An adapter's own bias (LoRA's lora_bias) belongs to its block, like the adapter.
            if (name.endswith("bias") and not (self.adapters_only and ".lora_" in name)) or id(param) in norm_params:
                always.append(name)
                continue
            index = next((i for i, prefix in enumerate(block_prefixes) if name.startswith(prefix)), None)
            if index is not None:
                block_weights[index].append(name)
            elif id(param) in embedding_tables or embed_component.search(name):
                embeddings.append(name)
            else:
                head.append(name)
        self.always_trainable = always
        self.embeddings = embeddings
        self.head = head
        self.block_weights = block_weights
        self._params = dict(managed)

    @property
    def num_blocks(self) -> int:
        return len(self.blocks)

    @property
    def num_stages(self) -> int:
        """``L + 2``: the head stage, one stage per block, and the final all-together stage."""
        return self.num_blocks + 2

    def trainable_names(self, stage: int) -> set[str]:
        """The names of the parameters that train in ``stage``."""
        if not 0 <= stage < self.num_stages:
            raise ValueError(f"stage must be in [0, {self.num_stages - 1}], got {stage}.")
        names = set(self.always_trainable) | set(self.head)
        for k in range(1, min(stage, self.num_blocks) + 1):
            names.update(self.block_weights[self.num_blocks - k])
        if stage == self.num_stages - 1:
            names.update(n for weights in self.block_weights for n in weights)
            if self.unfreeze_embeddings:
                names.update(self.embeddings)
        return names

    def set_stage_(self, stage: int) -> None:
        """Sets ``requires_grad`` of every parameter for ``stage``."""
        trainable = self.trainable_names(stage)
        for name, param in self._params.items():
            param.requires_grad_(name in trainable)
        self.stage = stage

    def unfreeze_all_(self) -> None:
        """Makes every parameter require grad (so DDP registers them all before the first stage freezes some)."""
        for param in self._params.values():
            param.requires_grad_(True)

    def describe(self) -> list[str]:
        """One line per stage saying what it adds, for logs and docs."""
        lines = [f"stage 0: head {self.head} + {len(self.always_trainable)} biases/LayerNorm parameters"]
        for k in range(1, self.num_blocks + 1):
            lines.append(f"stage {k}: + block {self.blocks[self.num_blocks - k][0]}")
        final = "everything" + (" (embeddings included)" if self.unfreeze_embeddings else " but the embedding tables")
        lines.append(f"stage {self.num_stages - 1}: {final}")
        return lines

    def state_dict(self) -> dict:
        return {
            "stage": self.stage,
            "num_stages": self.num_stages,
            "blocks": [name for name, _ in self.blocks],
            "unfreeze_embeddings": self.unfreeze_embeddings,
        }

    def load_state_dict(self, state: dict) -> None:
        """Restores the stage, after checking that the saved schedule is this one."""
        blocks = [name for name, _ in self.blocks]
        if state.get("blocks") != blocks or state.get("unfreeze_embeddings") != self.unfreeze_embeddings:
            raise ValueError(
                "The checkpoint was trained with a different unfreezing schedule "
                f"(blocks {state.get('blocks')}, unfreeze_embeddings={state.get('unfreeze_embeddings')}) than this "
                f"run (blocks {blocks}, unfreeze_embeddings={self.unfreeze_embeddings}); resume with the same settings."
            )
        if state.get("stage") is not None:
            self.set_stage_(int(state["stage"]))


def names_requiring_grad(named: Iterable[tuple[str, nn.Parameter]]) -> set[str]:
    """The names of the parameters with ``requires_grad`` (a test and logging helper)."""
    return {name for name, p in named if p.requires_grad}
