"""Cost of mask enforcement per training step, side by side with dense training and ``torch.nn.utils.prune``.

Three copies of the same model train in one process, their steps interleaved (the order rotates every step,
so a noisy neighbour on the machine hits all three alike):

- ``dense``:    the plain training step, no masks;
- ``enforced``: the same step with ``SparseMasks.attach(optimizer)`` (each gradient's pruned coordinates zeroed by
                a post-accumulate-grad hook during backward, pruned weights zeroed after the optimizer step);
- ``prune``:    the peer, ``torch.nn.utils.prune.custom_from_mask`` on every target (``weight_orig`` parameter,
                ``weight_mask`` buffer, ``weight = weight_orig * weight_mask`` recomputed in a forward pre-hook).

Workloads (issue "Package foundation and the mask engine"):

- ``minilm``:   ``../shared/models/all-MiniLM-L6-v2`` as a sequence classifier, batch 32, sequence 128, AdamW,
                90% global sparsity on the six encoder linears per block (random token ids: the step costs
                the same whatever the text);
- ``resnet50``: timm ``resnet50`` at 224 px, batch 32, SGD with momentum, 90% global sparsity over every
                conv/linear.

Prints the per-step time of each variant (median over the timed steps), the ratios, the time spent inside the
two enforcement hooks as a share of a dense step (the cost of enforcement, free of step-to-step noise) beside
the time of the peer's forward pre-hooks alone (a lower bound of its cost: their backward is not counted), and the
memory the masks take per prunable weight while training; writes the same to ``benchmarks/results/enforcement.json``.

Example:
    python benchmarks/bench_enforcement.py --workloads minilm resnet50 --steps 12
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
from collections.abc import Callable

import torch
from torch import nn
from torch.nn.utils import prune

from sparse_transfer import SparseMasks

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MINILM = os.path.join(REPO, "..", "shared", "models", "all-MiniLM-L6-v2")


def build_minilm(batch_size: int, seq_len: int, device: torch.device):
    from transformers import AutoModelForSequenceClassification

    if not os.path.isdir(MINILM):
        raise FileNotFoundError(f"{MINILM} not found: the minilm workload needs ../shared/models/all-MiniLM-L6-v2.")
    model = AutoModelForSequenceClassification.from_pretrained(MINILM, num_labels=2).to(device)
    generator = torch.Generator().manual_seed(0)
    batch = {
        "input_ids": torch.randint(1000, model.config.vocab_size, (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "labels": torch.randint(0, 2, (batch_size,), generator=generator),
    }
    batch = {k: v.to(device) for k, v in batch.items()}

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return m(**batch).loss

    return model, "bert", lambda params: torch.optim.AdamW(params, lr=1e-5), loss_fn


def build_resnet50(batch_size: int, image_size: int, device: torch.device):
    import timm

    model = timm.create_model("resnet50", num_classes=1000).to(device)
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(batch_size, 3, image_size, image_size, generator=generator).to(device)
    labels = torch.randint(0, 1000, (batch_size,), generator=generator).to(device)

    def loss_fn(m: nn.Module) -> torch.Tensor:
        return nn.functional.cross_entropy(m(images), labels)

    optimizer = lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)  # noqa: E731
    return model, "cnn", optimizer, loss_fn


def prune_peer(model: nn.Module, masks: SparseMasks, hook_times: list[float]) -> None:
    """Applies ``torch.nn.utils.prune.custom_from_mask`` with our masks to every target of ``model``.

    The time of each forward pre-hook's ``weight_orig * weight_mask`` goes to ``hook_times`` (a lower bound of
    the peer's cost: the backward of that product is not counted).
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module_name, _, param_name = name.rpartition(".")
        module = modules[module_name]
        prune.custom_from_mask(module, param_name, mask.to(torch.float32))
        for hook in module._forward_pre_hooks.values():
            if isinstance(hook, prune.BasePruningMethod):
                hook.apply_mask = _timed_returning(hook.apply_mask, hook_times)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn: Callable[[], None], sink: list[float]) -> Callable[[], None]:
    def wrapper() -> None:
        start = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        sink.append(time.perf_counter() - start)

    return wrapper


def _timed_returning(fn: Callable, sink: list[float]) -> Callable:
    def wrapper(*args):
        start = time.perf_counter()
        out = fn(*args)
        sink.append(time.perf_counter() - start)
        return out

    return wrapper


def make_step(model: nn.Module, optimizer: torch.optim.Optimizer, loss_fn: Callable) -> Callable[[], None]:
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model).backward()
        optimizer.step()

    return step


def run_workload(name: str, args: argparse.Namespace, device: torch.device) -> dict:
    if name == "minilm":
        model, targets, make_optimizer, loss_fn = build_minilm(args.batch_size, args.seq_len, device)
    elif name == "resnet50":
        model, targets, make_optimizer, loss_fn = build_resnet50(args.batch_size, args.image_size, device)
    else:
        raise ValueError(f"Unknown workload {name!r}; use minilm or resnet50.")
    model.train()
    masks = SparseMasks.from_magnitude(model, args.sparsity, "global", targets=targets)
    masks.apply_()

    dense = model
    enforced = copy.deepcopy(model)
    peer = copy.deepcopy(model)
    enforced_masks = SparseMasks(masks.state_dict(), enforced)
    peer_hook_times: list[float] = []
    prune_peer(peer, SparseMasks(masks.state_dict()), peer_hook_times)

    # Time the hooks themselves too: their share of a step is the enforcement cost, measured without the step-to-step
    # noise of a shared machine. The per-parameter gradient hooks are built by _grad_hook at attach, the post-step
    # hook calls apply_ through the instance.
    hook_times: list[float] = []
    build_hook = enforced_masks._grad_hook
    enforced_masks._grad_hook = lambda param_name: _timed_returning(build_hook(param_name), hook_times)
    enforced_masks.apply_ = _timed(enforced_masks.apply_, hook_times)
    enforced_optimizer = make_optimizer(enforced.parameters())
    handles = enforced_masks.attach(enforced_optimizer)
    hook_times.clear()
    steps = {
        "dense": make_step(dense, make_optimizer(dense.parameters()), loss_fn),
        "enforced": make_step(enforced, enforced_optimizer, loss_fn),
        "prune": make_step(peer, make_optimizer(peer.parameters()), loss_fn),
    }
    times: dict[str, list[float]] = {k: [] for k in steps}
    enforcement_times: list[float] = []
    peer_forward_times: list[float] = []
    order = list(steps)
    total = args.warmup + args.steps
    for i in range(total):
        order = order[1:] + order[:1]
        for variant in order:
            _sync(device)
            hook_times.clear()
            peer_hook_times.clear()
            start = time.perf_counter()
            steps[variant]()
            _sync(device)
            if i >= args.warmup:
                times[variant].append(time.perf_counter() - start)
                if variant == "enforced":
                    enforcement_times.append(sum(hook_times))
                elif variant == "prune":
                    peer_forward_times.append(sum(peer_hook_times))
        print(f"  [{name}] step {i + 1}/{total}", file=sys.stderr, flush=True)

    violations = enforced_masks.violations()
    if violations:
        raise RuntimeError(f"{violations} pruned weights of the enforced model are non-zero: enforcement is broken.")
    handles.remove()

    n_prunable = masks.numel()
    mask_bytes = sum(m.numel() * m.element_size() for _, m in enforced_masks.items())
    peer_extra = 0
    for module in peer.modules():
        for buffer_name, buffer in module.named_buffers(recurse=False):
            if buffer_name.endswith("_mask"):
                peer_extra += buffer.numel() * buffer.element_size()
        if hasattr(module, "weight_orig"):
            peer_extra += module.weight_orig.numel() * module.weight_orig.element_size()  # the recomputed weight copy
    median = {k: statistics.median(v) for k, v in times.items()}
    return {
        "workload": name,
        "sparsity": round(masks.sparsity(), 6),
        "prunable_weights": n_prunable,
        "timed_steps": args.steps,
        "median_step_s": {k: round(v, 5) for k, v in median.items()},
        "mean_step_s": {k: round(statistics.fmean(v), 5) for k, v in times.items()},
        "median_enforcement_hooks_s": round(statistics.median(enforcement_times), 5),
        "hooks_share_of_dense_step": round(statistics.median(enforcement_times) / median["dense"], 5),
        "median_prune_forward_hooks_s": round(statistics.median(peer_forward_times), 5),
        "prune_forward_hooks_share_of_dense_step": round(statistics.median(peer_forward_times) / median["dense"], 5),
        "enforced_over_dense": round(median["enforced"] / median["dense"], 4),
        "prune_over_dense": round(median["prune"] / median["dense"], 4),
        "enforced_over_prune": round(median["enforced"] / median["prune"], 4),
        "mask_bytes_per_prunable_weight": round(mask_bytes / n_prunable, 4),
        "prune_extra_bytes_per_prunable_weight": round(peer_extra / n_prunable, 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", nargs="+", default=["minilm", "resnet50"], choices=["minilm", "resnet50"])
    parser.add_argument("--steps", type=int, default=12, help="Timed steps per variant.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per variant first.")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seq-len", type=int, default=128)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results", "enforcement.json"))
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    torch.manual_seed(0)

    results = []
    for name in args.workloads:
        result = run_workload(name, args, device)
        results.append(result)
        print(
            f"{name:9s} median step: dense {result['median_step_s']['dense']:.4f}s  enforced "
            f"{result['median_step_s']['enforced']:.4f}s  prune {result['median_step_s']['prune']:.4f}s | "
            f"enforced/dense {result['enforced_over_dense']:.4f}  prune/dense {result['prune_over_dense']:.4f}  "
            f"enforced/prune {result['enforced_over_prune']:.4f} | hooks {result['median_enforcement_hooks_s']:.4f}s = "
            f"{100 * result['hooks_share_of_dense_step']:.2f}% of a dense step (prune's forward hooks alone "
            f"{result['median_prune_forward_hooks_s']:.4f}s = {100 * result['prune_forward_hooks_share_of_dense_step']:.2f}%) | "
            "mask bytes/weight "
            f"{result['mask_bytes_per_prunable_weight']} (prune peer: +{result['prune_extra_bytes_per_prunable_weight']})"
        )
    record = {
        "command": "python benchmarks/bench_enforcement.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "device": str(device) if device.type != "cuda" else torch.cuda.get_device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "results": results,
    }
    os.makedirs(os.path.dirname(args.output), exist_ok=True)
    tmp = args.output + ".tmp"
    with open(tmp, "w") as f:
        json.dump(record, f, indent=2)
    os.replace(tmp, args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
