"""Writes the ResNet-50 ImageNet recipes of this folder from the values of RECIPES.md section 2.

Run ``python recipes/imagenet/generate.py`` after changing a value here; the YAML files are the source that
``python -m sparse_transfer.vision --recipe ...`` reads, this script only keeps them consistent.

Lengths: 1x = 100 epochs [chosen]; 2.5x, 5x, 10x multiply it. What scales with the length and what does not:
- LR warm-up stays 2 epochs (FFCV uses the same ``lr_peak_epoch`` at every length) [found];
- progressive resizing keeps its ~74% -> ~86% window of the epochs [found, FFCV configs at several lengths];
- AC/DC keeps 10 warm-up, 5-epoch phases and 15 final epochs and adds cycles [found, ACDC 2x config];
- GMP keeps its 20% -> 79% window of the epochs [found at 100 epochs, scaled: chosen];
- RigL stops updating at 75% of training at every length (steps and T_end scale together) [found].
"""

from __future__ import annotations

import os

import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
LENGTHS = {"1x": 1.0, "2.5x": 2.5, "5x": 5.0, "10x": 10.0}

FFCV = dict(
    model="resnet50", batch_size=512, lr=1.7, lr_warmup_epochs=2, lr_end=0.0, momentum=0.9, nesterov=False,
    weight_decay=1e-4, label_smoothing=0.1, train_size_start=160, train_size_end=192, resize_multiple=32,
    eval_size=224, eval_resize=256, crop_scale_min=0.08, hflip=0.5, mixed_precision="auto", channels_last="auto",
)
FFCV_NOTE = (
    "FFCV ResNet-50 recipe [found]: SGD momentum 0.9, batch 512 per device x 8 = 4096, peak LR 1.7, linear warm-up "
    "2 epochs then linear decay to 0 per iteration, weight decay 1e-4 not on norm layers and biases, label smoothing "
    "0.1, progressive resizing 160 -> 192 px over ~74%-86% of the epochs, eval 224 from 256, AMP and channels_last "
    "on GPU. 1x = 100 epochs [chosen]; resizing window scaled with the length [found pattern]."
)


def _base(epochs: int) -> dict:
    return dict(FFCV, epochs=epochs, resize_start_epoch=round(0.74 * epochs, 1), resize_end_epoch=round(0.86 * epochs, 1))


def recipes() -> dict[str, dict]:
    out: dict[str, dict] = {}
    for length, factor in LENGTHS.items():
        epochs = int(100 * factor)
        out[f"resnet50_dense_{length}"] = dict(
            _base(epochs), method="dense", sparsity=0.0,
            description=f"Dense ResNet-50 baseline, {length} ({epochs} epochs). {FFCV_NOTE} Dense runs at the "
                        "longer lengths are [chosen] so that every sparse length has its dense reference.",
        )
        for sparsity in (0.9, 0.95, 0.98):
            for dist, targets, label in (("uniform", "cnn-fld", "uniform_fld"), ("global", "cnn", "global")):
                pct = int(round(sparsity * 100))
                what = ("uniform per layer, first conv and last linear dense (FLD)" if dist == "uniform"
                        else "one global magnitude threshold over every conv and linear")
                out[f"resnet50_acdc_{pct}_{label}_{length}"] = dict(
                    _base(epochs), method="acdc", sparsity=sparsity, distribution=dist, targets=targets,
                    acdc_warmup_epochs=10, acdc_phase_epochs=5, acdc_final_epochs=15,
                    acdc_decompressed_sparsity=0.0, acdc_reset_momentum=True,
                    description=(
                        f"AC/DC++ ResNet-50 at {pct}% sparsity, {what}, {length} ({epochs} epochs). "
                        "AC/DC [found]: dense warm-up 10 epochs, alternating 5-epoch compressed/decompressed phases, "
                        "final compressed fine-tune 15 epochs; longer runs keep these lengths and add cycles [found, "
                        "2x config]; mask recomputed by magnitude at each compression; pruned weights restart at 0 "
                        "and SGD momentum is zeroed at each decompression [found]; no minimum sparsity during "
                        f"decompression [found default]. {FFCV_NOTE}"
                    ),
                )
    for length in ("1x", "5x"):
        epochs = int(100 * LENGTHS[length])
        for sparsity in (0.9, 0.95):
            pct = int(round(sparsity * 100))
            out[f"resnet50_gmp_{pct}_{length}"] = dict(
                _base(epochs), method="gmp", sparsity=sparsity, distribution="global", targets="cnn",
                gmp_start_epoch=round(0.20 * epochs, 1), gmp_end_epoch=round(0.79 * epochs, 1),
                gmp_interval_steps=100, gmp_initial_sparsity=0.0,
                description=(
                    f"GMP ResNet-50 at {pct}% sparsity, {length} ({epochs} epochs). Cubic schedule from 0 to the "
                    "target, pruning by magnitude every dt = 100 steps, then fine-tuning at a fixed mask [found]; "
                    "window epochs 20-79 of 100 [found, STR config], scaled to 20%-79% of longer runs [chosen]; "
                    "global magnitude over every conv and linear [chosen]; GMP at 5x [chosen, a length the paper "
                    f"compares at]. {FFCV_NOTE}"
                ),
            )
            out[f"resnet50_rigl_{pct}_erk_{length}"] = dict(
                _base(epochs), method="rigl", sparsity=sparsity, distribution="erk", targets="cnn",
                rigl_interval_steps=100, rigl_alpha=0.3, rigl_end_fraction=0.75, rigl_init="random",
                description=(
                    f"RigL ResNet-50 at {pct}% sparsity, ERK distribution, {length} ({epochs} epochs). Masks at "
                    "the target from the start, random positions [found]; every dT = 100 steps drop the fraction "
                    "(0.3/2)(1 + cos(pi t / T_end)) of active weights with the smallest |w|, grow as many with the "
                    "largest dense |gradient|, grown weights start at 0; T_end = 75% of training at every length "
                    "[found]. ERK over every conv and linear (no FLD) [chosen]. "
                    f"{FFCV_NOTE}"
                ),
            )
    return out


def main() -> None:
    for name, recipe in recipes().items():
        description = recipe.pop("description")
        text = yaml.safe_dump({"description": description}, width=110, sort_keys=False)
        text += yaml.safe_dump(recipe, sort_keys=False)
        path = os.path.join(HERE, f"{name}.yaml")
        with open(f"{path}.tmp", "w") as f:
            f.write(text)
        os.replace(f"{path}.tmp", path)
    print(f"wrote {len(recipes())} recipes to {HERE}")


if __name__ == "__main__":
    main()
