"""Every field of an upstream pruning run in one dataclass: a recipe YAML fills it, command-line flags override it."""

from __future__ import annotations

import dataclasses
import os
import sys
from dataclasses import dataclass, field
from typing import Any

from .._recipes import find_recipe, read_recipe
from ..core import validate_sparsity

DISTRIBUTIONS = ("global", "uniform", "nm")
METHODS = ("gmp", "acdc", "rigl", "nm")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class UpstreamArguments:
    """Model, text, pruning schedule, distillation losses and optimizer of one upstream pruning run."""

    # ---------------------------------------------------------------- model and data
    model: str | None = _f(None, "Dense pretrained encoder: a local directory or a Hub id (e.g. bert-base-uncased).")
    text: list[str] | None = _f(None, "Plain text file(s) to train on (one or more paths).", nargs="+")
    eval_text: str | None = _f(None, "Held-out plain text file for periodic and final evaluation.")
    dataset: str | None = _f(None, "A `datasets` text dataset instead of --text (e.g. wikitext); needs the Hub or a cache.")
    dataset_config: str | None = _f(None, "Configuration of --dataset (e.g. wikitext-103-raw-v1).")
    dataset_split: str = _f("train", "Training split of --dataset.")
    dataset_eval_split: str | None = _f(None, "Evaluation split of --dataset (e.g. validation); used if no --eval-text.")
    text_column: str = _f("text", "Text column of --dataset.")
    block_size: int = _f(128, "Tokens per training block (the text is concatenated and cut into blocks of this length).")
    max_train_blocks: int | None = _f(None, "Use only the first N training blocks.")
    max_eval_blocks: int = _f(64, "Held-out blocks for the distillation loss in evaluation.")
    eval_sentences: int = _f(256, "Held-out lines for the sentence-embedding cosine similarity.")
    output_dir: str = _f("runs/upstream", "Where checkpoints, the sparse model, results.json and the resolved recipe go.")
    overwrite: bool = _f(False, "Start over even if output_dir holds checkpoints or a finished run of another recipe.")
    push_to_hub: str | None = _f(None, "--push-to-hub USER/NAME: upload the sparse model with its model card when the "
                                 "run ends (its zeros checked against its mask first).")
    hub_private_repo: bool = _f(False, "Create the --push-to-hub repository private.")
    keep_checkpoints: bool = _f(False, "Keep the resumable checkpoint-* folders (optimizer state) after a finished run.")
    seed: int = _f(0, "Seed of data order, dropout and MLM masking.")
    trust_remote_code: bool = _f(False, "Allow model code from the Hub (off: only architectures transformers ships).")

    # ---------------------------------------------------------------- pruning
    method: str | None = _f(None, "Mask method: gmp (cubic gradual magnitude pruning; the default), acdc (alternating "
                            "compressed/decompressed phases, lengths in steps), rigl (fixed sparsity from step 0, drop/grow "
                            "by gradient), nm (N:M one-shot; the default with --nm).", choices=list(METHODS))
    sparsity: float | None = _f(None, "Final sparsity (fraction of zeros) of the target weights, in [0, 1).")
    initial_sparsity: float = _f(0.0, "Sparsity imposed at the first pruning step (cubic GMP schedule).")
    prune_start_step: int = _f(0, "First pruning step (optimizer steps from 0).")
    prune_end_step: int | None = _f(None, "Last pruning step: the final sparsity is reached here (default 2/3 of max_steps).")
    prune_interval: int = _f(10, "Optimizer steps between two pruning steps.")
    distribution: str = _f("global", "global (one magnitude threshold over all targets), uniform, or nm (see --nm).",
                           choices=list(DISTRIBUTIONS))
    nm: str | None = _f(None, "N:M semi-structured pattern such as 2:4 (implies --distribution nm; imposed at prune_start_step).")
    acdc_warmup_steps: int | None = _f(None, "AC/DC: dense warm-up steps (default 10%% of max_steps).")
    acdc_phase_steps: int | None = _f(None, "AC/DC: length of each compressed and decompressed phase (default 5%% of max_steps).")
    acdc_final_steps: int | None = _f(None, "AC/DC: final compressed stretch (default 15%% of max_steps).")
    rigl_interval: int | None = _f(None, "RigL: steps between drop/grow updates (default prune_interval).")
    rigl_alpha: float = _f(0.3, "RigL: initial drop fraction (cosine-decayed).")
    rigl_end_fraction: float = _f(0.75, "RigL: updates stop at this fraction of max_steps.")
    targets: str = _f("bert", "Target preset: 'bert' = query, key, value, attention output, intermediate, output of every block.")

    # ---------------------------------------------------------------- distillation
    hidden_weight: float = _f(1.0, "Weight of the hidden-state loss (relative MSE of every block's output, mean over blocks).")
    attention_weight: float = _f(0.0, "Weight of the attention loss (KL of every block's attention probabilities; eager attention).")
    logit_weight: float = _f(1.0, "Weight of the MLM-logit KD loss (models with an MLM head only).")
    mlm_weight: float = _f(0.0, "Weight of the masked-LM loss on the text (models with an MLM head only).")
    temperature: float = _f(2.0, "Softmax temperature of the logit KD loss (scaled by T^2).")
    mlm_probability: float = _f(0.15, "Fraction of tokens masked when mlm_weight > 0.")

    # ---------------------------------------------------------------- optimization
    max_steps: int = _f(1000, "Optimizer steps in total (pruning, then the fixed-mask stretch).")
    batch_size: int = _f(16, "Blocks per optimizer step (per device).")
    gradient_accumulation_steps: int = _f(1, "Micro-batches per optimizer step.")
    learning_rate: float = _f(5e-5, "Peak learning rate (AdamW).")
    lr_scheduler_type: str = _f("linear", "transformers scheduler name (linear, constant, cosine, ...).")
    warmup_steps: int = _f(0, "Linear warm-up steps.")
    weight_decay: float = _f(0.0, "AdamW weight decay (never revives pruned weights: their gradient and moments are masked).")
    student_dropout: float = _f(0.0, "Dropout of the student while distilling (the saved config keeps the model's own). 0 by "
                                "default: dropout noise would dominate the small distillation errors.")
    keep_dropout: bool = _f(False, "Distill with the model's own dropout instead of student_dropout.")
    train_embeddings: bool = _f(False, "Also train the embeddings (not pruned; frozen by default so the teacher's input stays).")
    eval_steps: int = _f(100, "Evaluate the held-out distillation loss every N steps (0: only at the end).")
    save_steps: int = _f(100, "Write a resumable checkpoint every N steps.")
    logging_steps: int = _f(10, "Log the training losses every N steps.")
    bf16: bool = _f(False, "bf16 autocast (GPU or recent CPU).")
    disable_tqdm: bool = _f(False, "No progress bars.")

    def __post_init__(self):
        if isinstance(self.text, str):
            self.text = [self.text]
        if self.nm is not None or self.distribution == "nm":
            if self.method not in (None, "nm"):
                raise ValueError(
                    f"--nm / --distribution nm cut an N:M pattern once (method nm), but --method {self.method} was given: "
                    "drop one of them."
                )
            self.distribution, self.method = "nm", "nm"
        elif self.method is None:
            self.method = "gmp"

    @property
    def nm_pair(self) -> tuple[int, int] | None:
        if self.nm is None:
            return None
        try:
            n, m = (int(x) for x in str(self.nm).split(":"))
        except ValueError:
            raise ValueError(f"--nm must look like N:M (for example 2:4), got {self.nm!r}.") from None
        if not 0 < n < m:
            raise ValueError(f"--nm needs 0 < N < M, got {self.nm!r} (for 2:4 sparsity pass 2:4).")
        return n, m

    @property
    def final_sparsity(self) -> float:
        pair = self.nm_pair
        return 1.0 - pair[0] / pair[1] if pair else float(self.sparsity)

    @property
    def acdc_steps(self) -> tuple[int, int, int]:
        """AC/DC (warm-up, phase, final) lengths in optimizer steps: 10%, 5% and 15% of max_steps unless given (the
        proportions of the 100-epoch ImageNet schedule)."""
        def pick(value, share):
            return value if value is not None else max(1, round(share * self.max_steps))

        return pick(self.acdc_warmup_steps, 0.10), pick(self.acdc_phase_steps, 0.05), pick(self.acdc_final_steps, 0.15)

    @property
    def end_step(self) -> int:
        return self.prune_end_step if self.prune_end_step is not None else (2 * self.max_steps) // 3

    def validate(self) -> None:
        """Checks every field; raises ``ValueError`` naming the problem and the fix."""
        if not self.model:
            raise ValueError("No model given: pass --model PATH_OR_HUB_ID (a dense pretrained encoder).")
        if os.path.isdir(self.model) and os.path.realpath(self.model) == os.path.realpath(self.output_dir):
            raise ValueError(
                f"--output-dir {self.output_dir} is the --model folder: the pruned model would be written over the "
                "dense one it is distilled from. Pass another --output-dir (a subfolder of the model's is fine)."
            )
        if not self.text and not self.dataset:
            raise ValueError("No training text given: pass --text FILE [FILE ...] or --dataset NAME [--dataset-config CFG].")
        if self.text and self.dataset:
            raise ValueError("Pass either --text or --dataset, not both.")
        for path in (self.text or []) + ([self.eval_text] if self.eval_text else []):
            if not os.path.isfile(path):
                raise FileNotFoundError(f"Text file {path} does not exist (check --text / --eval-text).")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}.")
        if self.method == "nm" and self.nm is None:
            raise ValueError("--method nm needs --nm N:M (for example --nm 2:4).")
        if self.distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {DISTRIBUTIONS}, got {self.distribution!r}.")
        pair = self.nm_pair
        if self.distribution == "nm" and pair is None:
            raise ValueError("--distribution nm needs --nm N:M (for example --nm 2:4).")
        if pair is not None:
            if self.sparsity is not None and abs(self.sparsity - (1 - pair[0] / pair[1])) > 1e-9:
                raise ValueError(
                    f"--nm {self.nm} means sparsity {1 - pair[0] / pair[1]}, but --sparsity {self.sparsity} was given: "
                    "drop --sparsity."
                )
        elif self.sparsity is None:
            raise ValueError("No target sparsity: pass --sparsity (fraction of zeros, e.g. 0.9) or --nm N:M.")
        else:
            validate_sparsity(self.sparsity, "sparsity")
        validate_sparsity(self.initial_sparsity, "initial_sparsity")
        if pair is None and self.initial_sparsity > self.sparsity:
            raise ValueError(f"initial_sparsity ({self.initial_sparsity}) is above the final sparsity ({self.sparsity}).")
        for name in ("max_steps", "batch_size", "gradient_accumulation_steps", "prune_interval", "block_size", "max_eval_blocks"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}.")
        if self.block_size < 8:
            raise ValueError(f"block_size must be at least 8 tokens, got {self.block_size}.")
        if not 0 <= self.prune_start_step <= self.end_step:
            raise ValueError(
                f"Pruning needs 0 <= prune_start_step <= prune_end_step, got {self.prune_start_step} and {self.end_step}."
            )
        if self.method == "gmp" and self.end_step >= self.max_steps:
            raise ValueError(
                f"prune_end_step ({self.end_step}) must be before max_steps ({self.max_steps}): the mask is then held for a "
                "final stretch of distillation. Lower prune_end_step or raise max_steps."
            )
        if self.method in ("acdc", "rigl"):
            unused = [flag for flag, value, default in (("--initial-sparsity", self.initial_sparsity, 0.0),
                                                        ("--prune-start-step", self.prune_start_step, 0),
                                                        ("--prune-end-step", self.prune_end_step, None)) if value != default]
            if unused:
                raise ValueError(
                    f"{', '.join(unused)} belong(s) to the GMP schedule and have no effect with --method {self.method}: "
                    "drop them (AC/DC's lengths are --acdc-*-steps, RigL's --rigl-interval and --rigl-end-fraction)."
                )
        if self.method == "acdc":
            warmup, phase, final = self.acdc_steps
            if warmup < 0 or phase <= 0 or final <= 0 or warmup + 2 * phase + final > self.max_steps:
                raise ValueError(
                    f"AC/DC needs warm-up ({warmup}) + one compressed and one decompressed phase (2 x {phase}) + a final "
                    f"stretch ({final}) within max_steps ({self.max_steps}), every length positive: adjust "
                    "--acdc-warmup-steps, --acdc-phase-steps, --acdc-final-steps or --max-steps."
                )
        if self.method == "rigl":
            if (self.rigl_interval if self.rigl_interval is not None else self.prune_interval) <= 0:
                raise ValueError(f"rigl_interval must be positive, got {self.rigl_interval}.")
            if not 0 <= self.rigl_alpha <= 1 or not 0 < self.rigl_end_fraction <= 1:
                raise ValueError(
                    f"RigL needs rigl_alpha in [0, 1] and rigl_end_fraction in (0, 1], got {self.rigl_alpha} and "
                    f"{self.rigl_end_fraction}."
                )
        weights = {k: getattr(self, k) for k in ("hidden_weight", "attention_weight", "logit_weight", "mlm_weight")}
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"Loss weights must be >= 0, got {weights}.")
        if not any(w > 0 for w in weights.values()):
            raise ValueError("Every loss weight is 0: set hidden_weight, attention_weight, logit_weight or mlm_weight.")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be positive, got {self.temperature}.")
        if not 0 < self.mlm_probability < 1:
            raise ValueError(f"mlm_probability must be in (0, 1), got {self.mlm_probability}.")
        if not 0 <= self.student_dropout < 1:
            raise ValueError(f"student_dropout must be in [0, 1), got {self.student_dropout}.")
        for name in ("eval_steps", "save_steps", "logging_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Fields that do not change the trained weights: a resumed run may change them.
RESUME_FREE_FIELDS = frozenset(
    {"output_dir", "overwrite", "push_to_hub", "hub_private_repo", "keep_checkpoints", "eval_steps", "save_steps",
     "logging_steps",
     "disable_tqdm", "eval_text", "dataset_eval_split", "max_eval_blocks", "eval_sentences"}
)


def load_recipe(path: str) -> dict[str, Any]:
    """Reads a recipe YAML (keys are :class:`UpstreamArguments` fields; ``description`` is ignored)."""
    return read_recipe(find_recipe(path, "upstream"), (f.name for f in dataclasses.fields(UpstreamArguments)), "python -m sparse_transfer.upstream")


def parse_args(argv: list[str] | None = None) -> UpstreamArguments:
    """``--recipe file.yaml`` fills the defaults, every other flag overrides it."""
    from transformers import HfArgumentParser

    from .._rundir import check_flags

    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(argv)
    parser = HfArgumentParser(
        UpstreamArguments, description="Turn a dense pretrained encoder into a sparse pretrained one (GMP + distillation)."
    )
    parser.add_argument("--recipe", default=None, help="Recipe YAML (e.g. recipes/upstream/minilm_90.yaml).")
    pre, _ = parser.parse_known_args(argv)
    if pre.recipe:
        parser.set_defaults(**load_recipe(pre.recipe))
    namespace = parser.parse_args(argv)
    values = {k: v for k, v in vars(namespace).items() if k != "recipe"}
    return UpstreamArguments(**values)
