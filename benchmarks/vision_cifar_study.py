"""The paper's vision study in miniature: dense vs AC/DC vs GMP vs RigL at 90% and 95%, at 1x and 2x length,
on CIFAR-10 (JPEG copy) with a small timm ResNet at 32 px (or the images resized to ``--size``), on CPU.

    nice -n 10 .venv/bin/python benchmarks/vision_cifar_study.py                # runs what is missing, then reports
    .venv/bin/python benchmarks/vision_cifar_study.py --report_only            # table, plot and summary only
    nice -n 10 .venv/bin/python benchmarks/vision_cifar_study.py --size 64      # the same study at 64 px

Every finished run is cached as ``benchmarks/results/vision_cifar/<run>.json`` (``vision_cifar_<size>px/`` for
another ``--size``) and skipped on a rerun; an interrupted run resumes from its last finished epoch
(``runs/vision_cifar/<run>/state``, or ``runs/vision_cifar_<size>px/...``: the training loop's own resume). The report goes to
``benchmarks/results/vision_cifar_study.md`` and ``vision_cifar_study.png`` (``vision_cifar_<size>px_study.*``).

Why ``--size``: an ImageNet ResNet reduces its input 32x, so at 32 px its last stage works on 1x1 maps where
the 3x3 taps off the centre only ever see zero padding and never get a gradient. The report measures that
fraction of dead prunable weights (:func:`dead_weight_fraction`); at 64 px every tap of the small ResNet sees
data.

Every run uses the same data subset, epochs, augmentation, optimizer and LR schedule; only the method differs.
The schedules are the ImageNet ones expressed as fractions of a 100-epoch run (RECIPES.md section 2), with
1x = ``--epochs`` (8) epochs and 2x = twice that:

- AC/DC: warm-up 10%, 5% phases, final 15% of the 1x length; the 2x run keeps these lengths and adds cycles
  (as the reference 2x config does);
- GMP: cubic from 20% to 79% of training, pruning every ~1/3 epoch (dt = 100 steps at 312 steps/epoch);
- RigL: ERK, drop/grow every ~1/3 epoch, alpha 0.3, updates stop at 75% of training.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sparse_transfer.vision import VisionArguments, train  # noqa: E402

RESULTS = os.path.join(REPO, "benchmarks", "results")
CACHE = os.path.join(RESULTS, "vision_cifar")  # set from --results_dir and --size in main()
# Recipe fields that do not change a run's result. ``data`` is where the zip lies (a GPU machine gets a copy
# elsewhere); the subset is drawn by seed from the zip's contents, not from its path.
_RUNTIME = ("output_dir", "progress", "num_workers", "data")
METHODS = ("dense", "acdc", "gmp", "rigl")
SPARSITIES = (0.9, 0.95)
LENGTHS = (1, 2)


def run_names() -> list[tuple[str, str, float, int]]:
    """``(name, method, sparsity, length)``; every 1x run first, so that a partial study is still a comparison."""
    out = []
    for length in LENGTHS:
        out.append((f"dense_{length}x", "dense", 0.0, length))
        for sparsity in SPARSITIES:
            for method in METHODS[1:]:
                out.append((f"{method}_{int(sparsity * 100)}_{length}x", method, sparsity, length))
    # Extra, after the main grid: AC/DC with phases 2.5x longer. Scaled by epochs, the ImageNet phases (5 of 100
    # epochs = 1560 steps) become 12 steps here, too short for regrown weights to leave zero before the next
    # compression; this variant keeps fewer cycles (3 at 1x) of 31 steps each.
    for length in LENGTHS:
        for sparsity in SPARSITIES:
            out.append((f"acdclong_{int(sparsity * 100)}_{length}x", "acdclong", sparsity, length))
    return out


def run_arguments(opts: argparse.Namespace, method: str, sparsity: float, length: int, output_dir: str) -> VisionArguments:
    base_epochs = opts.epochs
    epochs = base_epochs * length
    steps_per_epoch = opts.train_samples // opts.batch_size
    interval = max(1, round(steps_per_epoch / 3))  # 100 steps of 312 per ImageNet epoch at batch 4096
    common = dict(
        model=opts.model, model_kwargs=opts.model_kwargs, data=opts.data, max_train_samples=opts.train_samples,
        max_eval_samples=opts.eval_samples, cache_images=True, num_workers=0, output_dir=output_dir, seed=opts.seed,
        data_seed=0, epochs=epochs, batch_size=opts.batch_size, lr=opts.lr, lr_warmup_epochs=1, lr_end=0.0,
        momentum=0.9, weight_decay=opts.weight_decay, label_smoothing=0.1, train_size_start=opts.size, train_size_end=opts.size,
        resize_start_epoch=0, resize_end_epoch=0, resize_multiple=1, eval_size=opts.size, eval_resize=opts.size,
        crop_scale_min=opts.crop_scale_min, hflip=0.5, eval_every=opts.eval_every, progress=opts.progress,
        mixed_precision="no", channels_last="no",
    )
    if method == "dense":
        return VisionArguments(**common, method="dense")
    sparse = dict(common, method=method, sparsity=sparsity, targets="cnn")
    if method == "acdc":
        return VisionArguments(**sparse, distribution="global", acdc_warmup_epochs=0.10 * base_epochs,
                               acdc_phase_epochs=0.05 * base_epochs, acdc_final_epochs=0.15 * base_epochs)
    if method == "acdclong":
        return VisionArguments(**dict(sparse, method="acdc"), distribution="global", acdc_warmup_epochs=0.125 * base_epochs,
                               acdc_phase_epochs=0.125 * base_epochs, acdc_final_epochs=0.25 * base_epochs)
    if method == "gmp":
        return VisionArguments(**sparse, distribution="global", gmp_start_epoch=0.20 * epochs, gmp_end_epoch=0.79 * epochs,
                               gmp_interval_steps=interval)
    return VisionArguments(**sparse, distribution="erk", rigl_interval_steps=interval, rigl_alpha=0.3, rigl_end_fraction=0.75)


def summarize(name: str, method: str, sparsity: float, length: int, results: dict[str, Any], seconds: float) -> dict[str, Any]:
    history = results["history"]
    ious = [h["mask_iou_epoch"] for h in history if "mask_iou_epoch" in h]
    decompressed = [h["decompressed_pruned_still_zero"] for h in history if "decompressed_pruned_still_zero" in h]
    updates = [v for h in history for v in h.get("mask_update_ious", [])]
    explored = [h["mask_explored_ratio"] for h in history if "mask_explored_ratio" in h]
    return {
        "run": name, "method": method, "sparsity": sparsity, "length": f"{length}x", "epochs": results["epochs"],
        "top1": results["final_eval_top1"], "train_loss": results["final_train_loss"],
        "eval_entropy": results["final_eval_entropy"], "final_sparsity": results["final_sparsity"],
        "zero_channel_fraction": results["final_zero_channel_fraction"],
        "mean_epoch_mask_iou": sum(ious) / len(ious) if ious else None,
        "mean_update_mask_iou": sum(updates) / len(updates) if updates else None,
        "mask_explored_ratio": explored[-1] if explored else None,
        "decompressed_pruned_still_zero": sum(decompressed) / len(decompressed) if decompressed else None,
        "wall_s": seconds, "results": results,
    }


def _device() -> str:
    return torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"


def run_study(opts: argparse.Namespace) -> None:
    os.makedirs(CACHE, exist_ok=True)
    names = run_names()
    index, count = opts.shard
    for i, (name, method, sparsity, length) in enumerate(names):
        if i % count != index:
            continue
        path = os.path.join(CACHE, f"{name}.json")
        args = run_arguments(opts, method, sparsity, length, os.path.join(opts.work_dir, name))
        if os.path.isfile(path):
            with open(path) as f:
                cached = json.load(f)["recipe"]
            now = args.to_dict()
            diff = sorted(k for k in now if k not in _RUNTIME and cached.get(k) != now[k])
            if diff:
                raise SystemExit(f"{path} was run with other settings ({diff}); delete it or pass the same options.")
            print(f"[{i + 1}/{len(names)}] {name}: cached", flush=True)
            continue
        print(f"[{i + 1}/{len(names)}] {name}: training", flush=True)
        t0 = time.perf_counter()
        results = train(args)
        row = summarize(name, method, sparsity, length, results, time.perf_counter() - t0)
        row["recipe"] = args.to_dict()
        row["device"] = _device()
        with open(f"{path}.tmp", "w") as f:
            json.dump(row, f, indent=1)
        os.replace(f"{path}.tmp", path)
        print(f"    top-1 {row['top1']:.4f} train loss {row['train_loss']:.4f} entropy {row['eval_entropy']:.4f} "
              f"({row['wall_s']:.0f} s)", flush=True)


def load_rows() -> dict[str, dict[str, Any]]:
    rows = {}
    for name, *_ in run_names():
        path = os.path.join(CACHE, f"{name}.json")
        if os.path.isfile(path):
            with open(path) as f:
                row = json.load(f)
            # summaries are recomputed from the stored per-epoch history, so a new metric applies to cached runs
            rows[name] = dict(row, **summarize(name, row["method"], row["sparsity"], int(row["length"][:-1]),
                                               row["results"], row["wall_s"]))
    return rows


def _fmt(v, spec=".4f") -> str:
    return "-" if v is None else format(v, spec)


def findings(rows: dict[str, dict[str, Any]]) -> list[str]:
    """The paper's qualitative findings, each checked on the runs that exist (one seed: differences of a point
    or less are within noise)."""
    def get(name, key):
        return rows[name][key] if name in rows else None

    out = []
    for length in LENGTHS:
        for sp in (90, 95):
            for variant, label in (("acdc", "AC/DC"), ("acdclong", "AC/DC with long phases")):
                acdc, gmp, rigl = (get(f"{m}_{sp}_{length}x", "top1") for m in (variant, "gmp", "rigl"))
                if None not in (acdc, gmp, rigl):
                    best = max((label, acdc), ("GMP", gmp), ("RigL", rigl), key=lambda t: t[1])
                    held = best[0] == label
                    out.append(f"- {label} ahead at {sp}% ({length}x): {'held' if held else 'did not hold'} "
                               f"({label} {acdc:.4f}, GMP {gmp:.4f}, RigL {rigl:.4f}; best {best[0]}).")
    for length in LENGTHS:
        dense_loss, dense_ent = get(f"dense_{length}x", "train_loss"), get(f"dense_{length}x", "eval_entropy")
        if dense_loss is None:
            continue
        for sp in (90, 95):
            for m in ("acdc", "gmp", "rigl", "acdclong"):
                loss, ent = get(f"{m}_{sp}_{length}x", "train_loss"), get(f"{m}_{sp}_{length}x", "eval_entropy")
                if loss is None:
                    continue
                held = loss > dense_loss and ent > dense_ent
                out.append(f"- Sparse {m} {sp}% ({length}x) has higher train loss and eval entropy than dense: "
                           f"{'held' if held else 'did not hold'} (loss {loss:.4f} vs {dense_loss:.4f}, "
                           f"entropy {ent:.4f} vs {dense_ent:.4f}).")
    gain_dense = None
    if "dense_1x" in rows and "dense_2x" in rows:
        gain_dense = rows["dense_2x"]["top1"] - rows["dense_1x"]["top1"]
    if gain_dense is not None:
        for sp in (90, 95):
            for m in ("acdc", "gmp", "rigl", "acdclong"):
                a, b = get(f"{m}_{sp}_1x", "top1"), get(f"{m}_{sp}_2x", "top1")
                if a is None or b is None:
                    continue
                gain = b - a
                out.append(f"- 2x helps {m} {sp}% more than dense: {'held' if gain > gain_dense else 'did not hold'} "
                           f"(+{gain:.4f} vs dense +{gain_dense:.4f}).")
    for length in LENGTHS:
        for sp in (90, 95):
            for variant in ("acdc", "acdclong"):
                ms = (variant, "gmp", "rigl")
                ratio = {m: get(f"{m}_{sp}_{length}x", "mask_explored_ratio") for m in ms}
                ious = {m: get(f"{m}_{sp}_{length}x", "mean_epoch_mask_iou") for m in ms}
                if None in ratio.values():
                    continue
                held = ratio[variant] > max(ratio["gmp"], ratio["rigl"])
                iou_text = ", ".join(f"{k} {_fmt(v)}" for k, v in ious.items())
                out.append(f"- {variant} explores masks more (most distinct weights ever in the mask, relative to the "
                           f"mask size) at {sp}% ({length}x): {'held' if held else 'did not hold'} ({variant} "
                           f"{ratio[variant]:.3f}, GMP {ratio['gmp']:.3f}, RigL {ratio['rigl']:.3f}; mean "
                           f"epoch-to-epoch mask IoU {iou_text}).")
    for m in ("acdc", "gmp", "rigl", "acdclong"):
        ch = {k: get(f"{m}_{k}", "zero_channel_fraction") for k in ("90_1x", "95_1x", "90_2x", "95_2x")}
        if None in ch.values():
            continue
        grows = ch["95_1x"] >= ch["90_1x"] and ch["95_2x"] >= ch["90_2x"] and ch["90_2x"] >= ch["90_1x"] and ch["95_2x"] >= ch["95_1x"]
        verdict = "not observable (no all-zero channels)" if max(ch.values()) == 0 else ("held" if grows else "did not hold")
        out.append(f"- {m}: channel sparsity grows with sparsity and length: {verdict} "
                   f"(90/95% at 1x {ch['90_1x']:.4f}/{ch['95_1x']:.4f}, at 2x {ch['90_2x']:.4f}/{ch['95_2x']:.4f}).")
    return out


def dead_weight_fraction(model_name: str, model_kwargs: str, size: int, batch: int = 8) -> float:
    """Fraction of the prunable weights (``cnn`` targets) that get no gradient at ``size`` px input.

    Such weights can never change, so magnitude pruning removes them first at no cost, and the sparsity
    that matters is lower than the nominal one. Measured with one forward/backward of random images through a
    freshly initialized model in train mode: a weight whose gradient is exactly 0 on random data only ever sees
    zero padding (the position of a 3x3 tap, not the data, decides that).
    """
    import timm

    from sparse_transfer.core import select_targets

    torch.manual_seed(0)
    model = timm.create_model(model_name, num_classes=10, **json.loads(model_kwargs or "{}"))
    for module in model.modules():  # timm zero-initializes each block's last norm, which would hide every gradient
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.weight is not None:
            torch.nn.init.ones_(module.weight)
    model.train()
    logits = model(torch.randn(batch, 3, size, size))
    torch.nn.functional.cross_entropy(logits, torch.randint(0, 10, (batch,))).backward()
    targets = select_targets(model, "cnn")
    dead = sum(int((p.grad == 0).sum()) for p in targets.values())
    return dead / sum(p.numel() for p in targets.values())


def report(opts: argparse.Namespace) -> str:
    rows = load_rows()
    total = len(run_names())
    if rows:  # describe the runs as they were made, whatever this invocation's options
        recipe = next(iter(rows.values()))["recipe"]
        opts = argparse.Namespace(**dict(vars(opts), model=recipe["model"], model_kwargs=recipe["model_kwargs"],
                                         train_samples=recipe["max_train_samples"], eval_samples=recipe["max_eval_samples"],
                                         size=recipe["eval_size"],
                                         batch_size=recipe["batch_size"], lr=recipe["lr"], weight_decay=recipe["weight_decay"],
                                         epochs=rows[next(iter(rows))]["epochs"] // int(next(iter(rows.values()))["length"][:-1])))
    dead = dead_weight_fraction(opts.model, opts.model_kwargs, opts.size)
    size_flag = "" if opts.size == 32 else f" --size {opts.size}"
    for flag, default in (("train_samples", 4000), ("eval_samples", 2000), ("cache_name", None)):
        if getattr(opts, flag, default) != default:
            size_flag += f" --{flag} {getattr(opts, flag)}"
    devices = sorted({r.get("device", "cpu") for r in rows.values()}) or ["cpu"]
    where = ", ".join("CPU" if d == "cpu" else d for d in devices)
    lines = [
        f"# Vision study in miniature (CIFAR-10 JPEG at {opts.size} px, {where})", "",
        f"{len(rows)} of {total} runs finished. Model `{opts.model}` `{opts.model_kwargs}`, "
        f"{opts.train_samples} training images (a seeded subset when fewer than the split holds), {opts.eval_samples} test images, {opts.size} px, batch "
        f"{opts.batch_size}, SGD momentum 0.9, peak LR {opts.lr}, 1 warm-up epoch then linear decay, weight decay "
        f"{opts.weight_decay}, label smoothing 0.1; 1x = {opts.epochs} epochs. One seed: differences of about a "
        "point are within noise.", "",
        f"Command: `nice -n 10 .venv/bin/python benchmarks/vision_cifar_study.py{size_flag}` (resumes; cached runs "
        "are skipped; on a GPU machine `benchmarks/gpu_checks.sh` runs it in parallel shards). Ran on: "
        f"{where} (wall s below is per run, with other runs sharing the machine).", "",
        f"Dead prunable weights at {opts.size} px (no gradient ever: 3x3 taps that only see zero padding, measured by "
        f"`dead_weight_fraction`): {100 * dead:.1f}%.",
    ]
    if dead > 0.05:
        effective = [max(0.0, 1 - (1 - s) / (1 - dead)) for s in SPARSITIES]  # sparsity among the live weights
        lines[-1] += (
            " **Caveat:** magnitude pruning removes these first at no cost, so "
            + " / ".join(f"{int(100 * s)}%" for s in SPARSITIES) + " sparsity costs these runs only about "
            + " / ".join(f"{100 * e:.0f}%" for e in effective) + " of the weights that matter, and the AC/DC "
            "'pruned still 0' column is mostly those dead weights: read the sparse-vs-sparse gaps with care, and see "
            "the same study at 64 px (`--size 64`), where every tap sees data."
        )
    lines += [
        "",
        "Columns: top-1, train loss (last epoch) and prediction entropy on the test subset after the last epoch; "
        "zero channels = fraction of conv output channels that are entirely zero; mask IoU = mean IoU of the "
        "method's mask between consecutive epochs (AC/DC: its last compression, also while decompressed); "
        "explored = distinct weights that were ever in a mask at target sparsity / weights in the mask; pruned "
        "still 0 = fraction of the weights pruned by the last AC/DC compression that are exactly 0 at the end of "
        "a decompressed epoch (mean).", "",
        "| run | method | sparsity | length | epochs | top-1 | final train loss | eval entropy | zero channels | "
        "mask IoU | explored | pruned still 0 | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, *_ in run_names():
        if name not in rows:
            lines.append(f"| {name} | (not run yet) ||||||||||||")
            continue
        r = rows[name]
        lines.append(
            f"| {name} | {r['method']} | {r['sparsity']:.0%} | {r['length']} | {r['epochs']} | {_fmt(r['top1'])} | "
            f"{_fmt(r['train_loss'])} | {_fmt(r['eval_entropy'])} | {_fmt(r['zero_channel_fraction'])} | "
            f"{_fmt(r['mean_epoch_mask_iou'])} | {_fmt(r['mask_explored_ratio'], '.3f')} | "
            f"{_fmt(r['decompressed_pruned_still_zero'])} | {r['wall_s']:.0f} |"
        )
    lines += ["", "## The paper's findings, checked", ""] + (findings(rows) or ["- (not enough runs yet)"])
    lines += ["", f"Plot: `benchmarks/results/{os.path.basename(CACHE)}_study.png`.", ""]
    text = "\n".join(lines)
    path = f"{CACHE}_study.md"
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)
    plot(rows)
    return text


def plot(rows: dict[str, dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = [("dense", 0.0)] + [(m, s) for s in SPARSITIES for m in (*METHODS[1:], "acdclong")]
    labels = ["dense" if m == "dense" else f"{m} {int(s * 100)}%" for m, s in groups]
    fig, axes = plt.subplots(1, 3, figsize=(17, 4.6))
    width = 0.38
    for ax, key, title in zip(axes, ("top1", "train_loss", "eval_entropy"), ("eval top-1", "final train loss", "eval prediction entropy")):
        finite = []
        for j, length in enumerate(LENGTHS):
            values = []
            for m, s in groups:
                name = f"dense_{length}x" if m == "dense" else f"{m}_{int(s * 100)}_{length}x"
                values.append(rows[name][key] if name in rows and rows[name][key] is not None else float("nan"))
            xs = [i + (j - 0.5) * width for i in range(len(groups))]
            ax.bar(xs, values, width, label=f"{length}x")
            finite.extend(v for v in values if v == v)
        if finite:  # differences are a few percent: do not start the axis at 0
            lo, hi = min(finite), max(finite)
            ax.set_ylim(lo - 0.15 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))
        ax.set_xticks(range(len(groups)))
        ax.set_xticklabels(labels, rotation=45, ha="right")
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].legend()
    fig.suptitle(f"CIFAR-10 miniature of the sparse-training study ({os.path.basename(CACHE)}, one seed)")
    fig.tight_layout()
    path = f"{CACHE}_study.png"
    fig.savefig(f"{path}.tmp.png", dpi=110)
    plt.close(fig)
    os.replace(f"{path}.tmp.png", path)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=os.path.join(REPO, "..", "shared", "data", "cifar10-jpeg", "cifar10_jpeg.zip"))
    p.add_argument("--model", default="resnet10t")
    p.add_argument("--model_kwargs", default='{"channels": [32, 64, 128, 256], "stem_width": 16}',
                   help="Half-width ResNet-10-T (1.2M weights): fits the CPU budget.")
    p.add_argument("--size", type=int, default=32, help="Train and eval image size (CIFAR-10 is 32 px; larger resizes).")
    p.add_argument("--train_samples", type=int, default=4000)
    p.add_argument("--eval_samples", type=int, default=2000)
    p.add_argument("--epochs", type=int, default=8, help="Length of 1x.")
    p.add_argument("--batch_size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.2)
    p.add_argument("--weight_decay", type=float, default=5e-4)
    p.add_argument("--crop_scale_min", type=float, default=0.35)
    p.add_argument("--eval_every", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (1 is fastest on a shared 2-core box).")
    p.add_argument("--work_dir", default=None, help="Checkpoints and resume state (default runs/<cache name>, e.g. "
                   "runs/vision_cifar).")
    p.add_argument("--results_dir", default=RESULTS, help="Report goes here, cached runs under <results_dir>/vision_cifar/.")
    p.add_argument("--cache_name", default=None, help="Folder under --results_dir for the cached runs and the report's "
                   "name (default vision_cifar, or vision_cifar_<size>px at another --size).")
    p.add_argument("--report_only", action="store_true")
    p.add_argument("--shard", default="0/1", help="K/N: run only every N-th run starting at the K-th (for N parallel "
                   "processes; each writes its own cached runs). A shard does not write the report.")
    p.add_argument("--no_progress", dest="progress", action="store_false")
    opts = p.parse_args(argv)
    try:
        opts.shard = tuple(int(v) for v in opts.shard.split("/"))
        if len(opts.shard) != 2 or not 0 <= opts.shard[0] < opts.shard[1]:
            raise ValueError
    except ValueError:
        raise SystemExit(f"--shard must be K/N with 0 <= K < N, got {opts.shard!r}.") from None
    global CACHE
    CACHE = os.path.join(opts.results_dir, opts.cache_name or ("vision_cifar" if opts.size == 32 else f"vision_cifar_{opts.size}px"))
    os.makedirs(CACHE, exist_ok=True)
    opts.work_dir = opts.work_dir or os.path.join(REPO, "runs", os.path.basename(CACHE))
    torch.set_num_threads(opts.threads)
    if not opts.report_only:
        if not os.path.isfile(opts.data):
            raise SystemExit(f"No CIFAR-10 zip at {opts.data}; pass --data.")
        run_study(opts)
        if opts.shard[1] > 1:
            return
    print(report(opts))


if __name__ == "__main__":
    main()
