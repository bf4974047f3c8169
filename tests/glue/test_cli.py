"""``python -m sparse_transfer.glue`` end to end on a tiny sparse BERT and tiny GLUE-layout files."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from sparse_transfer.glue import GLUE_TASKS, get_task, glue_metrics
from sparse_transfer.glue.__main__ import main

from .conftest import glue_rows, write_tsv

TARGET_SUFFIXES = ("query.weight", "key.weight", "value.weight", "attention.output.dense.weight",
                   "intermediate.dense.weight", "output.dense.weight")


def pruned_positions(model_dir: Path) -> dict[str, torch.Tensor]:
    weights = load_file(str(model_dir / "model.safetensors"))
    return {n: w == 0 for n, w in weights.items() if "encoder.layer" in n and n.endswith(TARGET_SUFFIXES)}


def fast_args(model_dir, data_dir, out, *extra):
    return ["--model", str(model_dir), "--data_dir", str(data_dir), "--output_dir", str(out),
            "--per_device_train_batch_size", "16", "--learning_rate", "1e-3", "--disable_tqdm", "true", *extra]


@torch.no_grad()
def dev_accuracy(checkpoint: Path, dev_tsv: Path) -> float:
    """Scores a saved checkpoint on RTE dev with plain transformers, independently of the training code."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(checkpoint).eval()
    tokenizer = AutoTokenizer.from_pretrained(checkpoint)
    rows = [line.split("\t") for line in dev_tsv.read_text().splitlines()[1:]]
    batch = tokenizer([r[1] for r in rows], [r[2] for r in rows], truncation=True, max_length=128, padding=True,
                      return_tensors="pt")
    predictions = model(**batch).logits.argmax(-1).numpy()
    labels = [["entailment", "not_entailment"].index(r[3]) for r in rows]
    return glue_metrics("rte", predictions, labels)["accuracy"]


def test_rte_end_to_end_with_push(tiny_model_dir, glue_dir, tmp_path, fake_hub):
    uploads = fake_hub
    out = tmp_path / "rte"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--push-to-hub", "me/tiny-rte"]) == 0

    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "rte" and results["num_encoder_blocks"] == 2
    assert results["epochs"] == 4  # L + 2
    assert [e["epoch"] for e in results["per_epoch"]] == [1, 2, 3, 4]
    best = max(results["per_epoch"], key=lambda e: e["score"])
    assert results["best"]["epoch"] == best["epoch"] and results["best"]["accuracy"] == best["accuracy"]
    assert set(results["versions"]) >= {"sparse_transfer", "torch", "transformers", "datasets"}
    assert results["recipe"]["learning_rate"] == 1e-3 and results["recipe"]["unfreeze"] == "gradual"
    assert not list(out.glob("**/*.tmp")) and not list(out.glob("checkpoint-*"))

    # Exact sparsity: every weight that was zero in the input is zero in the best checkpoint, no more masked.
    before = pruned_positions(tiny_model_dir)
    after = load_file(str(out / "best" / "model.safetensors"))
    total = sum(int(m.sum()) for m in before.values())
    for name, mask in before.items():
        assert (after[f"bert.{name.split('bert.', 1)[1]}"][mask] == 0).all(), name
    assert results["sparsity"]["masked_weights"] == total == results["sparsity"]["masked_weights_zero_in_checkpoint"]
    assert results["sparsity"]["exact"] is True and results["sparsity"]["mask_sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert len(results["sparsity"]["per_layer"]) == 12

    # The saved checkpoint is the best epoch: plain transformers reproduces its dev accuracy.
    assert dev_accuracy(out / "best", glue_dir / "RTE" / "dev.tsv") == pytest.approx(results["best"]["accuracy"])

    # The resolved recipe reproduces the run's arguments.
    recipe = yaml.safe_load((out / "recipe.yaml").read_text())
    assert recipe == results["recipe"]
    from sparse_transfer.glue import parse_args

    glue, train, _ = parse_args(["--recipe", str(out / "recipe.yaml")])
    assert glue.model == str(tiny_model_dir) and train.learning_rate == 1e-3 and glue.epochs == "L+2"

    # Pushed: the sparse weights, their mask and a card with the sparsity, the recipe and the dev results.
    assert len(uploads) == 1 and uploads[0][0] == "me/tiny-rte"
    files = uploads[0][1]
    assert {"model.safetensors", "sparse_masks.safetensors", "README.md", "config.json", "tokenizer.json"} <= set(files)
    from safetensors.torch import load

    pushed = load(files["model.safetensors"])
    for name, mask in before.items():
        assert (pushed[name.replace("bert.", "bert.", 1)][mask] == 0).all()
    card = files["README.md"].decode()
    assert "Global sparsity over the 12 pruned tensors: **50.00%**" in card
    assert "bert.encoder.layer.1.output.dense.weight" in card and "## Recipe" in card and "learning_rate: 0.001" in card
    assert f"| rte dev accuracy | {results['best']['accuracy']:.4f} |" in card


def test_grid_caches_finished_runs(tiny_model_dir, glue_dir, tmp_path, capsys, monkeypatch):
    from sparse_transfer.hf import SparseTrainer

    calls = []
    original = SparseTrainer.train

    def counting_train(self, *args, **kwargs):
        calls.append(self.args.output_dir)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseTrainer, "train", counting_train)
    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "3e-3", "--grid_dropouts", "0.05", "0.1", "--epochs", "1",
            "--max_train_samples", "16"]
    assert main(argv) == 0
    assert len(calls) == 4
    grid = json.loads((out / "grid_results.json").read_text())
    names = ["lr0.001_dropout0.05", "lr0.001_dropout0.1", "lr0.003_dropout0.05", "lr0.003_dropout0.1"]
    assert [r["name"] for r in grid["runs"]] == names
    scores = sorted((r["best"]["accuracy"] for r in grid["runs"]), reverse=True)
    assert grid["summary"]["how"] == "mean_top2" and grid["summary"]["accuracy"] == pytest.approx(sum(scores[:2]) / 2)
    for r in grid["runs"]:
        run = json.loads((out / r["name"] / "results.json").read_text())
        assert run["recipe"]["learning_rate"] == r["learning_rate"] and run["recipe"]["dropout"] == r["dropout"]
        assert run["recipe"]["unfreeze"] == "none"
    assert "mean of the two best" in capsys.readouterr().out

    # Rerun: everything is cached.
    assert main(argv) == 0
    assert len(calls) == 4
    assert json.loads((out / "grid_results.json").read_text())["summary"] == grid["summary"]

    # An interrupted grid: only the run without results.json trains again.
    (out / names[2] / "results.json").unlink()
    assert main(argv) == 0
    assert calls[4:] == [str(out / names[2])]

    # A finished run with another recipe is not silently reused or overwritten.
    assert main([*argv, "--max_seq_length", "64"]) == 2
    assert "holds a finished run with a different recipe (differing fields: ['max_seq_length'])" in capsys.readouterr().err
    assert len(calls) == 5


def test_grid_shards_share_one_grid(tiny_model_dir, glue_dir, tmp_path, capsys, monkeypatch):
    from sparse_transfer.hf import SparseTrainer

    calls = []
    original = SparseTrainer.train

    def counting_train(self, *args, **kwargs):
        calls.append(Path(self.args.output_dir).name)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseTrainer, "train", counting_train)
    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "3e-3", "--grid_dropouts", "0.05", "0.1", "--epochs", "1",
            "--max_train_samples", "16"]
    names = ["lr0.001_dropout0.05", "lr0.001_dropout0.1", "lr0.003_dropout0.05", "lr0.003_dropout0.1"]
    # A grid summary left by an earlier grid of other points must not pass for this one's.
    out.mkdir()
    (out / "grid_results.json").write_text(json.dumps({"runs": [{"name": "lr0.1_dropout0.1"}], "summary": {}}))

    # Shard 1 of 2 trains the 2nd and 4th points and leaves the others to shard 0, which holds their folders (as a
    # process training there does: an OS lock); they are not finished, so there is no grid summary yet.
    from filelock import FileLock

    locks = [FileLock(str(out / name / ".lock")) for name in (names[0], names[2])]
    for lock in locks:
        (out / Path(lock.lock_file).parent.name).mkdir()
        lock.acquire(timeout=0)
    try:
        assert main([*argv, "--grid_shard", "1/2"]) == 0
    finally:
        for lock in locks:
            lock.release()
    assert calls == [names[1], names[3]]
    assert not (out / "grid_results.json").exists()
    printed = capsys.readouterr().out
    assert f"grid shard 1/2: 2 of 4 runs finished; not yet: {names[0]}, {names[2]}" in printed

    # Shard 0 trains the rest, reads shard 1's runs without training them again, and writes the grid's summary.
    assert main([*argv, "--grid_shard", "0/2"]) == 0
    assert calls == [names[1], names[3], names[0], names[2]]
    grid = json.loads((out / "grid_results.json").read_text())
    assert [r["name"] for r in grid["runs"]] == names
    scores = sorted((r["best"]["accuracy"] for r in grid["runs"]), reverse=True)
    assert grid["summary"]["accuracy"] == pytest.approx(sum(scores[:2]) / 2)

    # The sharded grid is the unsharded one: a plain rerun trains nothing and gives the same summary.
    assert main(argv) == 0
    assert len(calls) == 4 and json.loads((out / "grid_results.json").read_text())["summary"] == grid["summary"]


def test_grid_shard_helps_with_the_points_no_process_trains(tiny_model_dir, glue_dir, tmp_path, capsys, monkeypatch):
    from filelock import FileLock

    from sparse_transfer.hf import SparseTrainer

    calls = []
    original = SparseTrainer.train
    out = tmp_path / "grid"
    names = ["lr0.001_dropout0.1", "lr0.002_dropout0.1", "lr0.003_dropout0.1", "lr0.004_dropout0.1"]
    held = FileLock(str(out / names[0] / ".lock"))

    def train(self, *args, **kwargs):
        calls.append(Path(self.args.output_dir).name)
        if len(calls) == 1:  # shard 0 starts its first point while shard 1 trains
            (out / names[0]).mkdir()
            held.acquire(timeout=0)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseTrainer, "train", train)
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "2e-3", "3e-3", "4e-3", "--grid_dropouts", "0.1", "--epochs", "1",
            "--max_train_samples", "16"]
    try:
        # Shard 1 trains its own points, then shard 0's that no process holds, from the end of the grid; the one
        # shard 0 trains is left to it.
        assert main([*argv, "--grid_shard", "1/2"]) == 0
    finally:
        held.release()
    assert calls == [names[1], names[3], names[2]]
    assert f"grid shard 1/2: 3 of 4 runs finished; not yet: {names[0]}" in capsys.readouterr().out
    # Shard 0 trains its point, finds the one shard 1 took finished, and writes the grid's summary.
    assert main([*argv, "--grid_shard", "0/2"]) == 0
    assert calls == [names[1], names[3], names[2], names[0]]
    grid = json.loads((out / "grid_results.json").read_text())
    assert [r["name"] for r in grid["runs"]] == names

    # One shard alone trains the whole grid: nothing is left waiting for a shard that never starts.
    other = tmp_path / "alone"
    assert main([*argv[:argv.index("--output_dir") + 1], str(other), *argv[argv.index("--output_dir") + 2:],
                 "--grid_shard", "0/3"]) == 0
    assert calls[4:] == [names[0], names[3], names[2], names[1]]
    assert (other / "grid_results.json").is_file()


def test_grid_without_shards_stops_at_a_folder_another_process_holds(tiny_model_dir, glue_dir, tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "3e-3", "--grid_dropouts", "0.1", "--epochs", "1",
            "--max_train_samples", "16"]
    (out / "lr0.001_dropout0.1").mkdir(parents=True)
    held = FileLock(str(out / "lr0.001_dropout0.1" / ".lock"))  # a shard, or the same command, training there
    held.acquire(timeout=0)
    try:
        # The unsharded command owns its grid (it pushes, it writes the summary): skipping the point would end it
        # without either, so it is the clear error, not a grid left waiting.
        assert main(argv) == 2
    finally:
        held.release()
    assert f"Another process is training into {out / 'lr0.001_dropout0.1'}" in capsys.readouterr().err
    assert not (out / "grid_results.json").exists()


def test_grid_shard_resumes_the_point_a_stopped_shard_left(tiny_model_dir, glue_dir, tmp_path, monkeypatch):
    from sparse_transfer.hf import SparseTrainer

    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "3e-3", "--grid_dropouts", "0.1", "--epochs", "2",
            "--max_train_samples", "16", "--save_strategy", "epoch"]
    uninterrupted = tmp_path / "uninterrupted"
    assert main([*argv[:argv.index("--output_dir") + 1], str(uninterrupted), *argv[argv.index("--output_dir") + 2:]]) == 0

    original = SparseTrainer._save_checkpoint
    saved = []

    def stop_after_the_first_epoch(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        saved.append(Path(self.args.output_dir).name)
        if len(saved) == 1:
            raise KeyboardInterrupt  # shard 0 stopped (killed, out of time) after its point's first epoch
        return result

    monkeypatch.setattr(SparseTrainer, "_save_checkpoint", stop_after_the_first_epoch)
    assert main([*argv, "--grid_shard", "0/2"]) == 130
    # Shard 1 trains its point, then resumes shard 0's from its checkpoint: the same run as never stopped.
    assert main([*argv, "--grid_shard", "1/2"]) == 0
    assert saved == ["lr0.001_dropout0.1", "lr0.003_dropout0.1", "lr0.003_dropout0.1", "lr0.001_dropout0.1"]
    grid, reference = (json.loads((d / "grid_results.json").read_text()) for d in (out, uninterrupted))
    assert [r["best"] for r in grid["runs"]] == [r["best"] for r in reference["runs"]]


def test_grid_shards_of_another_grid_or_split_stop_before_training(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                                      monkeypatch):
    from sparse_transfer.hf import SparseTrainer

    calls = []
    original = SparseTrainer.train
    monkeypatch.setattr(SparseTrainer, "train", lambda self, *a, **k: calls.append(1) or original(self, *a, **k))
    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "3e-3", "--grid_dropouts", "0.1", "--epochs", "1",
            "--max_train_samples", "16"]
    from filelock import FileLock

    held = FileLock(str(out / "lr0.003_dropout0.1" / ".lock"))  # shard 1/2 trains its point meanwhile
    (out / "lr0.003_dropout0.1").mkdir(parents=True)
    held.acquire(timeout=0)
    try:
        assert main([*argv, "--grid_shard", "0/2"]) == 0 and len(calls) == 1
    finally:
        held.release()
    assert json.loads((out / "grid_plan.json").read_text())["points"] == ["lr0.001_dropout0.1", "lr0.003_dropout0.1"]
    capsys.readouterr()
    # Another shard of a different grid (other points, or another recipe), or of another split: an error naming the
    # difference, before it trains anything into the shared folder.
    for extra, message in [
        (["--grid_shard", "1/2", "--grid_learning_rates", "1e-3", "5e-3"], "differing: ['points']"),
        (["--grid_shard", "1/2", "--max_seq_length", "64"], "differing: ['recipe.max_seq_length']"),
        (["--grid_shard", "1/2", "--grid_summary", "best"], "differing: ['summary']"),
        (["--grid_shard", "1/2", "--epochs", "2"], "differing: ['recipe.epochs']"),
        (["--grid_shard", "1/3"], "split into 2 shards"),
    ]:
        assert main([*argv, *extra]) == 2
        assert message in capsys.readouterr().err
        assert len(calls) == 1 and not (out / "grid_results.json").exists()
    # The right shard completes the grid.
    assert main([*argv, "--grid_shard", "1/2"]) == 0 and len(calls) == 2
    assert (out / "grid_results.json").is_file()


def test_grid_folder_of_another_recipe_is_refused_before_anything_changes(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                                          monkeypatch):
    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "--grid_dropouts", "0.1", "0.05", "--epochs", "1", "--max_train_samples", "16"]
    assert main(argv) == 0
    (out / "grid_plan.json").unlink()  # a grid run before plans were recorded
    summary = (out / "grid_results.json").read_bytes()
    for extra in (["--grid_shard", "1/2"], []):
        assert main([*argv, "--max_seq_length", "64", *extra]) == 2
        assert "holds a finished run with a different recipe (differing fields: ['max_seq_length'])" in capsys.readouterr().err
        # The folder's grid is untouched: its summary kept, no plan of the refused grid written.
        assert (out / "grid_results.json").read_bytes() == summary and not (out / "grid_plan.json").exists()

    # --overwrite (unsharded) trains the new grid; its old summary is gone from the start, so a run stopped half-way
    # never leaves the old grid's summary beside new runs.
    from sparse_transfer.hf import SparseTrainer

    def stop(self, *args, **kwargs):
        assert not (out / "grid_results.json").exists()
        raise KeyboardInterrupt

    monkeypatch.setattr(SparseTrainer, "train", stop)
    assert main([*argv, "--max_seq_length", "64", "--overwrite"]) == 130
    assert not (out / "grid_results.json").exists()
    assert json.loads((out / "grid_plan.json").read_text())["recipe"]["max_seq_length"] == 64


def test_grid_shard_whose_folder_changed_meanwhile_stops(tiny_model_dir, glue_dir, tmp_path, capsys, monkeypatch):
    from sparse_transfer.hf import SparseTrainer

    out = tmp_path / "grid"
    original = SparseTrainer.train

    def train_while_another_split_starts(self, *args, **kwargs):
        # Two shards started in the same instant with different N: the other one's plan replaced this one's.
        plan = json.loads((out / "grid_plan.json").read_text())
        (out / "grid_plan.json").write_text(json.dumps({**plan, "shards": 3}))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseTrainer, "train", train_while_another_split_starts)
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "--grid_dropouts", "0.1", "0.05", "--epochs", "1", "--max_train_samples",
            "16", "--grid_shard", "0/2"]
    assert main(argv) == 2
    assert "grid changed while this process ran" in capsys.readouterr().err


def test_a_run_folder_takes_one_process_at_a_time(tiny_model_dir, glue_dir, tmp_path, capsys):
    from filelock import FileLock

    out = tmp_path / "rte"
    out.mkdir()
    lock = FileLock(str(out / ".lock"))  # as another process training there holds it (an OS lock: freed on kill -9)
    lock.acquire(timeout=0)
    try:
        assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out)]) == 2
        assert f"Another process is training into {out}" in capsys.readouterr().err
        assert sorted(p.name for p in out.iterdir()) == [".lock"]  # nothing of this process written
    finally:
        lock.release()
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out)]) == 0
    assert (out / "results.json").is_file()


@pytest.mark.parametrize("extra, message", [
    (["--grid", "--grid_shard", "2/2"], "0 <= K < N"),
    (["--grid", "--grid_shard", "half"], "grid_shard must be K/N"),
    (["--grid_shard", "0/2"], "it needs --grid"),
    (["--grid", "--grid_shard", "0/2", "--overwrite"], "--overwrite with --grid_shard"),
    (["--grid", "--grid_shard", "0/2", "--push-to-hub", "me/x"], "--push-to-hub with --grid_shard"),
])
def test_grid_shard_refuses_what_it_cannot_do(tiny_model_dir, glue_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "grid"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing trained, nothing written


def test_grid_shard_refuses_a_distributed_launch(tiny_model_dir, glue_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")  # as torchrun sets it for each rank
    out = tmp_path / "grid"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--grid", "--grid_shard", "0/2"]) == 2
    assert "under a distributed launch (WORLD_SIZE=2)" in capsys.readouterr().err
    assert not out.exists()


def _as_files(glue_dir: Path, tmp_path: Path, task: str, fmt: str) -> list[str]:
    """The tiny GLUE files of ``task`` rewritten as csv/json with nyu-mll/glue's columns (MNLI: matched only)."""
    import csv

    from sparse_transfer.glue import read_glue_tsv

    t = get_task(task)
    folder = glue_dir / {"stsb": "STS-B", "mnli": "MNLI"}[task]
    paths = []
    for split, name in (("train", "train.tsv"), ("validation", "dev_matched.tsv" if task == "mnli" else "dev.tsv")):
        cols = read_glue_tsv(folder / name, t)
        records = [{t.text_columns[0]: a, t.text_columns[1]: b, "label": y}
                   for a, b, y in zip(cols["text_a"], cols["text_b"], cols["label"])]
        path = tmp_path / f"{split}.{fmt}"
        if fmt == "csv":
            with open(path, "w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=list(records[0]))
                writer.writeheader()
                writer.writerows(records)
        else:
            path.write_text("\n".join(json.dumps(r) for r in records))
        paths.append(str(path))
    return ["--train_file", paths[0], "--validation_file", paths[1]]


@pytest.mark.parametrize("task, source", [("mnli", "tsv"), ("stsb", "csv"), ("mnli", "json")])
def test_two_dev_sets_regression_and_files(task, source, tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / task
    argv = ["--task", task, "--recipe", "dense_transfer", *fast_args(tiny_model_dir, glue_dir, out), "--epochs", "2"]
    if source != "tsv":
        argv += _as_files(glue_dir, tmp_path, task, source)
    assert main(argv) == 0
    results = json.loads((out / "results.json").read_text())
    keys = {("mnli", "tsv"): ["matched_accuracy", "mismatched_accuracy"], ("stsb", "csv"): ["pearson", "spearmanr"],
            ("mnli", "json"): ["accuracy"]}[task, source]
    assert results["metrics"] == keys and len(results["per_epoch"]) == 2
    for e in results["per_epoch"]:
        assert e["score"] == pytest.approx(sum(e[k] for k in keys) / len(keys))
    config = json.loads((out / "best" / "config.json").read_text())
    if task == "stsb":
        assert config["problem_type"] == "regression" and len(config["id2label"]) == 1
        assert results["data"]["train_file"].endswith("train.csv")
    else:
        expected = {"matched": 24, "mismatched": 24} if source == "tsv" else {"matched": 24}
        assert results["data"]["eval_examples"] == expected
        assert config["id2label"] == {"0": "entailment", "1": "neutral", "2": "contradiction"}


@pytest.mark.slow
@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_every_task_trains(task, tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / task
    assert main(["--task", task, *fast_args(tiny_model_dir, glue_dir, out)]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["sparsity"]["exact"] and len(results["per_epoch"]) == 4


# ------------------------------------------------------------------------------------------- bad input
def _rte_dir(root: Path, train_header=None, train_rows=None, dev_content=None) -> Path:
    rng = random.Random(0)
    header, rows = glue_rows("rte", 8, rng)
    write_tsv(root / "RTE" / "train.tsv", train_header or header, train_rows or rows)
    dev = root / "RTE" / "dev.tsv"
    if dev_content is None:
        write_tsv(dev, header, rows)
    else:
        dev.write_text(dev_content)
    return root


def _model_without_weights(root: Path, tiny_model_dir: Path) -> Path:
    root.mkdir()
    for name in ("config.json", "vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        (root / name).write_bytes((tiny_model_dir / name).read_bytes())
    return root


BAD_INPUTS = {
    "unknown task": (lambda tmp, m, g: (["--task", "glue"], m, g), "Unknown GLUE task 'glue': use one of cola, sst2"),
    "missing column": (
        lambda tmp, m, g: (["--task", "rte"], m, _rte_dir(tmp / "d", ["index", "sentence1", "label"],
                                                          [["0", "a", "entailment"]])),
        "missing column 'sentence2'",
    ),
    "label not in set": (
        lambda tmp, m, g: (["--task", "rte"], m, _rte_dir(tmp / "d", dev_content="index\tsentence1\tsentence2\tlabel\n0\ta\tb\tneutral\n")),
        "dev.tsv, line 2: label 'neutral' is not in the rte label set: 0 (entailment), 1 (not_entailment)",
    ),
    "empty file": (lambda tmp, m, g: (["--task", "rte"], m, _rte_dir(tmp / "d", dev_content="")), "dev.tsv is empty"),
    "sequence longer than the model": (
        lambda tmp, m, g: (["--task", "rte", "--max_seq_length", "1000", "--pad_to_max_length", "true"], m, g),
        "--max_seq_length 1000 gives sequences of",
    ),
    "an example longer than the model": (
        lambda tmp, m, g: (["--task", "rte", "--max_seq_length", "1000"], m, _rte_dir(
            tmp / "d", dev_content="index\tsentence1\tsentence2\tlabel\n0\t" + "the cat sat " * 30 + "\tthe cat\tentailment\n")),
        "--max_seq_length 1000 gives sequences of 95 tokens, longer than",
    ),
    "model without weights": (
        lambda tmp, m, g: (["--task", "rte"], _model_without_weights(tmp / "noweights", m), g),
        "has no weights (expected one of model.safetensors",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_bad_input_ends_with_a_clear_error(case, tiny_model_dir, glue_dir, tmp_path, capsys):
    make, message = BAD_INPUTS[case]
    flags, model_dir, data_dir = make(tmp_path, tiny_model_dir, glue_dir)
    out = tmp_path / "out"
    assert main([*flags, *fast_args(model_dir, data_dir, out)]) == 2
    err = capsys.readouterr().err
    last_line = err.rstrip("\n").split("\n")[-1].split("\r")[-1]  # after any tokenizing progress bar
    assert last_line.startswith("error: ") and message in last_line and "Traceback" not in err
    assert not out.exists()  # nothing written, so no partial results.json


def test_without_network_or_local_data_says_what_to_pass(tmp_path, capsys, monkeypatch):
    from sparse_transfer.glue import data as data_module

    monkeypatch.setattr(data_module, "hub_unreachable", lambda timeout=3.0: "huggingface.co:443 is unreachable (gaierror)")
    out = tmp_path / "out"
    assert main(["--task", "rte", "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Without network, pass --data_dir DIR with GLUE's TSV files" in err and "--train_file and --validation_file" in err
    assert not out.exists()

    # Data given, model not: the message names --model PATH.
    rng = random.Random(0)
    header, rows = glue_rows("rte", 4, rng)
    write_tsv(tmp_path / "d" / "RTE" / "train.tsv", header, rows)
    write_tsv(tmp_path / "d" / "RTE" / "dev.tsv", header, rows)
    from sparse_transfer.glue import run as run_module

    monkeypatch.setattr(run_module, "hub_unreachable", lambda timeout=3.0: "huggingface.co:443 is unreachable (gaierror)")
    assert main(["--task", "rte", "--data_dir", str(tmp_path / "d"), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "neuralmagic/oBERT-12-upstream-pruned-unstructured-90-v2" in err and "pass --model PATH" in err
    assert not out.exists()


@pytest.mark.slow
def test_python_dash_m(tiny_model_dir, glue_dir, tmp_path):
    out = tmp_path / "cli"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_transfer.glue", "--task", "wnli", *fast_args(tiny_model_dir, glue_dir, out)],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "wnli: best epoch" in proc.stdout and (out / "results.json").is_file()
    proc = subprocess.run([sys.executable, "-m", "sparse_transfer.glue", "--task", "nope"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 2 and "Unknown GLUE task 'nope'" in proc.stderr


def test_interrupted_run_resumes_to_the_same_result(tiny_model_dir, glue_dir, tmp_path, monkeypatch):
    from sparse_transfer.hf import SparseTrainer

    def run(out):
        return main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--save_strategy", "epoch",
                     "--save_total_limit", "1", "--max_train_samples", "32", "--max_eval_samples", "8"])

    assert run(tmp_path / "straight") == 0

    original, steps = SparseTrainer.training_step, []

    def interrupted(self, *args, **kwargs):
        steps.append(self.state.global_step)
        if len(steps) == 6:  # in epoch 3, after the checkpoint of epoch 2 (2 steps per epoch)
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseTrainer, "training_step", interrupted)
    assert run(tmp_path / "resumed") == 130  # Ctrl-C: one line, exit code 130
    assert not (tmp_path / "resumed" / "results.json").exists()
    assert (tmp_path / "resumed" / "checkpoint-4").is_dir()
    steps.clear()

    def counted(self, *args, **kwargs):
        steps.append(self.state.global_step)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseTrainer, "training_step", counted)
    assert run(tmp_path / "resumed") == 0
    assert steps == [4, 5, 6, 7]  # continued after checkpoint-4, did not start over

    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((tmp_path / "resumed" / "results.json").read_text())
    assert resumed["per_epoch"] == straight["per_epoch"] and resumed["best"] == straight["best"]
    a = load_file(str(tmp_path / "straight" / "best" / "model.safetensors"))
    b = load_file(str(tmp_path / "resumed" / "best" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _retrain_in_place(model_dir: Path) -> None:
    """Other weights under the same path (the same zeros): what training the starting model again leaves."""
    from safetensors.torch import save_file

    weights = load_file(str(model_dir / "model.safetensors"))
    name = next(n for n in weights if n.endswith("intermediate.dense.weight"))
    weights[name] = weights[name] * 1.5
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def test_a_model_trained_again_under_the_same_path_is_never_mixed_with_its_old_runs(tiny_model_dir, glue_dir,
                                                                                       tmp_path, capsys, monkeypatch):
    import shutil

    from sparse_transfer._rundir import start_identity
    from sparse_transfer.hf import SparseTrainer

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    calls = []
    original = SparseTrainer.train
    monkeypatch.setattr(SparseTrainer, "train", lambda self, *a, **k: calls.append(self.args.output_dir) or original(self, *a, **k))
    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "3e-3", "--grid_dropouts", "0.1", "--epochs", "1",
            "--max_train_samples", "16"]
    assert main(argv) == 0 and len(calls) == 2
    first = start_identity(model_dir)
    assert set(first["files"]) == {"config.json", "model.safetensors"}
    run = json.loads((out / "lr0.001_dropout0.1" / "results.json").read_text())
    assert run["start"] == first and json.loads((out / "grid_plan.json").read_text())["start"] == first

    # A model card edit is not other weights: everything stays cached.
    (model_dir / "README.md").write_text("edited")
    assert main(argv) == 0 and len(calls) == 2

    # Trained again in place: the same path and recipe, other weights. Neither reused nor mixed into the grid.
    _retrain_in_place(model_dir)
    assert start_identity(model_dir)["sha256"] != first["sha256"]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "started from other weights than" in err and "--overwrite" in err and len(calls) == 2
    # The same for one grid shard (another process's copy of the model, say): stopped before training.
    assert main([*argv, "--grid_shard", "1/2"]) == 2
    assert "started from other weights than" in capsys.readouterr().err and len(calls) == 2
    # --overwrite trains every run again from the new weights, and records them.
    assert main([*argv, "--overwrite"]) == 0 and len(calls) == 4
    assert json.loads((out / "lr0.003_dropout0.1" / "results.json").read_text())["start"] == start_identity(model_dir)

    # A run recorded before starts were recorded cannot be checked: refused, not guessed.
    path = out / "lr0.001_dropout0.1" / "results.json"
    legacy = json.loads(path.read_text())
    del legacy["start"]
    path.write_text(json.dumps(legacy))
    assert main([*argv[:-9], "--grid_dropouts", "0.1", "--epochs", "1", "--max_train_samples", "16",
                 "--grid_learning_rates", "1e-3"]) == 2
    assert "was written before runs recorded which weights they start from" in capsys.readouterr().err


def test_a_grid_stopped_during_overwrite_continues_without_it(tiny_model_dir, glue_dir, tmp_path, capsys,
                                                              monkeypatch):
    import shutil

    from sparse_transfer.hf import SparseTrainer

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "2e-3", "3e-3", "--grid_dropouts", "0.1", "--epochs", "1",
            "--max_train_samples", "16", "--save_strategy", "epoch"]
    assert main(argv) == 0
    _retrain_in_place(model_dir)
    original, calls = SparseTrainer.train, []

    def stop_at_the_second_point(self, *args, **kwargs):
        calls.append(self.args.output_dir)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseTrainer, "train", stop_at_the_second_point)
    capsys.readouterr()
    assert main([*argv, "--overwrite"]) == 130
    assert "rerun the same command without --overwrite to resume" in capsys.readouterr().err
    # Every old point was cleared at the start, not only those the grid reached.
    assert not (out / "lr0.003_dropout0.1" / "results.json").exists()
    monkeypatch.setattr(SparseTrainer, "train", original)
    assert main(argv) == 0
    grid = json.loads((out / "grid_results.json").read_text())
    starts = {json.loads((out / r["name"] / "results.json").read_text())["start"]["sha256"] for r in grid["runs"]}
    assert len(grid["runs"]) == 3 and len(starts) == 1


def test_an_unfinished_run_never_resumes_from_other_weights(tiny_model_dir, glue_dir, tmp_path, monkeypatch, capsys):
    import shutil

    from sparse_transfer.hf import SparseTrainer

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    out = tmp_path / "run"
    argv = ["--task", "rte", *fast_args(model_dir, glue_dir, out), "--save_strategy", "epoch", "--save_total_limit",
            "1", "--max_train_samples", "32", "--max_eval_samples", "8"]
    original, steps = SparseTrainer.training_step, []

    def interrupted(self, *args, **kwargs):
        steps.append(self.state.global_step)
        if len(steps) == 6:  # after the checkpoint of epoch 2
            raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SparseTrainer, "training_step", interrupted)
    assert main(argv) == 130 and (out / "checkpoint-4").is_dir()
    monkeypatch.setattr(SparseTrainer, "training_step", original)
    _retrain_in_place(model_dir)
    capsys.readouterr()
    assert main(argv) == 2  # its checkpoint holds what training from the old weights made of them
    assert "started from other weights than" in capsys.readouterr().err
    assert (out / "checkpoint-4").is_dir()  # nothing deleted without --overwrite

    steps.clear()
    monkeypatch.setattr(SparseTrainer, "training_step",
                        lambda self, *a, **k: steps.append(self.state.global_step) or original(self, *a, **k))
    assert main([*argv, "--overwrite"]) == 0
    assert steps[0] == 0  # started over from the new weights, not from checkpoint-4


def test_overwrite_starts_over_even_from_the_same_weights(tiny_model_dir, glue_dir, tmp_path, monkeypatch):
    """--overwrite never resumes a checkpoint (a finished run's last checkpoint would resume to nothing)."""
    from sparse_transfer.hf import SparseTrainer

    out = tmp_path / "run"
    argv = ["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--save_strategy", "epoch",
            "--save_total_limit", "1", "--max_train_samples", "32", "--max_eval_samples", "8", "--epochs", "2"]
    assert main(argv) == 0 and (out / "checkpoint-4").is_dir()
    first = json.loads((out / "results.json").read_text())
    original, steps = SparseTrainer.training_step, []
    monkeypatch.setattr(SparseTrainer, "training_step",
                        lambda self, *a, **k: steps.append(self.state.global_step) or original(self, *a, **k))
    assert main([*argv, "--overwrite"]) == 0
    assert steps == [0, 1, 2, 3]  # all of it again, from the model
    assert json.loads((out / "results.json").read_text())["per_epoch"] == first["per_epoch"]
    assert main(argv) == 0 and len(steps) == 4  # and then cached as usual


def test_a_model_replaced_while_a_grid_runs_stops_it(tiny_model_dir, glue_dir, tmp_path, monkeypatch, capsys):
    """The weights are hashed once per command; a point loading other weights than that hash is an error."""
    import shutil

    from sparse_transfer.glue import run as glue_run

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    original, loads = glue_run.load_model, []

    def load_model(*args, **kwargs):
        loads.append(1)
        if len(loads) == 2:
            _retrain_in_place(model_dir)  # another process writes the folder between two points
        return original(*args, **kwargs)

    monkeypatch.setattr(glue_run, "load_model", load_model)
    out = tmp_path / "grid"
    argv = ["--task", "sst2", "--recipe", "dense_transfer", *fast_args(model_dir, glue_dir, out), "--grid",
            "--grid_learning_rates", "1e-3", "3e-3", "--grid_dropouts", "0.1", "--epochs", "1",
            "--max_train_samples", "16"]
    assert main(argv) == 2
    assert "changed while this command ran" in capsys.readouterr().err
    assert (out / "lr0.001_dropout0.1" / "results.json").is_file()
    assert not (out / "lr0.003_dropout0.1" / "results.json").exists() and not (out / "grid_results.json").exists()


def test_a_finished_run_moved_elsewhere_publishes_its_own_checkpoint(tiny_model_dir, glue_dir, tmp_path):
    import shutil

    from sparse_transfer.glue.run import finished_run

    out = tmp_path / "run"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--max_train_samples", "16",
                 "--max_eval_samples", "8", "--epochs", "1"]) == 0
    moved = tmp_path / "moved"
    shutil.copytree(out, moved)
    shutil.rmtree(out)
    results = json.loads((moved / "results.json").read_text())
    assert results["checkpoint"] == str(out / "best")  # as written
    cached = finished_run(moved, results["recipe"], False, results["start"])
    assert cached["checkpoint"] == cached["publish"] == str(moved / "best")


def test_start_identity_of_a_hub_id():
    from sparse_transfer._rundir import same_start, start_identity

    commit = "0123456789abcdef0123456789abcdef01234567"
    assert start_identity("org/model", revision=commit) == {"commit": commit}
    # Offline (the suite's setting) with nothing cached: unknown, said as such rather than guessed.
    assert start_identity("org/never-downloaded") == {"commit": None}
    # A run from a local folder, checked once the folder is gone (the path now reads as a Hub id): refused.
    with pytest.raises(ValueError, match="when it was a local folder or file; now it is not one"):
        same_start({"sha256": "ab" * 32}, start_identity("runs/deleted-model"), "RUN", "runs/deleted-model")


@pytest.mark.gpu
def test_fp16_on_cuda_keeps_exact_sparsity(tiny_model_dir, glue_dir, tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA device")
    out = tmp_path / "cuda"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out)]) == 0  # mixed_precision auto -> fp16
    results = json.loads((out / "results.json").read_text())
    assert results["recipe"]["fp16"] is True and results["sparsity"]["exact"] is True


def test_a_model_folder_that_ships_a_mask_file_trains_under_that_mask(tiny_model_dir, glue_dir, tmp_path):
    """The mask file is the record: a weight that happens to be 0 but is marked kept trains; the file's pruned weights
    stay exactly 0."""
    import shutil

    from transformers import BertForMaskedLM

    from sparse_transfer import MASKS_NAME, SparseMasks

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    model = BertForMaskedLM.from_pretrained(model_dir)
    masks = SparseMasks.from_zeros(model, "bert")
    name = next(iter(masks))
    kept_zero = tuple(int(i) for i in (~masks[name]).nonzero()[0])  # zero in the weights, kept by the file
    masks[name][kept_zero] = True
    masks.save(model_dir / MASKS_NAME)
    out = tmp_path / "rte"
    assert main(["--task", "rte", *fast_args(model_dir, glue_dir, out), "--epochs", "1", "--unfreeze", "none"]) == 0
    trained = load_file(str(out / "best" / "model.safetensors"))
    assert trained[name][kept_zero] != 0
    saved = SparseMasks.load(out / "best" / MASKS_NAME)
    assert torch.equal(saved[name], masks[name])
    for n, m in masks.items():
        assert (trained[n][~m] == 0).all(), n


def test_a_mask_file_that_disagrees_with_the_weights_is_an_error(tiny_model_dir, glue_dir, tmp_path, capsys):
    import shutil

    from transformers import BertForMaskedLM

    from sparse_transfer import MASKS_NAME, SparseMasks

    from .conftest import make_tiny_model_dir

    model_dir = tmp_path / "model"
    shutil.copytree(tiny_model_dir, model_dir)
    other_dir = make_tiny_model_dir(tmp_path / "other", seed=5)  # same architecture, other zeros
    other = BertForMaskedLM.from_pretrained(other_dir)
    SparseMasks.from_zeros(other, "bert").save(model_dir / MASKS_NAME)
    assert main(["--task", "rte", *fast_args(model_dir, glue_dir, tmp_path / "rte")]) != 0
    assert "disagrees with the weights" in capsys.readouterr().err


@pytest.mark.parametrize(
    "case, message",
    [("offline", "cannot be reached"), ("no-token", "needs a Hugging Face token"), ("bad-id", "not a Hub repository id"),
     ("rejected", "rejected the token")],
)
def test_push_to_hub_is_checked_before_training(tiny_model_dir, glue_dir, tmp_path, monkeypatch, capsys, case, message):
    import huggingface_hub

    def whoami(self, token=None, **kw):
        if case == "rejected":
            err = OSError("401 Unauthorized")
            err.response = type("R", (), {"status_code": 401})()
            raise err
        raise ConnectionError("no route to huggingface.co")

    monkeypatch.setattr(huggingface_hub, "get_token", lambda: None if case == "no-token" else "hf_" + "x" * 34)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", whoami)
    repo = "not a repo!" if case == "bad-id" else "me/tiny-rte"
    out = tmp_path / "rte"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--push-to-hub", repo]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and "x" * 34 not in err
    assert not (out / "results.json").exists() and not (out / "best").exists()  # nothing trained


def test_a_push_that_fails_after_training_says_how_to_retry(tiny_model_dir, glue_dir, tmp_path, monkeypatch, capsys,
                                                            hub_login):
    import huggingface_hub

    from sparse_transfer.push import main as push_main

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **k: (_ for _ in ()).throw(ConnectionError("reset")))
    out = tmp_path / "rte"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out, "--epochs", "1"), "--push-to-hub", "me/r"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: push of ") and f"python -m sparse_transfer.push {out / 'best'} me/r" in err[-1]
    assert (out / "results.json").is_file() and (out / "best" / "model.safetensors").is_file()
    # the retry, without retraining
    sent = []
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **k: huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}"))
    monkeypatch.setattr(huggingface_hub, "upload_folder", lambda **k: sent.append(k["allow_patterns"]))
    assert push_main([str(out / "best"), "me/r"]) == 0
    assert sent and "model.safetensors" in sent[0] and "training_args.bin" not in sent[0]


def test_ctrl_c_leaves_nothing_that_looks_finished(tiny_model_dir, glue_dir, tmp_path, monkeypatch, capsys):
    from sparse_transfer.hf import MaskMethodCallback

    original = MaskMethodCallback.on_step_begin

    def ctrl_c(self, args, state, control, **kwargs):
        if state.global_step == 2:
            raise KeyboardInterrupt
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", ctrl_c)
    out = tmp_path / "rte"
    argv = ["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out, "--epochs", "2", "--eval_strategy", "steps",
                                        "--eval_steps", "1")]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "interrupted at step 2; rerun the same command to resume"
    assert not (out / "results.json").exists() and not (out / "best").exists()
    assert (out / "best.in-progress").is_dir()  # the best evaluation so far, named as what it is
    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", original)
    assert main(argv) == 0
    assert (out / "results.json").is_file() and (out / "best").is_dir() and not (out / "best.in-progress").exists()


_KILL_AT_WRITE = """
import sys, torch
from tests.kill_points import install_kill_at_write
torch.set_num_threads(int(sys.argv[2]))  # as in the test process, so that both compute the same numbers
install_kill_at_write(int(sys.argv[1]))
from sparse_transfer.glue.__main__ import main
main(sys.argv[3:])
"""


def kill_at_write_then_rerun(argv, tmp_path, k: int, weights: str) -> None:
    """Runs ``argv(folder)`` straight, then the same command SIGKILLed at its k-th file write and run again: the rerun
    must end with the straight run's best epoch, per-epoch results and ``best/<weights>`` tensors."""
    import signal

    assert main(argv(tmp_path / "straight")) == 0
    out = tmp_path / "killed"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "PYTHONPATH": str(repo)}
    killed = subprocess.run([sys.executable, "-c", _KILL_AT_WRITE, str(k), str(torch.get_num_threads()), *argv(out)],
                            env=env, capture_output=True, timeout=300)
    assert killed.returncode == -signal.SIGKILL, f"the run finished before write #{k}: {killed.stderr[-2000:]}"
    assert not (out / "results.json").exists() and not (out / "best").exists()
    assert main(argv(out)) == 0  # the same command again
    straight = json.loads((tmp_path / "straight" / "results.json").read_text())
    resumed = json.loads((out / "results.json").read_text())
    assert resumed["best"] == straight["best"] and resumed["per_epoch"] == straight["per_epoch"]
    a = load_file(str(tmp_path / "straight" / "best" / weights))
    b = load_file(str(out / "best" / weights))
    assert a.keys() == b.keys() and all(torch.equal(a[key], b[key]) for key in a)


@pytest.mark.parametrize("k", [3, 12, 30])
def test_kill_9_mid_run_then_the_same_command_ends_like_an_uninterrupted_run(tiny_model_dir, glue_dir, tmp_path, k):
    """A real SIGKILL of the command's process at its k-th file write (inside the best-so-far or a Trainer checkpoint
    save), then the same command: the same best epoch, the same weights."""

    def argv(out):
        return ["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--save_strategy", "epoch",
                "--save_total_limit", "1", "--max_train_samples", "32", "--max_eval_samples", "8"]

    kill_at_write_then_rerun(argv, tmp_path, k, "model.safetensors")


def test_a_nan_weight_stops_before_the_best_epoch_is_saved(tiny_model_dir, glue_dir, tmp_path, monkeypatch, capsys):
    """A NaN in a weight the loss does not use (the [MASK] embedding row): the loss stays finite, the weights check
    stops the run with one line and exit code 3 before any best checkpoint is written."""
    from sparse_transfer.hf import MaskMethodCallback

    original = MaskMethodCallback.on_step_begin

    def poison(self, args, state, control, model=None, **kwargs):
        if state.global_step == 1:
            with torch.no_grad():
                model.bert.embeddings.word_embeddings.weight[4].fill_(float("nan"))
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", poison)
    out = tmp_path / "rte"
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out)]) == 3
    err = capsys.readouterr().err.strip().splitlines()
    assert "hold NaN or inf" in err[-1] and "Traceback" not in "\n".join(err)
    assert not (out / "best").exists() and not (out / "best.in-progress").exists() and not (out / "results.json").exists()
