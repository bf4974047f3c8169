"""The grid: its points and its summary (mean of the two best, or the best), NaN scores ranked last."""

import math

import pytest

from sparse_transfer.glue import GlueArguments, summarize_grid
from sparse_transfer.glue.run import grid_points


def run(name, accuracy, f1):
    score = (accuracy + f1) / 2 if not math.isnan(f1) else math.nan
    return {"name": name, "best": {"accuracy": accuracy, "f1": f1, "score": score}}


def test_summaries():
    runs = [run("a", 0.80, 0.70), run("b", 0.90, math.nan), run("c", 0.85, 0.75), run("d", 0.60, 0.95)]
    top2 = summarize_grid(runs, "mean_top2", ["accuracy", "f1"])
    assert top2["runs"] == ["c", "d"]  # b's NaN score ranks below every number
    assert top2["accuracy"] == pytest.approx(0.725) and top2["f1"] == pytest.approx(0.85)
    assert top2["score"] == pytest.approx(0.7875)
    best = summarize_grid(runs, "best", ["accuracy", "f1"])
    assert best["runs"] == ["c"] and best["accuracy"] == 0.85


def test_grid_points():
    points = grid_points(GlueArguments(task="rte"), None)
    assert [p["name"] for p in points] == [
        "lr0.0001_dropout0.05", "lr0.0001_dropout0.1", "lr0.0002_dropout0.05", "lr0.0002_dropout0.1",
        "lr0.0003_dropout0.05", "lr0.0003_dropout0.1",
    ]
    sweep = grid_points(GlueArguments(task="rte", grid_epochs=["1", "2"], grid_learning_rates=[2e-5], grid_dropouts=[0.1]), None)
    assert [(p["name"], p["epochs"]) for p in sweep] == [("lr2e-05_dropout0.1_epochs1", "1"), ("lr2e-05_dropout0.1_epochs2", "2")]
    with pytest.raises(ValueError, match="repeats a point"):
        grid_points(GlueArguments(task="rte", grid_learning_rates=[1e-4, 1e-4]), None)


def test_overwrite_trains_a_finished_run_again(tiny_model_dir, glue_dir, tmp_path, capsys):
    from sparse_transfer.glue.__main__ import main

    from .test_cli import fast_args

    out = tmp_path / "rte"
    args = ["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--epochs", "1"]
    assert main(args) == 0
    first = (out / "results.json").stat().st_mtime_ns
    assert main(args) == 0  # the same recipe, finished: returned as is
    assert (out / "results.json").stat().st_mtime_ns == first
    assert main([*args, "--overwrite"]) == 0  # start over
    assert (out / "results.json").stat().st_mtime_ns != first
