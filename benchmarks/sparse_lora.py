"""Masked LoRA vs full sparse fine-tuning vs plain LoRA merged naively, on a real GLUE task, side by side.

Three arms start from the same sparse model (e.g. all-MiniLM-L6-v2 made 80% sparse by ``benchmarks/upstream_minilm.py``)
and train with the same data, epochs, batch and schedule:

- ``full``: every weight trains, the zeros kept by ``SparseTrainer`` (the project's sparse fine-tuning);
- ``masked_lora``: ``sparse_transfer.lora.SparseLoraConfig`` adapters on every masked linear, heads in full;
- ``plain_lora``: ``peft.LoraConfig`` with the same settings under the plain ``transformers.Trainer`` (SparseTrainer
  refuses it), then ``merge_and_unload()`` the way peft users do, and once more with the mask re-applied after the
  merge (the naive repair).

Measured per arm: dev accuracy before and after merging, the sparsity of the pruned weights after merging, trainable
parameters; then, in one process and interleaved (A B C A B C ...), the time of a training step (forward, backward,
optimizer step) on the same fixed batch, and in one fresh subprocess per arm the peak resident memory of a few
training steps. Results (one JSON per arm, cached: a rerun skips finished arms) go to
``benchmarks/results/sparse_lora/``, the table to ``benchmarks/results/sparse_lora.md``.

Usage::

    python benchmarks/upstream_minilm.py --study sparsity --sparsities 80 --budget cpu-long --need-model
    python benchmarks/sparse_lora.py --model runs/upstream/bench/minilm_80_cpu-long \\
        --data-dir ../shared/data/glue --task sst2 --max-train-samples 4000
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sparse_transfer import SparseMasks  # noqa: E402
from sparse_transfer.upstream.train import write_json_atomic  # noqa: E402

RESULTS_DIR = os.path.join(REPO, "benchmarks", "results", "sparse_lora")
ARMS = ("full", "masked_lora", "plain_lora")


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True, help="Folder of the sparse starting model (save_pretrained layout).")
    p.add_argument("--data-dir", required=True, help="GLUE folder (GLUE's TSV layout), e.g. ../shared/data/glue.")
    p.add_argument("--task", default="sst2")
    p.add_argument("--max-train-samples", type=int, default=4000)
    p.add_argument("--epochs", type=float, default=3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-seq-length", type=int, default=128)
    p.add_argument("--full-lr", type=float, default=1e-4)
    p.add_argument("--lora-lr", type=float, default=1e-3)
    p.add_argument("--lora-r", type=int, default=8)
    p.add_argument("--lora-alpha", type=float, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--timing-rounds", type=int, default=20)
    p.add_argument("--timing-seq", type=int, default=128, help="Tokens per example in the timed fixed batch.")
    p.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    p.add_argument("--results-dir", default=RESULTS_DIR)
    p.add_argument("--device", default="cpu", help="Where the step time and memory are measured (cpu or cuda).")
    p.add_argument("--timing-only", action="store_true",
                   help="Measure step time and memory of every arm on --device (no training; e.g. on a GPU) into "
                   "benchmarks/results/sparse_lora_timing_<device>.json.")
    p.add_argument("--memory-arm", choices=ARMS, help=argparse.SUPPRESS)  # internal: one arm's peak memory
    return p.parse_args(argv)


# ------------------------------------------------------------------------------------------------ models
def load_base(path: str, num_labels: int):
    from transformers import AutoModelForSequenceClassification

    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels)


def lora_settings(model, masks: SparseMasks, opts) -> dict:
    from sparse_transfer.hf import GradualUnfreezer

    head = sorted({n.rsplit(".", 1)[0] for n in GradualUnfreezer(model).head})  # classifier, pooler
    return dict(r=opts.lora_r, lora_alpha=opts.lora_alpha, lora_dropout=0.0, task_type="SEQ_CLS",
                target_modules=[n.removesuffix(".weight") for n in masks], modules_to_save=head)


def build(arm: str, opts, num_labels: int):
    """The arm's model and masks (bound to it), freshly loaded with the same seed: same classifier init."""
    from transformers import set_seed

    set_seed(opts.seed)
    model = load_base(opts.model, num_labels)
    masks = SparseMasks.from_zeros(model, "bert")
    if arm == "full":
        return model, masks
    from peft import LoraConfig, get_peft_model

    from sparse_transfer.lora import SparseLoraConfig

    settings = lora_settings(model, masks, opts)
    config = SparseLoraConfig(**settings) if arm == "masked_lora" else LoraConfig(**settings)
    peft_model = get_peft_model(model, config)
    return peft_model, SparseMasks(masks.state_dict()).bind(peft_model)


def trainable(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


# ------------------------------------------------------------------------------------------------ accuracy
def train_and_evaluate(arm: str, opts, data, tokenizer) -> dict:
    from transformers import DataCollatorWithPadding, Trainer

    from sparse_transfer.glue.metrics import make_compute_metrics
    from sparse_transfer.hf import SparseTrainer, SparseTrainingArguments

    task = data.task
    model, masks = build(arm, opts, task.num_labels)
    pruned = {n: (~m).clone() for n, m in masks.items()}
    args = SparseTrainingArguments(
        output_dir=os.path.join(REPO, "runs", "sparse_lora", arm), use_cpu=True,
        seed=opts.seed, per_device_train_batch_size=opts.batch_size, per_device_eval_batch_size=128,
        learning_rate=opts.full_lr if arm == "full" else opts.lora_lr, num_train_epochs=opts.epochs,
        lr_scheduler_type="linear", warmup_steps=0.1, weight_decay=0.0, unfreeze="none", save_strategy="no",
        eval_strategy="epoch", logging_steps=50, report_to=[], disable_tqdm=False, dataloader_num_workers=0,
    )
    common = dict(model=model, args=args, train_dataset=data.train, eval_dataset=data.evals["validation"],
                  processing_class=tokenizer, data_collator=DataCollatorWithPadding(tokenizer),
                  compute_metrics=make_compute_metrics(task))
    trainer = SparseTrainer(**common, masks=masks) if arm != "plain_lora" else Trainer(**common)
    start = time.time()
    trainer.train()
    train_seconds = time.time() - start
    metric = task.metrics[0]
    per_epoch = [h[f"eval_{metric}"] for h in trainer.state.log_history if f"eval_{metric}" in h]
    before = trainer.evaluate()[f"eval_{metric}"]
    result = {"arm": arm, "trainable_parameters": trainable(model), "train_seconds": round(train_seconds, 1),
              f"dev_{metric}_per_epoch": per_epoch, f"dev_{metric}_before_merge": before}

    def pruned_nonzero(plain_model) -> int:
        params = dict(plain_model.named_parameters())
        names = {n: n.replace("base_model.model.", "").replace(".base_layer", "") for n in pruned}
        return sum(int((params[names[n]].detach()[m] != 0).sum()) for n, m in pruned.items())

    total_pruned = sum(int(m.sum()) for m in pruned.values())
    merged = model.merge_and_unload() if arm != "full" else model
    trainer.model = merged
    result[f"dev_{metric}_after_merge"] = trainer.evaluate()[f"eval_{metric}"] if arm != "full" else before
    revived = pruned_nonzero(merged)
    result["pruned_weights"] = total_pruned
    result["pruned_weights_nonzero_after_merge"] = revived
    result["sparsity_after_merge"] = 1 - (sum(m.numel() for m in pruned.values()) - total_pruned + revived) / sum(
        m.numel() for m in pruned.values())
    if arm == "plain_lora":  # the naive repair: zero the revived weights again
        params = dict(merged.named_parameters())
        with torch.no_grad():
            for n, m in pruned.items():
                params[n.replace("base_model.model.", "").replace(".base_layer", "")][m] = 0
        result[f"dev_{metric}_after_merge_and_repruning"] = trainer.evaluate()[f"eval_{metric}"]
    return result


# ------------------------------------------------------------------------------------------------ speed
def fixed_batch(opts, vocab_size: int):
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, vocab_size, (opts.batch_size, opts.timing_seq), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
            "labels": torch.randint(0, 2, (opts.batch_size,), generator=generator)}


def make_step(arm: str, opts, num_labels: int):
    model, masks = build(arm, opts, num_labels)
    model.to(opts.device).train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
    if arm != "plain_lora":
        masks.attach(optimizer)  # what SparseTrainer does: gradient hooks + weight masking after each step

    def step(batch):
        model(**batch).loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if opts.device.startswith("cuda"):
            torch.cuda.synchronize()

    return model, step


def time_steps(opts, arms, num_labels: int, vocab_size: int) -> dict:
    batch = {k: v.to(opts.device) for k, v in fixed_batch(opts, vocab_size).items()}
    steps = {arm: make_step(arm, opts, num_labels)[1] for arm in arms}
    for _ in range(3):
        for step in steps.values():
            step(batch)
    times = {arm: [] for arm in arms}
    for _ in range(opts.timing_rounds):
        for arm, step in steps.items():
            start = time.perf_counter()
            step(batch)
            times[arm].append(time.perf_counter() - start)
    return {arm: statistics.median(t) for arm, t in times.items()}


def peak_memory(arm: str, opts) -> dict:
    """In a fresh process: resident memory after loading, and the peak over 5 training steps (MiB)."""
    argv = [sys.executable, __file__, "--memory-arm", arm, "--model", opts.model, "--data-dir", opts.data_dir,
            "--batch-size", str(opts.batch_size), "--timing-seq", str(opts.timing_seq), "--threads", str(opts.threads),
            "--lora-r", str(opts.lora_r), "--lora-alpha", str(opts.lora_alpha), "--device", opts.device]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def _rss_mib() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _memory_child(opts) -> None:
    """Resident memory now (after loading: the baseline) and its maximum while 5 training steps run, sampled every
    2 ms by a thread (``ru_maxrss`` cannot be used: loading peaks above training on CPU)."""
    import threading

    from transformers import AutoConfig

    vocab = AutoConfig.from_pretrained(opts.model).vocab_size
    batch = {k: v.to(opts.device) for k, v in fixed_batch(opts, vocab).items()}
    model, step = make_step(opts.memory_arm, opts, 2)
    if opts.device.startswith("cuda"):  # on a GPU: the allocator's own peak over 5 steps, above the loaded model
        torch.cuda.synchronize()
        loaded = torch.cuda.memory_allocated() / 2**20
        torch.cuda.reset_peak_memory_stats()
        for _ in range(5):
            step(batch)
        peak = torch.cuda.max_memory_allocated() / 2**20
        print(json.dumps({"allocated_after_load_mib": round(loaded, 1), "peak_allocated_mib": round(peak, 1),
                          "training_overhead_mib": round(peak - loaded, 1)}))
        return
    loaded = _rss_mib()
    peak = [loaded]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], _rss_mib())
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for _ in range(5):
        step(batch)
    done.set()
    sampler.join()
    print(json.dumps({"rss_after_load_mib": round(loaded, 1), "peak_rss_mib": round(peak[0], 1),
                      "training_overhead_mib": round(peak[0] - loaded, 1)}))


# ------------------------------------------------------------------------------------------------ main
def table(results: dict, metric: str) -> str:
    lines = [
        f"| arm | trainable params | dev {metric} before merge | after merge | after merge + re-pruning | "
        "pruned weights non-zero after merge | sparsity after merge | step time (s) | step vs plain LoRA | "
        "peak RSS (MiB) | training overhead (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    plain_step = results.get("plain_lora", {}).get("step_seconds")
    for arm in ARMS:
        r = results.get(arm)
        if r is None:
            continue
        repruned = r.get(f"dev_{metric}_after_merge_and_repruning")
        ratio = f"{r['step_seconds'] / plain_step:.2f}x" if plain_step and r.get("step_seconds") else "-"
        mem = r.get("memory", {})
        lines.append(
            f"| {arm} | {r['trainable_parameters']:,} | {100 * r[f'dev_{metric}_before_merge']:.2f} | "
            f"{100 * r[f'dev_{metric}_after_merge']:.2f} | {'-' if repruned is None else f'{100 * repruned:.2f}'} | "
            f"{r['pruned_weights_nonzero_after_merge']:,} of {r['pruned_weights']:,} | {r['sparsity_after_merge']:.2%} | "
            f"{r.get('step_seconds', float('nan')):.3f} | {ratio} | {mem.get('peak_rss_mib', '-')} | "
            f"{mem.get('training_overhead_mib', '-')} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    opts = parse(argv)
    torch.set_num_threads(opts.threads)
    if opts.memory_arm:
        _memory_child(opts)
        return 0
    from transformers import AutoTokenizer

    from sparse_transfer.glue import get_task
    from sparse_transfer.glue.data import load_glue_data, tokenize_glue
    from sparse_transfer.glue.run import library_versions

    command = "python benchmarks/sparse_lora.py " + " ".join(sys.argv[1:] if argv is None else argv)
    os.makedirs(opts.results_dir, exist_ok=True)
    task = get_task(opts.task)
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    if opts.timing_only:
        step = time_steps(opts, list(opts.arms), task.num_labels, tokenizer.vocab_size)
        timing = {"command": command, "device": opts.device, "batch": opts.batch_size, "seq": opts.timing_seq,
                  "rounds": opts.timing_rounds, "threads": opts.threads, "versions": library_versions(),
                  "arms": {arm: {"step_seconds": step[arm], "vs_plain_lora": step[arm] / step["plain_lora"]
                                 if "plain_lora" in step else None, "memory": peak_memory(arm, opts)}
                           for arm in opts.arms}}
        device = opts.device.split(":")[0]
        write_json_atomic(os.path.join(os.path.dirname(opts.results_dir), f"sparse_lora_timing_{device}.json"), timing)
        print(json.dumps(timing["arms"], indent=1))
        return 0
    data = tokenize_glue(load_glue_data(task, opts.data_dir, max_train_samples=opts.max_train_samples, seed=opts.seed),
                         tokenizer, opts.max_seq_length)
    results = {}
    for arm in opts.arms:
        path = os.path.join(opts.results_dir, f"{arm}.json")
        if os.path.isfile(path):
            with open(path) as f:
                results[arm] = json.load(f)
            print(f"[cached] {arm}")
            continue
        results[arm] = train_and_evaluate(arm, opts, data, tokenizer)
        results[arm].update(command=command, model=opts.model, task=task.name, train_examples=len(data.train),
                            dev_examples=len(data.evals["validation"]), epochs=opts.epochs, batch_size=opts.batch_size,
                            lr=opts.full_lr if arm == "full" else opts.lora_lr, lora_r=opts.lora_r,
                            lora_alpha=opts.lora_alpha, seed=opts.seed, threads=opts.threads, versions=library_versions())
        write_json_atomic(path, results[arm])
        print(f"[done] {arm}: {json.dumps({k: v for k, v in results[arm].items() if k.startswith('dev_')})}")
    # Speed and memory are measured fresh on every call, all arms together, so their ratios compare like with like.
    step = time_steps(opts, list(opts.arms), task.num_labels, tokenizer.vocab_size)
    for arm in opts.arms:
        results[arm]["step_seconds"] = step[arm]
        results[arm]["timing"] = {"batch": opts.batch_size, "seq": opts.timing_seq, "rounds": opts.timing_rounds,
                                  "threads": opts.threads, "interleaved": True}
        results[arm]["memory"] = peak_memory(arm, opts)
        write_json_atomic(os.path.join(opts.results_dir, f"{arm}.json"), results[arm])
    text = table(results, task.metrics[0])
    header = (f"# Sparse LoRA on {task.name.upper()} ({len(data.train)} training examples, full dev set of "
              f"{len(data.evals['validation'])})\n\nCommand: `{command}`\n\n")
    with open(os.path.join(os.path.dirname(opts.results_dir), "sparse_lora.md"), "w") as f:
        f.write(header + text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
