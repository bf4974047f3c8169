"""One upstream pruning run from :class:`UpstreamArguments` to a sparse pretrained checkpoint directory."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from typing import Any

import torch

from .._cli import check_sequence_length
from ..core import sparsity_report
from ..hf.trainer import SparseTrainingArguments
from ..hf.unfreeze import find_encoder_blocks
from ..hub import save_sparse_pretrained
from .._rundir import (
    RECIPE_NAME,
    RESULTS_NAME,
    START_NAME,
    read_yaml,
    recipe_difference,
    refuse_other_recipe,
    same_start,
    start_identity,
    starts_match,
    write_recipe,
)
from .config import RESUME_FREE_FIELDS, UpstreamArguments
from .data import BlockDataset, held_out_sentences, read_text_dataset, read_text_files, tokenize_blocks
from .losses import LossWeights
from .train import (
    UpstreamTrainer,
    build_method,
    describe_method,
    evaluate_student,
    has_mlm_head,
    last_complete_checkpoint,
    library_versions,
    magnitude_prune_,
    remove_checkpoints,
    write_json_atomic,
)

logger = logging.getLogger(__name__)



def recipe_fingerprint(args: UpstreamArguments) -> str:
    """Hash of every field that changes the trained weights (a resumed run must match it)."""
    relevant = {k: v for k, v in args.to_dict().items() if k not in RESUME_FREE_FIELDS}
    return hashlib.sha256(json.dumps(relevant, sort_keys=True, default=str).encode()).hexdigest()[:16]


def load_model_and_tokenizer(args: UpstreamArguments):
    """The dense model (with its MLM head if the checkpoint has one) and its tokenizer."""
    from transformers import AutoConfig, AutoModel, AutoModelForMaskedLM, AutoTokenizer

    kwargs: dict[str, Any] = {"trust_remote_code": args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(args.model, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(args.model, **kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"Could not load the model {args.model!r}: {str(err).splitlines()[0]} Pass a local directory with "
            "config.json, the weights and the tokenizer, or a Hub id when the Hub is reachable."
        ) from None
    with_head = any(a.endswith("ForMaskedLM") or a.endswith("ForPreTraining") for a in (config.architectures or []))
    model_kwargs = dict(kwargs)
    if args.attention_weight > 0:
        model_kwargs["attn_implementation"] = "eager"  # SDPA kernels do not return attention probabilities
    auto = AutoModelForMaskedLM if with_head else AutoModel
    try:
        model = auto.from_pretrained(args.model, **model_kwargs)
    except (OSError, ValueError) as err:
        raise ValueError(f"Could not load the weights of {args.model!r}: {str(err).splitlines()[0]}") from None
    return model, tokenizer


def effective_loss_weights(args: UpstreamArguments, model) -> LossWeights:
    """The loss weights that apply to ``model``: the logit term needs an MLM head; the MLM loss too (error)."""
    head = has_mlm_head(model)
    if args.mlm_weight > 0 and not head:
        raise ValueError(
            f"mlm_weight={args.mlm_weight} needs a masked-LM head, but {args.model} loads without one "
            "(its config.architectures has no *ForMaskedLM): set mlm_weight 0."
        )
    weights = LossWeights(
        hidden=args.hidden_weight,
        attention=args.attention_weight,
        logit=args.logit_weight if head else 0.0,
        mlm=args.mlm_weight,
    )
    if not weights.active():
        raise ValueError(
            f"No distillation term applies to {args.model}: it has no MLM head, so only hidden_weight and "
            "attention_weight can train it; set one of them above 0."
        )
    return weights


def _check_output_dir(args: UpstreamArguments, fingerprint: str, start: dict[str, Any]) -> dict | None:
    """Returns the finished results if this exact run already completed from these weights (``start``); errors if
    the folder holds another run, or this one from other weights."""
    recipe_path = os.path.join(args.output_dir, RECIPE_NAME)
    results_path = os.path.join(args.output_dir, RESULTS_NAME)
    if args.overwrite or not os.path.isfile(recipe_path):
        return None
    saved = {k: v for k, v in read_yaml(recipe_path).items() if k not in RESUME_FREE_FIELDS}
    differing = recipe_difference(saved, {k: v for k, v in args.to_dict().items() if k not in RESUME_FREE_FIELDS})
    if differing:
        refuse_other_recipe(args.output_dir, "a run", differing)
    if os.path.isfile(results_path):
        with open(results_path) as f:
            results = json.load(f)
        if results.get("finished"):
            same_start(results.get("start"), start, args.output_dir, args.model)
            return results
    return None


def run_upstream(args: UpstreamArguments) -> dict[str, Any]:
    """Prunes ``args.model`` by GMP + distillation and writes the sparse checkpoint to ``args.output_dir``.

    Resumes from the newest complete checkpoint in ``output_dir`` (same recipe required); returns the
    cached results if the run already finished.

    Returns:
        The content of ``results.json``.
    """
    args.validate()
    fingerprint = recipe_fingerprint(args)
    # Which weights the teacher (and the student's start) is: a folder retrained under the same path must not finish
    # a run that another one began, nor count as its cached result.
    start_weights = start_identity(args.model)
    finished = _check_output_dir(args, fingerprint, start_weights)
    if finished is not None:
        logger.info("%s already holds this finished run; not training again.", args.output_dir)
        return finished

    from transformers import set_seed

    set_seed(args.seed)  # weights missing from the checkpoint (e.g. a pooler) are initialized the same way every run
    model, tokenizer = load_model_and_tokenizer(args)
    check_sequence_length(args.block_size, "--block_size", args.block_size, args.model, model, tokenizer)
    if not starts_match(start_weights, start_identity(args.model)):
        raise ValueError(f"{args.model} changed while this command loaded it; start it again once the folder is no "
                         "longer being written.")
    try:
        find_encoder_blocks(model)
    except ValueError:
        raise ValueError(
            f"No encoder blocks found in {args.model} ({type(model).__name__} has no nn.ModuleList of transformer "
            "layers): upstream pruning needs a BERT-family encoder (BERT, RoBERTa, DistilBERT, ELECTRA, MiniLM...)."
        ) from None
    weights = effective_loss_weights(args, model)

    # ------------------------------------------------------------------ data
    if args.text:
        lines = read_text_files(args.text)
    else:
        lines = read_text_dataset(args.dataset, args.dataset_config, args.dataset_split, args.text_column)
    train_blocks = tokenize_blocks(lines, tokenizer, args.block_size, args.max_train_blocks)
    eval_lines: list[str] = []
    if args.eval_text:
        eval_lines = read_text_files([args.eval_text])
    elif args.dataset and args.dataset_eval_split:
        eval_lines = read_text_dataset(args.dataset, args.dataset_config, args.dataset_eval_split, args.text_column)
    eval_blocks = tokenize_blocks(eval_lines, tokenizer, args.block_size, args.max_eval_blocks) if eval_lines else None
    sentences = held_out_sentences(eval_lines, args.eval_sentences) if eval_lines else []

    # ------------------------------------------------------------------ student, teacher, pruning
    teacher = copy.deepcopy(model).eval().requires_grad_(False)
    student = model
    if not args.train_embeddings:
        for name, param in student.named_parameters():
            if "embeddings." in name:  # word/position/type embeddings and their LayerNorm
                param.requires_grad_(False)
    if not args.keep_dropout:
        # Only the modules' p changes: the saved config keeps the model's dropout for downstream fine-tuning.
        for module in student.modules():
            if isinstance(module, torch.nn.Dropout):
                module.p = args.student_dropout
    method = build_method(args, student)
    masks = method.masks

    os.makedirs(args.output_dir, exist_ok=True)
    if args.overwrite:
        remove_checkpoints(args.output_dir)
        for stale in (RESULTS_NAME,):
            if os.path.isfile(os.path.join(args.output_dir, stale)):
                os.remove(os.path.join(args.output_dir, stale))
    checkpoint = None if args.overwrite else last_complete_checkpoint(args.output_dir)
    if checkpoint is not None:  # resumed only from the weights it started from
        start_file = os.path.join(args.output_dir, START_NAME)
        saved_start = None
        if os.path.isfile(start_file):
            with open(start_file) as f:
                saved_start = json.load(f)
        same_start(saved_start, start_weights, args.output_dir, args.model)
    write_recipe(args.output_dir, {k: v for k, v in args.to_dict().items() if k != "overwrite"}, "upstream")
    write_json_atomic(os.path.join(args.output_dir, START_NAME), start_weights)

    # ------------------------------------------------------------------ trainer
    from transformers import default_data_collator

    evaluate_periodically = eval_blocks is not None and args.eval_steps > 0
    training_args = SparseTrainingArguments(
        output_dir=args.output_dir,
        unfreeze="none",
        mask_targets=args.targets,
        max_steps=args.max_steps,
        per_device_train_batch_size=args.batch_size,
        per_device_eval_batch_size=args.batch_size,
        gradient_accumulation_steps=args.gradient_accumulation_steps,
        learning_rate=args.learning_rate,
        lr_scheduler_type=args.lr_scheduler_type,
        warmup_steps=args.warmup_steps,
        weight_decay=args.weight_decay,
        logging_steps=args.logging_steps,
        save_strategy="steps" if args.save_steps > 0 else "no",
        save_steps=max(args.save_steps, 1),
        save_total_limit=2,
        eval_strategy="steps" if evaluate_periodically else "no",
        eval_steps=args.eval_steps if evaluate_periodically else None,
        seed=args.seed,
        data_seed=args.seed,
        report_to="none",
        disable_tqdm=args.disable_tqdm,
        bf16=args.bf16,
        remove_unused_columns=False,
        dataloader_num_workers=0,
        dataloader_pin_memory=torch.cuda.is_available(),
    )
    trainer = UpstreamTrainer(
        student,
        training_args,
        teacher=teacher,
        method=method,
        loss_weights=weights,
        temperature=args.temperature,
        mlm_probability=args.mlm_probability,
        train_dataset=BlockDataset(train_blocks),
        eval_dataset=BlockDataset(eval_blocks) if evaluate_periodically else None,
        data_collator=default_data_collator,
        processing_class=tokenizer,
    )
    trainer.recipe_fingerprint = fingerprint
    if checkpoint is not None:
        with open(os.path.join(checkpoint, "upstream_state.json")) as f:
            saved_state = json.load(f)
        if saved_state.get("recipe_fingerprint") != fingerprint:
            raise ValueError(f"{checkpoint} was written by a different recipe; pass --overwrite to start over.")
        trainer.method_callback.events = list(saved_state.get("pruning_events", []))
        logger.info("Resuming from %s", checkpoint)
    start = time.time()
    trainer.train(resume_from_checkpoint=checkpoint)
    train_seconds = time.time() - start

    if not method.active:
        raise RuntimeError(
            f"Training ended with the {args.method} mask released (dense weights): the schedule must end compressed. "
            "Check the AC/DC phase lengths against max_steps."
        )
    violations = masks.violations()
    if violations:
        raise RuntimeError(f"{violations} pruned weights are non-zero after training; not saving.")

    # ------------------------------------------------------------------ evaluation
    device = next(student.parameters()).device
    teacher.to(device)
    attention = weights.attention > 0
    final_eval = evaluate_student(student, teacher, tokenizer, eval_blocks, sentences, args.batch_size,
                                  args.temperature, attention, desc="held-out: pruned + distilled")
    floor = copy.deepcopy(teacher)
    magnitude_prune_(floor, args.final_sparsity, args.distribution, args.nm_pair, args.targets)
    floor_eval = evaluate_student(floor, teacher, tokenizer, eval_blocks, sentences, args.batch_size,
                                  args.temperature, attention, desc="held-out: magnitude only")
    del floor

    # ------------------------------------------------------------------ outputs
    history = trainer.state.log_history
    train_log = [h for h in history if "loss" in h]
    eval_log = [h for h in history if "eval_loss" in h]
    report = sparsity_report(dict(student.named_parameters()), list(masks))
    how = (
        f"{describe_method(args)} over the encoder linears (oBERT target set) until step {args.max_steps}; trained by "
        "distillation from the dense original ("
        + ", ".join(f"{k} x{v:g}" for k, v in weights.active().items())
        + ") on unlabeled text"
    )
    card_results = {f"held-out {k}": v for k, v in final_eval.items()}
    card_results.update({f"magnitude-only {k}": v for k, v in floor_eval.items()})
    card = {
        "title": f"{os.path.basename(os.path.normpath(args.model))} at {report.target_sparsity:.0%} sparsity (upstream pruned)",
        "base_model": args.model,
        "method": how,
        "recipe": {k: v for k, v in args.to_dict().items()
                   if k not in ("overwrite", "keep_checkpoints", "push_to_hub", "hub_private_repo")},
        "results": card_results,
        "datasets": [] if args.text else [args.dataset],  # only a Hub dataset goes into the metadata
        "data": "Pruned on unlabeled text: "
        + (", ".join(os.path.basename(p) for p in args.text) + " (local files)" if args.text else f"{args.dataset} (Hub)")
        + ".",
        "tags": ["upstream-pruning", "distillation"],
    }
    save_sparse_pretrained(student, args.output_dir, masks=masks, processing_class=tokenizer, card=card)
    results = {
        "finished": True,
        "model": args.model,
        "output_dir": args.output_dir,
        "recipe_fingerprint": fingerprint,
        "recipe": args.to_dict(),
        "start": start_weights,
        "loss_weights": weights.active(),
        "mlm_head": has_mlm_head(student),
        "train_blocks": int(train_blocks.shape[0]),
        "eval_blocks": 0 if eval_blocks is None else int(eval_blocks.shape[0]),
        "eval_sentences": len(sentences),
        "steps": trainer.state.global_step,
        "train_seconds_this_session": round(train_seconds, 1),
        "resumed_from": checkpoint,
        "sparsity": report.target_sparsity,
        "mask_sparsity": masks.sparsity(),
        "layer_sparsity": {layer.name: layer.sparsity for layer in report.layers},
        "method": args.method,
        "pruning_events": trainer.method_callback.events,
        "train_log": train_log,
        "eval_log": eval_log,
        "final": final_eval,
        "magnitude_only": floor_eval,
        "versions": library_versions(),
    }
    write_json_atomic(os.path.join(args.output_dir, RESULTS_NAME), results)
    if not args.keep_checkpoints:
        remove_checkpoints(args.output_dir)
    return results
