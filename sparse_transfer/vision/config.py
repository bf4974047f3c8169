"""Every field of a vision run in one dataclass: recipe YAML files fill it, command-line flags override them."""

from __future__ import annotations

import dataclasses
import json
import sys
from dataclasses import dataclass, field
from typing import Any

from .._recipes import find_recipe, read_recipe

METHODS = ("dense", "constant", "gmp", "acdc", "rigl")


def _f(default, help: str, **kw):
    return field(default=default, metadata={"help": help, **kw})


@dataclass
class VisionArguments:
    """Model, data, method and recipe of one sparse (or dense) training run of a timm model."""

    # ---------------------------------------------------------------- model and data
    model: str = _f("resnet50", "Any timm model name (e.g. resnet50, vit_small_patch16_224).")
    pretrained: bool = _f(False, "Start from timm's pretrained weights (needs the Hugging Face Hub or a local cache).")
    init_checkpoint: str | None = _f(None, "Start from these weights: a .safetensors file or a directory written by this tool.")
    model_kwargs: str = _f("{}", "JSON dict of extra timm.create_model keyword arguments, e.g. '{\"drop_path_rate\": 0.1}'.")
    data: str = _f("", "ImageFolder-style directory (train/ and val/ inside), a .zip of one, a saved `datasets` "
                   "directory, or a Hugging Face dataset name (e.g. imagenet-1k).")
    train_split: str = _f("train", "Name of the training split (sub-folder or dataset split).")
    eval_split: str | None = _f(None, "Name of the evaluation split; default: the first of val, validation, test.")
    image_column: str = _f("image", "Image column of a `datasets` dataset.")
    label_column: str = _f("label", "Label column of a `datasets` dataset.")
    max_train_samples: int | None = _f(None, "Use a seeded random subset of this many training images.")
    max_eval_samples: int | None = _f(None, "Use a seeded random subset of this many evaluation images.")
    cache_images: bool = _f(False, "Decode every image once and keep it in memory (small data sets such as CIFAR).")
    num_workers: int = _f(4, "DataLoader worker processes per device.")
    output_dir: str = _f("runs/vision", "Where checkpoints, results.json and the resolved recipe go.")
    seed: int = _f(0, "Seed of initialization, data order and augmentation.")
    data_seed: int = _f(0, "Seed of the training/eval subsets.")

    # ---------------------------------------------------------------- method
    method: str = _f("dense", f"One of {METHODS}.")
    sparsity: float = _f(0.0, "Target sparsity (fraction of zeros) of the pruned weights.")
    distribution: str = _f("global", "Sparsity distribution: global, uniform or erk.")
    targets: str = _f("cnn", "Prunable weights: 'cnn' (every conv/linear), 'cnn-fld' (first and last layer dense).")
    acdc_warmup_epochs: float = _f(10, "AC/DC dense warm-up epochs.")
    acdc_phase_epochs: float = _f(5, "AC/DC length of each compressed and decompressed phase, epochs.")
    acdc_final_epochs: float = _f(15, "AC/DC final compressed fine-tune, epochs.")
    acdc_decompressed_sparsity: float = _f(0.0, "AC/DC minimum sparsity during decompressed phases.")
    acdc_reset_momentum: bool = _f(True, "AC/DC: zero SGD momentum buffers after each decompression.")
    gmp_start_epoch: float = _f(20, "GMP: first pruning epoch.")
    gmp_end_epoch: float = _f(79, "GMP: last pruning epoch (final sparsity reached).")
    gmp_interval_steps: int = _f(100, "GMP: optimizer steps between pruning steps (dt).")
    gmp_initial_sparsity: float = _f(0.0, "GMP: sparsity at the first pruning step.")
    rigl_interval_steps: int = _f(100, "RigL: optimizer steps between drop/grow updates (dT).")
    rigl_alpha: float = _f(0.3, "RigL: initial drop fraction.")
    rigl_end_fraction: float = _f(0.75, "RigL: updates stop at this fraction of training.")
    rigl_init: str = _f("random", "RigL initial mask positions: random or magnitude.")

    # ---------------------------------------------------------------- recipe
    epochs: int = _f(100, "Training epochs (1x = 100 on ImageNet).")
    batch_size: int = _f(512, "Batch size per device.")
    lr: float = _f(1.7, "Peak learning rate (FFCV: 1.7 at global batch 4096; scale linearly).")
    lr_warmup_epochs: float = _f(2, "Linear warm-up from 0 to the peak, epochs (per iteration).")
    lr_end: float = _f(0.0, "Learning rate at the end of the linear decay.")
    momentum: float = _f(0.9, "SGD momentum.")
    nesterov: bool = _f(False, "Nesterov momentum.")
    weight_decay: float = _f(1e-4, "Weight decay; never applied to norm layers and biases.")
    label_smoothing: float = _f(0.1, "Label smoothing of the cross-entropy.")
    train_size_start: int = _f(160, "Progressive resizing: training resolution at the start.")
    train_size_end: int = _f(192, "Progressive resizing: training resolution at the end.")
    resize_start_epoch: float = _f(74, "Progressive resizing: epoch where the resolution starts to grow.")
    resize_end_epoch: float = _f(86, "Progressive resizing: epoch where it reaches train_size_end.")
    resize_multiple: int = _f(32, "Progressive resizing: resolutions are rounded to multiples of this.")
    eval_size: int = _f(224, "Evaluation resolution (center crop).")
    eval_resize: int = _f(256, "Evaluation: resize the short side to this before the center crop.")
    crop_scale_min: float = _f(0.08, "RandomResizedCrop minimum area fraction.")
    hflip: float = _f(0.5, "Horizontal flip probability.")
    mixed_precision: str = _f("auto", "auto (bf16 on a GPU that has it, else fp16; none on CPU), no, fp16 or bf16.")
    channels_last: str = _f("auto", "auto (on GPU), yes or no.")
    max_steps_per_epoch: int | None = _f(None, "Cap the optimizer steps per epoch (smoke tests, quick studies).")
    lora_r: int | None = _f(None, "Fine-tune a masked LoRA adapter of this rank instead of the whole model (needs "
                            "--method constant: the base stays frozen, the update keeps every zero; sparse_transfer.lora). "
                            "best/ and last/ then hold the adapter.")
    lora_alpha: float | None = _f(None, "LoRA scaling numerator (update = alpha / r * B A); default 2 * lora_r.")
    lora_dropout: float = _f(0.0, "Dropout on the adapters' input (0 keeps the fast fused forward).")
    lora_merge: bool = _f(False, "Also write the best adapter merged into the base (OUTPUT/merged/, a timm checkpoint "
                          "with exact zeros); --push-to-hub then pushes it.")
    eval_every: int = _f(1, "Evaluate every this many epochs (and always at the end).")
    overwrite: bool = _f(False, "Start over in output_dir (by default a stopped run of the same recipe resumes from "
                         "output_dir/state, and a run of another recipe there is refused).")
    stop_after_epoch: int | None = _f(None, "Stop (resumably) after this epoch, e.g. to split a long run over sessions.")
    progress: bool = _f(True, "Show progress bars.")
    push_to_hub: str | None = _f(None, "--push-to-hub USER/NAME: upload the best checkpoint with its model card when "
                                 "the run ends (its zeros checked against its mask first).")
    hub_private_repo: bool = _f(False, "Create the --push-to-hub repository private.")

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"Unknown method {self.method!r}; use one of {METHODS}.")
        if not 0.0 <= self.sparsity < 1.0:
            raise ValueError(f"sparsity must be in [0, 1) (the fraction of zeros), got {self.sparsity}. For 90% pass 0.9.")
        if self.method in ("gmp", "acdc", "rigl") and self.sparsity == 0.0:
            raise ValueError(f"method {self.method!r} needs --sparsity > 0 (e.g. --sparsity 0.9).")
        if self.method == "dense" and self.sparsity != 0.0:
            raise ValueError("method 'dense' trains without masks; pass --method gmp|acdc|rigl|constant to prune.")
        if self.epochs <= 0 or self.batch_size <= 0:
            raise ValueError(f"epochs and batch_size must be positive, got {self.epochs} and {self.batch_size}.")
        if self.lr_warmup_epochs > self.epochs:
            raise ValueError(f"lr_warmup_epochs ({self.lr_warmup_epochs}) is longer than training ({self.epochs} epochs).")
        if self.method == "gmp" and not 0 <= self.gmp_start_epoch <= self.gmp_end_epoch <= self.epochs:
            raise ValueError(
                f"GMP schedule (epochs {self.gmp_start_epoch} to {self.gmp_end_epoch}) must lie within training "
                f"(0 to {self.epochs} epochs): shorten it or train longer."
            )
        if self.method == "acdc" and self.acdc_warmup_epochs + 2 * self.acdc_phase_epochs + self.acdc_final_epochs > self.epochs:
            raise ValueError(
                f"AC/DC schedule is longer than training: warm-up {self.acdc_warmup_epochs} + one cycle "
                f"{2 * self.acdc_phase_epochs} + final {self.acdc_final_epochs} epochs > epochs={self.epochs}."
            )
        if self.resize_end_epoch < self.resize_start_epoch:
            raise ValueError("resize_end_epoch must not be before resize_start_epoch.")
        if self.mixed_precision not in ("auto", "no", "fp16", "bf16"):
            raise ValueError(f"mixed_precision must be auto, no, fp16 or bf16, got {self.mixed_precision!r}.")
        if self.channels_last not in ("auto", "yes", "no"):
            raise ValueError(f"channels_last must be auto, yes or no, got {self.channels_last!r}.")
        try:
            kwargs = json.loads(self.model_kwargs)
        except json.JSONDecodeError as e:
            raise ValueError(f"model_kwargs must be a JSON object, got {self.model_kwargs!r}: {e}") from None
        if not isinstance(kwargs, dict):
            raise ValueError(f"model_kwargs must be a JSON object, got {self.model_kwargs!r}.")
        if self.lora_r is not None:
            if self.lora_r <= 0:
                raise ValueError(f"lora_r must be a positive rank, got {self.lora_r}.")
            if self.method != "constant" or self.sparsity:
                raise ValueError(
                    "--lora_r trains an adapter on a sparse checkpoint's fixed mask: use --method constant with "
                    "--init_checkpoint (no --sparsity). A pruning method would change the mask under frozen weights."
                )
            if not 0.0 <= self.lora_dropout < 1.0:
                raise ValueError(f"lora_dropout must be in [0, 1), got {self.lora_dropout}.")
        elif self.lora_alpha is not None or self.lora_dropout or self.lora_merge:
            raise ValueError("--lora_alpha, --lora_dropout and --lora_merge need --lora_r.")
        if self.push_to_hub is not None and "/" not in self.push_to_hub:
            raise ValueError(f"--push-to-hub needs the repository USER/NAME (e.g. user/resnet50-acdc-95), got "
                             f"{self.push_to_hub!r}.")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def load_recipe(path: str) -> dict[str, Any]:
    """Reads a recipe YAML (keys are :class:`VisionArguments` fields) and checks its keys."""
    return read_recipe(find_recipe(path, "imagenet"), (f.name for f in dataclasses.fields(VisionArguments)), "python -m sparse_transfer.vision")


def parse_args(argv: list[str] | None = None) -> VisionArguments:
    """``--recipe file.yaml`` fills the defaults, every other flag overrides it."""
    from transformers import HfArgumentParser

    from .._rundir import check_flags

    argv = list(sys.argv[1:] if argv is None else argv)
    check_flags(argv)
    parser = HfArgumentParser(VisionArguments, description="Sparse (or dense) training of a timm model.")
    parser.add_argument("--recipe", default=None, help="Recipe YAML (e.g. recipes/imagenet/resnet50_acdc_95_uniform_fld_1x.yaml).")
    pre, _ = parser.parse_known_args(argv)
    if pre.recipe:
        recipe = load_recipe(pre.recipe)
        parser.set_defaults(**recipe)
    namespace = parser.parse_args(argv)
    values = {k: v for k, v in vars(namespace).items() if k != "recipe"}
    return VisionArguments(**values)
