"""How sure is a difference between two arms of the GLUE study, given that both are scored on the same dev sentences?

The study's table (``glue_study.py --table``) gives each score the standard error of one dev set and reads a
difference of two arms as if their dev scores were independent. They are not: every run is scored on the same
sentences, and two fine-tuned models get most of them right or wrong together. This script scores each run's
reloaded best checkpoint (``<run>/best``) on the dev set once, keeps the per-sentence predictions beside the run
(``<run>/dev_predictions.json``, keyed by the weights' SHA-256), checks that they reproduce the score the run recorded,
and then bootstraps the dev sentences: every resample draws the same sentences for every run, so the spread of the
difference is the paired one. The unpaired spread (each side resampled on its own) is printed beside it, as is the
share of resamples in which the difference is not positive.

What it does not measure: how much a run moves with its training seed (seeds share the dev set, so their spread is
the study's "Across seeds" table; this one is the dev set's), and the choices made on the same dev sentences (each
run's best epoch, a grid's two best runs, the sweep's best of 21), which the bootstrap holds fixed and which favour
the side that chose among more. Each call merges its rows into the results of earlier calls.

Usage::

    python benchmarks/paired_dev.py --data-dir ../shared/data/glue       # every comparison whose runs exist
    python benchmarks/paired_dev.py --data-dir ../shared/data/glue --tasks cola --threads 2

Writes ``benchmarks/results/glue_study_paired.md`` and ``.json`` (beside ``GLUE_STUDY_RESULTS`` when that is set).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from sparse_transfer._rundir import write_json_atomic  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
# glue_study.py's arm summaries (the same GLUE_STUDY_RESULTS keeps another study apart); the output beside them
RESULTS_DIR = os.environ.get("GLUE_STUDY_RESULTS", os.path.join(HERE, "results", "glue_study"))
TOP_POINTS = ("lr0.0002_dropout0.1", "lr0.0003_dropout0.1")
NEEDED = (os.path.join("best", "model.safetensors"), "results.json")  # what a run folder must hold to be scored
SEEDS = range(10)  # as glue_study's top_points: seed 0, then the *_top_lrs_seed<N> arms
# Grid against grid, as the Verdict reads them: (arm A, arm B, the start of B or None for A's own start).
GRID_PAIRS = [("paper", "dense_transfer", None), ("paper", "extended", None), ("paper", "rescaled_sweep", None),
              ("paper", "dense_transfer_paper_lrs", None), ("paper", "dense_transfer", "dense")]


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 24), b""):
            digest.update(block)
    return digest.hexdigest()


def dev_set(task_name: str, data_dir: str):
    """The task and its dev labels (the same file and order the GLUE command scores)."""
    from sparse_transfer.glue.data import load_glue_data
    from sparse_transfer.glue.tasks import get_task

    task = get_task(task_name)
    data = load_glue_data(task, data_dir=data_dir)
    return task, data.evals[task.eval_names[0]]


def dev_predictions(run_dir: str, task, dev, batch_size: int = 64) -> np.ndarray:
    """The best checkpoint's dev predictions, cached beside the run and checked against its recorded score."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    import sparse_transfer.hf.pooling  # noqa: F401  (registers the mean-pooling model type of --pooling mean runs)
    from sparse_transfer.glue.data import GlueData, tokenize_glue
    from sparse_transfer.glue.metrics import glue_metrics, glue_score, predictions_from_logits

    best = os.path.join(run_dir, "best")
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
    weights = sha256(os.path.join(best, "model.safetensors"))
    cache = os.path.join(run_dir, "dev_predictions.json")
    preds = None
    if os.path.exists(cache):
        with open(cache) as f:
            cached = json.load(f)
        if cached.get("model_sha256") == weights:
            preds = np.asarray(cached["predictions"])
    if preds is None:
        tokenizer = AutoTokenizer.from_pretrained(best)
        model = AutoModelForSequenceClassification.from_pretrained(best).eval()
        max_len = int(results.get("recipe", {}).get("max_seq_length") or 128)
        data = tokenize_glue(GlueData(task=task, train=dev.select([]), evals={"dev": dev}, source={}), tokenizer, max_len)
        features = data.evals["dev"].remove_columns(["label"])
        collate = DataCollatorWithPadding(tokenizer)
        logits = []
        with torch.no_grad():
            for i in range(0, len(features), batch_size):
                batch = collate([features[j] for j in range(i, min(i + batch_size, len(features)))])
                logits.append(model(**batch).logits.float().numpy())
        preds = predictions_from_logits(task, np.concatenate(logits))
        write_json_atomic(cache, {"model_sha256": weights, "predictions": preds.tolist()})
    recorded = results["best"]["score"]
    score = glue_score(task, glue_metrics(task, preds, np.asarray(dev["label"]), use_evaluate=False))
    if abs(score - recorded) > 1e-6:
        raise RuntimeError(
            f"{best} scores {score:.6f} on the dev set, but its run recorded {recorded:.6f} for its best epoch: the "
            "folder does not hold the checkpoint the run scored (a resumed or copied run?). Retrain that run."
        )
    return preds


def metric_per_resample(counts: np.ndarray, preds: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """``metric`` of each run (columns) on each resample of the dev set (rows of ``counts``: how often each
    sentence is drawn)."""
    if metric == "accuracy":
        return counts @ (preds == labels).T.astype(np.float64) / counts.sum(1, keepdims=True)
    if metric != "matthews_correlation":
        raise ValueError(f"no bootstrap for {metric}")
    pos, neg = preds == 1, preds == 0
    tp, fp = counts @ (pos & (labels == 1)).T, counts @ (pos & (labels == 0)).T
    tn, fn = counts @ (neg & (labels == 0)).T, counts @ (neg & (labels == 1)).T
    tp, fp, tn, fn = (x.astype(np.float64) for x in (tp, fp, tn, fn))
    denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    # sklearn's convention: 0 where a row or column of the confusion matrix is empty (a constant predictor)
    return np.divide(tp * tn - fp * fn, denom, out=np.zeros_like(denom), where=denom > 0)


def bootstrap(a: np.ndarray, b: np.ndarray, labels: np.ndarray, metric: str, resamples: int, seed: int = 0) -> dict:
    """The difference mean(metric of the runs in ``a``) - mean(... in ``b``), in points: observed, its paired and
    unpaired bootstrap SEs, the paired 95% percentile interval and the share of paired resamples at or below 0."""
    n = labels.size
    rng = np.random.default_rng(seed)
    full = np.ones((1, n))
    observed = 100 * (metric_per_resample(full, a, labels, metric).mean() - metric_per_resample(full, b, labels, metric).mean())
    paired, unpaired = [], []
    for start in range(0, resamples, 1000):  # in blocks: a (1000 x n) count matrix at a time
        size = min(1000, resamples - start)
        counts, other = rng.multinomial(n, np.full(n, 1 / n), size=(2, size))
        sa = metric_per_resample(counts, a, labels, metric).mean(1)
        paired.append(sa - metric_per_resample(counts, b, labels, metric).mean(1))
        unpaired.append(sa - metric_per_resample(other, b, labels, metric).mean(1))
    paired, unpaired = 100 * np.concatenate(paired), 100 * np.concatenate(unpaired)
    low, high = np.percentile(paired, [2.5, 97.5])
    # rounded: equal sums can differ by 1e-14 in floats and print as "-0.00"
    return {"difference": round(float(observed), 9) + 0.0, "paired_se": float(paired.std(ddof=1)),
            "unpaired_se": float(unpaired.std(ddof=1)), "paired_95": [float(low), float(high)],
            "share_at_or_below_0": float((paired <= 0).mean()), "resamples": resamples}


def chosen_runs(arm_json: dict) -> list[tuple[str, ...]]:
    """The runs an arm's summary is made of, as paths below the arm's folder: its two best (mean_top2), its best, or
    its single run (the arm's folder itself). Ties keep the arm's order (the paired SE can depend on which tied run is
    taken; the difference does not)."""
    if arm_json["summary"] == "single run":
        return [()]
    runs = sorted(arm_json["runs"], key=lambda r: -r["score"])
    return [(r["name"],) for r in runs[: 2 if arm_json["summary"] == "mean_top2" else 1]]


def load_arm(task: str, start: str, arm: str) -> dict | None:
    path = os.path.join(RESULTS_DIR, f"{task}__{start}__{arm}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def top_lrs_arm(task: str, start: str, schedule: str, seed: int) -> str | None:
    """The arm holding ``schedule``'s runs at the two top LRs for ``seed``, as glue_study's ``top_points`` reads them:
    ``<schedule>_top_lrs[_seedN]``, or for seed 0 the full grid that contains both points."""
    suffix = f"_seed{seed}" if seed else ""
    grids = {"paper": "paper", "dense_transfer": "dense_transfer_paper_lrs"} if not seed else {}
    for arm in (f"{schedule}_top_lrs{suffix}", grids.get(schedule)):
        r = load_arm(task, start, arm) if arm else None
        if r and set(TOP_POINTS) <= {run["name"] for run in r["runs"]}:
            return arm
    return None


def comparisons(tasks: list[str]) -> list[dict]:
    """Every comparison the results page reads whose arm summaries exist: the schedules at equal LRs per seed and
    over all seeds together, and grid against grid. Each side is a list of run folders, ``(start, arm, *point)``."""
    found = []
    starts = sorted({name.split("__")[1] for name in os.listdir(RESULTS_DIR) if name.endswith(".json")})
    for task in tasks:
        for start in starts:
            pooled_a, pooled_b, seeds = [], [], []
            for seed in SEEDS:
                arms = {s: top_lrs_arm(task, start, s, seed) for s in ("paper", "dense_transfer", "extended")}
                if not arms["paper"] or not arms["dense_transfer"]:
                    continue
                a, b = ([(start, arms[s], p) for p in TOP_POINTS] for s in ("paper", "dense_transfer"))
                found.append({"task": task, "start": start, "what": f"equal LRs, seed {seed}: paper - dense transfer",
                              "a": a, "b": b})
                pooled_a, pooled_b, seeds = pooled_a + a, pooled_b + b, seeds + [str(seed)]
                if arms["extended"]:
                    e = [(start, arms["extended"], p) for p in TOP_POINTS]
                    found += [{"task": task, "start": start, "a": e, "b": b,
                               "what": f"equal LRs, seed {seed}: extended - dense transfer (the 8 epochs)"},
                              {"task": task, "start": start, "a": a, "b": e,
                               "what": f"equal LRs, seed {seed}: paper - extended (staging and rewind)"}]
            if len(seeds) > 1:
                found.append({"task": task, "start": start, "a": pooled_a, "b": pooled_b,
                              "what": f"equal LRs, seeds {' + '.join(seeds)} together: paper - dense transfer"})
            for arm_a, arm_b, start_b in GRID_PAIRS:
                if start_b == start:  # the dense model against itself: its own pair above
                    continue
                a, b = load_arm(task, start, arm_a), load_arm(task, start_b or start, arm_b)
                if a and b and start != (start_b or start):
                    what = f"{arm_a} grid - the {start_b} model's {arm_b} grid"
                elif a and b:
                    what = f"{arm_a} ({a['summary']}) - {arm_b} ({b['summary']})"
                else:
                    continue
                found.append({"task": task, "start": start, "what": what,
                              "a": [(start, arm_a, *r) for r in chosen_runs(a)],
                              "b": [(start_b or start, arm_b, *r) for r in chosen_runs(b)]})
    return found


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-dir", required=True, help="GLUE's folder (../shared/data/glue)")
    parser.add_argument("--runs", default="runs/glue_study", help="glue_study.py's --runs")
    parser.add_argument("--tasks", nargs="+", default=["cola", "sst2", "rte"])
    parser.add_argument("--resamples", type=int, default=10000)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    rows = []
    for task_name in args.tasks:
        todo = comparisons([task_name])
        if not todo:
            continue
        task, dev = dev_set(task_name, args.data_dir)
        labels, metric = np.asarray(dev["label"]), task.metrics[0]
        cache: dict[tuple, np.ndarray] = {}
        for c in todo:
            missing = [r for r in c["a"] + c["b"]
                       if not all(os.path.exists(os.path.join(args.runs, task_name, *r, f)) for f in NEEDED)]
            if missing:
                print(f"[skip] {task_name} {c['start']} {c['what']}: {os.path.join(args.runs, task_name, *missing[0])} "
                      f"lacks {' or '.join(NEEDED)} (the runs were trained where this runs/ folder is not?)")
                continue
            for r in c["a"] + c["b"]:
                if r not in cache:
                    print(f"[dev] {task_name} {'/'.join(r)}", flush=True)
                    cache[r] = dev_predictions(os.path.join(args.runs, task_name, *r), task, dev)
            stats = bootstrap(np.stack([cache[r] for r in c["a"]]), np.stack([cache[r] for r in c["b"]]), labels,
                              metric, args.resamples)
            rows.append({**c, **stats, "metric": metric, "dev_examples": int(labels.size)})
            print(row_line(rows[-1]), flush=True)
    if not rows:
        print("no comparison had its run folders here; the results files are left as they were")
        return
    print(f"wrote {write_results(rows)}")


def row_line(row: dict) -> str:
    lo, hi = row["paired_95"]
    return (f"| {row['task']} | {row['start']} | {row['what']} | {len(row['a'])} vs {len(row['b'])} | "
            f"{row['difference']:+.2f} | {row['paired_se']:.2f} | {lo:+.2f} to {hi:+.2f} | "
            f"{row['share_at_or_below_0']:.3f} | {row['unpaired_se']:.2f} |")


def write_results(rows: list[dict]) -> str:
    """Merges ``rows`` into the results of earlier calls (a row per task, start and comparison: a call with
    ``--tasks cola``, or on a machine with only some of the runs, replaces only what it measured) and writes the
    JSON and the table."""
    out = f"{RESULTS_DIR}_paired"
    merged = {}
    if os.path.exists(f"{out}.json"):
        with open(f"{out}.json") as f:
            merged = {(r["task"], r["start"], r["what"]): r for r in json.load(f)}
    merged.update({(r["task"], r["start"], r["what"]): r for r in rows})
    order = {"cola": 0, "sst2": 1, "rte": 2}
    rows = sorted(merged.values(), key=lambda r: (order.get(r["task"], 9), r["task"], r["start"]))
    write_json_atomic(f"{out}.json", rows)
    text = "\n".join([
        "# The GLUE study's differences, paired on the dev sentences", "",
        "Generated by `python benchmarks/paired_dev.py --data-dir ../shared/data/glue` from each run's reloaded best "
        "checkpoint (predictions checked against the score the run recorded). Bootstrap over the dev sentences, "
        f"{rows[0]['resamples']} resamples, the same sentences for every run; in points. Not in these SEs: the "
        "training seed's spread (the study's \"Across seeds\" table), and the choices made on the same dev sentences "
        "(each run's best epoch, a grid's two best runs, the sweep's best of 21), which the bootstrap holds fixed and "
        "which favour the side that chose among more.", "",
        "| task | start | difference | runs | observed | paired SE | paired 95% interval | share of resamples <= 0 "
        "| unpaired SE |", "|---|---|---|---|---:|---:|---|---:|---:|", *map(row_line, rows), ""])
    tmp = f"{out}.md.tmp{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, f"{out}.md")
    return f"{out}.md"


if __name__ == "__main__":
    main()
