"""Downstream check of the upstream-pruned MiniLM models: GLUE RTE through ``python -m sparse_transfer.glue``.

Every starting model is fine-tuned on RTE (``../shared/data/glue/RTE``, GLUE's TSV layout; dev set for the
score) with two recipes of ``recipes/glue/``:

- ``rte``: the paper's recipe (gradual unfreezing one block per epoch, L + 2 = 8 epochs, LR rewound at every
  stage, lr 1e-4, best epoch kept);
- ``dense_transfer``: the usual dense fine-tuning recipe on the same masks (3 epochs, lr 2e-5, 10% warm-up).

Starting models (``--models``):

- ``dense``: ``../shared/models/all-MiniLM-L6-v2`` itself (the ceiling; its masks read from zeros are all-ones);
- ``magnitude_90``: the dense model cut to 90% by global magnitude on the six encoder linears per block, no
  retraining (the floor; written once to ``runs/downstream_rte/models/``);
- ``upstream_90_<budget>``: the output of ``benchmarks/upstream_minilm.py --study sparsity --sparsities 90
  --budget <budget>`` (``runs/upstream/bench/minilm_90_<budget>``; that run must have finished).

One recipe run per (model, recipe), single seed, the recipe's own learning rate and dropout (not the grid: a
grid is 6x the CPU time). Each run's ``results.json`` summary is cached in ``benchmarks/results/downstream_rte/``;
rerunning skips finished runs, and an interrupted run resumes from its last epoch checkpoint (the GLUE command
does that). The table goes to ``benchmarks/results/downstream_rte.md``.

Usage::

    python benchmarks/upstream_downstream_rte.py --models dense magnitude_90 upstream_90_full
    python benchmarks/upstream_downstream_rte.py --table        # the table from the cached runs only
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sparse_transfer.upstream.train import write_json_atomic  # noqa: E402

RESULTS_DIR = os.path.join(REPO, "benchmarks", "results", "downstream_rte")
RUNS_DIR = os.path.join(REPO, "runs", "downstream_rte")
DENSE = os.path.join(REPO, "..", "shared", "models", "all-MiniLM-L6-v2")
RTE_DIR = os.path.join(REPO, "..", "shared", "data", "glue", "RTE")
RECIPES = ("rte", "dense_transfer")


def model_path(name: str) -> str:
    """The local folder of starting model ``name``, built first for ``magnitude_<s>``."""
    if name == "dense":
        return os.path.normpath(DENSE)
    if name.startswith("magnitude_"):
        return build_magnitude_model(int(name.split("_")[1]))
    if name.startswith("upstream_"):
        _, sparsity, budget = name.split("_", 2)
        path = os.path.join(REPO, "runs", "upstream", "bench", f"minilm_{sparsity}_{budget}")
        results = os.path.join(path, "results.json")
        finished = False
        if os.path.isfile(results):
            with open(results) as f:
                finished = bool(json.load(f).get("finished"))
        if not finished:
            raise SystemExit(
                f"{path} is not a finished upstream run. Produce it first: python benchmarks/upstream_minilm.py "
                f"--study sparsity --sparsities {sparsity} --budget {budget}"
            )
        return path
    raise SystemExit(f"Unknown model {name!r}: use dense, magnitude_<sparsity> or upstream_<sparsity>_<budget>.")


def build_magnitude_model(sparsity: int) -> str:
    """Writes the dense model pruned once by global magnitude (no retraining) and returns its folder."""
    from transformers import AutoModel, AutoTokenizer

    from sparse_transfer.hub import save_sparse_pretrained
    from sparse_transfer.upstream.train import magnitude_prune_

    out = os.path.join(RUNS_DIR, "models", f"magnitude_{sparsity}")
    if os.path.isfile(os.path.join(out, "config.json")):
        return out
    model = AutoModel.from_pretrained(os.path.normpath(DENSE))
    masks = magnitude_prune_(model, sparsity / 100, "global")
    tmp = out + ".tmp"
    save_sparse_pretrained(model, tmp, masks=masks, processing_class=AutoTokenizer.from_pretrained(os.path.normpath(DENSE)))
    os.replace(tmp, out)
    return out


def run_arm(model: str, recipe: str, max_train_samples: int | None, threads: int | None) -> dict:
    name = f"{model}__{recipe}" + (f"__n{max_train_samples}" if max_train_samples else "")
    cache = os.path.join(RESULTS_DIR, f"{name}.json")
    if os.path.isfile(cache):
        with open(cache) as f:
            summary = json.load(f)
        print(f"[cached] {name}: accuracy {summary['best']['accuracy']:.4f}")
        return summary
    run_dir = os.path.join(RUNS_DIR, name)
    command = [sys.executable, "-m", "sparse_transfer.glue", "--task", "rte", "--recipe", f"recipes/glue/{recipe}.yaml",
               "--model", model_path(model), "--data_dir", os.path.normpath(RTE_DIR), "--output_dir", run_dir,
               "--logging_steps", "10"]
    if max_train_samples:
        command += ["--max_train_samples", str(max_train_samples)]
    env = dict(os.environ)
    if threads:
        env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    print(f"[run] {name}: {' '.join(command)}", flush=True)
    start = time.time()
    subprocess.run(command, cwd=REPO, env=env, check=True)
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    summary = {
        "name": name,
        "model": model,
        "recipe": recipe,
        "max_train_samples": max_train_samples,
        "command": f"python benchmarks/upstream_downstream_rte.py --models {model} --recipes {recipe}"
        + (f" --max-train-samples {max_train_samples}" if max_train_samples else ""),
        "best": results["best"],
        "per_epoch": [{"epoch": e["epoch"], "accuracy": e["accuracy"]} for e in results["per_epoch"]],
        "majority_class_accuracy": majority_accuracy(),
        "mask_sparsity": results["sparsity"]["mask_sparsity"],
        "exact": results["sparsity"]["exact"],
        "learning_rate": results["recipe"]["learning_rate"],
        "epochs": results["epochs"],
        "train_runtime_s": results["train"].get("train_runtime"),
        "wall_seconds_last_session": round(time.time() - start, 1),
        "versions": results["versions"],
    }
    os.makedirs(RESULTS_DIR, exist_ok=True)
    write_json_atomic(cache, summary)
    print(f"[done] {name}: accuracy {summary['best']['accuracy']:.4f} (epoch {summary['best']['epoch']:g})")
    return summary


def majority_accuracy() -> float:
    """Dev accuracy of always predicting the most frequent training label (RTE dev is near balanced)."""
    import csv
    from collections import Counter

    def labels(split: str) -> list[str]:
        with open(os.path.join(RTE_DIR, f"{split}.tsv"), newline="", encoding="utf-8") as f:
            return [row["label"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]

    majority = Counter(labels("train")).most_common(1)[0][0]
    dev = labels("dev")
    return sum(label == majority for label in dev) / len(dev)


def table() -> str:
    rows = []
    for file in sorted(os.listdir(RESULTS_DIR)) if os.path.isdir(RESULTS_DIR) else []:
        if file.endswith(".json"):
            with open(os.path.join(RESULTS_DIR, file)) as f:
                rows.append(json.load(f))
    lines = [
        "| starting model | recipe | train examples | mask sparsity | RTE dev accuracy (best epoch) | accuracy per epoch | train time |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        per_epoch = " ".join(f"{100 * e['accuracy']:.1f}" for e in r["per_epoch"])
        lines.append(
            f"| {r['model']} | {r['recipe']} | {r['max_train_samples'] or 'all (2490)'} | {r['mask_sparsity']:.3f} | "
            f"{100 * r['best']['accuracy']:.1f} ({r['best']['epoch']:g}) | {per_epoch} | {r['train_runtime_s'] / 60:.0f} min |"
        )
    if rows:
        lines.append("")
        lines.append(f"Majority class on RTE dev: {100 * rows[0]['majority_class_accuracy']:.1f}%. One seed per row.")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--models", nargs="+", default=["dense", "magnitude_90", "upstream_90_full"])
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--max-train-samples", type=int, default=None, help="Train on a subset (default: all 2490).")
    parser.add_argument("--threads", type=int, default=None, help="OMP threads of each run (default: torch's choice).")
    parser.add_argument("--table", action="store_true", help="Only write the table from the cached runs.")
    opts = parser.parse_args(argv)
    if not opts.table:
        for model in opts.models:
            for recipe in opts.recipes:
                run_arm(model, recipe, opts.max_train_samples, opts.threads)
    text = table()
    os.makedirs(os.path.dirname(RESULTS_DIR), exist_ok=True)
    with open(RESULTS_DIR + ".md", "w") as f:
        f.write(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
