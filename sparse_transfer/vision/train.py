"""The vision training loop: a timm model, a mask method, the modern ImageNet recipe, accelerate for DDP.

Where the masks act, per optimizer step::

    method.begin_step(step)                             # dense gradients this step? (RigL update, AC/DC release)
    loss = label_smoothed_ce(model(x), y)               # AMP autocast on GPU, channels_last
    accelerator.backward(loss)                          # gradients masked as they accumulate (before DDP's all-reduce)
    event = method.step(step, optimizer)                # GMP prune / AC/DC (de)compress / RigL drop-grow
    optimizer.step()                                    # post-hook: pruned weights := exactly 0
    scheduler.step()                                    # linear warm-up then linear decay, per iteration

and per epoch: progressive resizing of the training images, evaluation (top-1, prediction entropy), the
sparsity report (global, per layer, all-zero channels), mask IoU, and checkpoints (``last/``, ``best/`` in
timm's format with safetensors, ``state/`` to resume). Every epoch starts by reseeding from (seed, epoch),
so a run resumed from ``state/`` continues exactly as the uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import time
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler
from tqdm.auto import tqdm

from .. import __version__, _cli
from .._rundir import (
    library_versions,
    refuse_other_recipe,
    same_start,
    start_identity,
    starts_match,
    write_json_atomic,
    write_recipe,
)
from ..core import MASKS_NAME, SparseMasks, sparsity_report
from ..core.masks import nonfinite_names
from ..methods import ACDC, GMP, Constant, MaskMethod, RigL, dense_masks
from .config import VisionArguments
from .data import build_datasets, check_first_image, progressive_size, subset, timm_transforms

logger = logging.getLogger(__name__)

# Fields that do not change what a run computes: a resumed run may change them.
_RUNTIME_FIELDS = {"output_dir", "overwrite", "progress", "stop_after_epoch", "num_workers", "push_to_hub",
                   "hub_private_repo",
                   "resume", "hub_model_id", "hub_private"}  # the last three: names of earlier versions, in old states
# Not written into recipe.yaml: how this invocation runs, not what it computes.
_NOT_IN_RECIPE = {"overwrite", "push_to_hub", "hub_private_repo", "stop_after_epoch"}


def create_model(args: VisionArguments, num_classes: int) -> nn.Module:
    """``timm.create_model`` with a clear error for unknown names and unreachable pretrained weights."""
    import timm

    kwargs = json.loads(args.model_kwargs)
    name = args.model
    if not name.startswith(("hf-hub:", "local-dir:")) and not timm.is_model(name):
        close = timm.list_models(f"*{name.split('.')[0][:6]}*")[:8]
        raise ValueError(f"Unknown timm model {name!r}. Similar names: {close or 'none'}; see timm.list_models().")
    try:
        model = timm.create_model(name, pretrained=args.pretrained, num_classes=num_classes, **kwargs)
    except (OSError, RuntimeError) as e:
        if args.pretrained:
            raise RuntimeError(
                f"Could not load pretrained weights for {name} ({type(e).__name__}: {e}). Without network, "
                "pass --no_pretrained, or --init_checkpoint with a local .safetensors file."
            ) from e
        raise
    model.new_head = []  # classifier parameters re-created for this run's classes (dense, outside any mask)
    if args.init_checkpoint:
        model.new_head = load_init_checkpoint(model, args.init_checkpoint, name)
    bad = nonfinite_names(dict(model.named_parameters()))
    if bad:  # training would stop at the end of the first epoch, and again at every rerun
        raise ValueError(
            f"{len(bad)} parameter(s) of {args.init_checkpoint or name} hold NaN or inf (e.g. {bad[0]}): start from "
            "finite weights (the checkpoint may come from a diverged run)."
        )
    return model


def load_init_checkpoint(model: nn.Module, checkpoint: str, name: str) -> list[str]:
    """Loads ``checkpoint`` into ``model`` (a timm model built for this run's classes). The classifier is re-created
    when the class count differs (its tensors are skipped and stay freshly initialized; returned by name); any other
    difference (a missing, extra or differently shaped tensor: another architecture) is an error, never a partly
    loaded hybrid."""
    from safetensors.torch import load_file

    path = os.path.join(checkpoint, "model.safetensors") if os.path.isdir(checkpoint) else checkpoint
    if not os.path.isfile(path):
        raise FileNotFoundError(f"No weights at {path} (expected a .safetensors file or a directory holding model.safetensors).")
    state = load_file(path)
    own = model.state_dict()
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    heads = classifier if isinstance(classifier, (list, tuple)) else [classifier] if classifier else []
    in_head = lambda key: any(key == h or key.startswith(h + ".") for h in heads)  # noqa: E731
    mismatched = [k for k in state if k in own and state[k].shape != own[k].shape]
    new_head = [k for k in mismatched if in_head(k)]
    if new_head:
        old = state[new_head[0]].shape[0]
        logger.warning("%s has a %d-class classifier; it is re-created for %d classes (%s), dense and outside the "
                       "mask; the rest of the network keeps its weights and mask.", path, old,
                       own[new_head[0]].shape[0], ", ".join(new_head))
        state = {k: v for k, v in state.items() if k not in new_head}
    wrong_shape = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in mismatched if k not in new_head]
    missing = [k for k in own if k not in state and k not in new_head]
    unexpected = [k for k in state if k not in own]
    if wrong_shape or missing or unexpected:
        problems = [f"{len(wrong_shape)} tensors of another shape (e.g. {wrong_shape[0]})" if wrong_shape else "",
                    f"{len(missing)} missing (e.g. {missing[0]})" if missing else "",
                    f"{len(unexpected)} unknown (e.g. {unexpected[0]})" if unexpected else ""]
        raise ValueError(
            f"{path} is not a checkpoint of {name}: {'; '.join(p for p in problems if p)}. Pass the --model it was "
            "trained as (see its config.json); only the classifier may differ (re-created for the new classes)."
        )
    model.load_state_dict(state, strict=False)
    return new_head


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Weight decay on weights of two or more dims only, never on norm layers and biases; frozen parameters left
    out: timm's own grouping (``timm.optim.param_groups_weight_decay``), plus the model's ``no_weight_decay()``."""
    from timm.optim import param_groups_weight_decay

    skip = model.no_weight_decay() if hasattr(model, "no_weight_decay") else ()
    return param_groups_weight_decay(model, weight_decay, no_weight_decay_list=skip)


# Our own schedule rather than timm's or transformers': per-iteration linear warm-up then linear decay to a non-zero
# end (the FFCV ImageNet recipe), one pure function of the step that a resumed run recomputes; timm's schedulers are
# epoch-stepped with per-update variants, transformers' linear schedule always decays to 0.
def lr_factor(step: int, warmup_steps: int, total_steps: int, end_factor: float) -> float:
    """Linear warm-up from 0 to 1 over ``warmup_steps`` (per iteration), then linear decay to ``end_factor``."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 1.0 - (1.0 - end_factor) * min(progress, 1.0)


def build_method(args: VisionArguments, model: nn.Module, steps_per_epoch: int, total_steps: int) -> MaskMethod | None:
    if args.method == "dense":
        return None
    if args.method == "constant":
        if args.sparsity:
            return Constant(SparseMasks.from_magnitude(model, args.sparsity, args.distribution, targets=args.targets))
        # Fine-tuning a sparse checkpoint: its stored mask is the source of truth; its zeros only without one.
        stored = _stored_mask_path(args.init_checkpoint)
        new_head = set(getattr(model, "new_head", ()))
        if not stored:
            masks = SparseMasks.from_zeros(model, args.targets)
            return Constant(SparseMasks({n: m for n, m in masks.items() if n not in new_head}, model) if new_head else masks)
        if not new_head:
            return Constant(SparseMasks.load(stored, model))
        # The classifier was re-created for other classes: the stored mask covers the backbone only, checked against
        # the loaded weights (the file's fingerprint includes the old classifier, so it cannot be compared).
        from ..hub import check_sparsity

        loaded = SparseMasks.load(stored)
        masks = SparseMasks({n: m for n, m in loaded.items() if n not in new_head}, model)
        check_sparsity(model, masks)
        return Constant(masks)
    if args.method == "gmp":
        start = int(round(args.gmp_start_epoch * steps_per_epoch))
        end = int(round(args.gmp_end_epoch * steps_per_epoch))
        return GMP(dense_masks(model, args.targets), args.sparsity, start, end, args.gmp_interval_steps,
                   args.gmp_initial_sparsity, args.distribution)
    if args.method == "acdc":
        return ACDC(dense_masks(model, args.targets), args.sparsity, steps_per_epoch, args.epochs, args.acdc_warmup_epochs,
                    args.acdc_phase_epochs, args.acdc_final_epochs, args.distribution, args.acdc_decompressed_sparsity,
                    args.acdc_reset_momentum)
    return RigL.from_model(model, args.sparsity, total_steps, args.distribution, args.targets, init=args.rigl_init,
                           seed=args.seed, update_interval=args.rigl_interval_steps, alpha=args.rigl_alpha,
                           end_fraction=args.rigl_end_fraction)


def _stored_mask_path(init_checkpoint: str | None) -> str | None:
    """The mask file written next to an ``--init_checkpoint`` by this tool, if there is one."""
    if not init_checkpoint:
        return None
    folder = init_checkpoint if os.path.isdir(init_checkpoint) else os.path.dirname(init_checkpoint)
    path = os.path.join(folder, MASKS_NAME)
    return path if os.path.isfile(path) else None


def _seed_everything(seed: int) -> None:
    from accelerate.utils import set_seed

    set_seed(seed)  # python, numpy, torch and every CUDA device


def _atomic_json(path: str, obj: Any) -> None:
    write_json_atomic(path, obj)


def _replace_dir(tmp: str, final: str) -> None:
    """Puts the complete folder ``tmp`` in place of ``final``: final -> final.old, tmp -> final, drop final.old.

    A kill between the two renames leaves no ``final`` but a complete ``tmp`` (written before the swap started) and
    ``final.old``; :func:`_recover_dir` finishes the swap on the next run."""
    old = f"{final}.old"
    if os.path.exists(old):
        shutil.rmtree(old)
    if os.path.exists(final):
        os.replace(final, old)
    os.replace(tmp, final)
    if os.path.exists(old):
        shutil.rmtree(old)


def _recover_dir(final: str) -> None:
    """Finishes a :func:`_replace_dir` that a kill interrupted, so that a rerun resumes instead of starting over."""
    tmp, old = f"{final}.tmp", f"{final}.old"
    if os.path.isdir(final):
        if os.path.exists(old):
            shutil.rmtree(old)  # killed after the swap, before the clean-up
        return
    if os.path.isdir(tmp) and os.path.isdir(old):  # killed between the renames: tmp was complete
        os.replace(tmp, final)
        shutil.rmtree(old)
    elif os.path.isdir(old):  # killed before tmp was renamed and tmp is gone: the previous folder is the last good one
        os.replace(old, final)


def model_card(args: VisionArguments, report, results: dict[str, Any], masks: SparseMasks | None, directory: str) -> str:
    """The README.md of a checkpoint folder (:func:`sparse_transfer.hub.model_card`: front matter for the Hub with
    ``library_name: timm`` and a ``model-index`` of the evaluation, the sparsity per layer, the recipe, a snippet)."""
    from ..hub import _is_hub_id, model_card as build_card

    local_data = os.path.exists(args.data)
    card = {
        "title": f"{args.model} trained with {args.method}" + (f" at {args.sparsity:.0%} sparsity" if args.sparsity else ""),
        "base_model": args.model.removeprefix("hf-hub:") if args.pretrained else None,
        "method": f"`python -m sparse_transfer.vision` ({args.method}, {args.distribution} distribution over "
                  f"{args.targets} targets)",
        "datasets": [args.data] if _is_hub_id(args.data) else [],
        "data": f"Trained on {'local data ' + os.path.basename(os.path.normpath(args.data)) if local_data else args.data}.",
        "usage": "timm",
        "tags": ["image-classification", "timm"],
        "results": results,
        "recipe": args.to_dict(),
    }
    if "eval_top1" in results:
        card["eval"] = {
            "task_type": "image-classification",
            "dataset_name": os.path.basename(os.path.normpath(args.data)) if local_data else args.data,
            "dataset_type": "imagefolder" if local_data else args.data,
            "dataset_split": args.eval_split or "validation",
            "num_examples": results.get("eval_examples"),
            "metrics": {"accuracy": results["eval_top1"]},
        }
    return build_card(report, card=card, masks=masks, library="timm", location=os.path.abspath(directory))


def masked_lora_model(model: nn.Module, masks: SparseMasks, args: VisionArguments) -> nn.Module:
    """``model`` wrapped in a masked LoRA (:class:`~sparse_transfer.lora.SparseLoraConfig`): adapters on the masked
    convs and linears (grouped/depthwise convs left out: peft cannot merge them); the classifier and the BatchNorm
    layers train in full (``modules_to_save``). The BatchNorm layers must: in training mode they update their running
    statistics, which would otherwise change the frozen base behind the adapter's back, so that the saved adapter on
    the original base would not compute what the trained model computed."""
    from peft import get_peft_model

    from ..lora import SparseLoraConfig

    classifier = model.pretrained_cfg.get("classifier") if isinstance(getattr(model, "pretrained_cfg", None), dict) else None
    modules = dict(model.named_modules())
    targets = [n.removesuffix(".weight") for n in masks]
    targets = [n for n in targets if n != classifier and getattr(modules.get(n), "groups", 1) == 1]
    if not targets:
        raise ValueError(f"No masked layer of {args.model} can take a LoRA adapter (the masks cover only the classifier "
                         "or grouped convolutions).")
    config = SparseLoraConfig(
        r=args.lora_r,
        lora_alpha=args.lora_alpha if args.lora_alpha is not None else 2 * args.lora_r,
        lora_dropout=args.lora_dropout,
        target_modules=targets,
        modules_to_save=([classifier] if classifier in modules else [])
        + [n for n, m in modules.items() if isinstance(m, nn.modules.batchnorm._NormBase)],
        base_model_name_or_path=args.model,
    )
    return get_peft_model(model, config)


def _finish_lora(model: nn.Module, masks: SparseMasks, best_dir: str, args: VisionArguments, results: dict) -> dict:
    """Loads the best adapter back, merges it into the base, checks every pruned weight is 0, and with --lora_merge
    writes the merged model (a timm checkpoint with its mask file) to OUTPUT/merged."""
    from peft import set_peft_model_state_dict

    from ..hub import ADAPTER_WEIGHTS_NAME, check_sparsity, load_state_dict_from_checkpoint, verify_sparse_adapter

    record = verify_sparse_adapter(best_dir)
    set_peft_model_state_dict(model, load_state_dict_from_checkpoint(os.path.join(best_dir, ADAPTER_WEIGHTS_NAME)))
    info = {"r": args.lora_r, "adapted_layers": len(record), "adapter": best_dir,
            "trainable_parameters": sum(p.numel() for p in model.parameters() if p.requires_grad)}
    merged = model.merge_and_unload()
    check_sparsity(merged, masks)
    if args.lora_merge:
        directory = os.path.join(args.output_dir, "merged")
        save_checkpoint(directory, merged, Constant(masks), args, {**results, "merged_from": best_dir})
        info["merged"] = directory
    return info


def save_checkpoint(directory: str, model: nn.Module, method: MaskMethod | None, args: VisionArguments, results: dict[str, Any]) -> None:
    """``model.safetensors`` + ``config.json`` (timm's format, reloads with ``timm.create_model('local-dir:...')``),
    the mask file and a model card, written to a temporary folder and renamed into place. A masked LoRA model is
    saved as its adapter (peft's files) instead."""
    from timm.models import save_for_hf

    tmp = f"{directory}.tmp"
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    if hasattr(model, "peft_config"):
        from ..hub import save_sparse_adapter

        save_sparse_adapter(model, tmp, card={"title": f"Masked LoRA adapter for {args.model}", "base_model": args.model,
                                              "tags": ["image-classification", "timm"], "recipe": args.to_dict()})
        _atomic_json(os.path.join(tmp, "results.json"), results)
        _replace_dir(tmp, directory)
        return
    save_for_hf(model, tmp, model_args=json.loads(args.model_kwargs) or None, safe_serialization=True)
    if method is not None and method.active:
        method.masks.save(os.path.join(tmp, MASKS_NAME))
    report = sparsity_report(model, args.targets)
    masks = method.masks if method is not None and method.active else None
    with open(os.path.join(tmp, "README.md"), "w") as f:
        f.write(model_card(args, report, results, masks, directory))
    _atomic_json(os.path.join(tmp, "results.json"), results)
    _replace_dir(tmp, directory)


def push_checkpoint(directory: str, args: VisionArguments) -> str:
    """Uploads a checkpoint directory with :func:`~sparse_transfer.hub.push_sparse_to_hub`: its weights are checked
    against its mask file first, and only the allow-listed files (safetensors, JSON, the card) go up."""
    from ..hub import push_or_explain

    message = f"sparse_transfer: {args.model} {args.method}" + (f" {args.sparsity:.0%}" if args.sparsity else "")
    return push_or_explain(directory, args.push_to_hub, private=args.hub_private_repo or None, commit_message=message)


@torch.no_grad()
def evaluate(model: nn.Module, dataset, args: VisionArguments, accelerator) -> dict[str, float]:
    """Top-1, loss and mean prediction entropy over the whole eval set, each rank taking a disjoint shard.

    Sums reduced over ranks rather than ``accelerator.prepare`` + ``gather_for_metrics``: the same exact result (no
    example counted twice, whatever the world size) without gathering every example's logits onto every rank.
    """
    model.eval()
    rank, world = accelerator.process_index, accelerator.num_processes
    shard = torch.utils.data.Subset(dataset, list(range(rank, len(dataset), world)))
    loader = DataLoader(shard, batch_size=args.batch_size, shuffle=False, num_workers=args.num_workers)
    sums = torch.zeros(4, dtype=torch.float64, device=accelerator.device)  # correct, loss, entropy, count
    memory_format = torch.channels_last if _use_channels_last(args, accelerator) else torch.contiguous_format
    for x, y in tqdm(loader, desc="eval", leave=False, disable=not (args.progress and accelerator.is_main_process)):
        x = x.to(accelerator.device, non_blocking=True).to(memory_format=memory_format)
        y = y.to(accelerator.device, non_blocking=True)
        with accelerator.autocast():
            logits = model(x)
        logits = logits.float()
        logp = torch.log_softmax(logits, dim=-1)
        sums[0] += (logits.argmax(-1) == y).sum()
        sums[1] += nn.functional.cross_entropy(logits, y, reduction="sum")
        sums[2] += -(logp.exp() * logp).sum(-1).sum()
        sums[3] += y.numel()
    sums = accelerator.reduce(sums, reduction="sum")
    n = max(float(sums[3]), 1.0)
    return {"eval_top1": float(sums[0]) / n, "eval_loss": float(sums[1]) / n, "eval_entropy": float(sums[2]) / n}


def _use_channels_last(args: VisionArguments, accelerator) -> bool:
    return args.channels_last == "yes" or (args.channels_last == "auto" and accelerator.device.type == "cuda")


def _mixed_precision(args: VisionArguments) -> str:
    if args.mixed_precision != "auto":
        return args.mixed_precision
    if not torch.cuda.is_available():
        return "no"
    return "bf16" if torch.cuda.is_bf16_supported() else "fp16"


def _digest(model: nn.Module, method: MaskMethod | None) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    if method is not None:
        for name, m in sorted(method.masks.items()):
            h.update(m.cpu().numpy().tobytes())
    return h.hexdigest()


def train(args: VisionArguments) -> dict[str, Any]:
    """Runs (or resumes) one training run and returns its results (also written to ``results.json``)."""
    from accelerate import Accelerator
    from accelerate.utils import gather_object

    args.validate()
    if args.push_to_hub and args.method == "dense":
        raise ValueError(
            "--push-to-hub publishes a sparse checkpoint with its mask file, checked before upload; --method dense "
            "trains without masks, so there would be nothing to check. Push a dense model with huggingface_hub "
            "(model.push_to_hub), or train a sparse one."
        )
    if args.push_to_hub:
        from ..hub import check_push_target

        check_push_target(args.push_to_hub)  # before any training: fails in seconds, not hours
    accelerator = Accelerator(mixed_precision=_mixed_precision(args), cpu=not torch.cuda.is_available())
    main = accelerator.is_main_process
    out = args.output_dir
    if main:
        os.makedirs(out, exist_ok=True)

    train_ds, eval_ds = build_datasets(args.data, args.train_split, args.eval_split, args.image_column, args.label_column)
    num_classes = len(train_ds.classes)
    train_ds = subset(train_ds, args.max_train_samples, args.data_seed)
    eval_ds = subset(eval_ds, args.max_eval_samples, args.data_seed + 1)
    check_first_image(train_ds)
    check_first_image(eval_ds)
    if args.cache_images:
        train_ds.cache_()
        eval_ds.cache_()

    # Which weights --init_checkpoint holds (timm's own pretrained weights are named by the model's tag): a state
    # saved from other weights under the same path is never resumed.
    start = start_identity(args.init_checkpoint) if args.init_checkpoint else None
    _seed_everything(args.seed)
    model = create_model(args, num_classes)
    if start is not None and not starts_match(start, start_identity(args.init_checkpoint)):
        raise ValueError(f"{args.init_checkpoint} changed while this command loaded it; start it again once it is no "
                         "longer being written.")
    base_masks = None
    if args.lora_r is not None:
        base_masks = build_method(args, model, 1, 1).masks
        model = masked_lora_model(model, base_masks, args)
    use_cl = _use_channels_last(args, accelerator)
    model = model.to(accelerator.device)
    if use_cl:
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(param_groups(model, args.weight_decay), lr=args.lr, momentum=args.momentum, nesterov=args.nesterov)

    world = accelerator.num_processes
    steps_per_epoch = len(train_ds) // (args.batch_size * world)
    if steps_per_epoch == 0:
        raise ValueError(f"{len(train_ds)} training images are fewer than one batch ({args.batch_size} x {world} processes).")
    if args.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, args.max_steps_per_epoch)
    total_steps = steps_per_epoch * args.epochs
    warmup_steps = int(round(args.lr_warmup_epochs * steps_per_epoch))
    end_factor = args.lr_end / args.lr if args.lr else 0.0
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, warmup_steps, total_steps, end_factor))

    model, optimizer = accelerator.prepare(model, optimizer)
    unwrapped = accelerator.unwrap_model(model)
    if base_masks is not None:  # the same masks, under peft's names
        method = Constant(SparseMasks(base_masks.state_dict()).bind(unwrapped))
    else:
        method = build_method(args, unwrapped, steps_per_epoch, total_steps)
    if method is not None:
        # On a GPU, mask copies in the weights' dtype let one fused kernel mask every tensor: ~1 ms saved per step
        # on ResNet-50 (5% of a batch-32 H200 step) for 4 bytes per weight (100 MB); see SparseMasks.multiplier.
        method.masks.multiplier = "auto"
        method.attach(optimizer)
    criterion = nn.CrossEntropyLoss(label_smoothing=args.label_smoothing)

    # ------------------------------------------------------------------------------------ resume
    recipe = args.to_dict()
    state_dir = os.path.join(out, "state")
    start_epoch, history, best = 0, [], {"eval_top1": -1.0, "epoch": None}
    prev_mask: dict[str, torch.Tensor] | None = None
    explored: dict[str, torch.Tensor] | None = None  # union of every mask at target sparsity so far
    if main:
        for name in ("state", "last", "best"):
            _recover_dir(os.path.join(out, name))
    accelerator.wait_for_everyone()
    if args.overwrite and main:
        for name in ("state", "last", "best", "merged", "results.json"):
            path = os.path.join(out, name)
            shutil.rmtree(path, ignore_errors=True) if os.path.isdir(path) else (
                os.remove(path) if os.path.exists(path) else None)
    accelerator.wait_for_everyone()
    if not args.overwrite and os.path.isfile(os.path.join(state_dir, "state.pt")):
        state = torch.load(os.path.join(state_dir, "state.pt"), map_location="cpu", weights_only=True)
        saved = {k: v for k, v in state["recipe"].items() if k not in _RUNTIME_FIELDS}
        now = {k: v for k, v in recipe.items() if k not in _RUNTIME_FIELDS}
        if saved != now:
            diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
            refuse_other_recipe(out, "a run", diff)
        if start is not None:
            same_start(state.get("start"), start, out, args.init_checkpoint)
        unwrapped.load_state_dict(state["model"])
        getattr(optimizer, "optimizer", optimizer).load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        if method is not None:
            method.load_state_dict(state["method"])
        start_epoch, history, best = state["epoch"], json.loads(state["history"]), json.loads(state["best"])
        prev_mask = state.get("prev_mask")
        explored = state.get("explored")
        if main:
            logger.info("Resumed %s at epoch %d.", out, start_epoch)
    if main:
        write_recipe(out, {k: v for k, v in recipe.items() if k not in _NOT_IN_RECIPE}, "vision")

    # ------------------------------------------------------------------------------------ epochs
    step_times: list[float] = []
    for epoch in range(start_epoch, args.epochs):
        _seed_everything(args.seed * 100_003 + epoch * 1009 + accelerator.process_index)
        size = progressive_size(epoch, args.train_size_start, args.train_size_end, args.resize_start_epoch,
                                args.resize_end_epoch, args.resize_multiple)
        train_ds.transform, eval_ds.transform = timm_transforms(unwrapped, size, args.eval_size, args.eval_resize,
                                                                args.crop_scale_min, args.hflip)
        sampler = DistributedSampler(train_ds, num_replicas=world, rank=accelerator.process_index, shuffle=True,
                                     seed=args.seed, drop_last=True)
        sampler.set_epoch(epoch)
        loader = DataLoader(train_ds, batch_size=args.batch_size, sampler=sampler, num_workers=args.num_workers,
                            drop_last=True, pin_memory=accelerator.device.type == "cuda",
                            generator=torch.Generator().manual_seed(args.seed * 7919 + epoch),
                            persistent_workers=False)
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=accelerator.device)
        bad_step = torch.full((), -1, dtype=torch.long, device=accelerator.device)
        events: list[dict[str, Any]] = []
        t0 = time.perf_counter()
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{args.epochs} @{size}px",
                   disable=not (args.progress and main), leave=False)
        for i, (x, y) in enumerate(loader):
            if i >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + i
            _cli.progress["step"] = step
            x = x.to(accelerator.device, non_blocking=True)
            if use_cl:
                x = x.to(memory_format=torch.channels_last)
            y = y.to(accelerator.device, non_blocking=True)
            optimizer.zero_grad(set_to_none=True)
            if method is not None:
                method.begin_step(step)
            with accelerator.autocast():
                loss = criterion(model(x), y)
            accelerator.backward(loss)
            if method is not None:
                try:
                    event = method.step(step, optimizer)
                except _cli.TrainingStopped:  # NaN weights the method cannot rank: say when the loss became NaN
                    bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), torch.full_like(bad_step, step),
                                           bad_step)
                    _stop_if_not_finite(int(bad_step), unwrapped, epoch)
                    raise
                if event is not None:
                    events.append(event)
                    explored = _explore(explored, _current_mask(method), args.sparsity)
            optimizer.step()
            scheduler.step()
            loss_sum += loss.detach().double()
            # the first step with a non-finite loss, kept on the device (no synchronization per step)
            bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss.detach()), torch.full_like(bad_step, step), bad_step)
            bar.update(1)
            if i % 20 == 0:
                bar.set_postfix(loss=f"{loss.item():.3f}")
        bar.close()
        _stop_if_not_finite(int(accelerator.reduce(bad_step, reduction="max")), unwrapped, epoch)
        epoch_time = time.perf_counter() - t0
        step_times.append(epoch_time / steps_per_epoch)
        train_loss = float(accelerator.reduce(loss_sum, reduction="mean")) / steps_per_epoch

        # -------------------------------------------------------------------------------- metrics
        record: dict[str, Any] = {"epoch": epoch + 1, "train_loss": train_loss, "train_size": size,
                                  "lr": scheduler.get_last_lr()[0], "epoch_time_s": epoch_time}
        if (epoch + 1) % args.eval_every == 0 or epoch + 1 == args.epochs:
            record.update(evaluate(model, eval_ds, args, accelerator))
        report = sparsity_report(unwrapped, args.targets)
        record.update(sparsity=report.target_sparsity, model_sparsity=report.model_sparsity,
                      zero_channel_fraction=report.zero_channel_fraction,
                      layer_sparsity={l.name: round(l.sparsity, 6) for l in report.layers})
        if method is not None:
            record.update(method.describe())  # mask_active, and e.g. AC/DC's phase
            record["events"] = [e["event"] for e in events]
            pruned = method.reference_mask
            if pruned is not None and _released(method, pruned):
                # Released (AC/DC decompressed): how many weights stay exactly 0 with no (or only the minimum) mask
                # imposed, overall and among those the last compression pruned.
                record["decompressed_zero_fraction"] = report.target_sparsity
                n_pruned = sum(int((~m).sum()) for m in pruned.values())
                still = sum(int((p.detach()[~pruned[n].to(p.device)] == 0).sum()) for n, p in method.masks.params.items())
                record["decompressed_pruned_still_zero"] = still / max(n_pruned, 1)
            update_ious = [e["iou"] for e in events if e.get("iou") is not None]
            if update_ious:  # each new mask against the one computed before it (compression, prune, drop/grow)
                record["mask_iou_update"] = update_ious[-1]
                record["mask_update_ious"] = [round(v, 6) for v in update_ious]
            # The method's current mask, also while AC/DC is decompressed (its last compression): epoch-to-epoch
            # IoU, and how many distinct weights the masks at target sparsity have used so far.
            current = _current_mask(method)
            explored = _explore(explored, current, args.sparsity)
            if current is not None and _at_target(current, args.sparsity):
                current = {n: m.cpu().clone() for n, m in current.items()}
                if prev_mask is not None:
                    record["mask_iou_epoch"] = SparseMasks(prev_mask).iou(SparseMasks(current))
                prev_mask = current
                union = sum(int(m.sum()) for m in explored.values())
                record["mask_explored_ratio"] = union / max(1, sum(int(m.sum()) for m in current.values()))
        history.append(record)
        at_target = method is None or (method.active and method.masks.sparsity() >= args.sparsity - 1e-3)
        improved = "eval_top1" in record and at_target and record["eval_top1"] > best["eval_top1"]
        if improved:
            best = {"eval_top1": record["eval_top1"], "epoch": epoch + 1}
        if main:
            msg = f"epoch {epoch + 1}: train_loss {train_loss:.4f}"
            if "eval_top1" in record:
                msg += f" top1 {record['eval_top1']:.4f} entropy {record['eval_entropy']:.4f}"
            msg += f" sparsity {record['sparsity']:.4f}" + (f" phase {record['phase']}" if "phase" in record else "")
            tqdm.write(msg)
            snapshot = {"epoch": epoch + 1, "train_loss": train_loss, "eval_examples": len(eval_ds),
                        **{k: record[k] for k in ("eval_top1", "eval_entropy") if k in record}}
            save_checkpoint(os.path.join(out, "last"), unwrapped, method, args, snapshot)
            if improved:
                save_checkpoint(os.path.join(out, "best"), unwrapped, method, args, snapshot)
            tmp = f"{state_dir}.tmp"
            os.makedirs(tmp, exist_ok=True)
            inner = getattr(optimizer, "optimizer", optimizer)
            torch.save({"model": unwrapped.state_dict(), "optimizer": inner.state_dict(), "scheduler": scheduler.state_dict(),
                        "method": method.state_dict() if method is not None else None, "epoch": epoch + 1,
                        "history": json.dumps(history), "best": json.dumps(best), "recipe": recipe,
                        "prev_mask": prev_mask, "explored": explored, "start": start}, os.path.join(tmp, "state.pt"))
            _replace_dir(tmp, state_dir)
            _atomic_json(os.path.join(out, "results.json"), _results(args, history, best, False, step_times, start))
        accelerator.wait_for_everyone()
        if args.stop_after_epoch is not None and epoch + 1 >= args.stop_after_epoch and epoch + 1 < args.epochs:
            return _results(args, history, best, False, step_times, start)

    results = _results(args, history, best, True, step_times, start)
    results["steps_per_epoch"], results["num_processes"] = steps_per_epoch, world
    if world > 1:
        digests = gather_object([_digest(unwrapped, method)])
        results["rank_digests"] = digests
        results["ranks_identical"] = len(set(digests)) == 1
    if main:
        source = os.path.join(out, "best") if os.path.isdir(os.path.join(out, "best")) else os.path.join(out, "last")
        if args.lora_r is not None:
            results["lora"] = _finish_lora(unwrapped, base_masks, source, args, results)
            if args.lora_merge:
                source = os.path.join(out, "merged")
        _atomic_json(os.path.join(out, "results.json"), results)
        if args.push_to_hub:
            results["hub_url"] = push_checkpoint(source, args)
            _atomic_json(os.path.join(out, "results.json"), results)
    accelerator.wait_for_everyone()
    return results


@torch.no_grad()
def _stop_if_not_finite(bad_step: int, model: nn.Module, epoch: int) -> None:
    """Stops at the end of an epoch, before its checkpoints are written over the previous ones, if a step's loss or a
    weight is not finite."""
    bad = nonfinite_names(dict(model.named_parameters()))
    if bad_step < 0 and not bad:
        return
    what = f"the training loss became NaN or inf at step {bad_step}" if bad_step >= 0 else (
        f"{len(bad)} parameter(s) hold NaN or inf (e.g. {bad[0]})")
    raise _cli.TrainingStopped(
        f"Epoch {epoch + 1}: {what}; stopped before saving, so last/, best/ and state/ still hold epoch {epoch}. Try a "
        "lower --lr, --mixed_precision bf16 instead of fp16, or check the data; then rerun the same command to resume."
    )


def _released(method: MaskMethod, reference: dict[str, torch.Tensor]) -> bool:
    """Whether the method trains without its last computed mask (none imposed, or a weaker one: AC/DC decompressed)."""
    return not method.active or any(not torch.equal(method.masks[n], m.to(method.masks[n].device)) for n, m in reference.items())


def _current_mask(method: MaskMethod | None) -> dict[str, torch.Tensor] | None:
    """The mask the method computed last (AC/DC keeps its last compression while decompressed), else the imposed one."""
    if method is None:
        return None
    if method.reference_mask is not None:
        return method.reference_mask
    return dict(method.masks.items()) if method.active else None


def _at_target(mask: dict[str, torch.Tensor], sparsity: float) -> bool:
    kept = sum(int(m.sum()) for m in mask.values())
    total = sum(m.numel() for m in mask.values())
    return total > 0 and 1 - kept / total >= sparsity - 1e-3


def _explore(explored: dict[str, torch.Tensor] | None, mask: dict[str, torch.Tensor] | None, sparsity: float):
    """Adds ``mask`` to the union of masks at target sparsity (GMP's intermediate, denser masks do not count)."""
    if mask is None or not _at_target(mask, sparsity):
        return explored
    if explored is None:
        return {n: m.detach().cpu().clone() for n, m in mask.items()}
    for n, m in mask.items():
        explored[n] |= m.detach().cpu()
    return explored


def _results(args: VisionArguments, history: list[dict], best: dict, complete: bool, step_times: list[float],
             start: dict[str, Any] | None) -> dict[str, Any]:
    last = history[-1] if history else {}
    evaluated = [h for h in history if "eval_top1" in h]
    return {
        "complete": complete,
        "model": args.model,
        "method": args.method,
        "sparsity_target": args.sparsity,
        "epochs": args.epochs,
        "final_train_loss": last.get("train_loss"),
        "final_eval_top1": evaluated[-1]["eval_top1"] if evaluated else None,
        "final_eval_entropy": evaluated[-1]["eval_entropy"] if evaluated else None,
        "final_sparsity": last.get("sparsity"),
        "final_zero_channel_fraction": last.get("zero_channel_fraction"),
        "best_eval_top1": best["eval_top1"] if best["epoch"] else None,
        "best_epoch": best["epoch"],
        "mean_step_time_s_this_session": sum(step_times) / len(step_times) if step_times else None,
        "sparse_transfer_version": __version__,
        "versions": library_versions(),
        "recipe": {k: v for k, v in args.to_dict().items() if k not in _NOT_IN_RECIPE},
        "start": start,
        "history": history,
    }
