"""Prints the sparsity of a checkpoint, a Hub model or a timm architecture.

Usage::

    python -m sparse_transfer.inspect PATH [--targets auto|bert|cnn|all] [--include REGEX ...] [--json]
                                           [--revision REV] [--pretrained]

``PATH`` is a local checkpoint folder or weights file, a Hugging Face Hub repo id, or a timm model name
(``resnet50``, ``hf-hub:timm/resnet50.a1_in1k``, ``local-dir:/path``). A peft adapter folder (masked LoRA from
``sparse_transfer.lora``) is reported by its recorded masks, layer by layer. Checkpoints are read as plain tensors,
without building the model, so any architecture works. If the checkpoint carries a sparse_transfer mask
file, the report covers the masked tensors and checks that their pruned weights are still zero.

Exit status: 0 on success, 1 if the weights lost zeros that the checkpoint's mask file records, 2 on bad
input (with one line on stderr saying what is wrong).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence

from torch import Tensor, nn

from .core import MASKS_NAME, SparseMasks, SparsityReport, sparsity_report
from .core.masks import weights_fingerprint
from .core.targets import resolve_target_spec
from .hub import _find_masks_file, _looks_like_repo_id, auto_targets, check_sparsity, load_state_dict_from_checkpoint

TARGET_CHOICES = ("auto", "bert", "cnn", "all")
_TIMM_PREFIXES = ("hf-hub:", "local-dir:", "timm/")


class InspectError(Exception):
    """Bad input: reported as one line on stderr with exit status 2."""


def _is_timm_name(path: str) -> bool:
    if path.startswith(_TIMM_PREFIXES):
        return True
    try:
        import timm
    except ImportError:
        return False
    return bool(timm.is_model(path))


def _load_timm(name: str, pretrained: bool) -> nn.Module:
    import timm

    if name.startswith("timm/"):  # a Hub id in the timm organisation
        name = "hf-hub:" + name
    try:
        return timm.create_model(name, pretrained=pretrained)
    except Exception as err:
        hint = " (pretrained weights need the Hugging Face Hub; omit --pretrained or pass a local checkpoint)" if pretrained else ""
        raise InspectError(f"could not create timm model {name!r}: {_one_line(err)}{hint}") from None


def _state_dict_names(tensors: Mapping[str, Tensor], targets: str, include: Sequence[str]) -> list[str] | str:
    """Target names in a state dict; a preset name is passed through to :func:`sparsity_report`."""
    if not include:
        return targets
    patterns = [re.compile(p) for p in include]
    unmatched = [p.pattern for p in patterns if not any(p.search(n) for n in tensors)]
    if unmatched:
        raise InspectError(f"--include pattern(s) {unmatched} match no tensor in the checkpoint")
    return [n for n, t in tensors.items() if t.is_floating_point() and any(p.search(n) for p in patterns)]


def inspect_sparsity(
    path: str,
    targets: str = "auto",
    include: Sequence[str] = (),
    revision: str | None = None,
    pretrained: bool = False,
) -> dict:
    """Computes the sparsity report of ``path`` (see the module docstring for what ``path`` may be).

    Args:
        path: Local checkpoint folder or file, Hub repo id, or timm model name.
        targets: ``"auto"`` (the checkpoint's mask file if any, else the BERT encoder preset if it matches,
            else every conv/linear weight), ``"bert"``, ``"cnn"`` or ``"all"``.
        include: Regular expressions over tensor names that replace the preset's name filter.
        revision: Hub revision for a repo id.
        pretrained: For a timm name, load its pretrained weights (needs the Hub).

    Returns:
        A JSON-ready dict: ``source``, ``path``, ``targets``, ``report`` (:meth:`SparsityReport.to_dict`) and
        ``masks`` (``None`` or the mask file's sparsity and whether the weights still hold its zeros).

    Raises:
        InspectError: on bad input.
    """
    if targets not in TARGET_CHOICES:
        raise InspectError(f"unknown --targets {targets!r}; use one of {', '.join(TARGET_CHOICES)}")
    for pattern in include:
        try:
            re.compile(pattern)
        except re.error as err:
            raise InspectError(f"--include {pattern!r} is not a valid regular expression: {err}") from None

    if not os.path.exists(path) and _is_timm_name(path):
        model = _load_timm(path, pretrained)
        preset = auto_targets(model) if targets == "auto" else targets
        spec = resolve_target_spec(preset)
        if include:
            spec = spec.with_(include=tuple(include))
        try:
            report = sparsity_report(model, spec)
        except ValueError as err:
            raise InspectError(_one_line(err)) from None
        return _result("timm", path, targets if not include else "include", report, None)

    if not os.path.exists(path) and not _looks_like_repo_id(path):
        raise InspectError(f"{path!r} is not a file, a folder, a Hugging Face Hub repo id or a timm model name")
    source = "local" if os.path.exists(path) else "hub"
    adapter_dir = _adapter_folder(path, revision)
    if adapter_dir is not None:
        return inspect_adapter(adapter_dir, path, source)
    try:
        tensors = load_state_dict_from_checkpoint(path, revision=revision)
        masks_path = _find_masks_file(path, revision)
    except (OSError, ValueError) as err:
        raise InspectError(_one_line(err)) from None
    except Exception as err:  # e.g. safetensors' SafetensorError for a corrupt or truncated file
        raise InspectError(f"could not read {path}: {_one_line(err)}") from None
    masks, mask_problem = None, None
    if masks_path:
        try:
            masks = SparseMasks.load(masks_path)
        except ValueError as err:  # a damaged, edited or foreign mask file: reported, not trusted
            mask_problem = _one_line(err)
    # Files list tensors alphabetically; print layer 2 before layer 10.
    tensors = dict(sorted(tensors.items(), key=lambda item: _natural_key(item[0])))

    if include:
        names, label = _state_dict_names(tensors, targets, include), "include"
    elif targets == "auto" and masks is not None:
        names, label = list(masks), "mask file"
    else:
        names, label = (auto_targets(tensors) if targets == "auto" else targets), targets
    try:
        report = sparsity_report(tensors, names)
    except ValueError as err:
        raise InspectError(_one_line(err)) from None
    if not report.layers:
        preset = "the BERT encoder preset" if names == "bert" else f"--targets {targets}"
        raise InspectError(f"no tensor of {path} matches {preset}; use --targets cnn or --include REGEX")
    mask_info = None
    if mask_problem is not None:
        mask_info = {"file": MASKS_NAME, "sparsity": None, "tensors": None, "zeros_intact": False, "problem": mask_problem}
    elif masks is not None:
        mask_info = {"file": MASKS_NAME, "sparsity": masks.sparsity(), "tensors": len(masks), "zeros_intact": True, "problem": None}
        try:
            check_sparsity(tensors, masks)
        except ValueError as err:
            mask_info.update(zeros_intact=False, problem=str(err))
        expected = masks.saved_model_fingerprint
        if mask_info["zeros_intact"] and expected is not None and all(n in tensors for n in masks):
            if weights_fingerprint({n: tensors[n] for n in masks}) != expected:
                mask_info.update(
                    foreign=True,
                    problem=f"{MASKS_NAME} was saved beside other weights (model fingerprint {expected}): it belongs to "
                    "another checkpoint of the same architecture.",
                )
    return _result(source, path, label, report, mask_info)


def _adapter_folder(path: str, revision: str | None) -> str | None:
    """The folder of a peft adapter (``adapter_config.json`` and no full weights), local or downloaded; else None."""
    from .hub import ADAPTER_CONFIG_NAME, SAFE_WEIGHTS_INDEX_NAME, SAFE_WEIGHTS_NAME, _snapshot

    def is_adapter(folder: str) -> bool:
        return os.path.isfile(os.path.join(folder, ADAPTER_CONFIG_NAME)) and not any(
            os.path.isfile(os.path.join(folder, n)) for n in (SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))

    if os.path.isdir(path):
        return path if is_adapter(path) else None
    if os.path.exists(path):
        return None
    try:
        folder = _snapshot(path, revision, patterns=(ADAPTER_CONFIG_NAME, SAFE_WEIGHTS_NAME, SAFE_WEIGHTS_INDEX_NAME))
    except Exception:
        return None  # the weights path below reports an unreachable Hub
    return folder if is_adapter(folder) else None


def inspect_adapter(folder: str, path: str, source: str) -> dict:
    """Report of a LoRA adapter: masked (with each layer's recorded mask) or plain."""
    from .hub import ADAPTER_CONFIG_NAME, verify_sparse_adapter

    try:
        config = json.loads(open(os.path.join(folder, ADAPTER_CONFIG_NAME)).read())
    except ValueError as err:
        raise InspectError(f"{path}: {ADAPTER_CONFIG_NAME} is not valid JSON ({err})") from None
    info = {
        "peft_type": config.get("peft_type"),
        "r": config.get("r"),
        "lora_alpha": config.get("lora_alpha"),
        "base_model": config.get("base_model_name_or_path"),
        "target_modules": config.get("target_modules"),
        "modules_to_save": config.get("modules_to_save"),
        "masked": bool(config.get("sparse_masks")),
        "layers": {},
        "problem": None,
    }
    if info["masked"]:
        try:
            record = verify_sparse_adapter(folder)
        except (ValueError, FileNotFoundError) as err:
            info["problem"] = _one_line(err)
            record = config["sparse_masks"]
        for name, value in sorted(record.items(), key=lambda item: _natural_key(item[0])):
            kept, rest = value.split("/", 1)
            total = int(rest.split(":", 1)[0])
            info["layers"][name] = {"kept": int(kept), "total": total, "sparsity": 1 - int(kept) / total}
        kept = sum(v["kept"] for v in info["layers"].values())
        total = sum(v["total"] for v in info["layers"].values())
        info["sparsity"] = 1 - kept / total if total else 0.0
    else:
        info["problem"] = ("plain LoRA adapter (no mask record): its update is dense, so merging it into a sparse "
                           "base revives the pruned weights; sparse_transfer.lora.SparseLoraConfig trains a masked one")
    return {"source": "adapter", "path": path, "targets": "adapter", "report": None, "masks": None, "adapter": info}


def _format_adapter(result: dict) -> str:
    info = result["adapter"]
    kind = "masked LoRA adapter" if info["masked"] else "LoRA adapter"
    lines = [f"{result['path']} ({kind}; r={info['r']}, alpha={info['lora_alpha']}; base {info['base_model']})", ""]
    if info["layers"]:
        width = max(len(n) for n in info["layers"])
        lines.append(f"{'adapted layer':<{width}}  {'kept':>10}  {'total':>10}  {'sparsity':>9}")
        for name, layer in info["layers"].items():
            lines.append(f"{name:<{width}}  {layer['kept']:>10,}  {layer['total']:>10,}  {layer['sparsity']:>9.2%}")
        lines += ["", f"{len(info['layers'])} adapted layers, sparsity of their masks {info['sparsity']:.2%}; the update "
                  "keeps every zero when merged (sparse_transfer.lora.load_sparse_lora, then merge_and_unload)"]
    if info["modules_to_save"]:
        lines.append(f"trained in full (modules_to_save): {', '.join(info['modules_to_save'])}")
    if info["problem"]:
        lines.append(info["problem"])
    return "\n".join(lines)


def _result(source: str, path: str, targets: str, report: SparsityReport, masks: dict | None) -> dict:
    return {"source": source, "path": path, "targets": targets, "report": report.to_dict(), "masks": masks, "_report": report}


def _natural_key(name: str) -> tuple:
    return tuple(int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name))


def _one_line(err: BaseException) -> str:
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def format_result(result: dict) -> str:
    """Human-readable report: the per-tensor table, global sparsity, and the mask check."""
    if result["source"] == "adapter":
        return _format_adapter(result)
    source = {"local": "local checkpoint", "hub": "Hugging Face Hub", "timm": "timm model"}[result["source"]]
    lines = [f"{result['path']} ({source}; targets: {result['targets']})", "", result["_report"].format_table()]
    masks = result["masks"]
    if masks is not None:
        if masks["sparsity"] is None:
            lines.append(f"mask file {masks['file']}: REFUSED")
        else:
            state = "zeros intact" if masks["zeros_intact"] else "ZEROS LOST"
            if masks.get("foreign"):
                state += ", but SAVED BESIDE OTHER WEIGHTS"
            lines.append(f"mask file {masks['file']}: {masks['tensors']} tensors, sparsity {masks['sparsity']:.2%}, {state}")
        if masks["problem"]:
            lines.append(masks["problem"])
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m sparse_transfer.inspect",
        description="Print the sparsity of a checkpoint folder/file, a Hugging Face Hub model or a timm model.",
    )
    parser.add_argument("path", help="checkpoint folder or weights file, Hub repo id, or timm model name")
    parser.add_argument(
        "--targets",
        choices=TARGET_CHOICES,
        default="auto",
        help="tensors to report: auto = the mask file's if present, else the BERT encoder linears if present, "
        "else every conv/linear weight (default: auto)",
    )
    parser.add_argument(
        "--include", nargs="+", default=[], metavar="REGEX", help="regular expressions over tensor names (replace the preset's name filter)"
    )
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON only")
    parser.add_argument("--revision", default=None, help="Hub revision (branch, tag or commit) for a repo id")
    parser.add_argument("--pretrained", action="store_true", help="for a timm model name: load its pretrained weights")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from huggingface_hub.utils import logging as hf_logging

    # Retry chatter from an unreachable Hub would bury the one-line error this command ends with.
    hf_logging.set_verbosity_error()
    try:
        result = inspect_sparsity(args.path, args.targets, args.include, args.revision, args.pretrained)
    except InspectError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({k: v for k, v in result.items() if not k.startswith("_")}, indent=2))
    else:
        print(format_result(result))
    if result["source"] == "adapter":  # 1: the adapter's files are damaged
        return 1 if result["adapter"]["masked"] and result["adapter"]["problem"] else 0
    masks = result["masks"]
    return 0 if masks is None or (masks["zeros_intact"] and not masks.get("foreign")) else 1


if __name__ == "__main__":
    sys.exit(main())
