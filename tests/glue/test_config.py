"""Recipes and flags: every recipe loads into the dataclasses, flags override it, epochs adapt to L."""

import pytest
import yaml

from sparse_transfer.glue import GLUE_TASKS, parse_args, resolve_epochs
from sparse_transfer.glue.config import RECIPES_DIR, _push_to_hub_argv

PAPER = {  # RECIPES.md section 1
    "unfreeze": "gradual", "epochs": "L+2", "stage_epochs": 1.0, "lr_scheduler_type": "rewind", "warmup_steps": 0,
    "per_device_train_batch_size": 32, "max_seq_length": 128, "weight_decay": 0.0, "adam_beta1": 0.9,
    "adam_beta2": 0.999, "adam_epsilon": 1e-8, "seed": 42, "grid_learning_rates": [1e-4, 2e-4, 3e-4],
    "grid_dropouts": [0.05, 0.1], "grid_summary": "mean_top2", "lr_end_factor": 0.0, "unfreeze_embeddings": False,
    "model": "neuralmagic/oBERT-12-upstream-pruned-unstructured-90-v2", "mask_targets": "bert",
}


def values(glue, train):
    merged = {**vars(train), **vars(glue)}
    return {k: (str(getattr(v, "value", v)) if k == "lr_scheduler_type" else v) for k, v in merged.items()}


@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_task_recipes_hold_the_paper_values(task):
    assert (RECIPES_DIR / f"{task}.yaml").is_file()
    glue, train, recipe_file = parse_args(["--task", task])  # the task's recipe is the default
    assert recipe_file == str(RECIPES_DIR / f"{task}.yaml")
    got = values(glue, train)
    assert {k: got[k] for k in PAPER} == PAPER
    assert glue.task == task and train.output_dir == f"runs/glue/{task}"
    assert str(train.eval_strategy.value) == "epoch"


def test_builtin_defaults_equal_the_paper_recipe(tmp_path):
    # Without the recipes folder (e.g. an installed wheel) the defaults are the same recipe.
    empty = tmp_path / "empty.yaml"
    empty.write_text("description: nothing\n")
    glue, train, _ = parse_args(["--task", "rte", "--recipe", str(empty)])
    got = values(glue, train)
    assert {k: got[k] for k in PAPER} == PAPER


@pytest.mark.parametrize(
    "name, expected",
    [
        ("dense_transfer", {"unfreeze": "none", "epochs": "3", "lr_scheduler_type": "linear", "warmup_steps": 0.1}),
        ("extended", {"unfreeze": "none", "epochs": "8", "lr_scheduler_type": "linear", "warmup_steps": 0.1}),
        ("rescaled_sweep", {"unfreeze": "none", "grid_epochs": [str(e) for e in range(1, 8)], "grid_summary": "best"}),
    ],
)
def test_baseline_recipes(name, expected):
    glue, train, recipe_file = parse_args(["--task", "cola", "--recipe", name])
    assert recipe_file.endswith(f"{name}.yaml")
    got = values(glue, train)
    assert {k: got[k] for k in expected} == expected
    assert glue.grid_learning_rates == [2e-5, 3e-5, 5e-5] and train.per_device_train_batch_size == 32


def test_flags_override_the_recipe(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"task": "mrpc", "learning_rate": 3e-4, "dropout": 0.05, "epochs": "2*L"}))
    glue, train, _ = parse_args(["--recipe", str(recipe), "--learning_rate", "2e-4", "--output_dir", str(tmp_path)])
    assert glue.task == "mrpc" and glue.dropout == 0.05 and glue.epochs == "2*L"
    assert train.learning_rate == 2e-4 and train.output_dir == str(tmp_path)


def test_bad_recipes_and_flags(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("task: rte\nlearning_rat: 1e-4\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['learning_rat'\]"):
        parse_args(["--recipe", str(bad)])
    with pytest.raises(FileNotFoundError, match="No recipe 'nope'.*known: cola, dense_transfer"):
        parse_args(["--task", "rte", "--recipe", "nope"])
    with pytest.raises(ValueError, match="Unknown GLUE task 'glue'"):
        parse_args(["--task", "glue"])
    with pytest.raises(ValueError, match="Pass --task"):
        parse_args(["--recipe", "dense_transfer"])
    with pytest.raises(ValueError, match="expression in L"):
        parse_args(["--task", "rte", "--epochs", "L**2"])


def test_epoch_expressions():
    assert resolve_epochs("L+2", 12) == 14 and resolve_epochs("L + 2", 6) == 8
    assert resolve_epochs("3", 12) == 3 and resolve_epochs("2*(L+1)", 2) == 6 and resolve_epochs(1.5, 6) == 1.5
    for bad in ("import os", "L**2", "__import__('os')", "x+1", ""):
        with pytest.raises(ValueError, match="not a number or an expression in L"):
            resolve_epochs(bad, 12)
    with pytest.raises(ValueError, match="must be positive"):
        resolve_epochs("L-12", 12)


def test_push_to_hub_takes_the_repository():
    assert _push_to_hub_argv(["--push-to-hub", "me/rte"]) == ["--push_to_hub", "true", "--hub_model_id", "me/rte"]
    assert _push_to_hub_argv(["--push_to_hub=me/rte"]) == ["--push_to_hub", "true", "--hub_model_id", "me/rte"]
    assert _push_to_hub_argv(["--push-to-hub", "--task", "rte"]) == ["--push-to-hub", "--task", "rte"]
    glue, train, _ = parse_args(["--task", "rte", "--push-to-hub", "me/rte-sparse"])
    assert train.push_to_hub is True and train.hub_model_id == "me/rte-sparse"
