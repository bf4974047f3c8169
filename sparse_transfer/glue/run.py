"""One GLUE run, and the grid of runs, with SparseTrainer.

A run, under its folder ``RUN``::

    data    = load_glue_data(...)                 # checked before anything is written
    model   = from_pretrained(--model, dropout)   # masks = the model's zeros on the encoder linears
    L       = number of encoder blocks; epochs = eval(--epochs, L)      # "L+2": one epoch per stage
    RUN/recipe.yaml                                # the resolved recipe (every value this run used)
    RUN/start.json                                 # which weights it starts from (sha256 of the folder, Hub commit)
    SparseTrainer.train(), evaluating every epoch:
        new best score -> RUN/best/                # sparse checkpoint (safetensors + mask), atomic
    RUN/best/ reloaded, checked against the mask, saved again with its model card (recipe, dev results)
    RUN/log_history.json                           # every logged step and evaluation (for plots)
    RUN/results.json                               # last, atomically: its presence means "finished"

``--grid`` runs one such folder per grid point under ``--output_dir`` and skips the ones whose
``results.json`` holds the same recipe and starting weights, so an interrupted grid continues where it stopped (a
model retrained under the same path is an error, never a grid of two models). Within a run,
Trainer checkpoints (optimizer state included) are off by default; with ``--save_strategy epoch`` an
interrupted run resumes from its last checkpoint to the same result as an uninterrupted one.
``--grid_shard K/N`` splits the grid's points over N processes sharing ``--output_dir`` (one per GPU or core):
each trains its own points, then helps with the others' points that no process is training yet (so the shards end
together even when the points differ in cost), then reads the others' ``results.json``; the one that finds every run
finished writes ``grid_results.json``.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .._cli import check_sequence_length
from .._rundir import (
    RECIPE_NAME,
    RESULTS_NAME,
    START_NAME,
    RunDirInUse,
    library_versions,
    run_lock,
    same_start,
    start_identity,
    starts_match,
    write_json_atomic,
    write_recipe,
)
from .._rundir import plain as _plain
from .config import GlueArguments, resolve_epochs
from .data import GlueData, hub_unreachable, load_glue_data, tokenize_glue
from .metrics import glue_score, make_compute_metrics, metric_keys
from .tasks import GlueTask, get_task

logger = logging.getLogger(__name__)

LOG_HISTORY_NAME = "log_history.json"
GRID_RESULTS_NAME = "grid_results.json"
# Which grid a folder holds (its points, summary, recipe and shard count), written before any of its runs trains.
GRID_PLAN_NAME = "grid_plan.json"
BEST_DIR = "best"
# The best epoch so far while a run trains: only a finished run has best/ (with its dev results in the model card)
# and results.json, so nothing an interrupted run leaves behind looks finished.
BEST_IN_PROGRESS_DIR = "best.in-progress"
# With --lora-merge: the best adapter merged into the base, an ordinary sparse checkpoint.
MERGED_DIR = "merged"

# Fields that do not change what a run computes: a finished run with other values for them is still the same run.
_NOT_IN_FINGERPRINT = {
    "overwrite", "grid", "grid_learning_rates", "grid_dropouts", "grid_epochs", "grid_shard", "grid_summary",
    "disable_tqdm", "logging_steps", "logging_strategy", "logging_first_step", "report_to", "dataloader_num_workers",
    "per_device_eval_batch_size", "eval_accumulation_steps", "dataloader_pin_memory", "save_strategy", "save_steps",
    "save_total_limit", "save_only_model",
}
# TrainingArguments fields never written into a recipe: where the run goes, Hub credentials and pushing.
_NOT_IN_RECIPE = {"output_dir", "logging_dir", "hub_token", "push_to_hub", "hub_model_id", "hub_strategy",
                  "hub_private_repo", "hub_always_push", "hub_revision", "dataloader_pin_memory"}
# TrainingArguments fields written into every recipe even when they equal the transformers defaults.
_ALWAYS_IN_RECIPE = ("learning_rate", "num_train_epochs", "per_device_train_batch_size", "gradient_accumulation_steps",
                     "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "lr_scheduler_type", "warmup_steps",
                     "seed", "fp16", "bf16", "optim", "eval_strategy", "unfreeze", "stage_epochs", "stage_steps",
                     "unfreeze_embeddings", "mask_targets", "lr_end_factor")


class GlueModelError(ValueError):
    """A ``--model`` that cannot be loaded: the message says what is missing and what to pass."""


# ------------------------------------------------------------------------------------------- helpers
def _score_key(value: float) -> float:
    """NaN (e.g. Pearson of constant predictions) ranks below every number."""
    return -math.inf if value is None or math.isnan(value) else value


# --------------------------------------------------------------------------------------------- model
_WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def check_model_source(model: str) -> None:
    """Fails early, with the fix, for a local ``--model`` folder that cannot be a checkpoint."""
    path = Path(model)
    looks_local = path.exists() or model.startswith((".", "/", "~")) or model.count("/") > 1 or os.sep in model.replace("/", "")
    if not looks_local:
        reason = hub_unreachable()
        if reason is not None:
            raise _hub_failure("files", model, ConnectionError(reason))
        return  # a Hub id that from_pretrained may fetch (or find in the cache, with HF_HUB_OFFLINE=1)
    if not path.is_dir():
        raise GlueModelError(f"--model {model}: no such directory. Pass a folder written by save_pretrained, or a Hub id.")
    if not (path / "config.json").is_file():
        raise GlueModelError(f"--model {model} has no config.json: pass the folder that save_pretrained wrote.")
    if not any((path / name).is_file() for name in _WEIGHT_FILES):
        present = sorted(p.name for p in path.iterdir())[:12]
        raise GlueModelError(
            f"--model {model} has no weights (expected one of {', '.join(_WEIGHT_FILES)}; found {present}). "
            "Pass a checkpoint folder with its weights."
        )


def _hub_failure(what: str, model: str, err: Exception) -> GlueModelError:
    first = (str(err).strip().splitlines() or ["no details"])[0][:300]
    return GlueModelError(
        f"Could not load the {what} of {model!r} ({type(err).__name__}: {first}). Without network, pass "
        "--model PATH with a local checkpoint folder (config.json, model.safetensors and the tokenizer files), "
        "e.g. one written by save_pretrained or by python -m sparse_transfer.upstream (or set HF_HUB_OFFLINE=1 to "
        "use a copy in the Hugging Face cache)."
    )


def load_tokenizer(glue_args: GlueArguments):
    from transformers import AutoTokenizer

    name = glue_args.tokenizer or glue_args.model
    if glue_args.tokenizer is None:
        check_model_source(glue_args.model)
    try:
        return AutoTokenizer.from_pretrained(
            name, revision=glue_args.model_revision, trust_remote_code=glue_args.trust_remote_code
        )
    except (OSError, ValueError) as err:
        raise _hub_failure("tokenizer", name, err) from None


def pooling_config(glue_args: GlueArguments, config):
    """``config`` for the classifier pooling that ``--pooling`` asks for (unset: the model's own).

    Raises:
        GlueModelError: mean pooling on a model that is not BERT-family, ``--pooling cls`` on a model fine-tuned with
            mean pooling, or ``--lora-r`` on such a model (the adapter would be loaded onto a CLS-pooling base).
    """
    from ..hf.pooling import MEAN_POOLING_MODEL_TYPE, mean_pooling_config

    if glue_args.pooling == "mean":
        try:
            config = mean_pooling_config(config)
        except ValueError as err:
            raise GlueModelError(str(err)) from None
    is_mean = config.model_type == MEAN_POOLING_MODEL_TYPE
    if glue_args.pooling == "cls" and is_mean:
        raise GlueModelError(
            f"{glue_args.model} was fine-tuned with mean pooling (model type {MEAN_POOLING_MODEL_TYPE!r}); its pooler "
            "and classifier read the mean of the token states. Continue with --pooling mean (or leave --pooling unset)."
        )
    if is_mean and glue_args.lora_r is not None:
        raise GlueModelError(
            "Masked LoRA on a mean-pooling model is not supported: the adapter would be saved for a plain base model, "
            "which reads the CLS token. Fine-tune the whole model, or train LoRA on a model with its own head."
        )
    return config


def model_config(glue_args: GlueArguments):
    """``--model``'s config, as saved (no task head yet)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(glue_args.model, revision=glue_args.model_revision,
                                          trust_remote_code=glue_args.trust_remote_code)
    except (OSError, ValueError) as err:
        raise _hub_failure("config", glue_args.model, err) from None


def _meta_model(glue_args: GlueArguments):
    """``--model``'s encoder on the meta device (no weights read, no memory): what its modules are, before training."""
    import torch
    from transformers import AutoModel

    config = model_config(glue_args)
    try:
        with torch.device("meta"):
            return AutoModel.from_config(config, trust_remote_code=glue_args.trust_remote_code)
    except Exception:  # an encoder that cannot be built without weights: its config's limits alone are checked
        stub = torch.nn.Module()
        stub.config = config
        return stub


def check_pooling(glue_args: GlueArguments) -> None:
    """Fails before the data is tokenized if ``--pooling`` cannot apply to ``--model`` (reads only its config)."""
    if glue_args.pooling is None and glue_args.lora_r is None:
        return
    pooling_config(glue_args, model_config(glue_args))


def load_model(glue_args: GlueArguments, task: GlueTask, dropout: float | None):
    """The pretrained encoder with a fresh head for ``task`` and the requested dropout."""
    from transformers import AutoConfig, AutoModelForSequenceClassification

    check_model_source(glue_args.model)
    kwargs: dict[str, Any] = {"num_labels": task.num_labels, "finetuning_task": task.name}
    if task.is_regression:
        kwargs["problem_type"] = "regression"
    else:
        kwargs["problem_type"] = "single_label_classification"
        kwargs["id2label"] = dict(enumerate(task.label_names))
        kwargs["label2id"] = {name: i for i, name in enumerate(task.label_names)}
    common = {"revision": glue_args.model_revision, "trust_remote_code": glue_args.trust_remote_code}
    try:
        config = AutoConfig.from_pretrained(glue_args.model, **common, **kwargs)
    except (OSError, ValueError) as err:
        raise _hub_failure("config", glue_args.model, err) from None
    config = pooling_config(glue_args, config)
    if dropout is not None:
        # BERT, RoBERTa, ELECTRA: hidden_dropout_prob / attention_probs_dropout_prob; DistilBERT: dropout /
        # attention_dropout. The classifier's own dropout follows hidden dropout unless the config sets it.
        names = [n for n in ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")
                 if hasattr(config, n)]
        if not names:
            raise GlueModelError(
                f"{type(config).__name__} has no hidden/attention dropout field that --dropout could set; use a "
                "recipe with `dropout: null` (and no grid_dropouts) to keep the model's own dropout."
            )
        for name in names:
            setattr(config, name, float(dropout))
    try:
        model = AutoModelForSequenceClassification.from_pretrained(glue_args.model, config=config, **common)
    except (OSError, ValueError) as err:
        raise _hub_failure("weights", glue_args.model, err) from None
    return model


# --------------------------------------------------------------------------------------------- recipe
def resolved_recipe(glue_args: GlueArguments, training_args) -> dict[str, Any]:
    """Every value a run depends on, as a recipe that ``--recipe`` reads back."""
    from ..hf import SparseTrainingArguments

    glue = {k: v for k, v in dataclasses.asdict(glue_args).items() if k not in ("grid", "overwrite") and not k.startswith("grid_")}
    current = training_args.to_dict()
    defaults = SparseTrainingArguments(output_dir="_").to_dict()
    train = {
        k: v for k, v in current.items()
        if k not in _NOT_IN_RECIPE and (k in _ALWAYS_IN_RECIPE or _plain(v) != _plain(defaults.get(k)))
    }
    return _plain({**glue, **train})


def fingerprint(recipe: dict[str, Any]) -> dict[str, Any]:
    # An unset field (None) is the same as a missing one: a run recorded before a field existed (e.g. --pooling) is
    # still the same run when the new field keeps its default.
    return {k: v for k, v in recipe.items() if k not in _NOT_IN_FINGERPRINT and v is not None}


def finished_run(run_dir: Path, recipe: dict[str, Any], overwrite: bool, start: dict[str, Any]) -> dict | None:
    """The cached results of ``run_dir`` if it finished with this recipe from these weights (``start``, as
    ``start_identity`` gives it); None if it must (re)run."""
    path = run_dir / RESULTS_NAME
    if overwrite or not path.is_file():  # --overwrite starts over, as in every command
        return None
    results = json.loads(path.read_text(encoding="utf-8"))
    if fingerprint(results.get("recipe", {})) == fingerprint(recipe):
        same_start(results.get("start"), start, run_dir, recipe["model"])
        return _rebased(results, run_dir)
    old, new = fingerprint(results.get("recipe", {})), fingerprint(recipe)
    differing = sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))
    raise ValueError(
        f"{run_dir} holds a finished run with a different recipe (differing fields: {differing[:8]}). Use another "
        "--output_dir, or pass --overwrite to train again there."
    )


def _rebased(results: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``results`` with its checkpoint paths in ``run_dir``: a folder moved or copied since it finished (a grid point
    copied to a single run, runs moved to another disk) publishes its own checkpoint, never the old location's."""
    for key in ("checkpoint", "publish"):
        if results.get(key):
            results[key] = str(run_dir / Path(results[key]).name)
    for key in ("adapter", "merged"):
        if (results.get("lora") or {}).get(key):
            results["lora"][key] = str(run_dir / Path(results["lora"][key]).name)
    return results


def _checkpoint_to_resume(run_dir: Path, recipe: dict[str, Any], training_args, overwrite: bool,
                          start: dict[str, Any]) -> str | None:
    """The last Trainer checkpoint of an unfinished run of the same recipe from the same weights (only with a
    save_strategy); with ``overwrite``, the folder's checkpoints are deleted instead (it starts over)."""
    import shutil

    from ..hf.trainer import last_complete_checkpoint

    if not run_dir.is_dir():
        return None
    last = last_complete_checkpoint(run_dir)  # never a checkpoint whose save was interrupted
    if last is not None and not overwrite:
        recipe_file = run_dir / RECIPE_NAME
        saved = yaml.safe_load(recipe_file.read_text(encoding="utf-8")) if recipe_file.is_file() else {}
        if fingerprint(saved or {}) != fingerprint(recipe):
            raise ValueError(
                f"{run_dir} holds Trainer checkpoints of an unfinished run with a different recipe. Use another "
                "--output_dir, or pass --overwrite to delete them and train again there."
            )
        start_file = run_dir / START_NAME
        saved_start = json.loads(start_file.read_text(encoding="utf-8")) if start_file.is_file() else None
        # A checkpoint trained from other weights would resume as if it were this run's.
        same_start(saved_start, start, run_dir, recipe["model"])
        if str(getattr(training_args.save_strategy, "value", training_args.save_strategy)) == "no":
            return None
        logger.info("Resuming the unfinished run in %s from %s.", run_dir, last)
        return last
    for checkpoint in run_dir.glob("checkpoint-*"):  # --overwrite starts over: nothing of the old run is resumed
        shutil.rmtree(checkpoint)
    return None


# ----------------------------------------------------------------------------------------- one run
def _evaluations(log_history: list[dict], keys: list[str]) -> list[dict[str, Any]]:
    """One entry per evaluation (epoch, step, metrics), merged over MNLI's two dev sets."""
    by_step: dict[int, dict[str, Any]] = {}
    for entry in log_history:
        eval_keys = [k for k in entry if k.startswith("eval_")]
        if not eval_keys:
            continue
        merged = by_step.setdefault(entry["step"], {"epoch": entry.get("epoch"), "step": entry["step"]})
        for key in eval_keys:
            name = key[len("eval_"):]
            if name.endswith(("runtime", "samples_per_second", "steps_per_second")):
                continue
            merged[name] = entry[key]
    evaluations = [e for _, e in sorted(by_step.items()) if "score" in e]
    for e in evaluations:
        missing = [k for k in keys if k not in e]
        if missing:
            raise RuntimeError(f"Evaluation at step {e['step']} lacks {missing}; got {sorted(e)}.")
    return evaluations


def _make_trainer_classes(task: GlueTask, keys: list[str]):
    from transformers import TrainerCallback

    from ..hf import SparseTrainer
    from ..hub import save_sparse_adapter, save_sparse_pretrained

    class GlueTrainer(SparseTrainer):
        """SparseTrainer whose evaluation over MNLI's two dev sets also reports their joint ``eval_score``."""

        def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix="eval"):
            metrics = super().evaluate(eval_dataset, ignore_keys, metric_key_prefix)
            key = f"{metric_key_prefix}_score"
            if eval_dataset is None and isinstance(self.eval_dataset, dict) and key not in metrics:
                metrics[key] = glue_score(task, metrics, prefix=f"{metric_key_prefix}_", keys=keys)
                self.log({key: metrics[key]})
                self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
            return metrics

    class BestCheckpointCallback(TrainerCallback):
        """Saves the model (sparse, checked against the mask) whenever the dev score beats the best so far.

        Ours rather than ``load_best_model_at_end`` / ``metric_for_best_model``: those need a Trainer checkpoint
        (optimizer state included) at every evaluation and keep the best one among the rotated checkpoints; here the
        best epoch is one sparse checkpoint, written atomically to ``best.in-progress/`` with its mask file whatever
        ``save_strategy`` is, checked against the mask before it is written, and it survives a kill -9.
        """

        def __init__(self, best_dir: Path, masks, tokenizer, adapter: bool = False):
            self.best_dir, self.masks, self.tokenizer, self.adapter = best_dir, masks, tokenizer, adapter
            self.best_score = -math.inf
            self.best_step: int | None = None

        def on_train_begin(self, args, state, control, **kwargs):
            # Resuming from a Trainer checkpoint: the evaluations before it are in the restored log history, and
            # the best of them is in best_dir already (an evaluation is saved before its checkpoint).
            for entry in state.log_history:
                score = entry.get("eval_score")
                if score is not None and _score_key(score) > self.best_score:
                    self.best_score, self.best_step = _score_key(score), entry["step"]

        def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
            score = (metrics or {}).get("eval_score")
            if score is None or _score_key(score) <= self.best_score:
                return
            self.best_score, self.best_step = _score_key(score), state.global_step
            self.trainer.check_finite(f"saving the best epoch so far to {self.best_dir}")
            if state.is_world_process_zero and self.adapter:
                save_sparse_adapter(model, self.best_dir, processing_class=self.tokenizer)
            elif state.is_world_process_zero:
                save_sparse_pretrained(model, self.best_dir, masks=self.masks, processing_class=self.tokenizer)

    return GlueTrainer, BestCheckpointCallback


def masked_lora_model(model, masks, glue_args: GlueArguments, encoder_blocks_pattern: str | None = None):
    """``model`` wrapped in a masked LoRA (:class:`~sparse_transfer.lora.SparseLoraConfig`): adapters on every masked
    module (or ``--lora-target-modules``), the task head (classifier, pooler: what gradual unfreezing trains first)
    trained in full through peft's ``modules_to_save``."""
    from peft import get_peft_model

    from ..hf import GradualUnfreezer
    from ..lora import SparseLoraConfig

    targets = list(glue_args.lora_target_modules) or [name.removesuffix(".weight") for name in masks]
    head = GradualUnfreezer(model, encoder_blocks_pattern=encoder_blocks_pattern).head
    modules_to_save = sorted({name.rsplit(".", 1)[0] for name in head})
    config = SparseLoraConfig(
        r=glue_args.lora_r,
        lora_alpha=glue_args.lora_alpha if glue_args.lora_alpha is not None else 2 * glue_args.lora_r,
        lora_dropout=glue_args.lora_dropout,
        target_modules=targets,
        modules_to_save=modules_to_save,
        task_type="SEQ_CLS",
        base_model_name_or_path=glue_args.model,
    )
    return get_peft_model(model, config)


def train_one(
    glue_args: GlueArguments,
    training_args,
    data: GlueData,
    tokenizer,
    run_dir: Path,
    recipe_file: str | None = None,
    cached_only: bool = False,
    start: dict[str, Any] | None = None,
) -> dict[str, Any] | None:
    """Trains one run into ``run_dir`` (or returns its cached results) and writes its outputs, holding the folder's
    lock (``run_lock``) while it does.

    Args:
        glue_args: This run's arguments (``dropout`` and ``epochs`` are this run's values).
        training_args: ``SparseTrainingArguments`` (``learning_rate`` is this run's).
        data: Tokenized data.
        tokenizer: Saved with the checkpoint.
        run_dir: The run's folder.
        recipe_file: The recipe YAML the run started from, for the record.
        cached_only: Train nothing: the results if the run finished with this recipe, else None (another grid
            shard's run; read without the lock: ``results.json`` is written atomically, never half a file).
        start: ``start_identity`` of ``glue_args.model`` (computed here if not given; a grid computes it once).

    Returns:
        The content of ``results.json``.
    """
    if start is None:
        start = start_identity(glue_args.model, glue_args.model_revision)
    if cached_only:
        return _train_one(glue_args, training_args, data, tokenizer, run_dir, recipe_file, start, cached_only=True)
    with run_lock(run_dir):
        return _train_one(glue_args, training_args, data, tokenizer, run_dir, recipe_file, start)


def _train_one(
    glue_args: GlueArguments,
    training_args,
    data: GlueData,
    tokenizer,
    run_dir: Path,
    recipe_file: str | None,
    start: dict[str, Any],
    cached_only: bool = False,
) -> dict[str, Any] | None:
    """``train_one`` without the lock."""
    import torch
    from transformers import set_seed

    from ..core import SparseMasks, sparsity_report
    from ..hf import find_encoder_blocks
    from ..hf.pooling import MeanPoolingBertConfig
    from ..core import MASKS_NAME
    from ..hub import (
        check_sparsity,
        load_state_dict_from_checkpoint,
        save_sparse_adapter,
        save_sparse_pretrained,
        shipped_masks,
        verify_checkpoint_sparsity,
        verify_sparse_adapter,
    )

    task = data.task
    set_seed(training_args.seed)  # the new classifier head is initialized in from_pretrained
    model = load_model(glue_args, task, glue_args.dropout)
    num_blocks = len(find_encoder_blocks(model, training_args.encoder_blocks_pattern))
    epochs = resolve_epochs(glue_args.epochs, num_blocks)
    changes: dict[str, Any] = {"output_dir": str(run_dir), "num_train_epochs": epochs, "push_to_hub": False}
    if glue_args.mixed_precision != "auto":
        changes.update(fp16=glue_args.mixed_precision == "fp16", bf16=glue_args.mixed_precision == "bf16")
    elif not (training_args.fp16 or training_args.bf16) and torch.cuda.is_available():
        changes["fp16"] = True
    if not torch.cuda.is_available():
        changes["dataloader_pin_memory"] = False  # pinning needs an accelerator; torch warns otherwise
    training_args = dataclasses.replace(training_args, **changes)

    recipe = resolved_recipe(glue_args, training_args)
    cached = finished_run(run_dir, recipe, glue_args.overwrite, start)
    if cached_only:
        return cached
    if cached is not None:
        logger.info("%s finished before with this recipe: skipping it (score %.4f).", run_dir, cached["best"]["score"])
        return cached

    resume_from = _checkpoint_to_resume(run_dir, recipe, training_args, glue_args.overwrite, start)
    # A model folder that ships a mask file: the file is the record of what is pruned (checked against the weights);
    # otherwise the model's zeros on the target preset.
    masks = shipped_masks(model, glue_args.model, glue_args.model_revision)
    if not starts_match(start, start_identity(glue_args.model, glue_args.model_revision)):
        # Hashed when the command started (once for a whole grid); the weights loaded now must still be those.
        raise ValueError(
            f"{glue_args.model} changed while this command ran (its weights were replaced after it started): "
            f"{run_dir} would record the old weights but train from the new. Start the command again once the model "
            "folder is no longer being written."
        )
    if masks is None:
        masks = SparseMasks.from_zeros(model, training_args.mask_targets)
    else:
        logger.info("Masks from %s's %s (sparsity %.4f).", glue_args.model, MASKS_NAME, masks.sparsity())
    pruned_before = masks.numel() - sum(int(m.sum()) for _, m in masks.items())
    lora = glue_args.lora_r is not None
    train_model, train_masks = model, masks
    if lora:
        train_model = masked_lora_model(model, masks, glue_args, training_args.encoder_blocks_pattern)
        train_masks = SparseMasks(masks.state_dict()).bind(train_model)  # the same masks, under peft's names
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / RESULTS_NAME).unlink(missing_ok=True)  # --overwrite: the old results must not outlive a failure
    write_recipe(run_dir, recipe, "glue")
    write_json_atomic(run_dir / START_NAME, start)

    keys = metric_keys(task, list(data.evals))
    GlueTrainer, BestCheckpointCallback = _make_trainer_classes(task, keys)
    best_dir = run_dir / BEST_DIR
    best_so_far = run_dir / BEST_IN_PROGRESS_DIR
    # best/ of an unfinished attempt (killed after writing it, before results.json) must not look finished: it is
    # written again when this run ends. The best epoch so far survives only with the checkpoint it belongs to.
    shutil.rmtree(run_dir / BEST_DIR, ignore_errors=True)
    if not resume_from:
        shutil.rmtree(best_so_far, ignore_errors=True)
    best_callback = BestCheckpointCallback(best_so_far, train_masks, tokenizer, adapter=lora)
    compute_metrics = make_compute_metrics(task)
    if len(data.evals) == 1:
        base_metrics = compute_metrics

        def compute_metrics(eval_prediction):  # noqa: F811 - one set: its score is the mean of its metrics
            metrics = base_metrics(eval_prediction)
            return {**metrics, "score": glue_score(task, metrics, keys=keys)}

    eval_dataset = data.evals if len(data.evals) > 1 else next(iter(data.evals.values()))
    trainer = GlueTrainer(
        model=train_model,
        args=training_args,
        train_dataset=data.train,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        masks=train_masks,
        callbacks=[best_callback],
    )
    best_callback.trainer = trainer
    train_output = trainer.train(resume_from_checkpoint=resume_from)

    evaluations = _evaluations(trainer.state.log_history, keys)
    if not evaluations or best_callback.best_step is None:
        raise RuntimeError(
            f"No evaluation ran during training of {run_dir} (eval_strategy={training_args.eval_strategy}): nothing "
            "to choose the best epoch from."
        )
    best = max(evaluations, key=lambda e: _score_key(e["score"]))
    if best["step"] != best_callback.best_step:
        raise RuntimeError(f"Best evaluation at step {best['step']} but the saved checkpoint is from step {best_callback.best_step}.")

    # The run's product is the best checkpoint: reload it, check its zeros against the mask, and save it again
    # with a model card that states its dev results.
    trainer.accelerator.wait_for_everyone()  # the main process wrote best_so_far
    if lora:
        from peft import set_peft_model_state_dict

        from ..hub import ADAPTER_WEIGHTS_NAME

        loaded = set_peft_model_state_dict(train_model, load_state_dict_from_checkpoint(best_so_far / ADAPTER_WEIGHTS_NAME))
    else:
        loaded = model.load_state_dict(load_state_dict_from_checkpoint(best_so_far), strict=False)
    if loaded.unexpected_keys:
        raise RuntimeError(f"{best_so_far} holds tensors this model does not have: {loaded.unexpected_keys[:5]}.")
    dev_results = {k: best[k] for k in keys}
    card = {
        "title": f"{Path(glue_args.model).name} fine-tuned sparse on GLUE {task.name.upper()}",
        "base_model": glue_args.model,
        "method": "sparse_transfer.glue (gradual unfreezing, LR rewind; arXiv 2308.02060)"
        if training_args.unfreeze == "gradual" else "sparse_transfer.glue",
        "datasets": [data.source["dataset"]] if "dataset" in data.source else [],  # only data from the Hub
        "data": f"Fine-tuned on GLUE {task.name.upper()} ({len(data.train):,} training examples"
        + (f", from {data.source['dataset']} on the Hub" if "dataset" in data.source else ", from local files")
        + f"); dev results on {', '.join(f'{len(ds):,} {name}' for name, ds in data.evals.items())} examples.",
        "tags": ["glue", task.name, "text-classification"],
        "usage": "sequence-classification-mean-pooling" if isinstance(model.config, MeanPoolingBertConfig)
        else "sequence-classification",
        "example": "The movie was a delight." if len(task.text_columns) == 1
        else ["A man is playing a guitar.", "A person is making music."],
        "recipe": recipe,
        "results": {f"{task.name} dev {k}": float(v) for k, v in dev_results.items()} | {"best epoch": best["epoch"]},
        "eval": {
            "task_type": "text-classification",
            "dataset_name": f"GLUE {task.name.upper()}",
            "dataset_type": data.source.get("dataset", "glue"),
            "dataset_config": task.name,
            "dataset_split": "validation",
            "num_examples": sum(len(ds) for ds in data.evals.values()),
            "metrics": {k: float(v) for k, v in dev_results.items()},
        },
    }
    lora_results = None
    merged_dir = run_dir / MERGED_DIR
    shutil.rmtree(merged_dir, ignore_errors=True)
    if lora:
        card["title"] = f"Masked LoRA adapter for {Path(glue_args.model).name} on GLUE {task.name.upper()}"
        if trainer.args.should_save:
            save_sparse_adapter(train_model, best_dir, processing_class=tokenizer, card=card)
        trainer.accelerator.wait_for_everyone()
        record = verify_sparse_adapter(best_dir)
        lora_results = {
            "r": glue_args.lora_r,
            "alpha": train_model.peft_config["default"].lora_alpha,
            "dropout": glue_args.lora_dropout,
            "adapted_layers": len(record),
            "trainable_parameters": sum(p.numel() for p in train_model.parameters() if p.requires_grad),
            "adapter": str(best_dir),
        }
        # The merge is what users deploy: done here in any case, so the zeros are checked on the merged weights.
        model = train_model.merge_and_unload()
        check_sparsity(model, masks)
        if glue_args.lora_merge:
            card["title"] = f"{Path(glue_args.model).name} + masked LoRA, merged, on GLUE {task.name.upper()}"
            if trainer.args.should_save:
                save_sparse_pretrained(model, merged_dir, masks=masks, processing_class=tokenizer, card=card)
            trainer.accelerator.wait_for_everyone()
            lora_results["merged"] = str(merged_dir)
        saved_masks = verify_checkpoint_sparsity(merged_dir) if glue_args.lora_merge else masks
        saved = load_state_dict_from_checkpoint(merged_dir) if glue_args.lora_merge else {
            n: p.detach().cpu() for n, p in model.state_dict().items()}
    else:
        if trainer.args.should_save:
            save_sparse_pretrained(model, best_dir, masks=masks, processing_class=tokenizer, card=card)
        trainer.accelerator.wait_for_everyone()
        saved_masks = verify_checkpoint_sparsity(best_dir)
        saved = load_state_dict_from_checkpoint(best_dir)
    report = sparsity_report(saved, list(masks))
    pruned_zero = sum(int((saved[name][~mask.cpu()] == 0).sum()) for name, mask in masks.items())
    sparsity = {
        "targets": training_args.mask_targets,
        "masked_weights": pruned_before,
        "masked_weights_zero_in_checkpoint": pruned_zero,
        "mask_sparsity": masks.sparsity(),
        "checkpoint_target_sparsity": report.target_sparsity,
        "checkpoint_model_sparsity": report.model_sparsity,
        # Every masked weight is zero, and the saved mask file is the mask that was enforced.
        "exact": pruned_zero == pruned_before and saved_masks is not None and set(saved_masks) == set(masks)
        and all(torch.equal(saved_masks[name].cpu(), mask.cpu()) for name, mask in masks.items()),
        "per_layer": {layer.name: layer.sparsity for layer in report.layers},
    }
    if not sparsity["exact"]:
        raise RuntimeError(f"{best_dir}: {pruned_before - pruned_zero} pruned weights are not zero in the saved checkpoint.")

    results = {
        "task": task.name,
        "metrics": keys,
        "best": {"epoch": best["epoch"], "step": best["step"], "score": best["score"], **dev_results},
        "per_epoch": evaluations,
        "train": {k: v for k, v in train_output.metrics.items()},
        "num_encoder_blocks": num_blocks,
        "epochs": epochs,
        "sparsity": sparsity,
        "data": data.source,
        "checkpoint": str(best_dir),
        # What --push-to-hub publishes: the merged model if it was written, else best/ (model or adapter).
        "publish": str(merged_dir) if lora and glue_args.lora_merge else str(best_dir),
        "lora": lora_results,
        "recipe": recipe,
        "recipe_file": recipe_file,
        "start": start,
        "versions": library_versions(),
    }
    if trainer.args.should_save:
        # Every logged step (loss, LR, unfreezing stage, sparsity) and evaluation, for plots.
        write_json_atomic(run_dir / LOG_HISTORY_NAME, _plain(trainer.state.log_history))
        write_json_atomic(run_dir / RESULTS_NAME, _plain(results))
        shutil.rmtree(best_so_far, ignore_errors=True)
    del trainer
    return results


# ----------------------------------------------------------------------------------------- the grid
def grid_points(glue_args: GlueArguments, training_args) -> list[dict[str, Any]]:
    """Every run of the grid: ``{"name", "learning_rate", "dropout", "epochs"}``."""
    epochs_list = glue_args.grid_epochs or [glue_args.epochs]
    points = []
    for epochs, lr, dropout in itertools.product(epochs_list, glue_args.grid_learning_rates, glue_args.grid_dropouts):
        name = f"lr{lr:g}_dropout{dropout:g}" + (f"_epochs{epochs}" if glue_args.grid_epochs else "")
        points.append({"name": name, "learning_rate": lr, "dropout": dropout, "epochs": epochs})
    names = [p["name"] for p in points]
    if len(set(names)) != len(names):
        raise ValueError(f"The grid repeats a point: {names}.")
    return points


# Set by train_one for each run from other recipe values (the epochs expression and the model; mixed_precision and
# the machine), so a grid's plan leaves them out.
_RESOLVED_PER_RUN = {"num_train_epochs", "fp16", "bf16"}


def _grid_plan(points: list[dict[str, Any]], glue_args: GlueArguments, training_args,
               start: dict[str, Any]) -> dict[str, Any]:
    """What defines a grid: its points, its summary, its shard count, the recipe every run shares (less the values
    that change from point to point), and the weights every run starts from."""
    varies = ["learning_rate", "dropout", *(["epochs"] if glue_args.grid_epochs else [])]
    recipe = {k: v for k, v in fingerprint(resolved_recipe(glue_args, training_args)).items()
              if k not in {*varies, *_RESOLVED_PER_RUN}}
    plan = {"points": [p["name"] for p in points], "summary": glue_args.grid_summary, "varies": varies,
            "recipe": recipe, "shards": glue_args.grid_shard_index[1], "start": start}
    return json.loads(json.dumps(_plain(plan)))  # as it reads back from the file


def _differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _grid_differences(a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    """The fields in which two grid plans differ (the shard count aside)."""
    differing = [k for k in ("points", "summary", "varies") if a.get(k) != b.get(k)]
    differing += [] if starts_match(a.get("start"), b.get("start") or {}) else ["start"]
    return differing + [f"recipe.{k}" for k in _differences(a.get("recipe", {}), b.get("recipe", {}))]


def _check_finished_runs(output_dir: Path, plan: dict[str, Any]) -> None:
    """Every finished run at the grid's points has the grid's recipe (as ``finished_run`` checks for each run, but
    before anything of the folder is touched)."""
    for name in plan["points"]:
        path = output_dir / name / RESULTS_NAME
        if not path.is_file():
            continue
        results = json.loads(path.read_text(encoding="utf-8"))
        recipe = {k: v for k, v in fingerprint(results.get("recipe", {})).items()
                  if k not in {*plan["varies"], *_RESOLVED_PER_RUN}}
        differing = _differences(recipe, plan["recipe"])
        if differing:
            raise ValueError(
                f"{output_dir / name} holds a finished run with a different recipe (differing fields: "
                f"{differing[:8]}). Use another --output_dir, or pass --overwrite (without --grid_shard) to train "
                "again there."
            )
        same_start(results.get("start"), plan["start"], output_dir / name, plan["recipe"]["model"],
                   fix=f"Use another --output_dir for runs from the current weights, or pass --overwrite (without "
                   f"--grid_shard) to train the grid again in {output_dir}.")


def claim_grid(output_dir: Path, plan: dict[str, Any], overwrite: bool) -> None:
    """Records in ``grid_plan.json`` which grid ``output_dir`` holds, before any run trains.

    A shard (``--grid_shard``) started with other points, summary, recipe or shard count than the folder's grid
    stops here with the differences, so processes sharing the folder cannot mix two grids. Without shards the
    command owns the folder: a new grid replaces the plan. Either way, finished runs of another recipe at the grid's
    points are an error before anything is touched (unless ``overwrite``), and a ``grid_results.json`` that may not
    be this grid's (a new grid, ``overwrite``, or a shard starting: the shards never leave the grid without one,
    since each checks after its own runs whether the grid is complete and then writes it) is removed. With
    ``overwrite`` every point's earlier run is deleted here, before any point trains.
    """
    path = output_dir / GRID_PLAN_NAME
    old = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    sharded = plan["shards"] > 1
    new = old is None or bool(_grid_differences(old, plan))
    if sharded and old is not None:
        _check_shard_plan(output_dir, old, plan)
    if not (new or overwrite or sharded):
        return  # the folder's own grid, run again: its summary stays until this run rewrites it
    if not overwrite:
        _check_finished_runs(output_dir, plan)
    (output_dir / GRID_RESULTS_NAME).unlink(missing_ok=True)
    if overwrite:
        # Every point starts over now, not when the grid reaches it: a grid stopped half-way through --overwrite
        # continues with the same command without it, instead of meeting the old points' runs.
        for name in plan["points"]:
            _clear_run(output_dir / name)
    if new or (sharded and old["shards"] != plan["shards"]):
        write_json_atomic(path, plan)


def _clear_run(run_dir: Path) -> None:
    """Deletes what a run folder holds of an earlier run (results, checkpoints, best epoch), holding its lock."""
    if not run_dir.is_dir():
        return
    with run_lock(run_dir):
        for name in (RESULTS_NAME, START_NAME, LOG_HISTORY_NAME):
            (run_dir / name).unlink(missing_ok=True)
        for folder in (BEST_DIR, BEST_IN_PROGRESS_DIR, MERGED_DIR, *(p.name for p in run_dir.glob("checkpoint-*"))):
            shutil.rmtree(run_dir / folder, ignore_errors=True)


def _check_shard_plan(output_dir: Path, old: dict[str, Any], plan: dict[str, Any]) -> None:
    path = output_dir / GRID_PLAN_NAME
    same_start(old.get("start"), plan["start"], path, plan["recipe"]["model"],  # the other shards' weights
               fix="Every shard must start from the same weights. To train the grid again from the current ones, "
               "run it once without --grid_shard and with --overwrite, or start the shards in a new --output_dir.")
    differing = _grid_differences(old, plan)
    if differing:
        raise ValueError(
            f"{output_dir} holds another grid (differing: {differing[:8]}; {path}): every shard must run the same "
            "grid. Start this one with the same flags as the others, or in another --output_dir; if that grid is "
            f"abandoned and none of its shards runs, delete {path}."
        )
    if old["shards"] > 1 and old["shards"] != plan["shards"]:
        raise ValueError(
            f"{output_dir}'s grid is split into {old['shards']} shards ({path}); this process was started with "
            f"{plan['shards']}. Give every process the same N (K/{old['shards']}); to split it differently once none of "
            f"its shards runs, delete {path}."
        )


def check_grid_plan(output_dir: Path, plan: dict[str, Any]) -> None:
    """At the end of a shard: the folder still holds this grid, split the same way (two shards started in the same
    instant with different grids or N both passed ``claim_grid``; the one whose plan was replaced stops here)."""
    path = output_dir / GRID_PLAN_NAME
    now = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    if now is None or _grid_differences(now, plan) or now["shards"] != plan["shards"]:
        raise ValueError(
            f"{output_dir}'s grid changed while this process ran (now: {path}): another process started a different "
            "grid, or the same one split into another number of shards, in the same folder. Use one --output_dir per "
            "grid, and the same K/N split for every shard of it."
        )


def summarize_grid(runs: list[dict[str, Any]], how: str, keys: list[str]) -> dict[str, Any]:
    """The paper's grid summary: the mean of the two best runs (``mean_top2``), or the best run (``best``)."""
    ranked = sorted(runs, key=lambda r: _score_key(r["best"]["score"]), reverse=True)
    top = ranked[:2] if how == "mean_top2" else ranked[:1]
    keys = [*keys, "score"]
    return {
        "how": how,
        "runs": [r["name"] for r in top],
        **{k: float(np.mean([r["best"][k] for r in top])) for k in keys},
    }


def format_grid_table(runs: list[dict[str, Any]], summary: dict[str, Any], keys: list[str]) -> str:
    width = max(len("run"), *(len(r["name"]) for r in runs))
    lines = [f"{'run':<{width}}  " + "  ".join(f"{k:>22}" for k in keys) + f"  {'best epoch':>10}"]
    for r in runs:
        lines.append(
            f"{r['name']:<{width}}  " + "  ".join(f"{100 * r['best'][k]:>22.2f}" for k in keys) + f"  {r['best']['epoch']:>10g}"
        )
    label = "mean of the two best" if summary["how"] == "mean_top2" else "best run"
    lines.append(f"{label:<{width}}  " + "  ".join(f"{100 * summary[k]:>22.2f}" for k in keys))
    return "\n".join(lines)


def run_glue(glue_args: GlueArguments, training_args, recipe_file: str | None = None) -> dict[str, Any]:
    """Runs ``python -m sparse_transfer.glue``: one run, or the grid; then the optional push to the Hub.

    Returns:
        The run's ``results.json`` content, or for ``--grid`` the grid summary (also in ``grid_results.json``).
    """
    from tqdm.auto import tqdm

    task = get_task(glue_args.task)
    if str(getattr(training_args.eval_strategy, "value", training_args.eval_strategy)) == "no":
        raise ValueError("eval_strategy='no': the GLUE command keeps the best epoch, so it must evaluate (use 'epoch').")
    push_repo = training_args.hub_model_id if training_args.push_to_hub else None
    if training_args.push_to_hub and not push_repo:
        raise ValueError("--push-to-hub needs the repository: --push-to-hub USER/NAME.")
    if push_repo and glue_args.grid_shard_index[1] > 1:
        raise ValueError(
            "--push-to-hub with --grid_shard: the best run is known only once every shard has finished. Run the "
            "shards without it, then the same command once more without --grid_shard and with --push-to-hub (it "
            "trains nothing: every run is cached)."
        )
    if push_repo:
        from ..hub import check_push_target

        check_push_target(push_repo, training_args.hub_token)  # before any training: fails in seconds, not hours
    # Everything that can be wrong with the input fails here, before any output is written.
    data = load_glue_data(
        task, glue_args.data_dir, glue_args.train_file, glue_args.validation_file, glue_args.validation_mismatched_file,
        glue_args.dataset, glue_args.dataset_revision, glue_args.max_train_samples, glue_args.max_eval_samples,
        seed=training_args.seed,
    )
    from ..hf import pooling  # noqa: F401 - registers the mean-pooling model type with the Auto classes

    tokenizer = load_tokenizer(glue_args)
    check_model_source(glue_args.model)
    check_pooling(glue_args)
    start = start_identity(glue_args.model, glue_args.model_revision)  # once: every run of a grid starts there
    data = tokenize_glue(data, tokenizer, glue_args.max_seq_length, glue_args.pad_to_max_length)
    # The longest tokenized example, not --max_seq_length itself: a model with fewer positions than the default 128
    # trains fine on data that is shorter.
    longest = max(max(map(len, ds["input_ids"]), default=0) for ds in (data.train, *data.evals.values()))
    check_sequence_length(longest, "--max_seq_length", glue_args.max_seq_length, glue_args.model,
                          _meta_model(glue_args), tokenizer)
    output_dir = Path(training_args.output_dir)

    if not glue_args.grid:
        results = train_one(glue_args, training_args, data, tokenizer, output_dir, recipe_file, start=start)
        url = push_best(results.get("publish", results["checkpoint"]), push_repo, training_args) if push_repo else None
        _print_run(task, results, url)
        return results

    points = grid_points(glue_args, training_args)
    shard, shards = glue_args.grid_shard_index

    def point_run(point: dict[str, Any], cached_only: bool = False) -> dict[str, Any] | None:
        run_glue_args = dataclasses.replace(glue_args, dropout=point["dropout"], epochs=point["epochs"], grid=False,
                                            grid_shard="0/1")
        run_training_args = dataclasses.replace(training_args, learning_rate=point["learning_rate"])
        return train_one(run_glue_args, run_training_args, data, tokenizer, output_dir / point["name"], recipe_file,
                         cached_only=cached_only, start=start)

    plan = _grid_plan(points, glue_args, training_args, start)
    claim_grid(output_dir, plan, glue_args.overwrite)
    mine = [p for index, p in enumerate(points) if index % shards == shard]
    # After its own points a shard helps with the others that no process is training, from the end of the grid (the
    # points their shards reach last): shards whose points differ in cost (a sweep's epochs, points finished before)
    # end together instead of one idling while another trains the rest. A point whose folder another process holds
    # (``run_lock``) is left to it, own points included, and read below like every other shard's; without shards
    # the command owns the grid, and a process holding one of its folders stays an error.
    others = [p for index, p in reversed(list(enumerate(points))) if index % shards != shard]
    finished = {}
    for point, helping in tqdm([*((p, False) for p in mine), *((p, True) for p in others)], desc=f"{task.name} grid",
                               unit="run"):
        if helping and (output_dir / point["name"] / RESULTS_NAME).is_file():
            continue  # finished: read below (with its recipe and start checked there)
        try:
            finished[point["name"]] = point_run(point)
        except RunDirInUse:
            if shards == 1:
                raise
            logger.info("%s: another process trains %s; this shard goes on with the next point.", output_dir,
                        point["name"])
    runs, waiting = [], []
    for point in points:
        # Another shard's run is only read, after this shard's own runs (so the shard that finishes last sees them
        # all): its results if it finished with this recipe (written atomically, never half a file), else None.
        results = finished[point["name"]] if point["name"] in finished else point_run(point, cached_only=True)
        if results is None:
            waiting.append(point["name"])
            continue
        runs.append({**point, "best": results["best"], "run_dir": str(output_dir / point["name"]),
                     "publish": results.get("publish", results["checkpoint"])})
    if waiting:
        check_grid_plan(output_dir, plan)
        return _grid_waiting(task, output_dir, points, runs, waiting, glue_args.grid_shard)
    if shards > 1:
        check_grid_plan(output_dir, plan)
    keys = metric_keys(task, list(data.evals))
    summary = summarize_grid(runs, glue_args.grid_summary, keys)
    grid = {"task": task.name, "summary": summary, "runs": runs, "versions": library_versions()}
    write_json_atomic(output_dir / GRID_RESULTS_NAME, _plain(grid))
    print(format_grid_table(runs, summary, keys))
    url = None
    if push_repo:
        best_run = max(runs, key=lambda r: _score_key(r["best"]["score"]))
        url = push_best(best_run["publish"], push_repo, training_args)
    from .._rundir import summary_line

    label = "mean of the two best runs" if summary["how"] == "mean_top2" else "best run"
    shown = ", ".join(f"{k} {100 * summary[k]:.2f}" for k in keys)
    print(summary_line("glue", [f"{task.name} grid of {len(runs)} runs: {label} {shown}",
                                f"pushed the best run to {url}" if url else ""], output_dir / GRID_RESULTS_NAME))
    return grid


def _grid_waiting(task: GlueTask, output_dir: Path, points: list[dict[str, Any]], runs: list[dict[str, Any]],
                  waiting: list[str], grid_shard: str) -> dict[str, Any]:
    """The end of a shard whose grid is not complete: what finished, what other shards still train."""
    from .._rundir import summary_line

    print(summary_line("glue", [
        f"{task.name} grid shard {grid_shard}: {len(runs)} of {len(points)} runs finished; not yet: {', '.join(waiting)}",
        "the shard that finishes the last run writes the grid's summary (a rerun of any shard trains what a stopped "
        "process left and writes it; nothing finished is trained again)",
    ], output_dir))
    return {"task": task.name, "complete": False, "runs": runs, "waiting": waiting}


def _print_run(task: GlueTask, results: dict[str, Any], url: str | None = None) -> None:
    from .._rundir import summary_line

    best = results["best"]
    shown = ", ".join(f"{k} {100 * best[k]:.2f}" for k in results["metrics"])
    lora = results.get("lora") or {}
    parts = [
        f"{task.name} {shown} (best epoch {best['epoch']:g} of {results['epochs']:g})",
        f"{results['sparsity']['checkpoint_target_sparsity']:.2%} sparse, exact: {results['sparsity']['exact']}"
        + (" (after merging the masked LoRA)" if lora else ""),
        (f"adapter {results['checkpoint']}" if lora else f"checkpoint {results['checkpoint']}")
        + (f", merged model {lora['merged']}" if lora.get("merged") else ""),
        f"pushed to {url}" if url else "",
    ]
    print(summary_line("glue", parts, Path(results["checkpoint"]).parent / RESULTS_NAME))


def push_best(checkpoint: str, repo_id: str, training_args) -> str:
    """Uploads a best checkpoint (its zeros checked against its mask first) with its model card."""
    from ..hub import push_or_explain

    return push_or_explain(checkpoint, repo_id, token=training_args.hub_token, private=training_args.hub_private_repo)

