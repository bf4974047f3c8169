"""What a frozen encoder offers a classifier: linear probes on CLS-pooler, CLS and mean-pooled features.

Diagnosis for the GLUE study (issue "the method, shown"): the first stage of the paper's recipe trains only the
head (pooler + classifier) on a frozen encoder, so what that stage can reach is about what a linear classifier on
the frozen features reaches. all-MiniLM-L6-v2 was trained by sentence-transformers with *mean* pooling; its CLS
token and pooler were never trained for classification. For each starting model and task this fits a logistic
regression (scikit-learn, standardized features, C chosen by 3-fold cross-validation on the training subset) on

- ``pooler``: the model's pooler output ``tanh(W h_CLS + b)``, what ``BertForSequenceClassification`` classifies;
- ``cls``: the last layer's CLS hidden state;
- ``mean``: the last layer's hidden states averaged over the real tokens (sentence-transformers' pooling),

and reports the dev metric (full dev set) beside the majority-class score. Forward passes only: minutes on CPU.

Usage::

    python benchmarks/glue_probe.py --data-dir ../shared/data/glue \\
        --models dense=../shared/models/all-MiniLM-L6-v2 80cpu=runs/upstream/bench/minilm_80_cpu-long \\
        --tasks cola sst2 rte --train-samples 4000

Each (task, model) result is cached in ``benchmarks/results/glue_probe/``; ``--table`` prints the table.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
import time

import numpy as np
import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from sparse_transfer._rundir import library_versions, write_json_atomic  # noqa: E402
from sparse_transfer.glue.data import TEXT_A, TEXT_B, load_glue_data  # noqa: E402
from sparse_transfer.glue.metrics import glue_metrics  # noqa: E402
from sparse_transfer.glue.tasks import get_task  # noqa: E402

RESULTS_DIR = os.path.join(REPO, "benchmarks", "results", "glue_probe")
METRIC = {"rte": "accuracy", "sst2": "accuracy", "cola": "matthews_correlation"}
FEATURES = ("pooler", "cls", "mean")


@torch.no_grad()
def features(model, tokenizer, dataset, batch_size: int = 64, max_length: int = 128) -> dict[str, np.ndarray]:
    """The three pooled features of every example (the model in eval mode: no dropout)."""
    out = {name: [] for name in FEATURES}
    has_b = TEXT_B in dataset.column_names
    for start in range(0, len(dataset), batch_size):
        batch = dataset[start : start + batch_size]
        texts = (batch[TEXT_A], batch[TEXT_B]) if has_b else (batch[TEXT_A],)
        enc = tokenizer(*texts, truncation=True, max_length=max_length, padding=True, return_tensors="pt")
        result = model(**enc)
        hidden = result.last_hidden_state
        mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
        out["pooler"].append(result.pooler_output.numpy())
        out["cls"].append(hidden[:, 0].numpy())
        out["mean"].append(((hidden * mask).sum(1) / mask.sum(1)).numpy())
    return {name: np.concatenate(parts) for name, parts in out.items()}


def probe(train_x, train_y, dev_x, dev_y, task: str) -> dict:
    from sklearn.linear_model import LogisticRegressionCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegressionCV(Cs=[0.01, 0.1, 1.0], cv=3, max_iter=2000))
    clf.fit(train_x, train_y)
    return {**glue_metrics(task, clf.predict(dev_x), dev_y), "C": float(clf[-1].C_[0])}


def run_one(task: str, model_name: str, model_dir: str, opts) -> dict:
    from transformers import AutoModel, AutoTokenizer

    glue_task = get_task(task)
    data = load_glue_data(glue_task, data_dir=opts.data_dir, max_train_samples=opts.train_samples, seed=42)
    dev = data.evals["validation"]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModel.from_pretrained(model_dir).eval()  # the pooler comes from the checkpoint (MiniLM has one)
    start = time.time()
    train_f, dev_f = features(model, tokenizer, data.train), features(model, tokenizer, dev)
    train_y, dev_y = np.asarray(data.train["label"]), np.asarray(dev["label"])
    majority = np.full_like(dev_y, np.bincount(train_y).argmax())
    result = {"task": task, "model": model_name, "model_dir": model_dir, "metric": METRIC[task],
              "train_examples": len(train_y), "dev_examples": len(dev_y),
              "majority": glue_metrics(task, majority, dev_y)[METRIC[task]]}
    for name in FEATURES:
        result[name] = probe(train_f[name], train_y, dev_f[name], dev_y, task)
    result["seconds"] = round(time.time() - start, 1)
    result["command"] = " ".join(["benchmarks/glue_probe.py", *sys.argv[1:]])
    result["versions"] = library_versions()
    return result


def table() -> str:
    lines = ["| task | start | train / dev | majority | probe: pooler (what BERT's head sees) | probe: CLS | probe: mean pooling |",
             "|---|---|---|---:|---:|---:|---:|"]
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        m = r["metric"]
        lines.append(f"| {r['task']} | {r['model']} | {r['train_examples']} / {r['dev_examples']} | "
                     f"{100 * r['majority']:.2f} | " + " | ".join(f"{100 * r[n][m]:.2f}" for n in FEATURES) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir")
    parser.add_argument("--models", nargs="+", default=[], help="NAME=MODEL_DIR")
    parser.add_argument("--tasks", nargs="+", default=["cola", "sst2", "rte"], choices=list(METRIC))
    parser.add_argument("--train-samples", type=int, default=4000, help="Training subset for the probe.")
    parser.add_argument("--table", action="store_true")
    opts = parser.parse_args(argv)
    if not opts.table:
        if not opts.data_dir or not opts.models:
            parser.error("--data-dir and --models are needed")
        os.makedirs(RESULTS_DIR, exist_ok=True)
        for task in opts.tasks:
            for name, model_dir in (m.split("=", 1) for m in opts.models):
                out = os.path.join(RESULTS_DIR, f"{task}__{name}.json")
                if os.path.isfile(out):
                    print(f"[cached] {task} {name}")
                    continue
                result = run_one(task, name, model_dir, opts)
                write_json_atomic(out, result)
                print(f"[done] {task} {name}: " + ", ".join(f"{n} {100 * result[n][result['metric']]:.2f}" for n in FEATURES)
                      + f" (majority {100 * result['majority']:.2f}, {result['seconds']} s)", flush=True)
    text = table()
    print(text)
    with open(f"{RESULTS_DIR}.md", "w") as f:
        f.write("# Linear probes on frozen features\n\nWritten by `python benchmarks/glue_probe.py --table` from "
                f"`benchmarks/results/glue_probe/*.json` (dev metric in %: accuracy; CoLA: Matthews correlation).\n\n"
                f"{text}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
