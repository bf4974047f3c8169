"""Arguments of ``python -m sparse_transfer.glue``: :class:`GlueArguments` + ``SparseTrainingArguments``.

Precedence, lowest first: the dataclass defaults, the GLUE defaults below (the paper's recipe, RECIPES.md
section 1), the recipe YAML (``--recipe``; default ``recipes/glue/<task>.yaml``), the command-line flags.
A recipe is a mapping of field names of either dataclass to values, plus an optional ``description``.
"""

from __future__ import annotations

import ast
import dataclasses
import importlib.resources
import math
import operator
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .._recipes import read_recipe
from .tasks import GLUE_TASKS, get_task

DEFAULT_MODEL = "neuralmagic/oBERT-12-upstream-pruned-unstructured-90-v2"
# The recipes ship inside the package (``sparse_transfer/recipes`` links to the top-level ``recipes/`` of a checkout,
# and a wheel holds copies), so ``--recipe dense_transfer`` works from any install.
RECIPES_DIR = Path(str(importlib.resources.files("sparse_transfer") / "recipes" / "glue"))
GRID_SUMMARIES = ("mean_top2", "best")

# The paper's recipe for the TrainingArguments fields (RECIPES.md section 1, items 5, 8, 9). They only
# replace the transformers defaults; a recipe or a flag overrides them.
GLUE_TRAINING_DEFAULTS: dict[str, Any] = {
    "output_dir": None,  # runs/glue/<task> unless given
    "learning_rate": 1e-4,
    "per_device_train_batch_size": 32,
    "per_device_eval_batch_size": 64,
    "weight_decay": 0.0,
    "adam_beta1": 0.9,
    "adam_beta2": 0.999,
    "adam_epsilon": 1e-8,
    "seed": 42,
    "lr_scheduler_type": "rewind",
    "warmup_steps": 0,
    "unfreeze": "gradual",
    "stage_epochs": 1.0,
    "eval_strategy": "epoch",
    # The best epoch is saved by the GLUE command itself (weights only, sparse-checked), so Trainer
    # checkpoints with optimizer state are off unless asked for.
    "save_strategy": "no",
    "logging_strategy": "steps",
    "logging_steps": 50,
    "report_to": "none",
}


def _f(default, help: str, **kw):
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help, **kw})
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class GlueArguments:
    """Task, model, data and grid of a GLUE run; the optimization lives in ``SparseTrainingArguments``."""

    task: str | None = _f(None, f"GLUE task: {', '.join(GLUE_TASKS)}.")
    model: str = _f(DEFAULT_MODEL, "Hub id or local folder of the (sparse) pretrained model; its zeros on the "
                    "encoder linears are the fixed mask.")
    model_revision: str | None = _f(None, "Hub revision (branch, tag or commit) of --model.")
    tokenizer: str | None = _f(None, "Tokenizer (Hub id or folder); default: the one saved with --model.")
    trust_remote_code: bool = _f(False, "Allow model code from the Hub repository (off: only transformers' own code runs).")
    dataset: str = _f("nyu-mll/glue", "Hub dataset holding the GLUE tasks (used without --data_dir/--train_file).")
    dataset_revision: str | None = _f(None, "Hub revision of --dataset.")
    data_dir: str | None = _f(None, "GLUE's folder as its download script lays it out (DIR/RTE/train.tsv, "
                              "DIR/RTE/dev.tsv, DIR/MNLI/dev_matched.tsv...) or one task's folder.")
    train_file: str | None = _f(None, "Training data as csv/json with the task's nyu-mll/glue columns (e.g. "
                                "sentence1, sentence2, label); needs --validation_file.")
    validation_file: str | None = _f(None, "Dev data as csv/json (for mnli: the matched dev set).")
    validation_mismatched_file: str | None = _f(None, "MNLI's mismatched dev set as csv/json (optional).")
    max_seq_length: int = _f(128, "Maximum tokens per example (pairs are truncated together).")
    pad_to_max_length: bool = _f(False, "Pad every batch to max_seq_length (default: pad to the longest in the batch).")
    max_train_samples: int | None = _f(None, "Train on a random subset of this many examples (seeded by --seed).")
    max_eval_samples: int | None = _f(None, "Evaluate on a random subset of this many examples per dev set.")
    epochs: str = _f("L+2", "Training epochs: a number, or an expression in L, the number of encoder blocks "
                     "found in the model (the gradual recipe: 'L+2', one epoch per unfreezing stage).")
    pooling: str | None = _f(None, "What the classifier reads: 'cls' (the pooler on the first token, BERT's own "
                             "head) or 'mean' (the pooler on the mean of the token states, the way sentence-transformers "
                             "encoders such as all-MiniLM-L6-v2 were trained; BERT-family models). Default: the model's "
                             "own.", choices=["cls", "mean"])
    dropout: float | None = _f(0.1, "Hidden and attention dropout of the model; unset (None) keeps the model's config.")
    grid: bool = _f(False, "Run the grid grid_learning_rates x grid_dropouts (x grid_epochs) instead of one run; "
                    "finished runs are cached and skipped.")
    grid_learning_rates: list[float] = _f([1e-4, 2e-4, 3e-4], "Initial learning rates of the grid.")
    grid_dropouts: list[float] = _f([0.05, 0.1], "Dropouts (hidden and attention) of the grid.")
    grid_epochs: list[str] = _f([], "Epoch counts of the grid (e.g. 1 2 3 4 5 6 7 for the rescaled sweep); "
                                "empty: --epochs only.")
    grid_shard: str = _f("0/1", "K/N: N processes (one per GPU or CPU core) share one grid in one --output_dir: "
                         "each trains every N-th grid point starting at the K-th (0-based), then helps with the "
                         "points no other process trains yet; a shard that finds every point finished writes "
                         "grid_results.json.")
    grid_summary: str = _f("mean_top2", "How the grid is summarized: 'mean_top2' (the paper: mean of the two best "
                           "runs) or 'best'.", choices=list(GRID_SUMMARIES))
    mixed_precision: str = _f("auto", "auto (fp16 on a CUDA GPU, as oBERT's scripts; fp32 on CPU), no, fp16 or bf16. "
                              "--fp16/--bf16 also work.", choices=["auto", "no", "fp16", "bf16"])
    overwrite: bool = _f(False, "Start over: train again even if --output_dir holds a finished run (of this or another "
                         "recipe) or Trainer checkpoints.")
    lora_r: int | None = _f(None, "Train a masked LoRA adapter of this rank instead of the whole model (the base stays "
                            "frozen; the update keeps every zero; sparse_transfer.lora). best/ then holds the adapter.")
    lora_alpha: float | None = _f(None, "LoRA scaling numerator (update = alpha / r * B A); default 2 * lora_r.")
    lora_dropout: float = _f(0.0, "Dropout on the adapters' input (0 keeps the fast fused forward).")
    lora_target_modules: list[str] = _f([], "Modules that get an adapter (names or suffixes, as peft's "
                                        "target_modules); default: every module whose weight is masked.")
    lora_merge: bool = _f(False, "Also write the adapter merged into the base (RUN/merged/, an ordinary sparse "
                          "checkpoint with exact zeros); --push-to-hub then pushes the merged model.")

    def __post_init__(self):
        if self.task is not None:
            self.task = get_task(self.task).name
        if self.grid_summary not in GRID_SUMMARIES:
            raise ValueError(f"grid_summary must be one of {GRID_SUMMARIES}, got {self.grid_summary!r}.")
        shard, shards = self.grid_shard_index
        if shards > 1 and not self.grid:
            raise ValueError(f"--grid_shard {self.grid_shard} splits a grid's points: it needs --grid.")
        if shards > 1 and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            # The ranks of one distributed launch must train the same run in step; shards train different points.
            raise ValueError(
                f"--grid_shard {self.grid_shard} under a distributed launch (WORLD_SIZE={os.environ['WORLD_SIZE']}): "
                "each shard is its own process on its own device. Start one plain process per shard instead, e.g. "
                "CUDA_VISIBLE_DEVICES=0 python -m sparse_transfer.glue ... --grid_shard 0/2 & CUDA_VISIBLE_DEVICES=1 "
                "python -m sparse_transfer.glue ... --grid_shard 1/2."
            )
        if shards > 1 and self.overwrite:
            raise ValueError(
                "--overwrite with --grid_shard: a shard cannot tell another shard's new runs from the old ones. Start "
                "the sharded grid in an empty --output_dir (or delete the old one), or run --overwrite without shards."
            )
        if self.dropout is not None and not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}.")
        if any(not 0.0 <= d < 1.0 for d in self.grid_dropouts):
            raise ValueError(f"grid_dropouts must be in [0, 1), got {self.grid_dropouts}.")
        if any(lr <= 0 for lr in self.grid_learning_rates):
            raise ValueError(f"grid_learning_rates must be positive, got {self.grid_learning_rates}.")
        if self.max_seq_length <= 0:
            raise ValueError(f"max_seq_length must be positive, got {self.max_seq_length}.")
        if self.pooling not in (None, "cls", "mean"):
            raise ValueError(f"pooling must be 'cls' or 'mean', got {self.pooling!r}.")
        if self.pooling == "mean" and self.lora_r is not None:
            raise ValueError(
                "--pooling mean with --lora-r is not supported: the adapter would be saved for the plain base model, "
                "which reads the CLS token, and give other predictions there. Fine-tune the whole model with --pooling "
                "mean, or train LoRA with the model's own head."
            )
        if self.lora_r is not None and self.lora_r <= 0:
            raise ValueError(f"lora_r must be a positive rank, got {self.lora_r}.")
        if self.lora_r is None and (self.lora_alpha is not None or self.lora_dropout or self.lora_target_modules
                                    or self.lora_merge):
            raise ValueError("--lora-alpha, --lora-dropout, --lora-target-modules and --lora-merge need --lora-r.")
        if not 0.0 <= self.lora_dropout < 1.0:
            raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        self.epochs = str(self.epochs)
        self.grid_epochs = [str(e) for e in self.grid_epochs]
        for expression in [self.epochs, *self.grid_epochs]:
            _parse_epochs(expression)  # the syntax only: L is known once the model is loaded


    @property
    def grid_shard_index(self) -> tuple[int, int]:
        """``(K, N)`` of ``grid_shard``."""
        try:
            shard, shards = (int(v) for v in str(self.grid_shard).split("/"))
        except ValueError:
            raise ValueError(f"grid_shard must be K/N, e.g. 0/2 and 1/2 for two processes; got {self.grid_shard!r}.") from None
        if not 0 <= shard < shards:
            raise ValueError(f"grid_shard K/N needs 0 <= K < N, got {self.grid_shard!r}.")
        return shard, shards

# ------------------------------------------------------------------------------------------- epochs
_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv}


def _epochs_value(node: ast.AST, num_blocks: int) -> float:
    if isinstance(node, ast.Expression):
        return _epochs_value(node.body, num_blocks)
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return float(node.value)
    if isinstance(node, ast.Name) and node.id == "L":
        return float(num_blocks)
    if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
        return _OPS[type(node.op)](_epochs_value(node.left, num_blocks), _epochs_value(node.right, num_blocks))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        return -_epochs_value(node.operand, num_blocks)
    raise ValueError


def _parse_epochs(expression: str | int | float) -> ast.Expression:
    try:
        tree = ast.parse(str(expression).strip(), mode="eval")
        _epochs_value(tree, 1)  # rejects names other than L, calls, powers...
        return tree
    except (SyntaxError, ValueError, ZeroDivisionError):
        raise ValueError(
            f"epochs {expression!r} is not a number or an expression in L (the number of encoder blocks), "
            "such as '3' or 'L+2'."
        ) from None


def resolve_epochs(expression: str | int | float, num_blocks: int) -> float:
    """Evaluates an epoch count such as ``"3"``, ``"L+2"`` or ``"2*L"`` for a model with ``num_blocks`` blocks.

    Only numbers, ``L``, ``+ - * /`` and parentheses are allowed (no Python ``eval``).

    Raises:
        ValueError: for anything else, or a result that is not positive.
    """
    tree = _parse_epochs(expression)
    try:
        epochs = _epochs_value(tree, num_blocks)
    except ZeroDivisionError:
        epochs = math.nan
    if not epochs > 0:
        raise ValueError(f"epochs {expression!r} gives {epochs:g} for L={num_blocks}: it must be positive.")
    return epochs


# ------------------------------------------------------------------------------------------- recipes
def recipe_path(name_or_path: str) -> Path:
    """A recipe file: a path, or a name in ``recipes/glue/`` (``rte``, ``dense_transfer``...)."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    candidate = RECIPES_DIR / f"{name_or_path}.yaml"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in RECIPES_DIR.glob("*.yaml")) if RECIPES_DIR.is_dir() else []
    raise FileNotFoundError(
        f"No recipe {name_or_path!r}: not a file, and not a name in {RECIPES_DIR} (known: {', '.join(known) or 'none'})."
    )


def load_recipe(path: str | os.PathLike, known_fields: set[str]) -> dict[str, Any]:
    """Reads a recipe YAML: a mapping of :class:`GlueArguments` / ``SparseTrainingArguments`` fields."""
    return read_recipe(path, known_fields, "python -m sparse_transfer.glue")


def _push_to_hub_argv(argv: list[str]) -> list[str]:
    """``--push-to-hub REPO`` -> ``--push_to_hub --hub_model_id REPO`` (TrainingArguments' flag is a bool)."""
    out: list[str] = []
    i = 0
    bool_words = {"true", "false", "yes", "no", "t", "f", "y", "n", "1", "0"}
    while i < len(argv):
        arg = argv[i]
        name, eq, value = arg.partition("=")
        if name in ("--push_to_hub", "--push-to-hub"):
            if not eq and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
                value, eq = argv[i + 1], "="
                i += 1
            if eq and value.lower() not in bool_words:
                out += ["--push_to_hub", "true", "--hub_model_id", value]
            else:
                out.append(arg if not eq else f"--push_to_hub={value}")
        elif name in ("--hub_private_repo", "--hub-private-repo") and not eq and (
                i + 1 >= len(argv) or argv[i + 1].startswith("-")):
            out += ["--hub_private_repo", "true"]  # a bare flag, as in upstream and vision
        else:
            out.append(arg)
        i += 1
    return out


def _group_help(parser) -> None:
    """``--help`` in the order a user reads it: the recipe and the GLUE run's own flags, then what SparseTrainer adds
    (masks, unfreezing, distillation), then the ``transformers.TrainingArguments`` it inherits."""
    import argparse

    from transformers import TrainingArguments

    from ..hf import SparseTrainingArguments

    inherited = {f.name for f in dataclasses.fields(TrainingArguments)}
    sparse = {f.name for f in dataclasses.fields(SparseTrainingArguments)} - inherited
    glue = {f.name for f in dataclasses.fields(GlueArguments)}
    recipe = parser.add_argument_group("recipe")
    groups = {
        "glue": parser.add_argument_group("GLUE run (python -m sparse_transfer.glue): task, model, data, grid, LoRA"),
        "sparse": parser.add_argument_group("sparse training (SparseTrainer): masks, gradual unfreezing, distillation"),
        "inherited": parser.add_argument_group("transformers.TrainingArguments (inherited; the recipe sets the "
                                               "optimization values)"),
    }
    for action in list(parser._actions):
        if isinstance(action, argparse._HelpAction):
            continue
        if action.dest in ("num_train_epochs", "hub_model_id"):
            action.help = argparse.SUPPRESS  # refused spellings: --epochs, --push-to-hub USER/NAME
        dest = action.dest.removeprefix("no_")
        key = "glue" if dest in glue else "sparse" if dest in sparse else "inherited" if dest in inherited else None
        if key is None:
            continue
        for group in parser._action_groups:
            if action in group._group_actions:
                group._group_actions.remove(action)
        groups[key]._group_actions.append(action)
    parser._recipe_group = recipe
    # Groups are printed in creation order: ours first, the emptied default groups after (argparse skips them).
    ours = [recipe, *groups.values()]
    parser._action_groups = ours + [g for g in parser._action_groups if g not in ours]


def make_parser():
    from transformers import HfArgumentParser

    from ..hf import SparseTrainingArguments

    parser = HfArgumentParser(
        (GlueArguments, SparseTrainingArguments),
        description="Sparse transfer on a GLUE task with the gradual-unfreezing recipe of arXiv 2308.02060. A recipe "
        "(--recipe, default recipes/glue/<task>.yaml) fills every field; flags override it.",
    )
    _group_help(parser)
    # The command pushes once, the best checkpoint after its sparsity check; not the Trainer's every-save push.
    parser._option_string_actions["--push_to_hub"].help = (
        "--push-to-hub USER/NAME: upload the best checkpoint (of the best grid run with --grid) with its model card, "
        "after checking its zeros against its mask."
    )
    getattr(parser, "_recipe_group", parser).add_argument(
        "--recipe", default=None,
        help="Recipe YAML: a name in recipes/glue/ (rte, mnli, ..., dense_transfer, extended, rescaled_sweep) or a "
        "path. Default: recipes/glue/<task>.yaml. Flags override it.",
    )
    return parser


def parse_args(argv: list[str] | None = None):
    """Parses the command line into ``(GlueArguments, SparseTrainingArguments, recipe_file)``."""
    from ..hf import SparseTrainingArguments

    from .._rundir import RENAMED_FLAGS, check_flags

    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(argv, {**RENAMED_FLAGS, "--num_train_epochs": "--epochs", "--num-train-epochs": "--epochs"})
    argv = _push_to_hub_argv(argv)
    parser = make_parser()
    parser.set_defaults(**GLUE_TRAINING_DEFAULTS)
    pre, _ = parser.parse_known_args(argv)
    recipe_file = None
    name = pre.recipe or pre.task
    if name is not None:
        if pre.recipe is None:
            try:
                task_name = get_task(pre.task).name
            except ValueError:
                task_name = None
            candidate = RECIPES_DIR / f"{task_name}.yaml"
            recipe_file = candidate if task_name and candidate.is_file() else None
        else:
            recipe_file = recipe_path(pre.recipe)
    if recipe_file is not None:
        known = {f.name for f in dataclasses.fields(GlueArguments)} | {f.name for f in dataclasses.fields(SparseTrainingArguments)}
        parser.set_defaults(**load_recipe(recipe_file, known))
    namespace = parser.parse_args(argv)
    values = vars(namespace)
    values.pop("recipe", None)
    glue_names = {f.name for f in dataclasses.fields(GlueArguments)}
    glue_args = GlueArguments(**{k: v for k, v in values.items() if k in glue_names})
    if glue_args.task is None:
        raise ValueError(f"Pass --task (one of {', '.join(GLUE_TASKS)}), or a --recipe that sets it.")
    if values.get("output_dir") is None:
        values["output_dir"] = os.path.join("runs", "glue", glue_args.task)
    training_args = SparseTrainingArguments(**{k: v for k, v in values.items() if k not in glue_names})
    return glue_args, training_args, (str(recipe_file) if recipe_file is not None else None)
