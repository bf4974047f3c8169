"""Wall time of the gradual-unfreezing recipe against plain full fine-tuning, side by side, on RTE.

Two arms train the same 90%-sparse ``../shared/models/all-MiniLM-L6-v2`` sequence classifier (masks by global
magnitude on the six encoder linears per block) with :class:`~sparse_transfer.hf.SparseTrainer`, in one process,
on the same data, batch and sequence length:

- ``gradual``: the paper's recipe (RECIPES.md section 1): ``unfreeze="gradual"``, L + 2 = 8 stages, LR rewound
  at every stage start. Frozen linear weights get ``requires_grad=False``, so autograd skips their
  weight-gradient matmul and AdamW skips their update; the embeddings stay frozen throughout.
- ``full``: plain full fine-tuning for the same number of epochs (``unfreeze="none"``, every parameter trains
  from the first step, linear decay). Masks are enforced in both arms.

The machine this runs on is shared, and its load swings by 2x within minutes. So by default the arms train
side by side in two threads whose optimizer steps take turns (a baton passed in ``on_step_begin`` /
``on_step_end``): both arms see the same load, step for step. The number reported is the ratio of the time
each arm spends in its optimizer steps (forward, backward, gradient clipping, AdamW, mask hooks, scheduler),
summed over the whole recipe (target: at most 0.9), plus the mean and median step time of each stage, which show
where the saving comes from. The interleaving evens out load that lasts longer than a step, not a spike within
one step; so a second ratio counts every stage at its median step time, which a few spiked steps do not move. Data loading and logging between steps are the same in both arms and are left out.
``--sequential`` instead trains the arms one after the other and also reports the plain wall-time ratio of
``trainer.train()``. Dev accuracy of each arm is printed as a sanity check only: at the reduced sizes used on a
2-core CPU it says little about the recipe.

On a small CPU the full recipe (2490 examples x 8 epochs x 2 arms) takes hours, hence ``--max-train-samples``
(the first N training examples) and ``--epochs-scale`` (every stage lasts that fraction of an epoch; both arms
train ``8 x epochs-scale`` epochs, exactly the same number of optimizer steps). A finished comparison is cached
as JSON under ``--cache-dir`` (keyed by every setting), so rerunning the command prints it again without
training; ``--fresh`` measures again.

Example (the command behind benchmarks/results/gradual_rte.json, see that file's "command")::

    nice -n 10 python benchmarks/bench_gradual_rte.py --max-train-samples 192 --epochs-scale 1
"""

from __future__ import annotations

import argparse
import copy
import csv
import hashlib
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import threading
import time

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_MODEL = os.path.join("..", "shared", "models", "all-MiniLM-L6-v2")
DEFAULT_DATA = os.path.join("..", "shared", "data", "glue", "RTE")
RTE_LABELS = ("entailment", "not_entailment")  # GLUE's label order for RTE
ARMS = ("gradual", "full")


def read_rte(path: str, max_samples: int | None = None) -> tuple[list[str], list[str], list[int]]:
    """Reads a GLUE RTE TSV file (``index, sentence1, sentence2, label``, header row).

    ``quoting=csv.QUOTE_NONE`` because GLUE's TSVs contain unbalanced double quotes inside sentences, which the
    default quoting would swallow across lines.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} not found: pass --data-dir, the folder with GLUE's RTE train.tsv and dev.tsv.")
    first, second, labels = [], [], []
    with open(path, newline="", encoding="utf-8") as f:
        rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
        header = next(rows)
        if header[:4] != ["index", "sentence1", "sentence2", "label"]:
            raise ValueError(f"{path}: expected the RTE header 'index sentence1 sentence2 label', got {header}.")
        for line_number, row in enumerate(rows, start=2):
            if len(row) != 4:
                raise ValueError(f"{path}:{line_number}: expected 4 tab-separated columns, got {len(row)}.")
            if row[3] not in RTE_LABELS:
                raise ValueError(f"{path}:{line_number}: label {row[3]!r} is not one of {RTE_LABELS}.")
            first.append(row[1])
            second.append(row[2])
            labels.append(RTE_LABELS.index(row[3]))
            if max_samples is not None and len(labels) >= max_samples:
                break
    return first, second, labels


def tokenize(tokenizer, path: str, max_samples: int | None, max_length: int):
    from datasets import Dataset

    first, second, labels = read_rte(path, max_samples)
    # Padding to max_length: every step costs a batch x 128 forward/backward, as the setting says.
    encoded = tokenizer(first, second, truncation=True, max_length=max_length, padding="max_length")
    return Dataset.from_dict({**encoded, "labels": labels})


class Baton:
    """Lets the arms' optimizer steps take turns, so that both see the same load on a shared machine.

    Each arm trains in its own thread; a step runs only while its arm holds the baton (acquired in
    ``on_step_begin``, handed to the next arm in ``on_step_end``). Torch ops release the GIL, so the waiting
    thread costs nothing while the other computes.
    """

    def __init__(self, arms: list[str]):
        self._cond = threading.Condition()
        self._active = list(arms)
        self._turn = 0

    def acquire(self, arm: str) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._active[self._turn] == arm)

    def release(self, arm: str) -> None:
        with self._cond:
            self._turn = (self._active.index(arm) + 1) % len(self._active)
            self._cond.notify_all()

    def finish(self, arm: str) -> None:
        with self._cond:
            current = self._active[self._turn]
            self._active.remove(arm)
            if self._active:
                self._turn = self._active.index(current) if current in self._active else self._turn % len(self._active)
            self._cond.notify_all()


def step_timer(arm: str, baton: Baton | None, times: list[float]):
    """A Trainer callback timing every optimizer step (forward, backward, clipping, AdamW, masks, scheduler)."""
    from transformers import TrainerCallback

    class StepTimerCallback(TrainerCallback):
        start = 0.0

        def on_step_begin(self, args, state, control, **kwargs):
            if baton is not None:
                baton.acquire(arm)
            self.start = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            times.append(time.perf_counter() - self.start)
            if baton is not None:
                baton.release(arm)

    return StepTimerCallback()


def build_trainer(arm: str, model, train, dev, opts, output_dir: str, stage_steps: int, callback):
    from sparse_transfer.hf import SparseTrainer, SparseTrainingArguments

    num_stages = model.config.num_hidden_layers + 2
    args = SparseTrainingArguments(
        output_dir=output_dir,
        unfreeze="gradual" if arm == "gradual" else "none",
        stage_steps=stage_steps,
        max_steps=num_stages * stage_steps,  # both arms run exactly the same number of optimizer steps
        lr_scheduler_type="rewind" if arm == "gradual" else "linear",
        learning_rate=opts.learning_rate,
        per_device_train_batch_size=opts.batch_size,
        per_device_eval_batch_size=opts.batch_size,
        weight_decay=0.0,
        seed=opts.seed,
        use_cpu=opts.device == "cpu",
        save_strategy="no",
        eval_strategy="no",
        logging_steps=stage_steps,
        report_to=[],
        dataloader_num_workers=0,
    )
    return SparseTrainer(model=model, args=args, train_dataset=train, eval_dataset=dev, callbacks=[callback])


def run_arms(arms: list[str], base, train, dev, opts, stage_steps: int) -> dict[str, dict]:
    """Trains every arm (interleaved step by step unless ``--sequential``) and evaluates each afterwards."""
    num_stages = base.config.num_hidden_layers + 2
    baton = None if opts.sequential or len(arms) == 1 else Baton(arms)
    times = {arm: [] for arm in arms}
    wall = {}
    errors = {}
    with tempfile.TemporaryDirectory() as tmp:
        trainers = {
            arm: build_trainer(
                arm, copy.deepcopy(base), train, dev, opts, os.path.join(tmp, arm), stage_steps,
                step_timer(arm, baton, times[arm]),
            )
            for arm in arms
        }

        def train_arm(arm: str) -> None:
            start = time.perf_counter()
            try:
                trainers[arm].train()
            except BaseException as error:  # re-raised in the main thread
                errors[arm] = error
            finally:
                wall[arm] = time.perf_counter() - start
                if baton is not None:
                    baton.finish(arm)

        if baton is None:
            for arm in arms:
                print(f"[{arm}] training ...", flush=True)
                train_arm(arm)
        else:
            print(f"training {' and '.join(arms)}, their steps interleaved ...", flush=True)
            threads = [threading.Thread(target=train_arm, args=(arm,), name=arm) for arm in arms]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
        for arm, error in errors.items():
            raise RuntimeError(f"arm {arm!r} failed") from error

        results = {}
        for arm in arms:  # evaluated after all training, so that no evaluation overlaps a timed step
            trainer = trainers[arm]
            predictions = trainer.predict(dev)
            accuracy = float((predictions.predictions.argmax(-1) == predictions.label_ids).mean())
            steps = times[arm]
            results[arm] = {
                "arm": arm,
                "step_seconds_total": sum(steps),
                "train_wall_seconds": wall[arm],
                "optimizer_steps": len(steps),
                "steps_per_stage": stage_steps,
                "mean_step_seconds_per_stage": [
                    statistics.mean(steps[s * stage_steps : (s + 1) * stage_steps]) for s in range(num_stages)
                ],
                "median_step_seconds_per_stage": [
                    statistics.median(steps[s * stage_steps : (s + 1) * stage_steps]) for s in range(num_stages)
                ],
                "step_seconds": steps,
                "dev_accuracy": accuracy,
                "sparsity": trainer.measured_sparsity(),
                "mask_violations": trainer.masks.violations(),
            }
    return results


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=DEFAULT_MODEL, help="local model directory (or Hub id)")
    parser.add_argument("--data-dir", default=DEFAULT_DATA, help="folder with GLUE's RTE train.tsv and dev.tsv")
    parser.add_argument("--max-train-samples", type=int, default=None, help="use the first N training examples")
    parser.add_argument("--max-eval-samples", type=int, default=None, help="use the first N dev examples")
    parser.add_argument("--epochs-scale", type=float, default=1.0, help="stage length in epochs (paper: 1)")
    parser.add_argument("--sparsity", type=float, default=0.9)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS, help="arms to run, in this order")
    parser.add_argument(
        "--sequential", action="store_true",
        help="train the arms one after the other (plain wall time) instead of interleaving their steps",
    )
    parser.add_argument("--output", default=os.path.join(REPO, "benchmarks", "results", "gradual_rte.json"))
    parser.add_argument("--cache-dir", default=os.path.join(REPO, "benchmarks", "results", "gradual_rte_runs"))
    parser.add_argument("--fresh", action="store_true", help="ignore a cached result for the same settings")
    opts = parser.parse_args(argv)
    if opts.epochs_scale <= 0:
        parser.error(f"--epochs-scale must be positive, got {opts.epochs_scale}")
    if opts.threads:
        torch.set_num_threads(opts.threads)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer, set_seed
    from transformers.utils import logging as hf_logging

    from sparse_transfer import SparseMasks

    hf_logging.set_verbosity_error()  # the "newly initialized classifier" warning is expected
    tokenizer = AutoTokenizer.from_pretrained(opts.model)
    train = tokenize(tokenizer, os.path.join(opts.data_dir, "train.tsv"), opts.max_train_samples, opts.max_length)
    dev = tokenize(tokenizer, os.path.join(opts.data_dir, "dev.tsv"), opts.max_eval_samples, opts.max_length)
    steps_per_epoch = -(-len(train) // opts.batch_size)
    stage_steps = max(1, round(opts.epochs_scale * steps_per_epoch))

    settings = {k: v for k, v in vars(opts).items() if k not in ("output", "cache_dir", "fresh")}
    settings.update(train_examples=len(train), dev_examples=len(dev), steps_per_stage=stage_steps)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    cache = os.path.join(opts.cache_dir, f"{key}.json")
    if os.path.isfile(cache) and not opts.fresh:
        with open(cache) as f:
            results = json.load(f)
        print(f"cached result for these settings: {cache} (--fresh to measure again)", flush=True)
    else:
        set_seed(opts.seed)
        base = AutoModelForSequenceClassification.from_pretrained(opts.model, num_labels=2)
        SparseMasks.from_magnitude(base, opts.sparsity, "global", targets="bert").apply_()
        results = run_arms(opts.arms, base, train, dev, opts, stage_steps)
        _write_json(cache, results)

    argv_text = argv if argv is not None else sys.argv[1:]
    report = {
        "command": " ".join(["nice -n 10 python", os.path.relpath(os.path.abspath(__file__), REPO)] + [shlex.quote(a) for a in argv_text]),
        "settings": settings,
        "arms": results,
        "environment": {
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "python": platform.python_version(),
        },
    }
    if "gradual" in results and "full" in results:
        gradual, full = results["gradual"], results["full"]
        report["ratio_gradual_over_full"] = gradual["step_seconds_total"] / full["step_seconds_total"]
        # Robust to load spikes on a shared machine: every stage counted at its median step time.
        report["median_ratio_gradual_over_full"] = sum(gradual["median_step_seconds_per_stage"]) / sum(
            full["median_step_seconds_per_stage"]
        )
        if opts.sequential:
            report["wall_ratio_gradual_over_full"] = gradual["train_wall_seconds"] / full["train_wall_seconds"]
    _write_json(opts.output, report)

    print(f"\n{'stage':>6} " + " ".join(f"{arm + ' mean/median s/step':>28}" for arm in results))
    num_stages = len(next(iter(results.values()))["mean_step_seconds_per_stage"])
    for s in range(num_stages):
        print(
            f"{s:>6} "
            + " ".join(
                f"{r['mean_step_seconds_per_stage'][s]:>19.3f} / {r['median_step_seconds_per_stage'][s]:>6.3f}"
                for r in results.values()
            )
        )
    for arm, r in results.items():
        print(
            f"{arm:>8}: {r['step_seconds_total']:.1f} s in {r['optimizer_steps']} optimizer steps "
            f"({r['train_wall_seconds']:.1f} s wall{', interleaved' if not opts.sequential else ''}), "
            f"dev acc {r['dev_accuracy']:.3f}, sparsity {r['sparsity']:.4f}, violations {r['mask_violations']}"
        )
    if "ratio_gradual_over_full" in report:
        print(f"ratio gradual / full, time in optimizer steps: {report['ratio_gradual_over_full']:.3f} (target <= 0.9)")
        print(f"ratio gradual / full, sum of per-stage median step times: {report['median_ratio_gradual_over_full']:.3f}")
    if "wall_ratio_gradual_over_full" in report:
        print(f"ratio gradual / full, wall time of trainer.train(): {report['wall_ratio_gradual_over_full']:.3f}")
    print(f"wrote {opts.output}")
    return report


def _write_json(path: str, data: dict) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=2)
    os.replace(tmp, path)


if __name__ == "__main__":
    main()
