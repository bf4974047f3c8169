"""Training-step time of each mask method against dense training of the same timm model, side by side.

    nice -n 10 .venv/bin/python benchmarks/vision_step_time.py                          # resnet50, 224 px, batch 32
    nice -n 10 .venv/bin/python benchmarks/vision_step_time.py --size 112 --batch_size 16 --steps 40 --threads 1

Every method (dense, constant, gmp, acdc, rigl) trains its own copy of the same initial model on the same
batches, with the same SGD optimizer as ``python -m sparse_transfer.vision`` (weight decay off norms/biases).
Steps are interleaved (step i of every method, then step i + 1), so a load change on a shared machine hits
every method alike. One step = forward, backward, ``method.step`` (pruning, compression, decompression,
drop/grow with the dense gradient) and ``optimizer.step`` with the mask hooks.

Each method runs a whole schedule compressed into ``--steps`` steps: AC/DC warm-up 10%, 5% phases and 15%
final (7 compressions and decompressions), GMP pruning from 20% to 79% of the steps every ``steps/20``, RigL
updates every ``steps/20`` until 75%. That packs far more mask events per step than real training, so two
ratios are reported:

- ``ratio_compressed_schedule``: mean step time over the compressed schedule / dense (pessimistic);
- ``ratio_ordinary_steps``: median over the steps without a mask event of t_method[i] / t_dense[i] (the
  two ran back to back, which cancels most load drift on a shared machine);
- ``ratio_imagenet_1x``: that ratio plus the measured extra time of each kind of event step (median),
  weighted by how often it happens in the ImageNet 1x recipes (312 steps per epoch, 100 epochs: AC/DC 8
  compressions + 7 decompressions, GMP and RigL every 100 steps), relative to a dense step.

Results go to ``benchmarks/results/vision_step_time_<model>_<size>px_b<batch>.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import statistics
import sys
import time

import torch
from torch import nn
from tqdm.auto import tqdm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sparse_transfer import __version__  # noqa: E402
from sparse_transfer.core import SparseMasks  # noqa: E402
from sparse_transfer.methods import ACDC, GMP, Constant, RigL, acdc_boundaries, dense_masks  # noqa: E402
from sparse_transfer.vision.train import param_groups  # noqa: E402

METHODS = ("dense", "constant", "gmp", "acdc", "rigl")
# The ImageNet 1x schedule of recipes/imagenet/ (batch 4096): how often each kind of mask event happens.
IMAGENET_STEPS_PER_EPOCH = 1_281_167 // 4096
IMAGENET_EPOCHS = 100


def imagenet_event_counts() -> dict[str, dict[str, int]]:
    total = IMAGENET_STEPS_PER_EPOCH * IMAGENET_EPOCHS
    phases = [p for _, p in acdc_boundaries(IMAGENET_EPOCHS, 10, 5, 15)]
    gmp_start, gmp_end = 20 * IMAGENET_STEPS_PER_EPOCH, 79 * IMAGENET_STEPS_PER_EPOCH
    return {
        "total_steps": {"all": total},
        "acdc": {"compress": sum(p in ("compressed", "final") for p in phases), "decompress": phases.count("decompressed")},
        "gmp": {"prune": (gmp_end - gmp_start) // 100 + 1},
        "rigl": {"drop_grow": len(range(100, int(0.75 * total), 100))},
    }


def build(name: str, model: nn.Module, steps: int, sparsity: float):
    interval = max(1, steps // 20)
    if name == "dense":
        return None
    if name == "constant":
        return Constant(SparseMasks.from_magnitude(model, sparsity, "global", targets="cnn"))
    if name == "gmp":
        return GMP(dense_masks(model, "cnn"), sparsity, int(0.2 * steps), int(0.79 * steps), interval, 0.0, "global")
    if name == "acdc":
        return ACDC(dense_masks(model, "cnn"), sparsity, steps_per_epoch=1, total_epochs=steps, warmup_epochs=0.1 * steps,
                    phase_epochs=0.05 * steps, final_epochs=0.15 * steps, distribution="global")
    return RigL.from_model(model, sparsity, steps, "erk", "cnn", update_interval=interval, alpha=0.3, end_fraction=0.75)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="resnet50")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch_size", type=int, default=32)
    p.add_argument("--steps", type=int, default=40, help="Length of the compressed schedule (>= 20).")
    p.add_argument("--sparsity", type=float, default=0.9)
    p.add_argument("--num_classes", type=int, default=1000)
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice).")
    p.add_argument("--methods", default=",".join(METHODS))
    p.add_argument("--device", default="cpu", help="cpu or cuda. On cuda every method runs as the vision trainer runs "
                   "there: channels_last and bf16 autocast, steps timed between device synchronizations.")
    p.add_argument("--multiplier", default="auto", choices=["auto", "float", "uint8"],
                   help="SparseMasks.multiplier for the mask hooks (auto, as the vision trainer sets it: float copies on CUDA, uint8 views on CPU).")
    p.add_argument("--out", default=None, help="JSON path (default under benchmarks/results/).")
    opts = p.parse_args(argv)
    device = torch.device(opts.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; run on cpu or on a GPU machine.")
    if opts.steps < 20:
        raise SystemExit("--steps must be at least 20 so that the compressed AC/DC schedule has whole phases.")
    methods = [m.strip() for m in opts.methods.split(",")]
    if "dense" not in methods or any(m not in METHODS for m in methods):
        raise SystemExit(f"--methods must include dense and be among {METHODS}.")
    if opts.threads:
        torch.set_num_threads(opts.threads)
    SparseMasks.multiplier = opts.multiplier

    import timm

    torch.manual_seed(0)
    base = timm.create_model(opts.model, num_classes=opts.num_classes).to(device)
    on_gpu = device.type == "cuda"
    memory_format = torch.channels_last if on_gpu else torch.contiguous_format
    base = base.to(memory_format=memory_format)
    gen = torch.Generator().manual_seed(0)
    batches = [(torch.randn(opts.batch_size, 3, opts.size, opts.size, generator=gen).to(device, memory_format=memory_format),
                torch.randint(0, opts.num_classes, (opts.batch_size,), generator=gen).to(device)) for _ in range(4)]

    def sync() -> None:
        if on_gpu:
            torch.cuda.synchronize(device)
    criterion = nn.CrossEntropyLoss(label_smoothing=0.1)

    runs = {}
    for name in methods:
        model = copy.deepcopy(base).train()
        optimizer = torch.optim.SGD(param_groups(model, 1e-4), lr=0.01, momentum=0.9)
        method = build(name, model, opts.steps, opts.sparsity)
        if method is not None:
            method.attach(optimizer)
        runs[name] = {"model": model, "optimizer": optimizer, "method": method, "times": [], "events": []}

    def one_step(run, step: int) -> float:
        x, y = batches[step % len(batches)]
        sync()
        t0 = time.perf_counter()
        if run["method"] is not None:
            run["method"].begin_step(step)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=on_gpu):
            loss = criterion(run["model"](x), y)
        run["optimizer"].zero_grad(set_to_none=True)
        loss.backward()
        event = run["method"].step(step, run["optimizer"]) if run["method"] is not None else None
        run["optimizer"].step()
        sync()
        dt = time.perf_counter() - t0
        run["events"].append(event["event"] if event else None)
        return dt

    # untimed warm-up of the allocator and kernels on a throwaway copy
    warm = {"model": copy.deepcopy(base).train(), "method": None, "events": []}
    warm["optimizer"] = torch.optim.SGD(warm["model"].parameters(), lr=0.01, momentum=0.9)
    for i in range(5 if on_gpu else 2):  # on a GPU also cuDNN's algorithm search
        one_step(warm, i)
    del warm

    for step in tqdm(range(opts.steps), desc=f"{opts.model} {opts.size}px b{opts.batch_size}"):
        for name in methods:
            runs[name]["times"].append(one_step(runs[name], step))

    # Step i of every method ran back to back, so the ratio t_method[i] / t_dense[i] cancels most of the load
    # drift of a shared machine; medians keep one disturbed step from deciding the result.
    dense_times = runs["dense"]["times"]
    dense_mean = statistics.fmean(dense_times)
    counts = imagenet_event_counts()
    total_real = counts["total_steps"]["all"]
    results = {}
    for name in methods:
        times, events = runs[name]["times"], runs[name]["events"]
        ordinary = [i for i, e in enumerate(events) if e is None]
        paired = [times[i] / dense_times[i] for i in ordinary]
        r_ord = statistics.median(paired)
        row = {
            "mean_step_s": statistics.fmean(times),
            "median_step_s": statistics.median(times),
            "ratio_compressed_schedule": statistics.fmean(times) / dense_mean,
            "ratio_ordinary_steps": r_ord,
            "ordinary_steps": len(ordinary),
            "events": {},
            "times_s": [round(t, 5) for t in times],
            "event_per_step": events,
        }
        extra_real = 0.0
        for kind in sorted({e for e in events if e}):
            at = [i for i, e in enumerate(events) if e == kind]
            extra = statistics.median([times[i] - r_ord * dense_times[i] for i in at])
            n_real = counts.get(name, {}).get(kind, 0)
            row["events"][kind] = {"count_here": len(at), "median_extra_s": extra, "count_imagenet_1x": n_real}
            extra_real += n_real * extra
        dense_median = statistics.median(dense_times)
        row["ratio_imagenet_1x"] = r_ord + extra_real / (total_real * dense_median)
        if runs[name]["method"] is not None:
            row["final_sparsity"] = runs[name]["method"].sparsity()
        results[name] = row

    out = {
        "model": opts.model, "size": opts.size, "batch_size": opts.batch_size, "steps": opts.steps, "sparsity": opts.sparsity,
        "threads": torch.get_num_threads(), "device": torch.cuda.get_device_name(device) if on_gpu else "cpu",
        "precision": "bf16 autocast, channels_last" if on_gpu else "fp32", "mask_multiplier": opts.multiplier, "cpu": platform.processor() or platform.machine(),
        "torch": torch.__version__, "sparse_transfer_version": __version__, "imagenet_1x_event_counts": counts,
        "command": "benchmarks/vision_step_time.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "methods": results,
    }
    suffix = "_cuda" if on_gpu else ""
    path = opts.out or os.path.join(REPO, "benchmarks", "results", f"vision_step_time_{opts.model}_{opts.size}px_b{opts.batch_size}{suffix}.json")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(f"{path}.tmp", "w") as f:
        json.dump(out, f, indent=2)
    os.replace(f"{path}.tmp", path)

    print(f"{opts.model} {opts.size}px batch {opts.batch_size} on {out['device']}, {opts.steps}-step schedule, {out['threads']} thread(s), "
          f"sparsity {opts.sparsity}")
    print(f"{'method':10} {'mean s/step':>12} {'ratio (compressed sched.)':>26} {'ratio (ordinary, paired)':>25} {'ratio (ImageNet 1x)':>20}")
    for name, row in results.items():
        print(f"{name:10} {row['mean_step_s']:12.4f} {row['ratio_compressed_schedule']:26.3f} "
              f"{row['ratio_ordinary_steps']:25.3f} {row['ratio_imagenet_1x']:20.3f}")
        for kind, ev in row["events"].items():
            print(f"{'':10}   {kind}: {ev['count_here']} here, +{ev['median_extra_s']:.4f} s each (median), "
                  f"{ev['count_imagenet_1x']} in ImageNet 1x")
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
