"""How sure is a difference between two arms of the GLUE study, given that both are scored on the same dev sentences?

The study's table (``glue_study.py --table``) gives each score the standard error of one dev set and reads a
difference of two arms as if their dev scores were independent. They are not: every run is scored on the same
sentences, and two fine-tuned models get most of them right or wrong together. This script scores each run's
reloaded best checkpoint (``<run>/best``) on the dev set once, checks that its predictions reproduce the score the run
recorded, and keeps them in the repository beside the arm summaries (``benchmarks/results/glue_study_predictions/``,
one file per arm, with the weights' content hash), so that the comparison outlives the run folders (``glue_study.py``
records them as each arm finishes; this script adds those of arms finished before). Then it bootstraps the dev
sentences: every resample draws the same sentences for every run, so the spread of the difference is the paired
one. The unpaired spread (each side resampled on its own) is printed beside it, as is the share of resamples in
which the difference is not positive.

What it does not measure: how much a run moves with its training seed (seeds share the dev set, so their spread is
the study's "Across seeds" table; this one is the dev set's), and the choices made on the same dev sentences (each
run's best epoch, a grid's two best runs, the sweep's best of 21), which the bootstrap holds fixed and which favour
the side that chose among more. Each call merges its rows into the results of earlier calls.

Usage::

    python benchmarks/paired_dev.py --data-dir ../shared/data/glue       # every comparison whose runs' predictions
                                                                          # are stored, or whose run folders are here
    python benchmarks/paired_dev.py --data-dir ../shared/data/glue --tasks cola --threads 2

Writes ``benchmarks/results/glue_study_paired.md`` and ``.json``, and ``glue_study_predictions/`` (beside
``GLUE_STUDY_RESULTS`` when that is set).
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), HERE]
from glue_study import SEEDS, TOP_POINTS  # noqa: E402  (the table's own points and seeds: the same comparisons)

from sparse_transfer._rundir import start_identity, starts_match, write_json_atomic, write_text_atomic  # noqa: E402

# glue_study.py's arm summaries (the same GLUE_STUDY_RESULTS keeps another study apart); the output beside them
RESULTS_DIR = os.environ.get("GLUE_STUDY_RESULTS", os.path.join(HERE, "results", "glue_study"))
NEEDED = (os.path.join("best", "model.safetensors"), "results.json")  # what a run folder must hold to be scored
# Grid against grid, as the Verdict reads them: (arm A, arm B, the start of B or None for A's own start).
GRID_PAIRS = [("paper", "dense_transfer", None), ("paper", "extended", None), ("paper", "rescaled_sweep", None),
              ("paper", "dense_transfer_paper_lrs", None), ("paper", "dense_transfer", "dense")]


def dev_set(task_name: str, data_dir: str, max_eval_samples: int | None = None, seed: int = 42):
    """The task and its dev set, the same file and order the GLUE command scores (and the same subset where a run was
    given ``--max_eval_samples``)."""
    from sparse_transfer.glue.data import load_glue_data
    from sparse_transfer.glue.tasks import get_task

    task = get_task(task_name)
    data = load_glue_data(task, data_dir=data_dir, max_eval_samples=max_eval_samples, seed=seed)
    return task, data.evals[task.eval_names[0]]


def dev_predictions(run_dir: str, task, dev, batch_size: int = 64) -> np.ndarray:
    """The predictions of a run's reloaded best checkpoint on ``dev`` (the dev set the run scored), checked against
    the score the run recorded."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    import sparse_transfer.hf.pooling  # noqa: F401  (registers the mean-pooling model type of --pooling mean runs)
    from sparse_transfer.glue.data import GlueData, tokenize_glue
    from sparse_transfer.glue.metrics import glue_metrics, glue_score, predictions_from_logits

    best = os.path.join(run_dir, "best")
    with open(os.path.join(run_dir, "results.json")) as f:
        results = json.load(f)
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
    recorded = results["best"]["score"]
    score = glue_score(task, glue_metrics(task, preds, np.asarray(dev["label"]), use_evaluate=False))
    if abs(score - recorded) > 1e-6:
        raise RuntimeError(
            f"{best} scores {score:.6f} on the dev set, but its run recorded {recorded:.6f} for its best epoch: the "
            "folder does not hold the checkpoint the run scored (a resumed or copied run?), or --data-dir is not the "
            "dev set it was scored on. Retrain that run, or give its data."
        )
    return preds


class PredictionsError(Exception):
    """A run's dev predictions are neither stored for it nor to be had from its run folder here, or do not hold."""


def predictions_path(results_dir: str, task: str, start: str, arm: str) -> str:
    return os.path.join(f"{results_dir}_predictions", f"{task}__{start}__{arm}.json")


def _encode(preds: np.ndarray) -> str:
    """Class predictions as one digit each: a line of 1,043 characters for CoLA, not 1,043 lines of JSON."""
    if preds.dtype.kind not in "iu" or preds.size and not 0 <= preds.min() <= preds.max() <= 9:
        raise ValueError("only class labels 0-9 are stored (the study's tasks are classification tasks)")
    return "".join(map(str, preds.tolist()))


def _read_stored(path: str) -> dict:
    fix = (f"restore it (`git checkout -- {path}`), or move it away and run paired_dev.py where the run folders are "
           "(it scores them again)")
    try:
        with open(path) as f:
            stored = json.load(f)
        for entry in stored["runs"].values():
            assert {"score", "weights", "predictions", "dev"} <= set(entry)
    except (OSError, ValueError, KeyError, TypeError, AttributeError, AssertionError) as e:
        raise PredictionsError(f"{path} is not a predictions file this script wrote ({type(e).__name__}: {e}): {fix}")
    return stored


def _check_stored(entry: dict, name: str, path: str, task, dev) -> np.ndarray:
    """A stored entry's predictions, once they give the score they were stored for on ``dev`` (the caller's dev set):
    a file edited by hand, or another dev set than the one the run was scored on, is an error, not a comparison."""
    from sparse_transfer.glue.metrics import glue_metrics, glue_score

    text, labels = entry["predictions"], np.asarray(dev["label"])
    if not (isinstance(text, str) and text.isdigit() and len(text) == labels.size):
        raise PredictionsError(
            f"{path}: run {name!r} holds {len(text)} predictions of {'' if str(text).isdigit() else 'not only '}"
            f"digits, for a dev set of {labels.size}: the file was edited or cut. Restore it (`git checkout -- {path}`).")
    preds = np.array([int(c) for c in text])
    score = glue_score(task, glue_metrics(task, preds, labels, use_evaluate=False))
    if abs(score - entry["score"]) > 1e-6:
        raise PredictionsError(
            f"{path}: run {name!r}'s stored predictions score {score:.6f} on this dev set, not the {entry['score']:.6f} "
            "they were stored for: the --data-dir given is not the dev set the run was scored on, or the file was "
            f"edited. Give the run's data (GLUE's own files), or restore the file (`git checkout -- {path}`).")
    return preds


def arm_predictions(arm_json: dict, arm_dir: str, data_dir: str, results_dir: str | None = None,
                    names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The dev predictions of an arm's runs (``names``, default all), by run name (``"single"`` for a single-run arm).

    Read from the arm's predictions file where it holds them for the score the arm summary records, the same start
    and, where the run folder below ``arm_dir`` is here, the weights in its ``best/`` (the checkpoint, not the record,
    decides), and where they give that score on the dev set at ``data_dir``; otherwise scored from the run folder
    (``dev_predictions``) and added to the file (under a lock: the processes that share a grid, and this script, may
    write one file at once). Raises ``PredictionsError`` saying what is wrong and what to do."""
    from filelock import FileLock

    task_name, start, arm = arm_json["task"], arm_json["model"], arm_json["arm"]
    path = predictions_path(results_dir or RESULTS_DIR, task_name, start, arm)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with FileLock(os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.lock")):
        stored = _read_stored(path) if os.path.exists(path) else {"runs": {}}
        recorded, current = stored.get("start"), arm_json.get("start")
        if stored["runs"] and (recorded or current) and not starts_match(recorded, current or {}):
            raise PredictionsError(
                f"{path} holds predictions of runs from another start than the arm {task_name} {start} {arm} records "
                f"(the name {start!r} was given to other weights): move that file away with the arm's old results.")
        stored = {"task": task_name, "start": current, "arm": arm, "runs": stored["runs"]}
        scores = {r["name"]: r["score"] for r in arm_json["runs"]}
        found, devs, changed = {}, {}, False

        def dev_of(subset):
            if subset not in devs:
                devs[subset] = dev_set(task_name, data_dir, *subset)
            return devs[subset]

        for name in names or list(scores):
            entry = stored["runs"].get(name)
            run_dir = arm_dir if arm_json["summary"] == "single run" else os.path.join(arm_dir, name)
            lacking = [f for f in NEEDED if not os.path.exists(os.path.join(run_dir, f))]
            weights = None if lacking else start_identity(os.path.join(run_dir, "best"))["content_sha256"]
            if entry is not None and entry["score"] == scores[name] and weights in (None, entry["weights"]):
                subset = (entry["dev"].get("max_eval_samples"), entry["dev"].get("seed", 42))
                found[name] = _check_stored(entry, name, path, *dev_of(subset))
                continue
            if lacking:
                raise PredictionsError(
                    f"{run_dir} lacks {' and '.join(lacking)}, and {path} holds no predictions of it for the score its "
                    f"arm recorded ({scores[name]:.6f}): the run was trained where this runs/ folder is not")
            with open(os.path.join(run_dir, "results.json")) as f:
                recipe = json.load(f).get("recipe", {})
            subset = (recipe.get("max_eval_samples"), recipe.get("seed", 42))
            print(f"[dev] {task_name} {start} {arm} {name}", flush=True)
            try:
                preds = dev_predictions(run_dir, *dev_of(subset))
            except RuntimeError as e:
                raise PredictionsError(str(e)) from None
            stored["runs"][name] = {"score": scores[name], "weights": weights, "predictions": _encode(preds),
                                    "dev": {"max_eval_samples": subset[0], "seed": subset[1], "examples": int(preds.size)}}
            found[name], changed = preds, True
        if changed:
            write_json_atomic(path, stored)
    return found


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
    its single run (the arm's folder itself). The runs the GLUE command's grid summary named where the arm recorded
    them (``summary_runs``); else ranked as it ranks them, NaN last, ties in the arm's order (the paired SE can depend
    on which tied run is taken; the difference does not)."""
    if arm_json["summary"] == "single run":
        return [()]
    if arm_json.get("summary_runs"):
        return [(name,) for name in arm_json["summary_runs"]]
    from sparse_transfer.glue.run import _score_key  # the GLUE command's own ranking: NaN last

    runs = sorted(arm_json["runs"], key=lambda r: _score_key(r["score"]), reverse=True)
    return [(r["name"],) for r in runs[: 2 if arm_json["summary"] == "mean_top2" else 1]]


def load_arm(task: str, start: str, arm: str) -> dict | None:
    path = os.path.join(RESULTS_DIR, f"{task}__{start}__{arm}.json")
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def top_lrs_arm(task: str, start: str, schedule: str, seed: int) -> str | None:
    """The arm holding ``schedule``'s runs at the two top LRs for ``seed``, as glue_study's ``top_points`` reads them:
    ``<schedule>_top_lrs[_seedN]`` if it exists, else for seed 0 the full grid; ``None`` unless it has both points."""
    grids = {"paper": "paper", "dense_transfer": "dense_transfer_paper_lrs"} if not seed else {}
    arm = f"{schedule}_top_lrs{f'_seed{seed}' if seed else ''}"
    if load_arm(task, start, arm) is None:
        arm = grids.get(schedule)
    r = load_arm(task, start, arm) if arm else None
    return arm if r and set(TOP_POINTS) <= {run["name"] for run in r["runs"]} else None


def comparisons(tasks: list[str]) -> list[dict]:
    """Every comparison the results page reads whose arm summaries exist: the schedules at equal LRs per seed and
    over all seeds together, and grid against grid. Each side is a list of run folders, ``(start, arm, *point)``.
    A comparison with one side recorded and the other not is said, not dropped in silence."""
    found = []
    starts = sorted({name.split("__")[1] for name in os.listdir(RESULTS_DIR) if name.endswith(".json")})
    for task in tasks:
        for start in starts:
            pooled_a, pooled_b, seeds = [], [], []
            for seed in (0, *SEEDS):
                arms = {s: top_lrs_arm(task, start, s, seed) for s in ("paper", "dense_transfer", "extended")}
                if not arms["paper"] or not arms["dense_transfer"]:
                    if arms["paper"] or arms["dense_transfer"]:
                        print(f"[skip] {task} {start} equal LRs, seed {seed}: only "
                              f"{arms['paper'] or arms['dense_transfer']} has both points")
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
                    if a and start_b is None:  # a start's own grids: the other grid not (yet) run there
                        print(f"[skip] {task} {start} {arm_a} - {arm_b}: no {arm_b} arm at {start}")
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
            print(f"[skip] {task_name}: no comparison has both sides recorded")
            continue
        task, dev = dev_set(task_name, args.data_dir)
        labels, metric = np.asarray(dev["label"]), task.metrics[0]
        preds: dict[tuple, np.ndarray] = {}
        for c in todo:
            try:
                for r in c["a"] + c["b"]:
                    if r not in preds:
                        start, arm, *point = r
                        preds[r] = arm_predictions(
                            load_arm(task_name, start, arm), os.path.join(args.runs, task_name, start, arm),
                            args.data_dir, names=[point[0] if point else "single"])[point[0] if point else "single"]
            except PredictionsError as e:
                print(f"[skip] {task_name} {c['start']} {c['what']}: {e}")
                continue
            subsets = [r for r in c["a"] + c["b"] if preds[r].size != labels.size]
            if subsets:  # a run scored on part of the dev set (--max_eval_samples): not the same sentences
                print(f"[skip] {task_name} {c['start']} {c['what']}: {'/'.join(subsets[0])} was scored on "
                      f"{preds[subsets[0]].size} of the {labels.size} dev examples (--max_eval_samples)")
                continue
            stats = bootstrap(np.stack([preds[r] for r in c["a"]]), np.stack([preds[r] for r in c["b"]]), labels,
                              metric, args.resamples)
            rows.append({**c, **stats, "metric": metric, "dev_examples": int(labels.size)})
            print(row_line(rows[-1]), flush=True)
    if not rows:
        print("no comparison had its predictions or run folders here; the results files are left as they were")
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
        "checkpoint (predictions checked against the score the run recorded, kept in `glue_study_predictions/`). "
        "Bootstrap over the dev sentences, "
        f"{' or '.join(str(n) for n in sorted({r['resamples'] for r in rows}))} resamples, the same sentences for "
        "every run; in points. Not in these SEs: the "
        "training seed's spread (the study's \"Across seeds\" table), and the choices made on the same dev sentences "
        "(each run's best epoch, a grid's two best runs, the sweep's best of 21), which the bootstrap holds fixed and "
        "which favour the side that chose among more.", "",
        "| task | start | difference | runs | observed | paired SE | paired 95% interval | share of resamples <= 0 "
        "| unpaired SE |", "|---|---|---|---|---:|---:|---|---:|---:|", *map(row_line, rows), ""])
    write_text_atomic(f"{out}.md", text)
    return f"{out}.md"


if __name__ == "__main__":
    main()
