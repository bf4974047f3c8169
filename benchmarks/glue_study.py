"""The miniature of the paper's Table 5/6: sparse transfer recipes on real GLUE data, every run through the GLUE command.

Tasks x starting points x arms, each arm one ``python -m sparse_transfer.glue`` invocation (a grid or a single run):

- ``paper``: the task's recipe (``recipes/glue/<task>.yaml``: gradual unfreezing, LR rewind, L+2 epochs) with its grid
  LR {1e-4, 2e-4, 3e-4} x dropout {0.05, 0.1}, mean of the two best;
- ``dense_transfer``: 3 epochs, everything trainable, LR grid {2e-5, 3e-5, 5e-5}, mean of the two best;
- ``extended``: the same for 8 epochs;
- ``rescaled_sweep``: epochs 1-7 x that LR grid, best run (21 runs, 3 of them dense transfer's; a GPU arm, run on
  CPU at one start where no GPU was lent);
- ``*_single``: the recipe's default as one run (no grid), for CPU sessions and for "how close does the default come";
- diagnosis: ``dense_transfer_lr1e-4`` / ``extended_lr1e-4`` (those schedules at the paper's default learning rate)
  and ``dense_transfer_paper_lrs`` (the dense-transfer schedule over the paper's LR grid);
- the fix, an option: ``*_mean`` arms (``--pooling mean``: the classifier reads the mean of the token states, the
  way sentence-transformers trained all-MiniLM-L6-v2, instead of the CLS pooler).

A starting point is a name and a folder (``--models 90=DIR``); each arm records which weights it started from (the
SHA-256 the GLUE command records), and a new arm under a name whose earlier arms came from other weights (the model
was trained again: the weights differ, even with the same recipe) is refused, so the table never compares arms of
two different models under one name: give the new weights a new name (``90b=DIR``).

Every run folder lives under ``--runs`` (outside the repository; the GLUE command caches finished runs and grid
points, so the study continues across sessions); each finished arm's summary is written to
``benchmarks/results/glue_study/<task>__<model>__<arm>.json`` and ``--table`` prints the tables: the grids side by
side (the paper's Table 5/6), then every arm (score, gap to the dense reference, share of the dense-transfer gap the
paper's recipe closes, one-seed standard error), the 1-run defaults against their grids, the schedules at equal LRs.

Usage::

    python benchmarks/glue_study.py --data-dir GLUE_DIR --models dense=MODEL_DIR 90=SPARSE_90_DIR \\
        --tasks rte --arms paper dense_transfer --threads 1
    # two CPU cores (or GPUs) sharing every grid: the same command twice, --grid-shard 0/2 and 1/2
    python benchmarks/glue_study.py ... --threads 1 --grid-shard 0/2 & python benchmarks/glue_study.py ... --grid-shard 1/2
    python benchmarks/glue_study.py --table
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import os
import statistics
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [REPO, os.path.join(REPO, "benchmarks")]

from sparse_transfer._rundir import start_identity, starts_match, write_json_atomic, write_text_atomic  # noqa: E402

RESULTS_DIR = os.environ.get("GLUE_STUDY_RESULTS", os.path.join(REPO, "benchmarks", "results", "glue_study"))
ARMS = {
    "paper": ["--grid"],  # the task's own recipe
    "paper_single": [],
    "dense_transfer": ["--recipe", "dense_transfer", "--grid"],
    "dense_transfer_single": ["--recipe", "dense_transfer"],
    "extended": ["--recipe", "extended", "--grid"],
    "extended_single": ["--recipe", "extended"],
    "rescaled_sweep": ["--recipe", "rescaled_sweep", "--grid"],
    # Diagnosis arms (never replacing the recipes above): the dense-transfer schedule at the paper's learning rates,
    # which separates what the paper's schedule (gradual unfreezing, LR rewind, L+2 epochs) does from what its
    # 5x higher learning rate does.
    "dense_transfer_lr1e-4": ["--recipe", "dense_transfer", "--learning_rate", "1e-4"],
    "extended_lr1e-4": ["--recipe", "extended", "--learning_rate", "1e-4"],
    "dense_transfer_paper_lrs": ["--recipe", "dense_transfer", "--grid", "--grid_learning_rates", "1e-4", "2e-4", "3e-4"],
    # Clipping at 1.0 (transformers' default) sees only the gradient that is applied (the pruned entries are zeroed
    # before it): the paper's recipe without clipping, to see what that changes.
    "paper_single_noclip": ["--max_grad_norm", "0"],
    # The fix a user of a sentence-transformers encoder would want (an option, recorded as its own arm): the
    # classifier reads the mean of the token states (--pooling mean) instead of the CLS pooler.
    "paper_single_mean": ["--pooling", "mean"],
    "paper_mean": ["--pooling", "mean", "--grid"],
    "dense_transfer_single_mean": ["--recipe", "dense_transfer", "--pooling", "mean"],
    # The 1-run setting the SST-2 grids point to (their best runs are at lr 3e-4), as one run of each schedule.
    "paper_single_lr3e-4": ["--learning_rate", "3e-4"],
    "dense_transfer_lr3e-4": ["--recipe", "dense_transfer", "--learning_rate", "3e-4"],
    # The schedule against the schedule at the two LRs where both grids peak (dropout 0.1), and the same again with
    # another seed (which also draws another SST-2 subsample): is the paper's schedule's edge at equal LRs more than
    # one seed's noise?
    "paper_top_lrs": ["--grid", "--grid_learning_rates", "2e-4", "3e-4", "--grid_dropouts", "0.1"],
    "dense_transfer_top_lrs": ["--recipe", "dense_transfer", "--grid", "--grid_learning_rates", "2e-4", "3e-4"],
    # 8 epochs like the paper's, every block trainable from the start and no LR rewind, at the same two LRs: of the
    # paper's edge over dense transfer at equal LRs, how much is its epochs rather than its staging and rewind?
    "extended_top_lrs": ["--recipe", "extended", "--grid", "--grid_learning_rates", "2e-4", "3e-4"],
}
# The equal-LR arms' two points, and the arms again with other seeds (``paper_top_lrs_seed1`` ...), each seed also
# drawing another SST-2 subsample; ``top_points`` (and paired_dev.py) read them back by their suffix.
TOP_POINTS = ("lr0.0002_dropout0.1", "lr0.0003_dropout0.1")
SEEDS = (1, 2)
ARMS.update({f"{arm}_seed{seed}": [*ARMS[arm], "--seed", str(seed)]
             for arm in ("paper_top_lrs", "dense_transfer_top_lrs") for seed in SEEDS})
METRIC = {"rte": "accuracy", "sst2": "accuracy", "cola": "matthews_correlation"}
# Runs that are one and the same run (same recipe, learning rate, dropout, seed and start) in the folders of several
# arms: a single-run arm and a grid's point, or points of two grids. Before an arm runs, each of its folders that
# does not exist yet gets a copy of an equivalent finished run, which the GLUE command then finds finished (it checks
# the recipe and the starting weights) instead of training it again. Each entry: (arm, grid point or None).
SAME_RUNS = [
    {("paper_single", None), ("paper", "lr0.0001_dropout0.1")},
    {("dense_transfer_single", None), ("dense_transfer", "lr2e-05_dropout0.1"),
     ("rescaled_sweep", "lr2e-05_dropout0.1_epochs3")},
    # The sweep's 3-epoch runs are the dense-transfer recipe's (the same recipe, warm-up and decay over 3 epochs).
    {("dense_transfer", "lr3e-05_dropout0.1"), ("rescaled_sweep", "lr3e-05_dropout0.1_epochs3")},
    {("dense_transfer", "lr5e-05_dropout0.1"), ("rescaled_sweep", "lr5e-05_dropout0.1_epochs3")},
    {("extended_single", None), ("extended", "lr2e-05_dropout0.1")},
    {("paper_single_lr3e-4", None), ("paper", "lr0.0003_dropout0.1"), ("paper_top_lrs", "lr0.0003_dropout0.1")},
    {("paper", "lr0.0002_dropout0.1"), ("paper_top_lrs", "lr0.0002_dropout0.1")},
    {("dense_transfer_lr1e-4", None), ("dense_transfer_paper_lrs", "lr0.0001_dropout0.1")},
    {("dense_transfer_lr3e-4", None), ("dense_transfer_paper_lrs", "lr0.0003_dropout0.1"),
     ("dense_transfer_top_lrs", "lr0.0003_dropout0.1")},
    {("dense_transfer_paper_lrs", "lr0.0002_dropout0.1"), ("dense_transfer_top_lrs", "lr0.0002_dropout0.1")},
]


def arm_command(task: str, model_dir: str, arm: str, opts, run_dir: str) -> list[str]:
    command = [sys.executable, "-m", "sparse_transfer.glue", "--task", task, "--model", model_dir, "--data_dir",
               opts.data_dir, "--output_dir", run_dir, "--disable_tqdm", "true",
               # a checkpoint per epoch (the last one kept): a run cut by the end of a session resumes where it stopped
               "--save_strategy", "epoch", "--save_total_limit", "1", *ARMS[arm]]
    if task == "sst2" and opts.sst2_train_samples:
        command += ["--max_train_samples", str(opts.sst2_train_samples)]
    if "--grid" in ARMS[arm] and opts.grid_shard != "0/1":
        command += ["--grid_shard", opts.grid_shard]
    return command + opts.glue_args.split()


def summarize(task: str, model: str, arm: str, run_dir: str, command: list[str], seconds: float) -> dict:
    metric = METRIC[task]
    grid_path = os.path.join(run_dir, "grid_results.json")
    if os.path.isfile(grid_path):
        with open(grid_path) as f:
            grid = json.load(f)
        runs = grid["runs"]
        score = grid["summary"][metric]
        how = grid["summary"]["how"]
        per_epoch = {}
        for r in runs:
            with open(os.path.join(r["run_dir"], "results.json")) as f:
                per_epoch[r["name"]] = [e[metric] for e in json.load(f)["per_epoch"]]
        detail = [{"name": r["name"], "learning_rate": r["learning_rate"], "dropout": r["dropout"],
                   "epochs": r["epochs"], "score": r["best"][metric], "best_epoch": r["best"]["epoch"]} for r in runs]
        chosen = grid["summary"]["runs"]  # the runs the summary is the mean of, as the GLUE command ranked them
    else:
        with open(os.path.join(run_dir, "results.json")) as f:
            results = json.load(f)
        score, how = results["best"][metric], "single run"
        per_epoch = {"single": [e[metric] for e in results["per_epoch"]]}
        detail = [{"name": "single", "learning_rate": results["recipe"].get("learning_rate"),
                   "dropout": results["recipe"].get("dropout"), "epochs": results["epochs"], "score": score,
                   "best_epoch": results["best"]["epoch"]}]
        chosen = ["single"]
    first = os.path.join(run_dir, detail[0]["name"]) if how != "single run" else run_dir
    with open(os.path.join(first, "results.json")) as f:
        one = json.load(f)
    return {"task": task, "model": model, "arm": arm, "metric": metric, "score": score, "summary": how,
            "summary_runs": chosen, "runs": detail, "per_epoch": per_epoch, "start": one["start"],
            "train_examples": one["data"].get("train_examples"),
            "dev_examples": sum((one["data"].get("eval_examples") or {}).values()) or None, "sparsity": one["sparsity"]["mask_sparsity"],
            "command": " ".join(command[1:]), "wall_seconds_last_session": round(seconds, 1),
            "versions": one["versions"]}


def record_predictions(opts, summary: dict, run_dir: str) -> None:
    """Keeps the dev predictions of the arm's runs in the repository, beside its summary (``paired_dev.py``; each
    checked to reproduce its run's score): the differences paired on the dev sentences then outlive the run folders,
    which a replaced machine loses with ``runs/`` (2026-12-02: CoLA's seed-2 runs, finished but never paired). Where
    they cannot be had, says why and goes on: the arm's summary stands without them, and the next arms still run."""
    import paired_dev

    try:
        paired_dev.arm_predictions(summary, run_dir, opts.data_dir, results_dir=RESULTS_DIR)
    except paired_dev.PredictionsError as e:
        print(f"[predictions] {summary['task']} {summary['model']} {summary['arm']}: not recorded, so this arm cannot "
              f"be paired once its run folders are gone (paired_dev.py, run while they exist, records them): {e}",
              flush=True)


def check_start(model: str, model_dir: str) -> None:
    """Refuses to add an arm under the start name ``model`` unless every arm already recorded under that name came
    from the weights now in ``model_dir``."""
    current = start_identity(model_dir)
    key = "content_sha256" if "content_sha256" in current else "commit"  # a folder, or a Hub id
    other, bytes_only = [], set()
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        if r["model"] == model and not starts_match(r.get("start"), current):
            other.append(os.path.basename(path))
            if "sha256" in (r.get("start") or {}) and "content_sha256" not in r["start"]:
                bytes_only.add(r["start"]["sha256"])
    if other:
        hint = "".join(
            f" Arms recorded before content was recorded hold the bytes only (sha256 {sha[:12]}): if {model_dir} is "
            f"that training again, `python benchmarks/match_start_record.py {model_dir} {sha[:16]} --record` proves it "
            "(up to the order the safetensors library wrote the metadata in) and adds the content to their records."
            for sha in sorted(bytes_only))
        raise SystemExit(
            f"The start {model!r} ({model_dir}, {key} {str(current[key])[:12]}) is not the weights that {len(other)} "
            f"arm(s) recorded under that name came from ({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}; "
            "their start is another or was not recorded): the model was trained again or replaced. Give these "
            f"weights their own name (--models {model}b={model_dir}), or, to start the name over, move those results "
            f"and their run folders (--runs/<task>/{model}/) away.{hint}"
        )


def reuse_same_runs(opts, task: str, model: str, arm: str) -> None:
    """Before ``arm`` runs: copies into each of its folders that does not exist yet a finished run of another arm that
    is the same run (``SAME_RUNS``), with the copy's own checkpoint paths."""
    import shutil

    base = os.path.join(opts.runs, task, model)

    def folder(entry):
        return os.path.join(base, entry[0], *([entry[1]] if entry[1] else []))

    for same in SAME_RUNS:
        for target in (folder(e) for e in same if e[0] == arm):
            sources = [folder(e) for e in sorted(same, key=str) if e[0] != arm]
            source = next((s for s in sources if os.path.isfile(os.path.join(s, "results.json"))), None)
            if source is None or os.path.exists(target):
                continue
            # Copied beside the target, then renamed into place: the processes sharing the grids (--grid-shard) reach
            # this together, and neither may see half a copy or fail on the other's.
            partial = f"{target}.copying-{os.getpid()}"
            shutil.copytree(source, partial, ignore=shutil.ignore_patterns(".lock", "checkpoint-*"))
            with open(os.path.join(partial, "results.json")) as f:
                results = json.load(f)
            for key in ("checkpoint", "publish"):  # the copy's own checkpoint, not the source's
                if results.get(key):
                    results[key] = os.path.join(target, os.path.basename(results[key]))
            write_json_atomic(os.path.join(partial, "results.json"), results)
            try:
                os.rename(partial, target)
            except OSError:  # another process put its copy (or a run) there first
                shutil.rmtree(partial, ignore_errors=True)
                continue
            print(f"[reuse] {task} {model} {arm}: the finished run {source}", flush=True)


def run_arms(opts) -> None:
    models = dict(m.split("=", 1) for m in opts.models)
    os.makedirs(RESULTS_DIR, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(opts.threads), "MKL_NUM_THREADS": str(opts.threads)}
    shard, shards = (int(v) for v in opts.shard.split("/"))
    grid_shard, grid_shards = (int(v) for v in opts.grid_shard.split("/"))
    jobs = [(t, m, a) for t in opts.tasks for m in models for a in opts.arms]
    jobs = [job for index, job in enumerate(jobs) if index % shards == shard]  # parallel processes split the arms
    singles = [job for job in jobs if "--grid" not in ARMS[job[2]]]
    for task, model, arm in jobs:
        if "--grid" not in ARMS[arm] and singles.index((task, model, arm)) % grid_shards != grid_shard:
            continue  # a single run: one of the processes that share the grids runs it, round-robin
        out = os.path.join(RESULTS_DIR, f"{task}__{model}__{arm}.json")
        if os.path.isfile(out):
            print(f"[cached] {task} {model} {arm}")
            continue
        check_start(model, models[model])
        run_dir = os.path.join(opts.runs, task, model, arm)
        reuse_same_runs(opts, task, model, arm)
        command = arm_command(task, models[model], arm, opts, run_dir)
        print("[run]", " ".join(command[1:]), flush=True)
        start = time.time()
        subprocess.run(command, check=True, env=env)
        if "--grid" in ARMS[arm] and not os.path.isfile(os.path.join(run_dir, "grid_results.json")):
            print(f"[waiting] {task} {model} {arm}: other --grid-shard processes still train some of its runs; the "
                  "one that finishes last writes the arm's summary", flush=True)
            continue
        summary = summarize(task, model, arm, run_dir, command, time.time() - start)
        write_json_atomic(out, summary)
        record_predictions(opts, summary, run_dir)
        print(f"[done] {task} {model} {arm}: {100 * summary['score']:.2f} ({summary['summary']})", flush=True)


def standard_error(metric: str, score: float, n: int | None) -> float:
    """One-seed standard error of a dev score: binomial for accuracy; for Matthews' correlation the large-sample
    approximation sqrt((1 - r^2) / (n - 2))."""
    if not n:
        return math.nan
    if metric == "accuracy":
        return math.sqrt(max(score * (1 - score), 0.0) / n)
    return math.sqrt(max(1 - score**2, 0.0) / max(n - 2, 1))


def table() -> str:
    rows = {}
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        rows[(r["task"], r["model"], r["arm"])] = r
    lines = ["| task | start | arm | score | summary | gap to dense | share of the dense-transfer gap closed | "
             "SE (one seed) | train / dev examples |", "|---|---|---|---:|---|---:|---:|---:|---|"]
    for (task, model, arm), r in sorted(rows.items()):
        # Like for like: a single run against the dense-transfer recipe's single run, a grid against its grid
        # (each falling back to the other when missing).
        order = ("dense_transfer_single", "dense_transfer") if r["summary"] == "single run" else (
            "dense_transfer", "dense_transfer_single")
        reference = rows.get((task, "dense", order[0])) or rows.get((task, "dense", order[1]))
        gap = f"{100 * (r['score'] - reference['score']):+.2f}" if reference else "-"
        share = "-"
        baseline = rows.get((task, model, order[0])) or rows.get((task, model, order[1]))
        if arm.startswith("paper") and reference and baseline and model != "dense":
            share = share_of_gap(r, baseline, reference)
        se = standard_error(r["metric"], r["score"], r.get("dev_examples"))
        lines.append(f"| {task} | {model} | {arm} | {100 * r['score']:.2f} | {r['summary']} | {gap} | {share} | "
                     f"{100 * se:.2f} | {r.get('train_examples')} / {r.get('dev_examples')} |")
    return "\n".join(side_by_side(rows) + ["", "Every arm:", ""] + lines + default_vs_grid(rows) + equal_lrs(rows)
                     + grid_runs(rows) + starts(rows))


# The grids the issue compares, in the paper's order (its Table 5/6): the dense-transfer recipes, then its own; and
# the diagnosis grid that separates the paper's schedule from its learning rates (dense transfer at the paper's LRs).
GRID_ARMS = ("dense_transfer", "extended", "rescaled_sweep", "dense_transfer_paper_lrs", "paper")


# A start trained again whose new name is very likely the same weights: ``90`` was trained before starts were hashed;
# ``90b``, its second training (2026-12-02), gave the first's held-out figures to the last digit and repeats its GLUE
# runs bit for bit. The side-by-side table fills the first name's missing cells from the second's (marked), and only
# while every run both trained agrees at every epoch to the last digit and one of them learns something
# (``same_weights``); every other table keeps them apart.
TRAINED_AGAIN = {"90": "90b"}


def same_weights(rows: dict, model: str, again: str) -> tuple[int, list[str]]:
    """Of the runs that ``again`` and ``model`` both trained (the same arm's point, or the same run in another arm's
    folder, ``SAME_RUNS``): how many learned something (a dev score above 0 at some epoch; runs that predict the
    majority class throughout are alike from any weights, so they prove nothing), and those that differ at some epoch
    or cannot be compared (no per-epoch scores)."""
    evidence, differ = set(), set()
    for (task, m, arm), r in sorted(rows.items()):
        if m != again:
            continue
        for run in r.get("runs", []):
            point = run["name"]
            key = (arm, None if point == "single" else point)
            same = next((entry for entry in SAME_RUNS if key in entry), {key}) | {key}
            curve = r.get("per_epoch", {}).get(point)
            for other_arm, other_point in sorted(same, key=str):
                other_row = rows.get((task, model, other_arm))
                if not other_row or other_point not in (None, *(o["name"] for o in other_row.get("runs", []))):
                    continue
                other = other_row.get("per_epoch", {}).get(other_point or "single")
                if curve is None or other is None or other != curve:
                    differ.add(f"{task} {arm} {point}")
                elif any(curve):
                    evidence.add((task, min(map(str, same))))  # one run, under however many arm names
    return len(evidence), sorted(differ)


def side_by_side(rows: dict) -> list[str]:
    """The paper's Table 5/6 in miniature: per task and start, each recipe's grid summary side by side, the paper's
    grid minus dense transfer's, and the share of the start's dense-transfer gap to the dense model it closes ("-"
    where an arm has not finished)."""
    lines, notes, merged, filled_any = [], [], {}, set()
    for model, again in TRAINED_AGAIN.items():
        evidence, differ = same_weights(rows, model, again)
        if evidence and not differ:
            merged[again] = (model, evidence)
        elif differ:
            notes.append(f"`{again}` is not shown to be `{model}` trained again bit for bit ({', '.join(differ)} "
                         "differ or lack per-epoch scores): their rows stay apart.")
    for task in sorted({t for t, _, _ in rows}):
        dense = rows.get((task, "dense", "dense_transfer"))
        models = sorted({merged[m][0] if m in merged else m for t, m, a in rows if t == task and a in GRID_ARMS},
                        key=lambda m: (m != "dense", m))
        for model in models:
            again = TRAINED_AGAIN.get(model)
            grids = {arm: rows.get((task, model, arm)) for arm in GRID_ARMS}
            filled = {arm for arm, r in grids.items() if r is None and again in merged and (task, again, arm) in rows}
            grids.update({arm: rows[(task, again, arm)] for arm in filled})
            if filled:
                filled_any.add(again)
            cells = [f"{100 * r['score']:.2f}{'*' if arm in filled else ''}" if r else "-" for arm, r in grids.items()]
            paper, baseline = grids["paper"], grids["dense_transfer"]
            mark = "*" if filled & {"paper", "dense_transfer"} else ""  # a figure that reads a filled cell
            difference = f"{100 * (paper['score'] - baseline['score']):+.2f}{mark}" if paper and baseline else "-"
            share = "-"
            if paper and baseline and dense and model != "dense":
                share = share_of_gap(paper, baseline, dense)
                share += mark if share != "no gap" else ""
            sparsity = next((r["sparsity"] for r in grids.values() if r and r.get("sparsity") is not None), None)
            label = f"{model} (*: {again})" if filled else model
            lines.append(f"| {task} | {label} | {'-' if sparsity is None else f'{100 * sparsity:.0f}%'} | "
                         f"{' | '.join(cells)} | {difference} | {share} |")
    if not lines:
        return []
    notes += [f"`{again}`'s cells (*) fill `{model}`'s row: `{again}` is `{model}` trained again, and every run both "
              f"trained has the same dev score at every epoch, to the last digit ({n} of them learn something; runs at "
              "the majority class throughout prove nothing and are not counted). Every other table keeps them apart."
              for again, (model, n) in merged.items() if again in filled_any]
    return ["The grids side by side (dev score; a grid of 3 or 6 runs: mean of its two best; the rescaled sweep: its "
            "best of 21; dense transfer at the paper's LRs: its schedule over {1e-4, 2e-4, 3e-4}, a diagnosis; the "
            "share: of the start's dense-transfer gap to the dense model's dense-transfer grid, what the paper's grid "
            "closes):", "",
            "| task | start | sparsity | dense transfer | extended | rescaled sweep | dense transfer at the paper's LRs | "
            "paper | paper - dense transfer | share of the gap closed |",
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|", *lines, *(["", *notes] if notes else [])]


def share_of_gap(paper: dict, baseline: dict, reference: dict) -> str:
    """The share of the start's gap from ``baseline`` (its dense-transfer score) to ``reference`` (the dense model's)
    that ``paper`` closes. Only defined where there is a gap: a sparse start whose dense-transfer score reaches the
    dense model's has nothing to close (the ratio would be a large number of either sign)."""
    gap = reference["score"] - baseline["score"]
    return f"{(paper['score'] - baseline['score']) / gap:.0%}" if gap > 0 else "no gap"


def top_points(rows: dict, epoch: str = "best") -> dict:
    """``(task, start, seed) -> {schedule: {point: score}}`` at lr 2e-4 and 3e-4 (dropout 0.1), for the schedules
    with both points: seed 0 from the full grids or the ``*_top_lrs`` arms, other seeds from ``*_top_lrs_seed<N>``.
    ``epoch="last"`` takes each run's last dev score instead of its best epoch's (what the run reloads)."""
    def points(r):
        if epoch == "last":
            return {name: curve[-1] for name, curve in (r or {}).get("per_epoch", {}).items() if name in TOP_POINTS}
        return {p["name"]: p["score"] for p in (r or {}).get("runs", []) if p["name"] in TOP_POINTS}

    found = {}
    for task, model in sorted({(t, m) for t, m, _ in rows}):
        for seed, suffix in ((0, ""), *((n, f"_seed{n}") for n in SEEDS)):
            schedules = {}
            for schedule, grid in (("paper", "paper"), ("dense_transfer", "dense_transfer_paper_lrs"),
                                   ("extended", None)):
                runs = points(rows.get((task, model, f"{schedule}_top_lrs{suffix}")) or (
                    rows.get((task, model, grid)) if seed == 0 and grid else None))
                if len(runs) == len(TOP_POINTS):
                    schedules[schedule] = runs
            if schedules:
                found[(task, model, seed)] = schedules
    return found


def mean_difference(a: dict, b: dict) -> float:
    """Two schedules' difference of means over the top points, in points; rounded, since equal sums can differ by
    1e-16 in floats and print as "-0.00"."""
    return 100 * (round((sum(a.values()) - sum(b.values())) / len(TOP_POINTS), 6) + 0.0)


def difference_cell(a: dict | None, b: dict | None) -> str:
    """A table cell: ``mean_difference``, or "-" where a schedule's scores are missing (an arm JSON without
    per-epoch scores)."""
    return "-" if a is None or b is None else f"{mean_difference(a, b):+.2f}"


def equal_lrs(rows: dict) -> list[str]:
    """The paper's schedule against dense transfer's at the same two LRs (2e-4, 3e-4; dropout 0.1), per seed; and,
    where the extended recipe ran at those LRs, what of the difference its 8 epochs explain."""
    lines, parts, per_seed = [], [], {}
    last_epoch = top_points(rows, epoch="last")
    for key, s in top_points(rows).items():
        if "paper" not in s or "dense_transfer" not in s:
            continue
        (task, model, seed), paper, dense, last = key, s["paper"], s["dense_transfer"], last_epoch.get(key, {})
        per_seed.setdefault((task, model), []).append(mean_difference(paper, dense))
        lines.append(f"| {task} | {model} | {seed} | {' | '.join(f'{100 * paper[n]:.2f}' for n in TOP_POINTS)} | "
                     f"{' | '.join(f'{100 * dense[n]:.2f}' for n in TOP_POINTS)} | "
                     f"{difference_cell(paper, dense)} | "
                     f"{difference_cell(last.get('paper'), last.get('dense_transfer'))} |")
        if "extended" in s:
            extended = s["extended"]
            mean = {k: 100 * sum(v.values()) / len(TOP_POINTS) for k, v in s.items()}
            parts.append(f"| {task} | {model} | {seed} | {mean['paper']:.2f} | "
                         f"{' / '.join(f'{100 * extended[n]:.2f}' for n in TOP_POINTS)} ({mean['extended']:.2f}) | "
                         f"{mean['dense_transfer']:.2f} | {difference_cell(extended, dense)} | "
                         f"{difference_cell(paper, extended)} | "
                         f"{difference_cell(last.get('paper'), last.get('extended'))} |")
    if not lines:
        return []
    table = ["", "The schedule at equal learning rates (dropout 0.1), per seed: the paper's recipe against dense "
             "transfer's schedule at lr 2e-4 and 3e-4 (seed 0: the points of the full grids; another seed also draws "
             "another SST-2 subsample):", "",
             "| task | start | seed | paper 2e-4 | paper 3e-4 | dense transfer 2e-4 | dense transfer 3e-4 | "
             "paper - dense transfer (mean of the two LRs) | the same at each run's last epoch |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|", *lines,
             "", "(Every score is the run's best epoch on the dev set, the checkpoint the command reloads: a run of 8 "
             "epochs picks the best of 8 dev scores, one of 3 the best of 3. The last column compares the last "
             "epochs instead, free of that choice.)"]
    seeds = [f"| {task} | {model} | {len(d)} | {statistics.mean(d):+.2f} | {statistics.stdev(d):.2f} | "
             f"{statistics.stdev(d) / math.sqrt(len(d)):.2f} | {min(d):+.2f} to {max(d):+.2f} |"
             for (task, model), d in per_seed.items() if len(d) > 1]
    if seeds:
        table += ["", "Across seeds (where more than one ran): the paper's recipe minus dense transfer's schedule, "
                  "mean of the two LRs, in points. The spread is seed to seed: the training's randomness (and on "
                  "SST-2 the subsample's), not the dev set's sampling error, which every seed shares and no number of "
                  "seeds averages away; from two or three seeds the SD itself is a rough estimate:", "",
                  "| task | start | seeds | mean difference | seed-to-seed SD | SE of the mean | range |",
                  "|---|---|---:|---:|---:|---:|---|", *seeds]
    if parts:
        table += ["", "What that difference is made of: the extended recipe (8 epochs like the paper's, every block "
                  "trainable from the start, no LR rewind) at the same two LRs; each column the mean of the two LRs:",
                  "", "| task | start | seed | paper | extended 2e-4 / 3e-4 (mean) | dense transfer | "
                  "8 epochs instead of 3 (extended - dense transfer) | staging and rewind (paper - extended) | "
                  "staging and rewind, last epochs |", "|---|---|---:|---:|---|---:|---:|---:|---:|", *parts]
    return table


def default_vs_grid(rows: dict) -> list[str]:
    """How close the recipe's 1-run default comes to its grid (the issue's question: is the grid worth running?)."""
    lines = []
    for (task, model, arm), grid in sorted(rows.items()):
        single = rows.get((task, model, f"{arm}_single"))
        if not single or grid["summary"] == "single run":
            continue
        best = max(run["score"] for run in grid["runs"])
        lines.append(f"| {task} | {model} | {arm} | {100 * single['score']:.2f} | {100 * grid['score']:.2f} | "
                     f"{100 * (single['score'] - grid['score']):+.2f} | {100 * best:.2f} | {len(grid['runs'])} |")
    if not lines:
        return []
    return ["", "How close the 1-run default comes to its grid (default minus the grid's summary):", "",
            "| task | start | recipe | default (1 run) | grid (mean of two best) | default - grid | grid's best run | "
            "runs |", "|---|---|---|---:|---:|---:|---:|---:|", *lines]


def grid_runs(rows: dict) -> list[str]:
    """Every run of every grid: the score of each learning rate x dropout (x epochs) point."""
    lines = []
    for (task, model, arm), grid in sorted(rows.items()):
        if grid["summary"] == "single run":
            continue
        runs = ", ".join(f"{run['name']} {100 * run['score']:.2f}" for run in grid["runs"])
        lines.append(f"| {task} | {model} | {arm} | {runs} |")
    if not lines:
        return []
    return ["", "Every grid run (best epoch's score):", "", "| task | start | arm | runs |", "|---|---|---|---|", *lines]


def starts(rows: dict) -> list[str]:
    """Which weights each start name stands for (the SHA-256 its arms recorded), so that a row is never read as
    another training of the same recipe."""
    weights: dict[str, dict[str, int]] = {}
    for (_, model, _), r in sorted(rows.items()):
        start = r.get("start") or {}
        kind = next((k for k in ("content_sha256", "sha256", "commit") if start.get(k)), None)
        label = f"{kind} {start[kind][:12]}" if kind else "not recorded"
        weights.setdefault(model, {}).setdefault(label, 0)
        weights[model][label] += 1
    lines = [f"| {model} | {', '.join(f'{label} ({n} arms)' for label, n in labels.items())} |"
             for model, labels in weights.items()]
    return ["", "Which weights each start name stands for:", "", "| start | weights |", "|---|---|", *lines]


def _line_style(arm: str) -> str:
    """The paper's recipe solid, its variants dotted; the dense-transfer family dashed, at lr 1e-4 dash-dotted."""
    if arm.startswith("paper"):
        return "o-" if arm in ("paper", "paper_single") else "o:"
    if "lr1e-4" in arm or "paper_lrs" in arm:
        return "^-."
    return "d--" if arm.startswith("extended") else "s--"


def plot() -> list[str]:
    """Dev score per epoch of each finished arm (its best run), one figure per task and one panel per starting
    point; for the paper's recipe every epoch is one unfreezing stage (stage k trains the head and the last k
    blocks; the last, everything)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    by_task: dict[str, list[dict]] = {}
    for path in sorted(glob.glob(os.path.join(RESULTS_DIR, "*.json"))):
        with open(path) as f:
            r = json.load(f)
        by_task.setdefault(r["task"], []).append(r)
    written = []
    for task, rows in by_task.items():
        starts = sorted({r["model"] for r in rows}, key=lambda m: (m != "dense", m))  # the dense reference first
        arms = sorted({r["arm"] for r in rows})
        colors = {arm: plt.get_cmap("tab20")(i % 20) for i, arm in enumerate(arms)}  # one color per arm, every panel
        fig, axes = plt.subplots(1, len(starts), figsize=(5.5 * len(starts), 5), sharey=True, squeeze=False)
        for ax, start in zip(axes[0], starts):
            longest = 0
            for r in sorted((r for r in rows if r["model"] == start), key=lambda r: r["arm"]):
                best = max(r["runs"], key=lambda run: run["score"])["name"]
                curve = r["per_epoch"][best]
                longest = max(longest, len(curve))
                label = r["arm"] if best == "single" else f"{r['arm']} (best: {best})"
                ax.plot(range(1, len(curve) + 1), [100 * v for v in curve], _line_style(r["arm"]),
                        color=colors[r["arm"]], label=label, ms=4)
            for epoch in range(1, longest):
                ax.axvline(epoch + 0.5, color="grey", lw=0.4, ls=":")  # paper's recipe: a new stage starts here
            ax.set_xticks(range(1, longest + 1))  # whole epochs (matplotlib's default ticks a 3-epoch panel at 1.25...)
            ax.set_title(f"start: {start}")
            ax.set_xlabel("epoch (paper's recipe: one stage per epoch)")
            ax.legend(fontsize=6, loc="best")
            ax.grid(alpha=0.2)
        axes[0][0].set_ylabel(f"dev {rows[0]['metric']} (%)")
        fig.suptitle(f"{task.upper()}: dev score per epoch, best run of each arm (dotted lines: stage boundaries)")
        fig.tight_layout()
        out = os.path.join(os.path.dirname(RESULTS_DIR), f"{os.path.basename(RESULTS_DIR)}_{task}.png")
        fig.savefig(out, dpi=90)
        plt.close(fig)
        written.append(out)
    return written


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-dir", help="GLUE folder in GLUE's TSV layout.")
    parser.add_argument("--models", nargs="+", default=[], help="NAME=MODEL_DIR, e.g. dense=... 90=...")
    parser.add_argument("--tasks", nargs="+", default=["rte", "cola", "sst2"], choices=list(METRIC))
    parser.add_argument("--arms", nargs="+", default=["paper", "dense_transfer"], choices=list(ARMS))
    parser.add_argument("--runs", default=os.path.join(REPO, "runs", "glue_study"), help="Run folders (not committed).")
    parser.add_argument("--sst2-train-samples", type=int, default=None, help="Subsample SST-2's training set (CPU).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--glue-args", default="", help="Extra flags for every GLUE command (e.g. a smoke test's "
                        "'--max_train_samples 64'); keep the results apart with GLUE_STUDY_RESULTS.")
    parser.add_argument("--shard", default="0/1", help="K/N: run every N-th arm starting at the K-th (parallel shards).")
    parser.add_argument("--grid-shard", default="0/1", help="K/N: N processes share every grid (the GLUE command's "
                        "--grid_shard; one per CPU core or GPU), and split the single-run arms round-robin.")
    parser.add_argument("--table", action="store_true", help="Print the table of every finished arm (and plot) and stop.")
    opts = parser.parse_args(argv)
    if not opts.table and (not opts.data_dir or not opts.models):
        parser.error("--data-dir and --models are needed to run arms")
    return opts


def main(argv=None) -> int:
    opts = parse_args(argv)
    if not opts.table:
        run_arms(opts)
    text = table()
    print(text)
    # the table beside its JSON files, regenerated by every --table
    write_text_atomic(f"{RESULTS_DIR}.md", f"# GLUE study: every finished arm\n\nWritten by `python "
                      f"benchmarks/glue_study.py --table` from `{os.path.relpath(RESULTS_DIR, REPO)}/*.json`.\n\n{text}\n")
    for path in plot():
        print("plot:", path, file=sys.stderr)  # stdout is the table alone, to paste into a results page
    return 0


if __name__ == "__main__":
    sys.exit(main())
