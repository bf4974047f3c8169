"""Saving, checking, loading and publishing sparse checkpoints.

A sparse checkpoint written here is an ordinary checkpoint: Hugging Face models go through their own
``save_pretrained`` (safetensors), timm and plain PyTorch models become ``model.safetensors`` (plus timm's
``config.json``), with ordinary parameter names and the pruned weights stored as exact zeros. Next to it
lie the mask file (:data:`~sparse_transfer.core.MASKS_NAME`, 1 bit per weight), which is the explicit record
of what is pruned, and a model card whose sparsity section is computed from the saved weights.

Because the mask is stored separately, a consumer can check that the zeros survived a round trip
(:func:`verify_checkpoint_sparsity`) instead of re-guessing the mask from ``|w| > eps``.
"""

from __future__ import annotations

import base64
import fnmatch
import glob
import inspect as _inspect
import json
import logging
import mmap
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch
from torch import Tensor, nn

from ._rundir import plain as _plain
from .core import MASKS_NAME, SparseMasks, SparsityReport, select_targets, sparsity_report
from .core.masks import weights_fingerprint
from .core.targets import BERT_ENCODER_PATTERNS, TargetSpec

logger = logging.getLogger(__name__)

__all__ = [
    "PushFailed",
    "auto_targets",
    "check_push_target",
    "check_sparsity",
    "load_sparse_masks",
    "load_state_dict_from_checkpoint",
    "model_card",
    "files_to_upload",
    "push_or_explain",
    "push_sparse_to_hub",
    "refuse_secrets",
    "save_sparse_adapter",
    "save_sparse_pretrained",
    "verify_sparse_adapter",
    "shipped_masks",
    "verify_checkpoint_sparsity",
]

SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
WEIGHTS_NAME = "pytorch_model.bin"
WEIGHTS_INDEX_NAME = "pytorch_model.bin.index.json"
CARD_NAME = "README.md"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"

# Weight files of an earlier save that must not survive next to a new one: a stale shard index would make
# loaders read the old weights.
_WEIGHT_FILE_RE = re.compile(
    r"^(model|pytorch_model)(-\d{5}-of-\d{5})?\.(safetensors|bin)(\.index\.json)?$"
)
# What a push uploads, as an allow-list over the folder's top-level files: weights as safetensors, the mask file,
# configs, tokenizer and processor files, the model card, results and recipes as JSON/YAML. Everything else stays
# local: pickles (training_args.bin holds the Hub token; optimizer.pt, scheduler.pt, rng_state*.pth), Trainer
# checkpoint-* folders and runs/, hidden files, interrupted writes.
UPLOAD_PATTERNS = ("*.safetensors", "*.json", "*.yaml", "*.yml", "*.md", "*.txt", "*.model", "*.tiktoken", "*.jinja")
# A Hugging Face access token, in any file about to be uploaded, is refused whoever's it is.
_HF_TOKEN_RE = re.compile(rb"hf_[A-Za-z0-9]{30,}")


# --------------------------------------------------------------------------------------------- targets
def auto_targets(model: nn.Module | Mapping[str, Tensor]) -> TargetSpec | str:
    """The BERT encoder preset if its patterns match ``model``, else every conv/linear weight.

    Args:
        model: A module or a state dict.

    Returns:
        ``TargetSpec.bert_encoder()`` or ``"bert"`` (for a state dict) when the oBERT encoder linears exist,
        else ``"cnn"``.
    """
    if isinstance(model, nn.Module):
        try:
            select_targets(model, "bert")
            return TargetSpec.bert_encoder()
        except ValueError:
            return "cnn"
    patterns = [re.compile(p) for p in BERT_ENCODER_PATTERNS]
    if any(p.search(name) for name in model for p in patterns):
        return "bert"
    return "cnn"


# -------------------------------------------------------------------------------------------- checking
@torch.no_grad()
def check_sparsity(model: nn.Module | Mapping[str, Tensor], masks: SparseMasks) -> None:
    """Checks that every pruned weight of ``model`` is exactly zero.

    Args:
        model: A module or a state dict (name -> tensor) such as a loaded checkpoint.
        masks: The masks; ``False`` marks a pruned weight. They need not be bound to ``model``.

    Raises:
        ValueError: naming every masked tensor that is missing, has the wrong shape or holds a non-zero
            pruned weight, with the number of such weights.
    """
    tensors = dict(model.named_parameters(remove_duplicate=False)) if isinstance(model, nn.Module) else dict(model)
    missing, wrong_shape, revived = [], [], []
    for name, mask in masks.items():
        tensor = tensors.get(name)
        if tensor is None:
            missing.append(name)
            continue
        if tuple(tensor.shape) != tuple(mask.shape):
            wrong_shape.append(f"{name} {tuple(tensor.shape)} vs mask {tuple(mask.shape)}")
            continue
        count = int((tensor.detach()[~mask.to(tensor.device)] != 0).sum())
        if count:
            revived.append((name, count))
    problems = []
    if missing:
        problems.append(f"{len(missing)} masked tensor(s) are missing, e.g. {missing[:3]}")
    if wrong_shape:
        problems.append(f"{len(wrong_shape)} tensor(s) do not match their mask's shape: {wrong_shape[:3]}")
    if revived:
        total = sum(count for _, count in revived)
        listed = ", ".join(f"{name} ({count:,})" for name, count in revived[:10])
        more = f" and {len(revived) - 10} more" if len(revived) > 10 else ""
        problems.append(
            f"{total:,} pruned weight(s) are non-zero in {len(revived)} tensor(s): {listed}{more}"
        )
    if problems:
        fix = (" The weights no longer match the masks: enforce them during training with `masks.attach(optimizer)`, "
               "or call `masks.apply_()` before saving." if revived else
               " The masks were made for another model (or under other names): use the masks of these weights.")
        raise ValueError("Sparsity check failed: " + "; ".join(problems) + "." + fix)


def verify_checkpoint_sparsity(checkpoint: str | os.PathLike, revision: str | None = None) -> SparseMasks | None:
    """Checks that a saved checkpoint's weights still hold the zeros its mask file records.

    Args:
        checkpoint: A local checkpoint directory or a Hub repo id.
        revision: Hub revision (branch, tag or commit) for a repo id.

    Returns:
        The checkpoint's masks (unbound), or ``None`` if it has no mask file.

    Raises:
        ValueError: if a pruned weight is non-zero, or a masked tensor is missing (see :func:`check_sparsity`).
    """
    masks_path = _find_masks_file(checkpoint, revision)
    if masks_path is None:
        return None
    masks = SparseMasks.load(masks_path)
    state_dict = load_state_dict_from_checkpoint(checkpoint, revision=revision)
    try:
        check_sparsity(state_dict, masks)
    except ValueError as err:
        raise ValueError(f"Checkpoint {os.fspath(checkpoint)}: {err}") from None
    expected = masks.saved_model_fingerprint
    if expected is not None and weights_fingerprint({n: state_dict[n] for n in masks}) != expected:
        raise ValueError(
            f"Checkpoint {os.fspath(checkpoint)}: its {MASKS_NAME} was saved beside other weights (model fingerprint "
            f"{expected}): it belongs to another checkpoint. Save the mask file with these weights."
        )
    return masks


def load_sparse_masks(
    model: nn.Module, checkpoint: str | os.PathLike, revision: str | None = None, strict: bool = True
) -> SparseMasks | None:
    """Loads a checkpoint's mask file, binds it to ``model`` and checks the model's zeros against it.

    Use it right after ``from_pretrained`` / ``timm.create_model``: the masks then come from the explicit
    record rather than from the loaded zeros, and a model whose sparsity was lost is reported at once.

    Args:
        model: The model loaded from ``checkpoint``.
        checkpoint: A local checkpoint directory, a mask file, or a Hub repo id.
        revision: Hub revision for a repo id.
        strict: Raise if the model's pruned weights are not zero, or if the mask file was saved beside other weights
            than the model's; otherwise return the masks anyway (so that ``masks.apply_()`` can restore the sparsity).

    Returns:
        The bound masks, or ``None`` if the checkpoint has no mask file.

    Raises:
        ValueError: if the masks do not fit ``model`` or (with ``strict``) a pruned weight is non-zero.
    """
    path = os.fspath(checkpoint)
    masks_path = path if os.path.isfile(path) else _find_masks_file(path, revision)
    if masks_path is None:
        return None
    masks = SparseMasks.load(masks_path, model, check_fingerprint=False)
    if strict:
        check_sparsity(model, masks)  # first: it names the tensors whose zeros were lost
        masks.check_fingerprint()
    return masks


def shipped_masks(model: nn.Module, checkpoint: str | os.PathLike, revision: str | None = None) -> SparseMasks | None:
    """The masks a checkpoint ships (its :data:`MASKS_NAME`), bound to ``model`` loaded from it, or ``None``.

    Names are matched to ``model``'s as saved, or under the model's ``base_model_prefix`` (a mask file saved with a
    base encoder, ``encoder.layer...``, used by ``*ForSequenceClassification``, ``bert.encoder.layer...``). The
    file is validated (:meth:`SparseMasks.load`), and the weights must agree with it: every weight it marks as
    pruned is exactly 0, and it was saved beside these weights (its model fingerprint). A disagreement is an error,
    never a silent re-masking.
    """
    path = os.fspath(checkpoint)
    masks_path = _find_masks_file(path, revision)
    if masks_path is None:
        return None
    loaded = SparseMasks.load(masks_path)
    names = dict(model.named_parameters(remove_duplicate=False))
    prefix = getattr(model, "base_model_prefix", "")
    if prefix and not all(n in names for n in loaded) and all(f"{prefix}.{n}" in names for n in loaded):
        renamed = SparseMasks({f"{prefix}.{n}": m for n, m in loaded.items()})
        renamed.saved_model_fingerprint, renamed._source = loaded.saved_model_fingerprint, masks_path
        loaded = renamed
    heads = [n for n in loaded if n not in names and prefix and not n.startswith(f"{prefix}.")]
    if heads and len(heads) < len(loaded):
        # The checkpoint's own head (an MLM head pruned with targets beyond the encoder): transformers does not load
        # it into this model either. The file's fingerprint covers it, so the file is checked against the checkpoint's
        # weights, and the masks of what this model loads against the model.
        verify_checkpoint_sparsity(path, revision)
        logger.warning(
            "%s masks %d tensor(s) that %s does not load (e.g. %s: the checkpoint's own head); their masks are dropped.",
            masks_path, len(heads), type(model).__name__, heads[0],
        )
        kept = SparseMasks({n: m for n, m in loaded.items() if n not in heads})
        kept._source = masks_path
        loaded = kept
    loaded.bind(model)
    try:
        check_sparsity(model, loaded)
    except ValueError as err:
        raise ValueError(f"{masks_path} disagrees with the weights of {path}: {err}") from None
    loaded.check_fingerprint()
    return loaded


# --------------------------------------------------------------------------------------------- saving
def save_sparse_pretrained(
    model: nn.Module,
    output_dir: str | os.PathLike,
    masks: SparseMasks | None = None,
    processing_class=None,
    card: dict | None = None,
    targets: TargetSpec | str | None = None,
) -> None:
    """Saves a sparse model as an ordinary checkpoint plus its mask file and a model card.

    Files written: the weights (``save_pretrained`` with safetensors for Hugging Face models, else
    ``model.safetensors`` and, for timm models, timm's ``config.json``), :data:`MASKS_NAME` if ``masks`` is
    given, the processing class's files if given, and ``README.md``. Everything is written to a temporary
    directory first and moved into place only when complete; files of an earlier save that the new one
    would contradict (old weight shards, an old mask file) are removed. Other files in ``output_dir`` (for
    example Trainer ``checkpoint-*`` folders) are left alone.

    Args:
        model: A ``transformers.PreTrainedModel``, a timm model or any ``nn.Module``.
        output_dir: Target directory; created if needed.
        masks: The masks enforced during training. The weights are checked against them before anything is
            written.
        processing_class: Tokenizer / processor / feature extractor to save alongside (anything with
            ``save_pretrained``).
        card: Model card fields: ``title``, ``base_model``, ``recipe`` (dict), ``results`` (dict),
            ``method``, ``datasets``, ``tags``, ``license``.
        targets: Tensors the card's sparsity section covers when ``masks`` is ``None`` (default: the BERT
            encoder preset if it matches, else every conv/linear weight).

    Raises:
        ValueError: if a pruned weight is not exactly zero.
    """
    if masks is not None:
        check_sparsity(model, masks)
    output_dir = Path(output_dir).resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_dir, 0o777 & ~umask)  # mkdtemp makes it owner-only; the final folder should not be
    try:
        library = _save_weights(model, tmp_dir)
        if processing_class is not None:
            processing_class.save_pretrained(tmp_dir)
        if masks is not None:
            masks.save(tmp_dir / MASKS_NAME, model=model)
        if masks is not None:
            report = sparsity_report(dict(model.named_parameters()), list(masks))
        else:
            report = sparsity_report(model, targets if targets is not None else auto_targets(model))
        card_text = model_card(report, card=card, masks=masks, library=library, location=output_dir)
        (tmp_dir / CARD_NAME).write_text(card_text, encoding="utf-8")
        _move_into_place(tmp_dir, output_dir, drop_masks=masks is None)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def save_sparse_adapter(
    model: nn.Module,
    output_dir: str | os.PathLike,
    processing_class=None,
    card: dict | None = None,
) -> None:
    """Saves a masked LoRA adapter (a peft model built with :class:`~sparse_transfer.lora.SparseLoraConfig`) with
    peft's own files, the processing class and a model card; atomically, like :func:`save_sparse_pretrained`.

    Files: ``adapter_config.json`` (with the masks' record), ``adapter_model.safetensors`` (the adapters and the
    ``modules_to_save`` heads), the tokenizer's files, ``README.md``.

    Raises:
        ValueError: if the model has no masked LoRA layer, or has a plain LoRA layer on pruned weights.
    """
    from .lora import is_masked_lora_layer, lora_layers, unmasked_lora_layers

    layers = lora_layers(model)
    for name, layer in layers.items():
        if is_masked_lora_layer(layer):
            layer._check_mask_current(name)
    plain = unmasked_lora_layers(model)
    if plain or not any(is_masked_lora_layer(m) for m in layers.values()):
        raise ValueError(
            f"{type(model).__name__} is not a masked LoRA model"
            + (f" ({len(plain)} plain LoRA layers wrap pruned weights, e.g. {plain[0]})" if plain else "")
            + ": build it with get_peft_model(model, sparse_transfer.lora.SparseLoraConfig(...))."
        )
    output_dir = Path(output_dir).resolve()
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp_dir, 0o777 & ~umask)
    try:
        model.save_pretrained(tmp_dir)
        if processing_class is not None:
            processing_class.save_pretrained(tmp_dir)
        (tmp_dir / CARD_NAME).write_text(adapter_card(tmp_dir, card), encoding="utf-8")
        _move_into_place(tmp_dir, output_dir, drop_masks=True)
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def verify_sparse_adapter(folder: str | os.PathLike) -> dict[str, str]:
    """Checks that ``folder`` holds a masked LoRA adapter (peft's two files, the masks recorded); returns the record
    (module -> ``kept/total:checksum``).

    Raises:
        FileNotFoundError: if a file is missing.
        ValueError: if it is a plain LoRA adapter (merging it into a sparse base would revive pruned weights) or its
            weights cannot be read.
    """
    folder = Path(folder)
    config_path, weights_path = folder / ADAPTER_CONFIG_NAME, folder / ADAPTER_WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.is_file():
            raise FileNotFoundError(f"{folder} has no {path.name}: save the adapter with save_sparse_adapter first.")
    try:
        config = json.loads(config_path.read_text())
    except ValueError as err:
        raise ValueError(f"{config_path} is not valid JSON ({err}).") from None
    record = config.get("sparse_masks")
    if config.get("peft_type") != "LORA" or not isinstance(record, dict) or not record:
        raise ValueError(
            f"{folder} is not a masked LoRA adapter ({ADAPTER_CONFIG_NAME} has no 'sparse_masks' record): a plain LoRA "
            "merged into a sparse base revives its pruned weights. Train it with sparse_transfer.lora.SparseLoraConfig."
        )
    from safetensors import safe_open

    try:
        with safe_open(str(weights_path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as err:
        raise ValueError(f"{weights_path} is not a readable safetensors file ({err}).") from None
    adapted = {k.split(".lora_", 1)[0].removeprefix("base_model.model.") for k in keys if ".lora_" in k}
    if not adapted:
        raise ValueError(f"{weights_path} holds no LoRA weights.")
    unrecorded = sorted(adapted - set(record))
    if unrecorded:
        raise ValueError(
            f"{folder}: {len(unrecorded)} adapted layer(s) have no mask in {ADAPTER_CONFIG_NAME}'s sparse_masks (e.g. "
            f"{unrecorded[0]}): the record was edited or the files come from different adapters."
        )
    return dict(record)


def adapter_card(folder: str | os.PathLike, card: dict | None = None) -> str:
    """The model card of a masked LoRA adapter saved in ``folder``: front matter for the Hub (``library_name: peft``,
    ``base_model`` when it is a Hub id, tags), what it is, how to load and merge it, its recipe and results."""
    import yaml

    from . import __version__

    folder = Path(folder)
    config = json.loads((folder / ADAPTER_CONFIG_NAME).read_text())
    card = dict(card or {})
    record = config.get("sparse_masks") or {}
    kept = sum(int(v.split("/")[0]) for v in record.values())
    total = sum(int(v.split("/")[1].split(":")[0]) for v in record.values())
    base = card.get("base_model") or config.get("base_model_name_or_path")
    front: dict = {"library_name": "peft"}
    if base and _looks_like_repo_id(str(base)) and not os.path.exists(str(base)):
        front["base_model"] = str(base)
    front["tags"] = ["sparse", "sparse_transfer", "lora", "masked-lora", *[str(t) for t in _as_list(card.get("tags"))]]
    for name in ("language", "license", "pipeline_tag"):
        if card.get(name):
            front[name] = card[name]
    if card.get("datasets"):
        front["datasets"] = [str(d) for d in _as_list(card["datasets"])]
    title = card.get("title") or "Masked LoRA adapter"
    base_text = f"`{_public_name(base)}`" if base else "its sparse base model"
    lines = ["---", yaml.safe_dump(front, sort_keys=False).strip(), "---", "", f"# {title}", ""]
    lines.append(
        f"A masked LoRA adapter (r={config.get('r')}, alpha={config.get('lora_alpha')}) for {base_text}, saved with "
        f"sparse_transfer {__version__}. Its update is multiplied by the base weights' sparsity mask, so merging it "
        f"keeps every pruned weight exactly 0: the {len(record)} adapted layers keep {kept:,} of {total:,} weights "
        f"({1 - kept / max(total, 1):.2%} sparse). Load it only on the sparse model it was trained on: the mask of "
        "each layer is recorded in `adapter_config.json` and checked when it loads."
    )
    lines += ["", "## Usage", "", "```python"]
    load_base = f'"{base}"' if base else '"PATH/TO/SPARSE/BASE"'
    if "timm" in front["tags"]:
        lines += [
            "import timm",
            "from sparse_transfer.lora import load_sparse_lora",
            "",
            f"base = timm.create_model({load_base}, num_classes=NUM_CLASSES)",
            "base.load_state_dict(SPARSE_WEIGHTS)  # the sparse checkpoint the adapter was trained on",
        ]
    else:
        lines += [
            "from transformers import AutoModelForSequenceClassification",
            "from sparse_transfer.lora import load_sparse_lora",
            "",
            f"base = AutoModelForSequenceClassification.from_pretrained({load_base}, num_labels=NUM_LABELS)",
        ]
    lines += [
        'model = load_sparse_lora(base, "THIS_REPO_OR_FOLDER")',
        "merged = model.merge_and_unload()  # a plain model, every pruned weight still exactly 0",
        "```",
        "",
        "Plain `peft.PeftModel.from_pretrained` does not know the mask: it warns that `masked_lora` and "
        "`sparse_masks` are ignored and loads the adapter unmasked. Use `load_sparse_lora`.",
    ]
    if card.get("results"):
        lines += ["", "## Results", "", "| metric | value |", "|---|---|"]
        lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in card["results"].items()]
    if card.get("recipe"):
        lines += ["", "## Recipe", "", "```yaml", yaml.safe_dump(_plain(card["recipe"]), sort_keys=True).strip(), "```"]
    return "\n".join(lines) + "\n"


def _save_weights(model: nn.Module, directory: Path) -> str:
    """Writes the weights (and config) of ``model`` into ``directory``; returns the library name for the card."""
    save_pretrained = getattr(model, "save_pretrained", None)
    if callable(save_pretrained) and hasattr(model, "config"):
        kwargs = {}
        # transformers 4.x still defaults to pickle for some paths; v5 always writes safetensors and has no
        # such argument.
        if "safe_serialization" in _inspect.signature(save_pretrained).parameters:
            kwargs["safe_serialization"] = True
        save_pretrained(directory, **kwargs)
        if not any((directory / name).exists() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)):
            raise RuntimeError(f"{type(model).__name__}.save_pretrained wrote no safetensors weights to {directory}.")
        return "transformers"
    from safetensors.torch import save_model

    # save_model drops duplicate names of tied tensors, which save_file would refuse.
    save_model(model, str(directory / SAFE_WEIGHTS_NAME), metadata={"format": "pt"})
    if isinstance(getattr(model, "pretrained_cfg", None), dict):
        try:
            from timm.models._hub import save_config_for_hf  # timm.models (1.0) does not export it

            save_config_for_hf(model, str(directory / "config.json"))
        except Exception:  # a custom model with a pretrained_cfg timm cannot export: keep the raw cfg
            cfg = {k: v for k, v in model.pretrained_cfg.items() if _json_ok(v)}
            (directory / "config.json").write_text(json.dumps({"pretrained_cfg": cfg}, indent=2))
        return "timm"
    return "pytorch"


def _json_ok(value) -> bool:
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def _move_into_place(tmp_dir: Path, output_dir: Path, drop_masks: bool) -> None:
    if not output_dir.exists() or (output_dir.is_dir() and not any(output_dir.iterdir())):
        if output_dir.exists():
            output_dir.rmdir()
        os.replace(tmp_dir, output_dir)  # one atomic rename: the directory appears complete or not at all
        return
    if not output_dir.is_dir():
        raise NotADirectoryError(f"{output_dir} exists and is not a directory.")
    new_files = {p.name for p in tmp_dir.iterdir()}
    for old in output_dir.iterdir():
        stale = old.is_file() and old.name not in new_files and (
            _WEIGHT_FILE_RE.match(old.name) or (drop_masks and old.name == MASKS_NAME)
        )
        if stale:
            old.unlink()
    # Weights first, the card last: a reader that sees the new card also sees the new weights.
    order = sorted(new_files, key=lambda n: (n == CARD_NAME, n == MASKS_NAME, n))
    for name in order:
        target = output_dir / name
        if target.is_dir() and (tmp_dir / name).is_dir():
            shutil.rmtree(target)
        os.replace(tmp_dir / name, target)


# ------------------------------------------------------------------------------------------ model card
def _is_hub_id(value) -> bool:
    """A Hub repository id (``namespace/name``), not a local path: only those go into a card's metadata."""
    text = str(value or "")
    return "/" in text and not os.path.exists(text) and _looks_like_repo_id(text)


def _public_name(value) -> str:
    """How a card's text names a base model: a Hub id as it is, a local path by its last part (a published card
    should not show the layout of the author's disk)."""
    text = str(value)
    return text if _is_hub_id(text) or os.path.sep not in text else Path(text.rstrip(os.path.sep)).name


def model_card(
    report: SparsityReport,
    card: dict | None = None,
    masks: SparseMasks | None = None,
    library: str | None = None,
    location: str | os.PathLike | None = None,
) -> str:
    """Builds a model card (README.md text with YAML front matter, through ``huggingface_hub.ModelCard``).

    Args:
        report: Sparsity of the saved weights (see :func:`~sparse_transfer.core.sparsity_report`).
        card: Optional fields: ``title``, ``base_model`` (in the metadata only if it is a Hub id), ``recipe`` (dict),
            ``results`` (dict, shown as a table), ``eval`` (the dev evaluation for the Hub's ``model-index``:
            ``task_type``, ``dataset_name``, ``dataset_type``, ``dataset_config``, ``dataset_split``, ``num_examples``,
            ``metrics`` {name: value}), ``method``, ``datasets`` (Hub datasets only), ``data`` (a sentence on the
            data, e.g. local files), ``usage`` (``"sequence-classification"``,
            ``"sequence-classification-mean-pooling"``, ``"timm"`` or ``None``), ``example``
            (a text for the usage snippet), ``tags``, ``license``.
        masks: The masks, to state the mask sparsity next to the weights' sparsity.
        library: ``"transformers"``, ``"timm"`` or ``"pytorch"``.
        location: Where the checkpoint is saved; the usage snippet loads from there (a push writes the repository id
            in its place).

    Returns:
        The card's markdown.
    """
    import yaml
    from huggingface_hub import EvalResult, ModelCard, ModelCardData

    from . import __version__

    card = dict(card or {})
    known = {"title", "base_model", "recipe", "results", "eval", "method", "datasets", "data", "usage", "example",
             "tags", "license", "language", "pipeline_tag"}
    unknown = set(card) - known
    if unknown:
        raise ValueError(f"Unknown model card field(s) {sorted(unknown)}; use {', '.join(sorted(known))}.")
    tags = ["sparse", "sparse_transfer", "pruned"]
    for tag in _as_list(card.get("tags")):
        if tag not in tags:
            tags.append(str(tag))
    title = card.get("title") or (f"Sparse {card['base_model']}" if card.get("base_model") else "Sparse model")
    evaluation = card.get("eval")
    eval_results = None
    if evaluation:
        eval_results = [
            EvalResult(
                task_type=evaluation["task_type"], dataset_type=evaluation["dataset_type"],
                dataset_name=evaluation["dataset_name"], dataset_config=evaluation.get("dataset_config"),
                dataset_split=evaluation.get("dataset_split"), metric_type=name, metric_value=float(value),
                dataset_args={"num_examples": evaluation["num_examples"]} if evaluation.get("num_examples") else None,
            )
            for name, value in evaluation["metrics"].items()
        ]
    datasets = [str(d) for d in _as_list(card.get("datasets"))]  # the caller passes Hub datasets only
    data = ModelCardData(
        library_name=library if library in ("transformers", "timm") else None,
        base_model=str(card["base_model"]) if _is_hub_id(card.get("base_model")) else None,
        datasets=datasets or None,
        license=card.get("license"),
        tags=tags,
        model_name=title if eval_results else None,
        eval_results=eval_results,
        language=card.get("language"),
        pipeline_tag=card.get("pipeline_tag") or {
            "sequence-classification": "text-classification", "timm": "image-classification",
            "sequence-classification-mean-pooling": "text-classification"}.get(card.get("usage")),
    )

    lines = [f"# {title}", ""]
    intro = (
        f"A {report.target_sparsity:.1%} sparse model"
        + (f" derived from `{_public_name(card['base_model'])}`" if card.get("base_model") else "")
        + (f" with {card['method']}" if card.get("method") else "")
        + f", saved with sparse_transfer {__version__}. The pruned weights are stored as exact zeros in an "
        + ("ordinary checkpoint, so it loads with the usual library calls; " if card.get("usage") !=
           "sequence-classification-mean-pooling" else "ordinary checkpoint; its classifier reads the mean of the "
           "token states, so it loads with the Auto classes after `import sparse_transfer.hf.pooling` (below); ")
        + f"`{MASKS_NAME}` records the mask (1 bit per weight)."
    )
    lines += [intro, ""]
    if card.get("data"):
        lines += [str(card["data"]), ""]

    where = str(location) if location is not None else "REPO_OR_PATH"
    lines += ["## Usage", "", "```python"]
    if card.get("usage") in ("sequence-classification", "sequence-classification-mean-pooling"):
        example = card.get("example") or "A sentence to classify."
        texts = ", ".join(repr(t) for t in example) if isinstance(example, (list, tuple)) else repr(example)
        if card["usage"] == "sequence-classification-mean-pooling":  # a model type transformers alone refuses
            lines += ["import sparse_transfer.hf.pooling  # registers the mean-pooling classifier with the Auto classes"]
        lines += [
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer",
            "",
            f'model = AutoModelForSequenceClassification.from_pretrained("{where}")',
            f'tokenizer = AutoTokenizer.from_pretrained("{where}")',
            f"inputs = tokenizer({texts}, return_tensors=\"pt\")",
            "print(model(**inputs).logits.softmax(-1))",
        ]
    elif library == "timm":
        lines += [
            "import timm",
            "import torch",
            "",
            f'model = timm.create_model("local-dir:{where}", pretrained=True).eval()',
            "print(model(torch.randn(1, 3, *model.pretrained_cfg.get('input_size', (3, 224, 224))[1:])).softmax(-1))",
        ]
    elif library == "transformers":
        lines += ["from transformers import AutoModel", "", f'model = AutoModel.from_pretrained("{where}")']
    else:
        lines += [
            "from sparse_transfer.hub import load_state_dict_from_checkpoint",
            "",
            f'state_dict = load_state_dict_from_checkpoint("{where}")  # then model.load_state_dict(state_dict)',
        ]
    lines += [
        "```",
        "",
        "Fine-tune it without losing a zero: `masks = sparse_transfer.load_sparse_masks(model, "
        f'"{where}")` checks the zeros against the saved mask, and `masks.attach(optimizer)` (or `SparseTrainer`) '
        f"keeps them. Inspect it: `python -m sparse_transfer.inspect {where}`.",
        "",
    ]

    if card.get("results"):
        lines += ["## Results", "", "| metric | value |", "|---|---:|"]
        for key, value in card["results"].items():
            shown = f"{value:.4f}" if isinstance(value, float) else str(value)
            lines.append(f"| {key} | {shown} |")
        lines.append("")

    lines += ["## Sparsity", ""]
    lines.append(
        f"- Global sparsity over the {len(report.layers)} pruned tensors: **{report.target_sparsity:.2%}** "
        f"({report.target_numel - report.target_nonzeros:,} of {report.target_numel:,} weights are zero)"
    )
    lines.append(f"- Whole model: {report.model_sparsity:.2%} of {report.model_numel:,} parameters are zero")
    if masks is not None:
        lines.append(f"- Mask sparsity: {masks.sparsity():.2%} (the weights' zeros include every masked position)")
    lines.append(f"- All-zero output channels in the pruned tensors: {report.zero_channel_fraction:.2%}")
    lines += ["", "| parameter | shape | params | non-zeros | sparsity |", "|---|---|---:|---:|---:|"]
    for layer in report.layers:
        shape = "x".join(map(str, layer.shape))
        lines.append(f"| `{layer.name}` | {shape} | {layer.numel:,} | {layer.nonzeros:,} | {layer.sparsity:.2%} |")
    lines.append("")

    if card.get("recipe"):
        recipe_yaml = yaml.safe_dump(_plain(card["recipe"]), sort_keys=False, allow_unicode=True).strip()
        lines += ["## Recipe", "", "```yaml", recipe_yaml, "```", ""]
    return str(ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(lines)))


def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (str, bytes)):
        return [value]
    return list(value)


# -------------------------------------------------------------------------------------------- loading
def load_state_dict_from_checkpoint(path_or_repo_id: str | os.PathLike, revision: str | None = None) -> dict[str, Tensor]:
    """Reads a checkpoint's tensors without building a model.

    Args:
        path_or_repo_id: A local directory (``model.safetensors``, a sharded ``model.safetensors.index.json``,
            or else ``pytorch_model.bin``), a single ``.safetensors`` / ``.bin`` / ``.pt`` / ``.pth`` file, or a
            Hugging Face Hub repo id (only safetensors and json files are downloaded).
        revision: Hub revision (branch, tag or commit) for a repo id.

    Returns:
        Tensor name -> tensor, on CPU.

    Raises:
        FileNotFoundError: if a local path has no weights or does not exist.
        OSError: if the Hub cannot be reached; the message says to pass a local path.
    """
    path = os.fspath(path_or_repo_id)
    if os.path.isdir(path):
        return _load_dir(Path(path))
    if os.path.isfile(path):
        return _load_file(Path(path))
    return _load_dir(Path(_snapshot(path, revision)))


def _load_file(path: Path) -> dict[str, Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path), device="cpu")
    if path.suffix in (".bin", ".pt", ".pth"):
        obj = torch.load(path, map_location="cpu", weights_only=True)
        for key in ("state_dict", "model", "state_dict_ema"):  # timm / Lightning style training checkpoints
            if isinstance(obj, dict) and isinstance(obj.get(key), dict):
                obj = obj[key]
                break
        if not isinstance(obj, dict) or not all(isinstance(v, Tensor) for v in obj.values()):
            raise ValueError(f"{path} does not hold a state dict (a mapping of names to tensors).")
        return dict(obj)
    raise ValueError(f"Unsupported weights file {path.name}: use a .safetensors, .bin, .pt or .pth file.")


def _weight_files(directory: Path) -> list[str]:
    """The files a checkpoint folder's weights are read from (:func:`load_state_dict_from_checkpoint`, and so the
    check before a push): ``model.safetensors``, else the shards an index lists, else ``pytorch_model.bin``."""
    for index_name in (SAFE_WEIGHTS_INDEX_NAME, WEIGHTS_INDEX_NAME):
        index_path = directory / index_name
        if index_path.is_file() and not (directory / SAFE_WEIGHTS_NAME).is_file():
            return sorted(set(json.loads(index_path.read_text())["weight_map"].values()))
    for name in (SAFE_WEIGHTS_NAME, WEIGHTS_NAME):
        if (directory / name).is_file():
            return [name]
    return []


def _load_dir(directory: Path) -> dict[str, Tensor]:
    files = _weight_files(directory)
    if not files:
        present = sorted(p.name for p in directory.iterdir())[:10]
        raise FileNotFoundError(
            f"No weights in {directory}: expected {SAFE_WEIGHTS_NAME}, {SAFE_WEIGHTS_INDEX_NAME} or {WEIGHTS_NAME}; "
            f"found {present or 'nothing'}. Pass the folder that save_pretrained / save_sparse_pretrained wrote, "
            "or a weights file."
        )
    state_dict: dict[str, Tensor] = {}
    for name in files:
        state_dict.update(_load_file(directory / name))
    return state_dict


def _looks_like_repo_id(text: str) -> bool:
    if text.startswith((".", "/", "~")) or text.count("/") > 1 or os.sep in text.replace("/", ""):
        return False
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(text)
    except HFValidationError:
        return False
    return True


def _snapshot(repo_id: str, revision: str | None, patterns: Iterable[str] = ("*.safetensors", "*.json")) -> str:
    if not _looks_like_repo_id(repo_id):
        raise FileNotFoundError(f"No such file or directory: {repo_id!r} (and it is not a Hugging Face Hub repo id).")
    import huggingface_hub

    try:
        return huggingface_hub.snapshot_download(repo_id, revision=revision, allow_patterns=list(patterns))
    except Exception as err:  # offline, unreachable, missing repo or revision: all end the same way for the user
        raise OSError(
            f"Could not fetch {repo_id!r}"
            + (f" at revision {revision!r}" if revision else "")
            + f" from the Hugging Face Hub ({type(err).__name__}: {_first_line(err)}). "
            "If you have the checkpoint locally, pass its local path instead."
        ) from None


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return text[0][:200] if text else "no details"


def _find_masks_file(checkpoint: str | os.PathLike, revision: str | None) -> str | None:
    path = os.fspath(checkpoint)
    if os.path.isdir(path):
        candidate = os.path.join(path, MASKS_NAME)
        return candidate if os.path.isfile(candidate) else None
    if os.path.isfile(path):
        return None
    candidate = os.path.join(_snapshot(path, revision), MASKS_NAME)
    return candidate if os.path.isfile(candidate) else None


# ---------------------------------------------------------------------------------------------- upload
def push_sparse_to_hub(
    output_dir: str | os.PathLike,
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
    commit_message: str | None = None,
) -> str:
    """Uploads a folder written by :func:`save_sparse_pretrained` to the Hugging Face Hub.

    The saved weights are first checked against the saved mask file: a checkpoint whose zeros were lost is
    never uploaded. Only an allow-list of files goes up (:func:`files_to_upload`: safetensors weights, the mask
    file, configs, tokenizer files, the model card, JSON/YAML results and recipes), never a pickle such as
    ``training_args.bin`` (which holds the Hub token) nor a Trainer ``checkpoint-*`` folder; a file containing an
    access token is refused (:func:`refuse_secrets`).

    Args:
        output_dir: The saved folder.
        repo_id: ``namespace/name`` on the Hub; created if it does not exist.
        token: Hub token; by default the one ``huggingface-cli login`` stored. Never printed or saved.
        private: Create the repository as private (``None``: the Hub's default for the namespace).
        commit_message: Defaults to a message stating the sparsity.

    Returns:
        The repository's URL.

    Raises:
        FileNotFoundError: if ``output_dir`` has no weights or no mask file.
        ValueError: if a pruned weight of the saved checkpoint is non-zero.
    """
    output_dir = Path(output_dir)
    if not output_dir.is_dir():
        raise FileNotFoundError(f"{output_dir} is not a directory; save the model with save_sparse_pretrained first.")
    if (output_dir / ADAPTER_CONFIG_NAME).is_file() and not any(
            (output_dir / name).exists() for name in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME)):
        record = verify_sparse_adapter(output_dir)
        return _upload(output_dir, repo_id, token, private,
                       commit_message or f"Upload masked LoRA adapter ({len(record)} layers) with sparse_transfer",
                       checked={ADAPTER_WEIGHTS_NAME})
    if (output_dir / MASKS_NAME).is_symlink():
        raise ValueError(f"{output_dir / MASKS_NAME} is a link, which a push does not follow: copy the file into the folder.")
    if not (output_dir / MASKS_NAME).is_file():
        raise FileNotFoundError(
            f"{output_dir} has no {MASKS_NAME}, so its sparsity cannot be checked before upload. Save it with "
            "save_sparse_pretrained(model, output_dir, masks=masks) (masks = SparseMasks.from_zeros(model, targets) "
            "if the zeros are your mask)."
        )
    masks = verify_checkpoint_sparsity(output_dir)
    return _upload(output_dir, repo_id, token, private,
                   commit_message or f"Upload {masks.sparsity():.1%} sparse model with sparse_transfer",
                   checked={MASKS_NAME, *_weight_files(output_dir)})


def _upload(output_dir: Path, repo_id: str, token: str | None, private: bool | None, message: str, checked: set[str]) -> str:
    files = files_to_upload(output_dir)
    unchecked = [name for name in files if name.endswith(".safetensors") and name not in checked]
    if unchecked:
        # A push publishes only what it checked: a stale shard of an earlier save, or another model's weights, would
        # go up beside the checked ones and could be what a user loads.
        raise ValueError(
            f"{output_dir} holds safetensors file(s) that are not the weights the push checked: {unchecked[:5]} (it "
            f"checked {sorted(checked)}). Move them out of the folder and push again."
        )
    import huggingface_hub

    refuse_secrets(output_dir, files, [token, huggingface_hub.get_token()])
    repo_url = huggingface_hub.create_repo(repo_id, token=token, private=private, exist_ok=True)
    repo_id = getattr(repo_url, "repo_id", repo_id)
    # The card's usage snippet loads from the folder it was saved in; the uploaded copy loads from the repository.
    # Staged in a temporary folder (links, not copies, for the weights) so the local card stays as it is.
    with tempfile.TemporaryDirectory(prefix=".push-", dir=output_dir.parent) as staging:
        for name in files:
            source, target = output_dir / name, Path(staging) / name
            if name == CARD_NAME:
                text = source.read_text(encoding="utf-8")
                where = str(output_dir.resolve())
                text = text.replace(f"local-dir:{where}", f"hf-hub:{repo_id}").replace(where, repo_id)
                target.write_text(text, encoding="utf-8")
            else:
                try:
                    os.link(source, target)
                except OSError:  # another file system: copy
                    shutil.copy2(source, target)
        huggingface_hub.upload_folder(
            repo_id=repo_id,
            folder_path=staging,
            commit_message=message,
            token=token,
            allow_patterns=[glob.escape(name) for name in files],
        )
    return str(repo_url)


class PushFailed(RuntimeError):
    """A push after training failed; the message says how to retry without retraining."""


def check_push_target(repo_id: str, token: str | None = None, flag: str = "--push-to-hub") -> None:
    """Before training: checks that ``repo_id`` is a valid Hub repository id, that a token is available (``token``,
    ``HF_TOKEN`` or ``huggingface-cli login``) and that the Hub answers and accepts it. Raises ``ValueError`` with
    what to do, so a run that cannot be published fails in seconds instead of after training. The token is never
    printed. ``flag`` names the argument that gave the repository, in the messages."""
    import huggingface_hub
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    later = (" Or train without --push-to-hub and publish the saved folder later with `python -m sparse_transfer.push "
             "DIR USER/NAME`." if flag == "--push-to-hub" else "")
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        raise ValueError(f"{flag} {repo_id!r} is not a Hub repository id ({_first_line(err)}); use USER/NAME.") from None
    if "/" not in repo_id:
        raise ValueError(f"{flag} {repo_id!r} has no namespace; use USER/NAME (or ORG/NAME).")
    token = token or huggingface_hub.get_token()
    if not token:
        raise ValueError("Publishing needs a Hugging Face token: run `huggingface-cli login` or set HF_TOKEN." + later)
    try:
        huggingface_hub.HfApi().whoami(token=token)
    except Exception as err:  # connection errors, HTTP 401, offline mode: all mean "this push would fail"
        status = getattr(getattr(err, "response", None), "status_code", None)
        if status in (401, 403):
            raise ValueError(
                f"The Hub rejected the token (HTTP {status}): use a valid token (`huggingface-cli login`, or HF_TOKEN)."
            ) from None
        raise ValueError(
            f"The Hugging Face Hub cannot be reached ({type(err).__name__}: {_first_line(err)}), so nothing can be "
            "published now; retry when it is reachable." + later
        ) from None


def push_or_explain(folder: str | os.PathLike, repo_id: str, **kwargs) -> str:
    """:func:`push_sparse_to_hub` after training: a failure becomes :class:`PushFailed` with one line saying how to
    retry without retraining (the trained folder is kept)."""
    try:
        return push_sparse_to_hub(folder, repo_id, **kwargs)
    except (ValueError, FileNotFoundError):
        raise  # the folder itself is refused (zeros lost, a token in a file): retrying would not help
    except Exception as err:
        raise PushFailed(
            f"push of {folder} to {repo_id} failed ({type(err).__name__}: {_first_line(err)}); the trained model is "
            f"kept there: retry with `python -m sparse_transfer.push {folder} {repo_id}`."
        ) from None


def files_to_upload(folder: str | os.PathLike) -> list[str]:
    """The files of ``folder`` that a push uploads: top-level regular files matching :data:`UPLOAD_PATTERNS`,
    neither hidden nor temporary. Pickles (``training_args.bin``, ``*.pt``, ``*.pth``, ``*.bin``), sub-folders and
    links never are."""
    folder = Path(folder)
    names = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if path.is_symlink() or not path.is_file() or name.startswith(".") or name.endswith(".tmp"):
            continue
        if any(fnmatch.fnmatch(name, pattern) for pattern in UPLOAD_PATTERNS):
            names.append(name)
    if not any(name.endswith(".safetensors") and name != MASKS_NAME for name in names):
        raise FileNotFoundError(f"{folder} has no safetensors weights to upload.")
    return names


def refuse_secrets(folder: str | os.PathLike, names: Iterable[str], tokens: Iterable[str | None] = ()) -> None:
    """Raises ``ValueError`` if a file about to be uploaded, or its name, contains an access token: one of ``tokens``
    (the token of the push, the stored login), also as UTF-16, base64 or JSON escapes, anywhere in the file; or
    anything shaped like a Hugging Face token in a name, a text file or a safetensors header. The token itself is
    never printed."""
    secrets = {t for t in tokens if t}
    patterns = set()
    for token in secrets:
        raw = token.encode()
        patterns |= {raw, token.encode("utf-16-le"), token.encode("utf-16-be"),
                     token.replace("_", "\\u005f").encode(), token.replace("_", "\\u005F").encode()}
        for shift in range(3):  # base64 of the token at each alignment inside a longer string: the stable middle
            encoded = base64.b64encode(b"\0" * shift + raw)
            patterns.add(encoded[4 if shift else 0 : len(encoded) - 4])
    patterns.discard(b"")
    for name in names:
        path = Path(folder) / name
        found = _HF_TOKEN_RE.search(name.encode()) is not None or any(secret in name for secret in secrets)
        if not found and path.stat().st_size:
            with open(path, "rb") as f, mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as data:
                found = any(data.find(pattern) >= 0 for pattern in patterns)
                if not found and name.endswith(".safetensors"):  # tensors are numbers: the shape scan reads the header
                    size = int.from_bytes(data[:8], "little")
                    found = _HF_TOKEN_RE.search(data[8 : 8 + min(size, 100_000_000)]) is not None
                elif not found:
                    found = _HF_TOKEN_RE.search(data) is not None
        if found:
            raise ValueError(
                f"{path} contains a Hugging Face access token (in its name or its content); refusing to upload it. "
                "Remove the token from that file (or the file from the folder) and push again."
            )
