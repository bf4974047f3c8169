"""``SparseTrainer``: Hugging Face Trainer for exact sparse transfer: any mask method, gradual unfreezing.

One optimizer step of ``SparseTrainer.train()``, with where things happen::

    create_optimizer():  register EVERY parameter (frozen ones too, so later stages train them)
                         method.attach(optimizer)            # engine hooks on every masked parameter + the optimizer
    on_train_begin:      method.masks.check()               # follow parameters that wrapping/sharding replaced
    for step in range(max_steps):                           # optimizer steps, GA-aware
        on_step_begin:   stage = unfreeze_stage(step, steps_per_stage, L + 2)
                         if stage changed: unfreezer.set_stage_(stage)   # <- STAGE CHANGES (requires_grad)
                         lr = lr0 * rewind_lr_factor(step, ...) if the scheduler lags (fp16 skipped a step)
                         method.begin_step(step)            # dense gradients this step? (RigL update, AC/DC release)
        for micro_batch in gradient_accumulation:
            loss = (1 - h) * task_loss + h * T^2 * KL(softmax(teacher / T) || softmax(student / T))
            loss.backward()                                 # <- GRADIENTS MASKED as each one accumulates
        training_step of the last micro-batch:
                         method.step(step, optimizer)       # <- MASK EVENTS: GMP prune, AC/DC (de)compress, RigL
                                                            #    drop/grow, N:M cut (Constant: nothing)
        clip_grad_norm_(max_grad_norm)                      # sees, and logs, the gradient that is applied
        optimizer.step():
            AdamW step                                      # params with grad None: untouched
            post-hook:   weight[pruned] := 0                # <- MASKS ENFORCED (exact zeros)
        lr_scheduler.step():  lr = lr0 * rewind_lr_factor(step + 1, steps_per_stage, lr_end_factor)
                                                            # <- LR REWINDS to lr0 at each stage start
        log:             sparsity, mask_sparsity, mask_violations (must stay 0, else RuntimeError), mask events,
                         unfreeze_stage, the method's state (AC/DC phase)
        save:            checkpoint + sparse_masks.safetensors + sparse_method_state.pt + sparse_trainer_state.json

The stage is a pure function of ``state.global_step``, and the method's whole state is saved with every checkpoint,
so ``resume_from_checkpoint`` lands in the same stage, at the same LR, with the same masks and method state as the
uninterrupted run.

With ``unfreeze="none"`` every parameter the user left trainable trains from the first step (ordinary full
fine-tuning) and the masks are enforced in the same way.
"""

from __future__ import annotations

import functools
import glob
import hashlib
import inspect
import json
import logging
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Trainer, TrainerCallback, TrainingArguments
from transformers.trainer_callback import DefaultFlowCallback
from transformers.trainer_utils import SchedulerType

from .. import _cli
from ..core import MASKS_NAME, SparseMasks
from ..core.masks import is_dtensor, nonfinite_names, weights_fingerprint
from ..methods import Constant, MaskMethod
from ..core.schedules import rewind_lr_factor
from .unfreeze import UNFREEZE_MODES, GradualUnfreezer, unfreeze_stage

logger = logging.getLogger(__name__)

SPARSE_TRAINER_STATE_NAME = "sparse_trainer_state.json"
SPARSE_METHOD_STATE_NAME = "sparse_method_state.pt"
CHECKPOINT_COMPLETE_NAME = "checkpoint_complete.json"
# transformers' push_to_hub card arguments -> this package's model card fields (hub.model_card)
_CARD_FIELDS = {"model_name": "title", "finetuned_from": "base_model", "tags": "tags", "license": "license",
                "language": "language", "tasks": "pipeline_tag", "dataset_tags": "datasets", "dataset": "data",
                "dataset_args": "data"}
_PUSH_FOLDER = ".push"  # inside output_dir: SparseTrainer.push_to_hub saves here what it uploads (hidden: never uploaded)
REWIND = "rewind"


_FINGERPRINT_CHUNK = 1 << 16  # bytes read per sample
_FINGERPRINT_SAMPLES = 16


def _file_fingerprint(path: str) -> str:
    """A cheap content fingerprint of one file: sha256 of its size and 16 evenly spaced 64 KiB samples (the whole file
    below 1 MiB), so it costs at most 1 MiB of reading whatever the file's size.

    Not a defence against a crafted file: it catches a file replaced by another of the same size (the optimizer state
    of another checkpoint or run), which the sizes cannot see and which would resume training on another run's state.
    """
    size = os.path.getsize(path)
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        if size <= _FINGERPRINT_CHUNK * _FINGERPRINT_SAMPLES:
            h.update(f.read())
        else:
            last = size - _FINGERPRINT_CHUNK
            for i in range(_FINGERPRINT_SAMPLES):
                f.seek(last * i // (_FINGERPRINT_SAMPLES - 1))
                h.update(f.read(_FINGERPRINT_CHUNK))
    return h.hexdigest()[:16]


def _checkpoint_files(folder: str) -> list[str]:
    """The files of a checkpoint folder that its marker covers: all but the marker and leftover ``*.tmp`` files of
    atomic writes."""
    return [
        name for name in sorted(os.listdir(folder))
        if name != CHECKPOINT_COMPLETE_NAME and not name.endswith(".tmp") and os.path.isfile(os.path.join(folder, name))
    ]


def _remove_checkpoint_marker(folder: str) -> None:
    """Removes the completion marker (and a stale ``.tmp`` of it) of a folder about to be saved into: until the new
    marker is written, the folder is an interrupted save, never a complete checkpoint mixing two saves' files."""
    for name in (CHECKPOINT_COMPLETE_NAME, CHECKPOINT_COMPLETE_NAME + ".tmp"):
        try:
            os.remove(os.path.join(folder, name))
        except FileNotFoundError:
            pass


def _refuse_transformers_push(args: TrainingArguments, always: bool = False) -> None:
    if always or args.push_to_hub:
        raise ValueError(
            "push_to_hub=True lets transformers upload the output folder at every save, before its zeros are "
            "checked, with training_args.bin (a pickle that holds hub_token) and, under hub_strategy='checkpoint', "
            "the optimizer state. Train with push_to_hub=False, then call trainer.push_to_hub(repo_id='USER/NAME') "
            "(the saved zeros checked, an allow-list of files), or run python -m sparse_transfer.push OUTPUT_DIR "
            "USER/NAME."
        )


def mark_checkpoint_complete(folder: str) -> None:
    """Writes the completion marker of a checkpoint folder, last: every file it holds, with its size and a content
    fingerprint (:func:`check_checkpoint_untouched`)."""
    names = _checkpoint_files(folder)
    files = {name: os.path.getsize(os.path.join(folder, name)) for name in names}
    fingerprints = {name: _file_fingerprint(os.path.join(folder, name)) for name in names}
    path = os.path.join(folder, CHECKPOINT_COMPLETE_NAME)
    with open(path + ".tmp", "w") as f:
        json.dump({"files": files, "fingerprints": fingerprints}, f, indent=2)
        f.flush()
        os.fsync(f.fileno())
    os.replace(path + ".tmp", path)


def checkpoint_is_complete(folder: str | os.PathLike) -> bool:
    """Whether a checkpoint folder's save finished: its marker exists and every file it lists has its size.

    A folder without the marker (an interrupted save, or a checkpoint of a version before markers) is not.
    """
    folder = os.fspath(folder)
    try:
        with open(os.path.join(folder, CHECKPOINT_COMPLETE_NAME)) as f:
            files = json.load(f)["files"]
        return bool(files) and all(os.path.getsize(os.path.join(folder, name)) == size for name, size in files.items())
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_checkpoint_untouched(folder: str | os.PathLike) -> None:
    """Refuses a complete checkpoint (:func:`checkpoint_is_complete`) one of whose files was replaced after its save by
    another of the same size, or that holds a file its save did not write: the marker's content fingerprints must
    match. Markers written before fingerprints were recorded are checked on sizes only.

    Raises:
        ValueError: naming the changed or added files (or the malformed marker) and what to do instead.
    """
    folder = os.fspath(folder)
    path = os.path.join(folder, CHECKPOINT_COMPLETE_NAME)
    try:
        with open(path) as f:
            marker = json.load(f)
    except (OSError, ValueError) as e:
        raise ValueError(f"{path} cannot be read ({e}); resume from an earlier checkpoint.") from None
    fingerprints = marker.get("fingerprints") if isinstance(marker, dict) else None
    if fingerprints is None:
        return
    files = marker.get("files")
    if not (
        isinstance(fingerprints, dict) and isinstance(files, dict) and fingerprints.keys() == files.keys()
        and all(isinstance(v, str) for v in fingerprints.values())
        and all(isinstance(name, str) and name == os.path.basename(name) and name not in ("", ".", "..")
                for name in fingerprints)
    ):
        raise ValueError(
            f"{path} is malformed (its fingerprints are not one string per file of the folder): it was edited. "
            "Resume from an earlier checkpoint."
        )
    try:
        changed = [name for name, expected in fingerprints.items()
                   if _file_fingerprint(os.path.join(folder, name)) != expected]
    except OSError as e:
        raise ValueError(f"{folder}: a file its marker lists cannot be read ({e}); resume from an earlier checkpoint.") from None
    if changed:
        raise ValueError(
            f"{folder}: {', '.join(changed)} changed since the checkpoint was saved (same size, other content): a file "
            "was replaced or edited, and resuming would mix another run's or step's state into this one. Put the "
            "original file back, or delete the folder to resume from the checkpoint before it."
        )
    added = [name for name in _checkpoint_files(folder) if name not in fingerprints]
    if added:
        raise ValueError(
            f"{folder}: {', '.join(added)} {'was' if len(added) == 1 else 'were'} added after the checkpoint was saved "
            "(its marker does not list them), and resuming would load them. Remove them, or resume from another "
            "checkpoint."
        )


def last_complete_checkpoint(output_dir: str | os.PathLike, requires: str | None = None) -> str | None:
    """The newest ``checkpoint-N`` folder of ``output_dir`` whose save finished (:func:`checkpoint_is_complete`) and,
    if given, that holds the file ``requires`` (a subclass's own last-written file); interrupted saves are passed over
    with a warning."""
    from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

    output_dir = os.fspath(output_dir)
    if not os.path.isdir(output_dir):
        return None
    found = []
    for name in os.listdir(output_dir):
        step = name[len(PREFIX_CHECKPOINT_DIR) + 1 :]
        path = os.path.join(output_dir, name)
        if name.startswith(PREFIX_CHECKPOINT_DIR + "-") and step.isdigit() and os.path.isdir(path):
            found.append((int(step), path))
    for step, path in sorted(found, reverse=True):
        if checkpoint_is_complete(path) and (requires is None or os.path.isfile(os.path.join(path, requires))):
            return path
        logger.warning("%s is incomplete (its save was interrupted); passing over it.", path)
    return None


class _RewindSchedulerName(str):
    """``"rewind"`` as a string that also has ``.value``, like the ``SchedulerType`` members it stands beside
    (transformers' model card code reads ``args.lr_scheduler_type.value``)."""

    @property
    def value(self) -> str:
        return str(self)


@dataclass
class SparseTrainingArguments(TrainingArguments):
    """``TrainingArguments`` plus the sparse-transfer recipe (RECIPES.md section 1); usable by ``HfArgumentParser``.

    ``lr_scheduler_type`` defaults to ``"rewind"``: linear decay from ``learning_rate`` to
    ``learning_rate * lr_end_factor`` within each stage, rewound at every stage start, no warm-up. Any
    transformers scheduler name (e.g. ``"linear"`` with ``warmup_steps``) still works.
    """

    # Typed str (not SchedulerType | str) so that HfArgumentParser offers "rewind" among the choices.
    lr_scheduler_type: str = field(
        default=REWIND,
        metadata={
            "help": "'rewind' (linear decay within each stage, rewound to the initial LR at every stage start, no "
            "warm-up; the paper's recipe) or any transformers scheduler name such as 'linear'.",
            "choices": [REWIND] + [s.value for s in SchedulerType],
        },
    )
    unfreeze: str = field(
        default="gradual",
        metadata={
            "help": "'gradual': stage 0 trains head + biases + LayerNorms, stage k also the weights of encoder block "
            "L-k (back to front), the final stage everything (L + 2 stages). 'none': ordinary full fine-tuning.",
            "choices": list(UNFREEZE_MODES),
        },
    )
    stage_epochs: float = field(
        default=1.0, metadata={"help": "Length of each unfreezing/LR stage in epochs (ignored if stage_steps is set)."}
    )
    stage_steps: int | None = field(
        default=None,
        metadata={"help": "Length of each unfreezing/LR stage in optimizer steps (gradient accumulation counted)."},
    )
    unfreeze_embeddings: bool = field(
        default=False, metadata={"help": "Also train the embedding tables in the final stage (gradual only)."}
    )
    mask_targets: str = field(
        default="bert",
        metadata={
            "help": "Target preset whose zeros define the fixed masks when no masks are passed: 'bert' (the six "
            "encoder linears per block, as oBERT), 'all', 'cnn', 'cnn-fld'."
        },
    )
    lr_end_factor: float = field(
        default=0.0, metadata={"help": "With lr_scheduler_type='rewind': LR at the end of each stage / initial LR."}
    )
    distill_hardness: float = field(
        default=0.0,
        metadata={"help": "Weight of the distillation loss (needs teacher_model): 0 = task loss only, 1 = KD only."},
    )
    distill_temperature: float = field(
        default=2.0, metadata={"help": "Softmax temperature T of the distillation loss (scaled by T^2)."}
    )
    encoder_blocks_pattern: str | None = field(
        default=None,
        metadata={
            "help": "Regular expression over module names selecting the encoder blocks (e.g. 'encoder\\.layer$'); "
            "found automatically for BERT, RoBERTa, DistilBERT, ELECTRA."
        },
    )

    def __post_init__(self):
        if self.unfreeze not in UNFREEZE_MODES:
            raise ValueError(f"unfreeze must be one of {list(UNFREEZE_MODES)}, got {self.unfreeze!r}.")
        if self.stage_steps is not None and self.stage_steps <= 0:
            raise ValueError(f"stage_steps must be a positive number of optimizer steps, got {self.stage_steps}.")
        if self.stage_epochs <= 0:
            raise ValueError(f"stage_epochs must be positive, got {self.stage_epochs}.")
        if not 0.0 <= self.lr_end_factor <= 1.0:
            raise ValueError(f"lr_end_factor must be in [0, 1], got {self.lr_end_factor}.")
        if not 0.0 <= self.distill_hardness <= 1.0:
            raise ValueError(f"distill_hardness must be in [0, 1], got {self.distill_hardness}.")
        if self.distill_temperature <= 0:
            raise ValueError(f"distill_temperature must be positive, got {self.distill_temperature}.")
        rewind = str(getattr(self.lr_scheduler_type, "value", self.lr_scheduler_type)) == REWIND
        if rewind:
            self.lr_scheduler_type = "linear"  # a valid SchedulerType for the parent's checks; put back below
        super().__post_init__()
        if rewind:
            if self.warmup_steps > 0:
                raise ValueError(
                    f"lr_scheduler_type='rewind' has no warm-up (the recipe dropped it), but warmup_steps="
                    f"{self.warmup_steps}. Set warmup_steps=0, or use lr_scheduler_type='linear' for a warm-up."
                )
            self.lr_scheduler_type = _RewindSchedulerName(REWIND)

    @property
    def uses_rewind(self) -> bool:
        return str(self.lr_scheduler_type) == REWIND


def _check_same_tensors(masks: SparseMasks, model: nn.Module) -> None:
    """Refuses masks bound to a model other than ``model`` unless binding them to ``model`` by name finds the very
    tensors they guard (the base of a peft model, or the peft model around it). Re-binding another model's masks by
    name would carry its pattern over: ``Constant`` would zero ``model``'s weights where the other is pruned and let
    ``model``'s own pruned weights regrow, and every check would pass, as it compares ``model`` with these masks."""
    probe = SparseMasks(masks.state_dict())
    try:
        probe.bind(model)
        # The tensors the masks' own model holds now (a parameter replaced since they were bound is followed by name).
        bound = [id(masks.model.get_parameter(name)) for name in masks]
        same = [id(p) for p in probe.params.values()] == bound
    except (ValueError, AttributeError):
        same = False
    if not same:
        raise ValueError(
            f"The masks are bound to another model ({type(masks.model).__name__}) than the one given to SparseTrainer, "
            "whose parameters of the same names are other tensors (or other names): build them over this model, e.g. "
            "SparseMasks.from_zeros(model), or, to carry these masks over by name on purpose, pass "
            "SparseMasks(masks.state_dict())."
        )


def _check_adapters(model: nn.Module, method: MaskMethod) -> None:
    """What a peft model under SparseTrainer must satisfy: every LoRA on pruned weights masked, and fixed masks (the
    base is frozen, so a method that moves the mask would prune weights under an adapter that cannot follow)."""
    from ..lora import unmasked_lora_layers, untracked_batchnorms

    norms = untracked_batchnorms(model)
    if norms:
        raise ValueError(
            f"{len(norms)} BatchNorm layer(s) of the frozen base (e.g. {norms[0]}) update their running statistics in "
            "training mode, which the adapter does not save: the saved adapter would not reproduce the trained model. "
            "Add them to the LoRA config's modules_to_save."
        )
    from ..lora import is_masked_lora_layer, lora_layers

    masks = method.masks
    for name, layer in lora_layers(model).items():
        weight_name = f"{name}.base_layer.weight"
        if weight_name not in masks:
            continue
        pruned = ~masks[weight_name].to(layer.get_base_layer().weight.device)
        if not is_masked_lora_layer(layer):
            if layer.lora_A and bool(pruned.any()):
                raise ValueError(
                    f"{name} is a plain LoRA on weights these masks prune: its update B A is dense, so training and "
                    "merging it revives them. Build the adapter with sparse_transfer.lora.SparseLoraConfig."
                )
            continue
        layer._check_mask_current(name)
        updated = int((layer.sparse_lora_mask & pruned).sum())
        if updated:
            raise ValueError(
                f"The masked LoRA of {name} updates {updated:,} weights that the trainer's masks prune: the adapter's "
                "mask (the base's zeros when it was created) differs from the masks given. Build the adapter on the "
                "model pruned as the masks say, or train with the masks the model's zeros give (the default)."
            )
    plain = unmasked_lora_layers(model)
    if plain:
        raise ValueError(
            f"{len(plain)} plain LoRA layer(s) wrap pruned weights (e.g. {plain[0]}): peft's LoRA update B A is dense, so "
            "training and merging it revives the pruned weights. Build the adapter with "
            "sparse_transfer.lora.SparseLoraConfig (it takes LoraConfig's arguments), whose update keeps every zero."
        )
    if not isinstance(method, Constant):
        raise ValueError(
            f"{type(method).__name__} changes the masks while training, but under LoRA the base weights are frozen and "
            "each adapter's mask is fixed when it is created. Prune first (e.g. python -m sparse_transfer.upstream), "
            "then train the adapter with the default fixed masks."
        )


def distillation_loss(student_logits: Tensor, teacher_logits: Tensor, temperature: float) -> Tensor:
    """Logit distillation as in oBERT: ``KL(softmax(t / T) || softmax(s / T)) * T^2``, mean over examples.

    Token-level logits (``[batch, seq, classes]``) count every position as an example. A single output
    (regression, e.g. STS-B) has no distribution to match: the loss is then the mean squared error.
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} differ: "
            "the teacher must have the same output head (same num_labels)."
        )
    teacher_logits = teacher_logits.detach().to(student_logits.dtype)
    if student_logits.shape[-1] == 1:
        return F.mse_loss(student_logits, teacher_logits)
    classes = student_logits.shape[-1]
    student = F.log_softmax(student_logits.reshape(-1, classes) / temperature, dim=-1)
    teacher = F.log_softmax(teacher_logits.reshape(-1, classes) / temperature, dim=-1)
    return F.kl_div(student, teacher, reduction="batchmean", log_target=True) * temperature**2


def _loss_uses_num_items(model: nn.Module) -> bool:
    """Whether ``model``'s own loss normalizes by ``num_items_in_batch`` (transformers' ``self.loss_function``).

    A model says so with an explicit ``accepts_loss_kwargs`` attribute; otherwise its ``forward`` has to call
    ``self.loss_function`` (the shared losses that take ``num_items_in_batch``); heads that build
    ``CrossEntropyLoss()`` themselves, as the BERT-family classifiers do, average over their own batch.
    """
    model = getattr(model, "module", model)  # DDP / DataParallel
    if "accepts_loss_kwargs" in vars(type(model)) or "accepts_loss_kwargs" in vars(model):
        return bool(model.accepts_loss_kwargs)
    forward = inspect.unwrap(type(model).forward)
    code = getattr(forward, "__code__", None)
    return code is not None and "loss_function" in code.co_names


class GradualUnfreezeCallback(TrainerCallback):
    """Puts the model into the unfreezing stage of the coming optimizer step.

    The stage is computed from ``state.global_step`` (optimizer steps done), so it is right after a resume.
    Works with a plain ``Trainer`` too, as long as the optimizer was created while every parameter required
    grad (``SparseTrainer`` makes sure of that).

    Args:
        unfreezer: The :class:`GradualUnfreezer` of the trained model.
        steps_per_stage: Stage length in optimizer steps; ``SparseTrainer`` fills it in once the number of
            steps per epoch is known.
    """

    def __init__(self, unfreezer: GradualUnfreezer, steps_per_stage: int | None = None):
        self.unfreezer = unfreezer
        self.steps_per_stage = steps_per_stage

    def _sync(self, state) -> None:
        if self.steps_per_stage is None:
            raise RuntimeError("GradualUnfreezeCallback.steps_per_stage must be set before training starts.")
        stage = unfreeze_stage(state.global_step, self.steps_per_stage, self.unfreezer.num_stages)
        if stage != self.unfreezer.stage:
            self.unfreezer.set_stage_(stage)
            logger.info("Step %d: unfreezing stage %d of %d", state.global_step, stage, self.unfreezer.num_stages - 1)

    def on_train_begin(self, args, state, control, **kwargs):
        self._sync(state)

    def on_step_begin(self, args, state, control, **kwargs):
        self._sync(state)


class _ProgressCallback(TrainerCallback):
    """Records the optimizer step in progress for the command line's interruption message."""

    def on_step_begin(self, args, state, control, **kwargs):
        _cli.progress["step"] = state.global_step


class _RewindSyncCallback(TrainerCallback):
    """Calls :meth:`SparseTrainer._sync_rewind_lr` before every optimizer step."""

    def __init__(self, trainer: SparseTrainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        self.trainer._sync_rewind_lr()


class MaskMethodCallback(TrainerCallback):
    """Drives a :class:`~sparse_transfer.methods.MaskMethod` from the Trainer loop (the Trainer adapter).

    ``on_train_begin`` re-checks that the masks act on the parameters the prepared (wrapped, sharded) model trains;
    ``on_step_begin`` tells the engine whether the coming step needs dense gradients; :meth:`after_backward` (called by
    :class:`SparseTrainer` after the last micro-batch's backward, before clipping) runs the method's schedule. Mask
    events are kept in :attr:`events` and logged with the next log line.

    The method's state goes into each checkpoint as ``sparse_method_state.pt`` (``torch.save``, read back with
    ``weights_only=True``) rather than through transformers' ``ExportableState``, which stores JSON in
    ``trainer_state.json``: the state holds masks, tensors of up to one bit per weight.
    """

    def __init__(self, method: MaskMethod):
        self.method = method
        self.events: list[dict] = []
        self._unlogged: list[str] = []

    def on_train_begin(self, args, state, control, **kwargs):
        self.method.masks.check()

    def on_step_begin(self, args, state, control, **kwargs):
        self.method.begin_step(state.global_step)

    def after_backward(self, state, optimizer) -> None:
        event = self.method.step(state.global_step, optimizer)
        if event is not None:
            self.events.append(event)
            self._unlogged.append(event["event"])
            logger.info("step %d: %s (sparsity %.4f)", state.global_step, event["event"], self.method.masks.sparsity())

    def log_entries(self) -> dict:
        """What the next log line says about the method, as numbers (loggers such as TensorBoard's take scalars only):
        its numeric state (``mask_active``, AC/DC's ``compressed``...) and ``mask_events``, how many mask updates
        happened since the last log. The events themselves are in :attr:`events` and in the Python log."""
        entries = {k: v for k, v in self.method.describe().items() if isinstance(v, (int, float))}
        entries["mask_events"] = len(self._unlogged)
        self._unlogged = []
        return entries


class SparseTrainer(Trainer):
    """A ``transformers.Trainer`` that keeps the masks of any mask method exact and trains with gradual unfreezing.

    Example:
        >>> args = SparseTrainingArguments("runs/rte", learning_rate=1e-4, num_train_epochs=8,
        ...                                per_device_train_batch_size=32, eval_strategy="epoch")
        >>> trainer = SparseTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev)
        >>> trainer.train()                     # masks read from the model's zeros on args.mask_targets

        Any mask method, e.g. gradual magnitude pruning during fine-tuning:

        >>> method = GMP(dense_masks(model, "bert"), final_sparsity=0.9, start_step=0, end_step=16, interval=4)
        >>> SparseTrainer(model=model, args=args, train_dataset=train, method=method).train()

    Args:
        model: The model to fine-tune; its pruned weights must already be zero (or pass ``masks``).
        args: :class:`SparseTrainingArguments`.
        *trainer_args: Passed to ``transformers.Trainer``.
        method: The mask method (:class:`~sparse_transfer.methods.Constant`, ``GMP``, ``ACDC``, ``RigL``, ``NM``) over
            masks bound to ``model``; default ``Constant(SparseMasks.from_zeros(model, args.mask_targets))``, the
            zeros of a sparse checkpoint held fixed.
        masks: Fixed masks, shorthand for ``method=Constant(masks)``.
        teacher_model: Teacher for logit distillation (used when ``args.distill_hardness > 0``).
        **trainer_kwargs: Passed to ``transformers.Trainer`` (datasets, collator, ``processing_class``...).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        args: SparseTrainingArguments | None = None,
        *trainer_args,
        method: MaskMethod | None = None,
        masks: SparseMasks | None = None,
        teacher_model: nn.Module | None = None,
        **trainer_kwargs,
    ):
        if args is None:
            args = SparseTrainingArguments(output_dir="trainer_output")
        if not isinstance(args, SparseTrainingArguments):
            raise TypeError(
                f"SparseTrainer needs SparseTrainingArguments, got {type(args).__name__}; build the arguments with "
                "SparseTrainingArguments(...) (it accepts every TrainingArguments field)."
            )
        if model is None or trainer_kwargs.get("model_init") is not None:
            raise ValueError(
                "SparseTrainer needs a `model` (model_init is not supported: masks and stages are bound to one model)."
            )
        if teacher_model is not None and args.distill_hardness == 0:
            raise ValueError(
                "A teacher_model was given but distill_hardness=0, so it would be ignored. Set distill_hardness "
                "(oBERT uses 1.0), or drop the teacher."
            )
        if teacher_model is None and args.distill_hardness > 0:
            raise ValueError(f"distill_hardness={args.distill_hardness} needs a teacher_model=... to distill from.")
        if torch.__future__.get_overwrite_module_params_on_conversion() or torch.__future__.get_swap_module_params_on_conversion():
            raise ValueError(
                "torch.__future__.set_overwrite_module_params_on_conversion / set_swap_module_params_on_conversion is on: "
                "the Trainer moves the model after building the optimizer, which then replaces (or swaps in place) every "
                "parameter, so the optimizer would train stale tensors, or PyTorch would run no gradient hook and "
                "clipping would see pruned gradients. Turn the flag off for training."
            )
        if args.fsdp and int((args.fsdp_config or {}).get("version", 2)) != 2:
            raise ValueError(
                "FSDP1 (fsdp_config version 1) flattens parameters into shared buffers, so the masks cannot address "
                "them by name and pruned weights would go unenforced. Use FSDP2: fsdp_config={'fsdp_version': 2}."
            )
        _refuse_transformers_push(args)
        super().__init__(model, args, *trainer_args, **trainer_kwargs)
        if args.fsdp and not self.is_fsdp_enabled:
            logger.warning(
                "fsdp=%r is set but the Trainer is not sharding (transformers runs FSDP only on accelerators; here it "
                "trains unsharded or with DDP). The masks are enforced either way.", args.fsdp,
            )
        self.args: SparseTrainingArguments

        if method is not None and masks is not None:
            raise ValueError("Pass either method=... or masks=... (masks=m is shorthand for method=Constant(m)), not both.")
        if method is not None and not isinstance(method, MaskMethod):
            raise TypeError(
                f"method must be a sparse_transfer mask method (Constant, GMP, ACDC, RigL, NM), got {type(method).__name__}."
            )
        if method is None:
            if masks is None:
                masks = SparseMasks.from_zeros(self.model, args.mask_targets)
            elif masks.model is not None and masks.model is not self.model:
                _check_same_tensors(masks, self.model)
            method = Constant(masks.bind(self.model) if masks.model is not self.model else masks)
            if masks.sparsity() == 0.0:
                logger.warning(
                    "The model has no zeros on its %r targets, so the fixed masks keep every weight and training is "
                    "dense: load a sparse checkpoint, or prune while training with method=GMP(dense_masks(model, "
                    "...), ...) (or ACDC, RigL, NM).", args.mask_targets,
                )
        elif method.masks.model is not self.model:
            raise ValueError(
                "The method's masks are bound to another model than the one given to SparseTrainer: build them over "
                "this model, e.g. GMP(dense_masks(model, 'bert'), ...)."
            )
        if any(hasattr(m, "adapter_layer_names") for m in self.model.modules()):
            _check_adapters(self.model, method)
        self.method = method
        self.masks = method.masks
        self.method_callback = MaskMethodCallback(method)
        self._mask_hooks = None
        self._masked_optimizer = None
        self.steps_per_stage: int | None = None
        self._resumed_sparse_state: dict | None = None
        self._batch_layout: list[int] | None = None
        self._nonfinite_step: Tensor | None = None  # first step whose loss was not finite (-1: none), on the device

        self.unfreezer: GradualUnfreezer | None = None
        self.unfreeze_callback: GradualUnfreezeCallback | None = None
        if args.unfreeze == "gradual":
            self.unfreezer = GradualUnfreezer(
                self.model, unfreeze_embeddings=args.unfreeze_embeddings, encoder_blocks_pattern=args.encoder_blocks_pattern
            )
            self.unfreeze_callback = GradualUnfreezeCallback(self.unfreezer)
        # Right after DefaultFlowCallback rather than appended, so that the user's own callbacks already see the
        # stage and LR of the coming step in on_train_begin/on_step_begin.
        ours = [
            cb
            for cb in (_ProgressCallback(), self.unfreeze_callback, _RewindSyncCallback(self) if args.uses_rewind else None,
                       self.method_callback)
            if cb
        ]
        callbacks = self.callback_handler.callbacks
        position = next((i + 1 for i, cb in enumerate(callbacks) if isinstance(cb, DefaultFlowCallback)), 0)
        callbacks[position:position] = ours

        self.teacher_model = teacher_model
        if teacher_model is not None:
            teacher_model.to(self.args.device)
            teacher_model.eval()
            teacher_model.requires_grad_(False)
            # Our loss mixes per-batch means, so let the Trainer divide by the accumulation steps.
            self.loss_is_scaled_for_ga = False
        if self.model_accepts_loss_kwargs and not _loss_uses_num_items(self.model):
            # The Trainer takes any forward(**kwargs) to normalize its loss by num_items_in_batch and then skips
            # the division by the accumulation steps; but the BERT-family heads compute a plain per-batch mean
            # and drop that kwarg, so gradient accumulation would sum the micro-batch losses (transformers#47688).
            self.model_accepts_loss_kwargs = False

    # ------------------------------------------------------------------------------------------ schedule
    def set_initial_training_values(self, args, dataloader):
        values = super().set_initial_training_values(args, dataloader)
        num_update_steps_per_epoch, max_steps = values[1], values[6]
        if self.args.stage_steps is not None:
            steps_per_stage = self.args.stage_steps
        else:
            has_len = True
            try:
                len(dataloader)
            except TypeError:
                has_len = False
            if not has_len:
                raise ValueError("The training data has no length, so stage_epochs cannot be counted: set stage_steps.")
            steps_per_stage = max(1, round(self.args.stage_epochs * num_update_steps_per_epoch))
        saved = self._resumed_sparse_state
        # per-device batch, accumulation, processes: the same global batch split differently draws other dropout
        # masks and sums in another order, so even that would not continue the same run.
        layout = [self._train_batch_size, self.args.gradient_accumulation_steps, self.args.world_size]
        if saved is not None and saved.get("batch_layout") not in (None, layout):
            was = saved["batch_layout"]
            raise ValueError(
                f"The checkpoint was trained with batch {was[0]} x gradient accumulation {was[1]} x {was[2]} process(es), "
                f"this run would use {layout[0]} x {layout[1]} x {layout[2]}: the data position, the schedule and the "
                "random draws would not continue the same run. Resume with the same batch size, accumulation and processes."
            )
        self._batch_layout = layout
        if saved is not None and saved.get("steps_per_stage") not in (None, steps_per_stage):
            raise ValueError(
                f"The checkpoint was trained with {saved['steps_per_stage']} optimizer steps per stage, this run would "
                f"use {steps_per_stage}: resume with the same batch size, gradient accumulation, data and stage length."
            )
        self.steps_per_stage = steps_per_stage
        if self.unfreeze_callback is not None:
            self.unfreeze_callback.steps_per_stage = steps_per_stage
            planned = self.unfreezer.num_stages * steps_per_stage
            if max_steps < planned:
                fix = (
                    f"max_steps = {planned}"
                    if self.args.stage_steps is not None or self.args.max_steps > 0
                    else f"num_train_epochs = {self.unfreezer.num_stages} x stage_epochs"
                )
                logger.warning(
                    "Training stops after %d optimizer steps, before the last unfreezing stage ends (%d stages x %d "
                    "steps = %d): set %s to run the whole schedule.",
                    max_steps, self.unfreezer.num_stages, steps_per_stage, planned, fix,
                )
        return values

    def create_scheduler(self, num_training_steps: int, optimizer: torch.optim.Optimizer | None = None):
        if not self.args.uses_rewind:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            if self.steps_per_stage is None:
                raise RuntimeError("The stage length is only known inside train(); the rewind scheduler is built there.")
            factor = functools.partial(
                rewind_lr_factor, steps_per_stage=self.steps_per_stage, end_factor=self.args.lr_end_factor
            )
            self.lr_scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer or self.optimizer, factor)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _sync_rewind_lr(self) -> None:
        """Puts the rewind schedule at ``state.global_step``, the step about to run.

        The Trainer does not step the scheduler after a step that fp16's GradScaler skipped, but it does count the
        step, so the LR would lag the unfreezing stages by one step per skipped step; this keeps the LR, like the
        stage, a pure function of the optimizer step.
        """
        scheduler = self.lr_scheduler
        step = self.state.global_step
        if not isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR) or scheduler.last_epoch == step:
            return
        scheduler.last_epoch = step
        lrs = [base * factor(step) for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
        for group, lr in zip(scheduler.optimizer.param_groups, lrs):
            group["lr"] = lr
        scheduler._last_lr = lrs  # what get_last_lr() returns, hence what the Trainer logs

    # ----------------------------------------------------------------------------------------- optimizer
    def create_optimizer(self, model=None):
        opt_model = self.model if model is None else model
        if self.optimizer is None:
            # The Trainer keeps only parameters that require grad now; a stage frozen now must still train later.
            flags = [(p, p.requires_grad) for p in opt_model.parameters()]
            try:
                for p, _ in flags:
                    p.requires_grad_(True)
                super().create_optimizer(model)
            finally:
                for p, flag in flags:
                    p.requires_grad_(flag)
        else:
            registered = {id(p) for group in self.optimizer.param_groups for p in group["params"]}
            missing = [n for n, p in opt_model.named_parameters() if id(p) not in registered]
            if missing and self.unfreezer is not None:
                logger.warning(
                    "The optimizer passed to SparseTrainer does not hold %d parameters (e.g. %s): they will never "
                    "train, even after their unfreezing stage. Let SparseTrainer create the optimizer instead.",
                    len(missing), missing[0],
                )
        if self._masked_optimizer is not self.optimizer:
            if self._mask_hooks is not None:
                self._mask_hooks.remove()
            self._mask_hooks = self.method.attach(self.optimizer)
            self._masked_optimizer = self.optimizer
        return self.optimizer

    # ------------------------------------------------------------------------------------------ training
    def train(self, resume_from_checkpoint=None, trial=None, ignore_keys_for_eval=None, **kwargs):
        _refuse_transformers_push(self.args)  # also when set after construction
        if self.unfreezer is not None:
            # Everything requires grad while the optimizer and DDP are built (DDP only syncs parameters that do at
            # construction); GradualUnfreezeCallback freezes the first stage in on_train_begin.
            self.unfreezer.unfreeze_all_()
            self.unfreezer.stage = None
            if self.args.parallel_mode.value == "distributed" and self.args.ddp_find_unused_parameters is False:
                raise ValueError(
                    "Gradual unfreezing under DDP needs ddp_find_unused_parameters=True (frozen parameters get no "
                    "gradient); leave it unset or set it to True."
                )
        self._resumed_sparse_state = None
        if resume_from_checkpoint is True:
            resume_from_checkpoint = last_complete_checkpoint(self.args.output_dir)
            if resume_from_checkpoint is None:
                raise ValueError(f"No complete checkpoint to resume from in {self.args.output_dir}.")
        elif isinstance(resume_from_checkpoint, (str, os.PathLike)):
            if not os.path.isdir(resume_from_checkpoint):
                raise ValueError(
                    f"resume_from_checkpoint={str(resume_from_checkpoint)!r} is not a folder. Pass a checkpoint folder "
                    f"(e.g. {os.path.join(self.args.output_dir, 'checkpoint-500')}), True for the last complete one in "
                    "output_dir, or None to start over."
                )
            if not checkpoint_is_complete(resume_from_checkpoint):
                earlier = last_complete_checkpoint(os.path.dirname(os.path.normpath(resume_from_checkpoint)))
                raise ValueError(
                    f"{resume_from_checkpoint} is incomplete: its save was interrupted (no {CHECKPOINT_COMPLETE_NAME}, "
                    "or a file missing or of another size than when it was written; checkpoints of versions before "
                    f"that marker lack it too). Resume from {earlier or 'an earlier checkpoint, or start over'}."
                )
        if resume_from_checkpoint is not None and resume_from_checkpoint is not False:
            check_checkpoint_untouched(resume_from_checkpoint)
        else:
            bad = nonfinite_names(dict(self.model.named_parameters()))
            # Summed over the processes: a shard's NaN would otherwise stop one rank and leave the others waiting.
            anywhere = int(self.accelerator.reduce(torch.tensor(len(bad), device=self.args.device), reduction="sum"))
            if anywhere:
                raise ValueError(
                    f"{anywhere} parameter(s) of the model hold NaN or inf before training (e.g. "
                    f"{bad[0] if bad else 'on another process'}): load finite weights (the checkpoint may come from a "
                    "diverged run)."
                )
        self._nonfinite_step = None
        return super().train(resume_from_checkpoint, trial, ignore_keys_for_eval, **kwargs)

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        # The first step with a non-finite loss, kept on the device (no synchronization per step); checked at every
        # log and before every save. The Trainer's logging_nan_inf_filter would otherwise hide it in the logs.
        step = torch.full((), self.state.global_step, dtype=torch.long, device=loss.device)
        first = self._nonfinite_step if self._nonfinite_step is not None else torch.full_like(step, -1)
        self._nonfinite_step = torch.where((first < 0) & ~torch.isfinite(loss.detach()), step, first)
        if self.accelerator.sync_gradients:
            # The Trainer has no callback between the last backward and clipping: the method runs here, so clipping
            # and the logged grad_norm see the gradient that is applied (RigL reads its dense gradient first).
            self.method_callback.after_backward(self.state, self.optimizer)
        return loss

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if self.teacher_model is None or not model.training:
            return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
        hardness = self.args.distill_hardness
        if "labels" in inputs:
            # num_items_in_batch=None: a per-batch mean, like the KD term (see loss_is_scaled_for_ga in __init__).
            task_loss, outputs = super().compute_loss(model, inputs, return_outputs=True)
        elif hardness == 1.0:
            outputs, task_loss = model(**inputs), 0.0
        else:
            raise ValueError(f"distill_hardness={hardness} < 1 mixes in the task loss, but the batch has no labels.")
        teacher_inputs = {k: v for k, v in inputs.items() if k != "labels"}
        with torch.no_grad():
            teacher_logits = self.teacher_model(**teacher_inputs).logits
        student_logits = outputs["logits"] if isinstance(outputs, dict) else outputs[1 if "labels" in inputs else 0]
        kd_loss = distillation_loss(student_logits, teacher_logits, self.args.distill_temperature)
        loss = hardness * kd_loss + (1.0 - hardness) * task_loss
        return (loss, outputs) if return_outputs else loss

    # ------------------------------------------------------------------------------------------- logging
    @torch.no_grad()
    def check_finite(self, before: str) -> None:
        """Raises :class:`~sparse_transfer._cli.TrainingStopped` if a training loss so far, or a weight now, is NaN or
        inf; ``before`` names what is then not done (a log, a save). Callbacks that write models call it first."""
        if self._nonfinite_step is not None and int(self._nonfinite_step) >= 0:
            step = int(self._nonfinite_step)
            raise _cli.TrainingStopped(
                f"The training loss became NaN or inf at step {step}; stopped before {before}, so nothing was saved "
                "over an earlier checkpoint. Try a lower learning_rate, a max_grad_norm, bf16 instead of fp16, or check "
                "the inputs of that step; then resume from the last checkpoint."
            )
        bad = nonfinite_names(dict(self.model.named_parameters()))
        if bad:
            raise _cli.TrainingStopped(
                f"{len(bad)} parameter(s) hold NaN or inf at step {self.state.global_step} (e.g. {bad[0]}); stopped "
                f"before {before}, so nothing was saved over an earlier checkpoint. Try a lower learning_rate, a "
                "max_grad_norm or bf16 instead of fp16; then resume from the last checkpoint."
            )

    def measured_sparsity(self) -> float:
        """Fraction of exact zeros over the masked weights of the model as it is now (read by name)."""
        return self.masks.measured_sparsity()

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if self.is_in_train:
            self.check_finite("this log")
            logs["sparsity"] = round(self.measured_sparsity(), 6)
            logs["mask_sparsity"] = round(self.method.sparsity(), 6)
            if self.method.active:
                violations = self.masks.violations()
                logs["mask_violations"] = violations
                if violations:
                    raise RuntimeError(
                        f"{violations} pruned weights are non-zero at step {self.state.global_step}: something changed "
                        "the weights outside the masked optimizer step (a callback, a second optimizer, load_state_dict?)."
                    )
            logs.update(self.method_callback.log_entries())
            if self.unfreezer is not None and self.unfreezer.stage is not None:
                logs["unfreeze_stage"] = self.unfreezer.stage
        super().log(logs, *args, **kwargs)

    # ---------------------------------------------------------------------------------------- checkpoints
    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if self.is_in_train or state_dict is None:
            self.check_finite(f"saving {output_dir}")
        if self.method.active:
            # Checked on what is written (under FSDP the gathered state dict; _save runs on the main process only).
            written = state_dict if state_dict is not None else self.accelerator.unwrap_model(self.model).state_dict()
            violations = self.masks.violations_in(written)
            if violations:
                raise RuntimeError(f"Refusing to save {output_dir}: {violations} pruned weights are non-zero.")
        super()._save(output_dir, state_dict)
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            path = os.path.join(output_dir, MASKS_NAME)
            if hasattr(self.accelerator.unwrap_model(self.model), "peft_config"):
                # A peft model saves its adapter, whose config records the masks it keeps (sparse_transfer.lora); a
                # mask file under the wrapped names would describe weights the folder does not hold.
                pass
            elif self.method.active:
                self.masks.save(path)
            elif os.path.isfile(path):  # the mask is released (training dense): no mask describes these weights
                os.remove(path)

    def push_to_hub(
        self,
        commit_message: str | None = None,
        blocking: bool = True,
        token: str | None = None,
        revision: str | None = None,
        *,
        repo_id: str | None = None,
        private: bool | None = None,
        **card_fields,
    ) -> str:
        """Saves the model to ``args.output_dir`` and uploads it with :func:`~sparse_transfer.push_sparse_to_hub`.

        Replaces transformers' ``Trainer.push_to_hub``, which uploads the output folder as it is, pickles included:
        here the model is saved again into a folder of its own (so files that earlier runs left in ``output_dir``, an
        old tokenizer, adapter or mask file, never go up), the saved weights are checked against the saved mask
        file, and only an allow-list of files is uploaded (weights, masks, configs, tokenizer files, this package's
        model card), never ``training_args.bin``. A peft model uploads its adapter. The upload always blocks.

        Args:
            commit_message: Default: a message stating the sparsity.
            token: Hub token; default ``args.hub_token``, else the stored login. Never printed or saved.
            repo_id: ``USER/NAME``; default ``args.hub_model_id``, else the name of ``output_dir`` (as transformers).
            private: Create the repository private; default ``args.hub_private_repo`` (``None``: the Hub's default).
            **card_fields: transformers' card arguments: ``model_name``, ``finetuned_from``, ``tags``, ``license``,
                ``language``, ``tasks`` (the Hub's pipeline tag), ``dataset_tags`` (Hub dataset ids), ``dataset`` and
                ``dataset_args`` (a name and configuration for the card's text).

        Returns:
            The repository's URL (an empty string on processes other than the main one).
        """
        from ..hub import _as_list, push_sparse_to_hub

        revision = revision if revision is not None else self.args.hub_revision  # as transformers
        unsupported = ["revision"] * (revision is not None) + sorted(set(card_fields) - set(_CARD_FIELDS))
        if unsupported:
            raise ValueError(
                f"SparseTrainer.push_to_hub does not take {unsupported}: it uploads the checked model to the main "
                f"branch. It takes commit_message, token, repo_id, private and the card fields {sorted(_CARD_FIELDS)}."
            )
        peft = hasattr(self.accelerator.unwrap_model(self.model), "peft_config")
        if not peft and not self.method.active:
            raise ValueError(
                f"{type(self.method).__name__}'s masks are released (a dense phase, or pruning not started yet), so no "
                "mask describes these weights and the push has nothing to check them against: push a model trained "
                "to the end of its schedule."
            )
        repo_id = repo_id or self.args.hub_model_id or Path(self.args.output_dir).absolute().name
        self.save_model(self.args.output_dir, _internal_call=True)  # as transformers: the output folder holds it too
        staging = os.path.join(self.args.output_dir, _PUSH_FOLDER)
        main = self.is_world_process_zero()
        if main:  # left by a push that was killed: the folder, and push_sparse_to_hub's own staging beside it
            for path in (staging, *glob.glob(glob.escape(staging) + "-*")):
                if os.path.islink(path) or os.path.isfile(path):
                    os.remove(path)  # (a link is removed, never followed)
                else:
                    shutil.rmtree(path, ignore_errors=True)
        try:
            self.save_model(staging, _internal_call=True)  # every process: under FSDP the weights are gathered
            if not main:
                return ""
            card = {_CARD_FIELDS[name]: value for name, value in card_fields.items()
                    if value not in (None, "", [], ()) and name not in ("dataset", "dataset_args")}
            if isinstance(card.get("pipeline_tag"), (list, tuple)):
                card["pipeline_tag"] = card["pipeline_tag"][0] if card["pipeline_tag"] else None
            datasets = ", ".join(str(d) for d in _as_list(card_fields.get("dataset")))
            if datasets:  # transformers' dataset_args is the dataset's configuration, e.g. GLUE's task
                configs = ", ".join(str(a) for a in _as_list(card_fields.get("dataset_args")))
                card["data"] = f"Fine-tuned on {datasets}" + (f" ({configs})." if configs else ".")
            self._write_card(self.args.output_dir, dict(card), peft)
            self._write_card(staging, card, peft)
            return push_sparse_to_hub(
                staging, repo_id, token=token or self.args.hub_token,
                private=private if private is not None else self.args.hub_private_repo, commit_message=commit_message,
            )
        finally:
            if main:
                shutil.rmtree(staging, ignore_errors=True)

    def init_hf_repo(self, *args, **kwargs) -> None:
        _refuse_transformers_push(self.args, always=True)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        _refuse_transformers_push(self.args, always=True)

    def _write_card(self, folder: str, card: dict, peft: bool) -> None:
        """The model card of the model just saved in ``folder``, from the saved files (what the push uploads)."""
        from ..core import sparsity_report
        from ..hub import CARD_NAME, adapter_card, load_state_dict_from_checkpoint, model_card

        name = type(self.accelerator.unwrap_model(self.model)).__name__
        if peft:
            card.pop("data", None)  # the adapter's card has no free text
            text = adapter_card(folder, {"title": f"Masked LoRA adapter ({name})", **card})
        else:
            report = sparsity_report(load_state_dict_from_checkpoint(folder), list(self.masks))
            card = {"title": f"Sparse {name}", "method": type(self.method).__name__, **card}
            text = model_card(report, card=card, masks=self.masks, library="transformers",
                              location=Path(folder).resolve())
        path = os.path.join(folder, CARD_NAME)
        with open(path + ".tmp", "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(path + ".tmp", path)

    def _write_checkpoint_extras(self, output_dir: str) -> None:
        """Writes a subclass's own files into a checkpoint folder, before the parent's (main process only); the
        completion marker, written last, covers them."""

    def _save_checkpoint(self, model, trial) -> None:
        from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

        run_dir = self._get_output_dir(trial=trial)
        output_dir = os.path.join(run_dir, f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}")
        self.check_finite("saving a checkpoint")
        # A save refused midway (pruned weights that are not zero, a full disk, Ctrl-C) leaves no half-written folder
        # of its own: resume would skip it (no completion marker), but a user would take it for a checkpoint.
        created = self.args.should_save and not os.path.exists(output_dir)
        # The parent deletes old checkpoints beyond save_total_limit right after writing the new one's files: rotation
        # waits until the new one's completion marker is written, so a kill at any point leaves at least one complete
        # checkpoint, and resume only ever takes a complete one.
        limit = self.args.save_total_limit
        self.args.save_total_limit = None
        try:
            self._write_checkpoint(model, trial, output_dir)
        except BaseException:
            if created and not checkpoint_is_complete(output_dir):  # (a Ctrl-C after the marker keeps the checkpoint)
                shutil.rmtree(output_dir, ignore_errors=True)
            raise
        finally:
            self.args.save_total_limit = limit
        if self.args.should_save and limit:
            from transformers.trainer_utils import rotate_checkpoints

            rotate_checkpoints(output_dir=run_dir, save_total_limit=limit,
                               best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _write_checkpoint(self, model, trial, output_dir: str) -> None:
        # Written before the parent's checkpoint files, so that a checkpoint with a trainer_state.json (what
        # resume looks for, written last by the parent) always has ours too.
        if self.args.should_save:
            os.makedirs(output_dir, exist_ok=True)
            # Saving into an existing folder (a run resumed from an earlier step saves this step again): its old marker
            # goes first, or a kill during this save would leave old and new files under a marker of the old ones.
            _remove_checkpoint_marker(output_dir)
            self._write_checkpoint_extras(output_dir)
            state = {
                "global_step": self.state.global_step,
                "steps_per_stage": self.steps_per_stage,
                "batch_layout": self._batch_layout,
                "unfreeze": self.args.unfreeze,
                "unfreezer": self.unfreezer.state_dict() if self.unfreezer is not None else None,
            }
            method_path = os.path.join(output_dir, SPARSE_METHOD_STATE_NAME)
            torch.save(self.method.state_dict(), method_path + ".tmp")
            os.replace(method_path + ".tmp", method_path)
            path = os.path.join(output_dir, SPARSE_TRAINER_STATE_NAME)
            with open(path + ".tmp", "w") as f:
                json.dump(state, f, indent=2)
            os.replace(path + ".tmp", path)
        super()._save_checkpoint(model, trial)
        # Every process writes its own rng_state_{rank}.pth into the folder: the marker, which lists the folder's
        # files, waits for all of them (else a slower rank's file would be "added after the save" and refused).
        self.accelerator.wait_for_everyone()
        if self.args.should_save:
            mark_checkpoint_complete(output_dir)

    @torch.no_grad()
    def _check_masks_against_weights(self, masks: dict[str, Tensor], checkpoint: str, source: str) -> None:
        """Refuses a checkpoint whose saved masks do not fit the weights just loaded from it: every pruned weight of a
        checkpoint is exactly 0, so a non-zero one means the mask (or method) file was swapped or damaged, and
        applying it would silently zero trained weights."""
        params = self.masks.params
        if masks.keys() != params.keys():
            raise ValueError(f"{checkpoint}/{source} masks other parameters than this model's; it belongs to another run.")
        bad = {}
        for name, mask in masks.items():
            weight = params[name].detach()
            if is_dtensor(weight):
                weight = weight.full_tensor()
            count = int((weight[~mask.to(weight.device)] != 0).sum())
            if count:
                bad[name] = count
        if bad:
            raise ValueError(
                f"{checkpoint}/{source} disagrees with the checkpoint's weights: {sum(bad.values()):,} weights it marks "
                f"as pruned are non-zero (e.g. {next(iter(bad))}). The file was swapped or damaged; applying it would "
                "zero trained weights. Resume from an untouched checkpoint."
            )

    def _refuse_other_fixed_masks(self, saved: dict[str, Tensor], checkpoint: str) -> None:
        """Fixed masks do not change during a run: other masks in the checkpoint mean another run's checkpoint, or
        ``masks=`` other than those the run started with, which taking the checkpoint's would silently drop."""
        current = self.masks.state_dict()
        differ = sum(int((saved[n].cpu() != current[n].cpu()).sum()) for n in saved if n in current)
        if saved.keys() == current.keys() and not differ:
            return
        kept, total = sum(int(m.sum()) for m in saved.values()), sum(m.numel() for m in saved.values())
        raise ValueError(
            f"{checkpoint} was trained with other masks than this trainer's ({1 - kept / total:.2%} vs "
            f"{self.masks.sparsity():.2%} sparse; {differ:,} weights differ, {len(saved.keys() ^ current.keys())} "
            "tensors are masked in only one): build the trainer with the masks the run started with, e.g. "
            f"masks=SparseMasks.load({os.path.join(checkpoint, MASKS_NAME)!r}), or train in another output_dir."
        )

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        method_path = os.path.join(resume_from_checkpoint, SPARSE_METHOD_STATE_NAME)
        masks_path = os.path.join(resume_from_checkpoint, MASKS_NAME)
        if os.path.isfile(method_path):
            state = torch.load(method_path, map_location="cpu", weights_only=True)
            if state.get("active"):
                self._check_masks_against_weights(state["masks"], resume_from_checkpoint, SPARSE_METHOD_STATE_NAME)
                if os.path.isfile(masks_path):
                    on_disk = SparseMasks.load(masks_path).state_dict()
                    if on_disk.keys() != state["masks"].keys() or any(
                        not torch.equal(on_disk[n], state["masks"][n]) for n in on_disk
                    ):
                        raise ValueError(
                            f"{resume_from_checkpoint}: {MASKS_NAME} and {SPARSE_METHOD_STATE_NAME} hold different masks; "
                            "one of them was replaced. Resume from an untouched checkpoint."
                        )
            if isinstance(self.method, Constant):
                self._refuse_other_fixed_masks(state["masks"], resume_from_checkpoint)
            self.method.load_state_dict(state)
        elif os.path.isfile(masks_path) and isinstance(self.method, Constant):
            saved = SparseMasks.load(masks_path).state_dict()
            self._check_masks_against_weights(saved, resume_from_checkpoint, MASKS_NAME)
            self._refuse_other_fixed_masks(saved, resume_from_checkpoint)
        elif isinstance(self.method, Constant):
            logger.warning("%s has no %s; keeping the masks this trainer was built with.", resume_from_checkpoint, MASKS_NAME)
        else:
            raise ValueError(
                f"{resume_from_checkpoint} has no {SPARSE_METHOD_STATE_NAME}, so the state of {type(self.method).__name__} "
                "(its masks, phase and schedule position) cannot be restored: resume from a checkpoint this version wrote."
            )
        if os.path.isfile(masks_path) and not any(is_dtensor(p) for p in self.masks.params.values()):
            # The mask file was saved beside the checkpoint's weights: a weights file swapped for another of the same
            # size (which the completion marker's sizes cannot see) shows in its fingerprint.
            on_disk = SparseMasks.load(masks_path, check_fingerprint=False)
            expected = on_disk.saved_model_fingerprint
            if expected is not None and expected != weights_fingerprint(
                {n: p.detach() for n, p in self.masks.params.items()}
            ):
                raise ValueError(
                    f"{resume_from_checkpoint}: its weights are not those its {MASKS_NAME} was saved beside (model "
                    "fingerprint): a file of the checkpoint was replaced. Resume from an untouched checkpoint."
                )
        state_path = os.path.join(resume_from_checkpoint, SPARSE_TRAINER_STATE_NAME)
        if os.path.isfile(state_path):
            with open(state_path) as f:
                state = json.load(f)
            if state.get("unfreeze") != self.args.unfreeze:
                raise ValueError(
                    f"The checkpoint was trained with unfreeze={state.get('unfreeze')!r}, this run uses "
                    f"unfreeze={self.args.unfreeze!r}: resume with the same setting."
                )
            if self.unfreezer is not None and state.get("unfreezer") is not None:
                saved = dict(state["unfreezer"])
                saved["stage"] = None  # the stage follows from global_step (GradualUnfreezeCallback)
                self.unfreezer.load_state_dict(saved)
            self._resumed_sparse_state = state
