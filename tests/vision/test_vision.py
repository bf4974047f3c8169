"""The vision loop end to end on a tiny timm model at 16-32 px: every method, resume, data sources, bad inputs."""

from __future__ import annotations

import glob
import json
import os

import pytest
import torch
from safetensors.torch import load_file

from sparse_transfer.core import MASKS_NAME, SparseMasks, sparsity_report
from sparse_transfer.vision import VisionArguments, load_recipe, parse_args, train
from sparse_transfer.vision.data import build_datasets, progressive_size
from sparse_transfer.vision.train import lr_factor

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

TINY = dict(
    model="test_resnet", batch_size=8, lr=0.1, lr_warmup_epochs=1, train_size_start=16, train_size_end=32,
    resize_start_epoch=2, resize_end_epoch=4, resize_multiple=16, eval_size=32, eval_resize=36, num_workers=0,
    progress=False, crop_scale_min=0.5,
)

METHOD_CASES = {
    "dense": dict(method="dense", epochs=2),
    "constant": dict(method="constant", sparsity=0.7, distribution="uniform", epochs=2),
    "gmp": dict(method="gmp", sparsity=0.8, epochs=4, gmp_start_epoch=1, gmp_end_epoch=3, gmp_interval_steps=2),
    "acdc": dict(method="acdc", sparsity=0.8, epochs=6, acdc_warmup_epochs=1, acdc_phase_epochs=1, acdc_final_epochs=2),
    "rigl": dict(method="rigl", sparsity=0.8, epochs=3, distribution="erk", rigl_interval_steps=2, rigl_end_fraction=0.75),
}


def run(tmp_path, data, name, **overrides):
    args = VisionArguments(**{**TINY, **METHOD_CASES[name], "data": data, "output_dir": str(tmp_path / name), **overrides})
    return args, train(args)


@pytest.mark.parametrize("name", list(METHOD_CASES))
def test_method_trains_exactly_sparse_and_reloads_with_timm(tmp_path, image_folder, name):
    import timm

    args, results = run(tmp_path, image_folder, name)
    assert results["complete"]
    history = results["history"]
    assert len(history) == args.epochs
    for key in ("train_loss", "eval_top1", "eval_entropy", "sparsity", "zero_channel_fraction", "layer_sparsity"):
        assert key in history[-1]
    last = tmp_path / name / "last"
    model = timm.create_model(f"local-dir:{last}", pretrained=True)
    if name == "dense":
        assert not (last / MASKS_NAME).exists()
        return
    masks = SparseMasks.load(last / MASKS_NAME, model)
    assert masks.violations() == 0
    assert masks.sparsity() == pytest.approx(args.sparsity, abs=0.01)
    weights = load_file(str(last / "model.safetensors"))
    for n, m in masks.items():
        assert (weights[n][~m] == 0).all()
    assert history[-1]["sparsity"] == pytest.approx(args.sparsity, abs=0.01)
    best = json.loads((tmp_path / name / "best" / "results.json").read_text())
    assert best["epoch"] == results["best_epoch"]
    assert "Sparsity" in (last / "README.md").read_text()
    if name == "acdc":
        phases = [h["phase"] for h in history]
        assert phases == ["warmup", "compressed", "decompressed", "decompressed", "final", "final"]
        assert "decompressed_zero_fraction" in history[2]
        # pruned weights restart at 0 and then move under the dense gradient: some, not all, stay at 0
        assert 0.0 <= history[2]["decompressed_pruned_still_zero"] < 1.0
        assert history[2]["decompressed_zero_fraction"] < args.sparsity
        assert history[4]["mask_iou_update"] is not None
        # the last compression counts as the current mask while decompressed: IoU across the D phase
        assert 0 < history[4]["mask_iou_epoch"] <= 1 and history[-1]["mask_explored_ratio"] >= 1
        # the best checkpoint is never a dense (decompressed) epoch
        assert history[results["best_epoch"] - 1]["mask_active"]
    if name == "rigl":
        assert all(h["sparsity"] == pytest.approx(0.8, abs=0.01) for h in history)
        assert "mask_iou_epoch" in history[-1]
        assert 0 < history[0]["mask_iou_update"] < 1  # drop/grow changed the mask
        assert history[0]["mask_update_ious"][-1] == pytest.approx(history[0]["mask_iou_update"], abs=1e-6)
        assert history[-1]["mask_explored_ratio"] > 1  # grown weights were never in the initial mask
    if name == "gmp":
        assert 0 < history[1]["mask_iou_update"] <= 1
    for h in history:
        assert 0.0 <= h["zero_channel_fraction"] <= 1.0
        assert set(h["layer_sparsity"]) == {l.name for l in sparsity_report(model, args.targets).layers}
    assert (tmp_path / name / "recipe.yaml").exists()
    assert parse_args(["--recipe", str(tmp_path / name / "recipe.yaml")]).to_dict() == {**args.to_dict(), "overwrite": False}
    assert json.loads((tmp_path / name / "results.json").read_text())["history"] == json.loads(json.dumps(history))


# Where each run is stopped: AC/DC over 6 epochs (W C D D F F) after epoch 3, mid decompressed phase; GMP
# (pruning epochs 1-3 of 4) after epoch 2, mid pruning; RigL (updates until 75% of 3 epochs) after epoch 1.
RESUME_STOPS = {"acdc": 3, "gmp": 2, "rigl": 1}


@pytest.mark.parametrize("name", list(RESUME_STOPS))
def test_resume_mid_phase_is_bit_identical(tmp_path, image_folder, name):
    stop = RESUME_STOPS[name]
    _, full = run(tmp_path / "a", image_folder, name)
    _, part = run(tmp_path / "b", image_folder, name, stop_after_epoch=stop)
    assert not part["complete"] and len(part["history"]) == stop
    _, resumed = run(tmp_path / "b", image_folder, name)
    assert resumed["complete"]
    a = load_file(str(tmp_path / "a" / name / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / name / "last" / "model.safetensors"))
    for key in a:
        assert torch.equal(a[key], b[key]), key
    mask_a = SparseMasks.load(tmp_path / "a" / name / "last" / MASKS_NAME)
    mask_b = SparseMasks.load(tmp_path / "b" / name / "last" / MASKS_NAME)
    assert all(torch.equal(mask_a[n], mask_b[n]) for n in mask_a)
    strip = lambda h: {k: v for k, v in h.items() if k != "epoch_time_s"}  # noqa: E731
    assert [strip(h) for h in full["history"]] == [strip(h) for h in resumed["history"]]


def test_resume_refuses_a_different_recipe(tmp_path, image_folder):
    run(tmp_path, image_folder, "dense", stop_after_epoch=1)
    with pytest.raises(ValueError, match="different recipe"):
        run(tmp_path, image_folder, "dense", lr=0.2)


def test_resume_refuses_a_state_trained_from_other_init_weights(tmp_path, image_folder):
    """An --init_checkpoint rewritten under the same path: its old run's state is never resumed onto the new one."""
    from safetensors.torch import save_file

    run(tmp_path / "a", image_folder, "dense", epochs=1)
    source = tmp_path / "a" / "dense" / "last" / "model.safetensors"
    _, part = run(tmp_path / "b", image_folder, "dense", stop_after_epoch=1, init_checkpoint=str(source))
    assert part["start"]["sha256"] and not part["complete"]
    weights = load_file(str(source))
    name = next(n for n in weights if weights[n].is_floating_point() and weights[n].dim() == 4)
    weights[name] = weights[name] * 1.5
    save_file(weights, str(source))
    with pytest.raises(ValueError, match="started from other weights than"):
        run(tmp_path / "b", image_folder, "dense", init_checkpoint=str(source))
    _, again = run(tmp_path / "b", image_folder, "dense", init_checkpoint=str(source), overwrite=True)
    assert again["complete"] and again["start"]["sha256"] != part["start"]["sha256"]


def test_zip_data(tmp_path, image_zip):
    train_ds, eval_ds = build_datasets(image_zip)
    assert len(train_ds) == 36 and len(eval_ds) == 18 and train_ds.classes == ["cat", "dog", "fox"]
    _, results = run(tmp_path, image_zip, "dense", epochs=1)
    assert results["complete"] and results["final_eval_top1"] is not None


def test_datasets_data(tmp_path):
    import datasets
    import numpy as np
    from PIL import Image

    images = [Image.fromarray(np.full((8, 8, 3), 40 * i, dtype=np.uint8)) for i in range(6)]
    features = datasets.Features({"image": datasets.Image(), "label": datasets.ClassLabel(names=["a", "b", "c"])})
    split = datasets.Dataset.from_dict({"image": images, "label": [0, 1, 2, 0, 1, 2]}, features=features)
    datasets.DatasetDict({"train": split, "validation": split.select(range(3))}).save_to_disk(str(tmp_path / "hf"))
    train_ds, eval_ds = build_datasets(str(tmp_path / "hf"))
    assert len(train_ds) == 6 and len(eval_ds) == 3 and train_ds.classes == ["a", "b", "c"]
    image, label = train_ds[1]
    assert image.size == (8, 8) and label == 1


def test_schedules():
    assert [progressive_size(e, 160, 192, 74, 86, 32) for e in (0, 74, 79, 80, 86, 99)] == [160, 160, 160, 192, 192, 192]
    # 160 -> 224 over epochs 74-86: 170.7 px at 76 rounds to 160, 181.3 px at 78 to 192
    assert progressive_size(76, 160, 224, 74, 86, 32) == 160 and progressive_size(78, 160, 224, 74, 86, 32) == 192
    factors = [lr_factor(s, 4, 20, 0.0) for s in range(20)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and factors[12] == pytest.approx(0.5) and factors[-1] == pytest.approx(1 / 16)


@pytest.mark.parametrize(
    "overrides, error, match",
    [
        (dict(model="resnet_does_not_exist"), ValueError, "Unknown timm model"),
        (dict(method="gmp", sparsity=1.5), ValueError, "sparsity must be in"),
        (dict(method="acdc", sparsity=0.9, epochs=5), ValueError, "longer than training"),
        (dict(method="gmp", sparsity=0.9, epochs=5, gmp_start_epoch=2, gmp_end_epoch=8), ValueError, "within training"),
        (dict(method="rigl"), ValueError, "needs --sparsity"),
        (dict(method="rigl", sparsity=-0.1), ValueError, "sparsity must be in"),
        (dict(lr_warmup_epochs=3), ValueError, "longer than training"),
        (dict(method="acdc", sparsity=0.9, epochs=40, acdc_decompressed_sparsity=0.95), ValueError, "must not exceed"),
        (dict(model_kwargs="{drop_rate: 0.1"), ValueError, "model_kwargs must be a JSON object"),
    ],
)
def test_bad_arguments(tmp_path, image_folder, overrides, error, match):
    with pytest.raises(error, match=match):
        train(VisionArguments(**{**TINY, "epochs": 2, "data": image_folder, "output_dir": str(tmp_path), **overrides}))


def test_bad_data(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no 'train' folder"):
        build_datasets(str(tmp_path / "empty"))
    (tmp_path / "flat" / "train").mkdir(parents=True)
    (tmp_path / "flat" / "val").mkdir()
    (tmp_path / "flat" / "train" / "img.png").write_bytes(b"")
    with pytest.raises(ValueError, match="no class folders"):
        build_datasets(str(tmp_path / "flat"))
    (tmp_path / "noimg" / "train" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "val" / "cat").mkdir(parents=True)
    (tmp_path / "noimg" / "train" / "cat" / "notes.txt").write_text("x")
    with pytest.raises(ValueError, match="No images"):
        build_datasets(str(tmp_path / "noimg"))
    (tmp_path / "notazip.zip").write_text("hello")
    with pytest.raises(ValueError, match="not a zip"):
        build_datasets(str(tmp_path / "notazip.zip"))
    with pytest.raises(FileNotFoundError):
        build_datasets(str(tmp_path / "missing" / "dir"))


def test_cli_recipe_and_override(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("method: acdc\nsparsity: 0.95\nepochs: 100\nlr: 1.7\n")
    args = parse_args(["--recipe", str(recipe), "--lr", "0.5", "--data", "x"])
    assert args.method == "acdc" and args.sparsity == 0.95 and args.lr == 0.5
    recipe.write_text("sparsity: 0.9\nnot_a_field: 1\n")
    with pytest.raises(ValueError, match="unknown field"):
        parse_args(["--recipe", str(recipe)])


def test_imagenet_recipes_are_valid():
    paths = sorted(glob.glob(os.path.join(REPO, "recipes", "imagenet", "*.yaml")))
    assert len(paths) >= 30
    for path in paths:
        args = VisionArguments(**load_recipe(path))
        assert args.model == "resnet50"


def test_acdc_minimum_sparsity_during_decompression_is_logged(tmp_path, image_folder):
    args, results = run(tmp_path, image_folder, "acdc", acdc_decompressed_sparsity=0.5)
    decompressed = [h for h in results["history"] if h["phase"] == "decompressed"]
    assert decompressed and all(h["decompressed_zero_fraction"] >= 0.5 - 1e-3 for h in decompressed)
    assert results["final_sparsity"] == pytest.approx(args.sparsity, abs=0.01)


def test_unreadable_image_is_a_clear_error(tmp_path, image_folder):
    import shutil

    data = tmp_path / "data"
    shutil.copytree(image_folder, data)
    bad = data / "train" / "cat" / "000.png"  # the first training image, read before the model is built
    bad.write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"Could not read .*000\.png.*Remove or replace"):
        run(tmp_path, str(data), "dense", epochs=1)


def test_push_to_hub_uploads_checkpoint_with_model_card(tmp_path, image_folder, monkeypatch, hub_login):
    import huggingface_hub

    calls = {}

    def create_repo(repo_id, token=None, private=False, exist_ok=False, **kw):
        calls["create_repo"] = (repo_id, private, exist_ok)
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(*, repo_id, folder_path, commit_message=None, allow_patterns=None, **kw):
        from huggingface_hub.utils import filter_repo_objects

        calls["files"] = sorted(filter_repo_objects(os.listdir(folder_path), allow_patterns=allow_patterns))
        calls["card"] = open(os.path.join(folder_path, "README.md")).read()
        calls["repo_id"] = repo_id

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    _, results = run(tmp_path, image_folder, "constant", epochs=1, push_to_hub="user/tiny-sparse",
                     hub_private_repo=True)
    assert calls["create_repo"] == ("user/tiny-sparse", True, True) and calls["repo_id"] == "user/tiny-sparse"
    assert {"model.safetensors", "config.json", "README.md", MASKS_NAME} <= set(calls["files"])
    card = calls["card"]
    assert "70% sparsity" in card and "eval_top1" in card and "| parameter |" in card
    front = __import__("yaml").safe_load(card.split("---\n")[1])
    assert front["library_name"] == "timm" and "datasets" not in front and "base_model" not in front
    assert front["model-index"][0]["results"][0]["metrics"][0]["type"] == "accuracy"
    assert 'timm.create_model("hf-hub:user/tiny-sparse", pretrained=True)' in card
    assert results["hub_url"] == "https://huggingface.co/user/tiny-sparse"
    assert json.loads((tmp_path / "constant" / "results.json").read_text())["hub_url"] == results["hub_url"]


def test_push_refuses_checkpoint_with_nonzero_pruned_weights(tmp_path, image_folder, monkeypatch):
    import huggingface_hub
    from safetensors.torch import save_file

    from sparse_transfer.vision.train import push_checkpoint

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **k: pytest.fail("must not reach the Hub"))
    args, _ = run(tmp_path, image_folder, "constant", epochs=1)
    last = tmp_path / "constant" / "last"
    weights = load_file(str(last / "model.safetensors"))
    masks = SparseMasks.load(last / MASKS_NAME)
    name = next(iter(masks))
    weights[name][~masks[name]] = 1.0
    save_file(weights, str(last / "model.safetensors"))
    with pytest.raises(ValueError, match="pruned weight.* are non-zero"):
        push_checkpoint(str(last), VisionArguments(**{**args.to_dict(), "push_to_hub": "u/x"}))


def test_dense_with_push_and_a_nan_start_are_refused_before_training(tmp_path, image_folder, monkeypatch):
    import huggingface_hub
    from safetensors.torch import save_file

    monkeypatch.setattr(huggingface_hub, "create_repo", lambda *a, **k: pytest.fail("must not reach the Hub"))
    with pytest.raises(ValueError, match="--method dense trains without masks"):
        run(tmp_path / "a", image_folder, "dense", push_to_hub="u/x")
    assert not (tmp_path / "a").exists()
    run(tmp_path / "b", image_folder, "dense", epochs=1)
    weights = load_file(str(tmp_path / "b" / "dense" / "last" / "model.safetensors"))
    first = next(n for n in weights if n.endswith("weight") and weights[n].dim() > 1)
    weights[first].view(-1)[0] = float("nan")
    save_file(weights, str(tmp_path / "nan.safetensors"))
    with pytest.raises(ValueError, match=r"1 parameter\(s\) of .*nan.safetensors hold NaN or inf"):
        run(tmp_path / "c", image_folder, "gmp", init_checkpoint=str(tmp_path / "nan.safetensors"))
    assert not (tmp_path / "c" / "gmp" / "state").exists()


def test_push_to_hub_flag_takes_the_repo_id():
    with pytest.raises(ValueError, match="needs the repository USER/NAME"):
        parse_args(["--push-to-hub", "tiny", "--data", "x"])
    assert parse_args(["--push-to-hub", "u/x", "--data", "x"]).push_to_hub == "u/x"
    with pytest.raises(ValueError, match="--hub_model_id is now --push-to-hub USER/NAME"):
        parse_args(["--push-to-hub", "--hub_model_id", "u/x", "--data", "x"])


def test_cli_reports_bad_input_without_traceback(tmp_path, image_folder, capsys):
    from sparse_transfer.vision.__main__ import main

    assert main(["--model", "resnet_does_not_exist", "--data", image_folder, "--output_dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: Unknown timm model 'resnet_does_not_exist'") and "Traceback" not in err


def test_constant_fine_tunes_a_sparse_checkpoint_with_its_stored_mask(tmp_path, image_folder):
    run(tmp_path / "a", image_folder, "gmp")
    source = tmp_path / "a" / "gmp" / "last"
    args, results = run(tmp_path / "b", image_folder, "constant", sparsity=0.0, epochs=1, init_checkpoint=str(source))
    before = SparseMasks.load(source / MASKS_NAME)
    after = SparseMasks.load(tmp_path / "b" / "constant" / "last" / MASKS_NAME)
    assert all(torch.equal(before[n], after[n]) for n in before)
    weights = load_file(str(tmp_path / "b" / "constant" / "last" / "model.safetensors"))
    assert all((weights[n][~after[n]] == 0).all() for n in after)
    assert results["final_sparsity"] == pytest.approx(0.8, abs=0.01)
    # The card's usage snippet runs as written.
    import re

    card = (tmp_path / "b" / "constant" / "last" / "README.md").read_text()
    exec(compile(re.search(r"```python\n(.*?)```", card, re.S).group(1), "README.md", "exec"), {})


def test_imagenet_recipes_match_their_generator_and_schedules():
    import importlib.util

    from sparse_transfer.methods import acdc_boundaries

    spec = importlib.util.spec_from_file_location("gen", os.path.join(REPO, "recipes", "imagenet", "generate.py"))
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    expected = gen.recipes()
    paths = sorted(glob.glob(os.path.join(REPO, "recipes", "imagenet", "*.yaml")))
    assert sorted(os.path.basename(p)[:-5] for p in paths) == sorted(expected)
    for path in paths:
        recipe = load_recipe(path)
        want = dict(expected[os.path.basename(path)[:-5]])
        want.pop("description")
        assert recipe == want, f"{path} differs from recipes/imagenet/generate.py: rerun it"
        args = VisionArguments(**recipe)
        assert args.lr_warmup_epochs == 2 and args.resize_start_epoch == pytest.approx(0.74 * args.epochs)
        if args.method == "acdc":
            # extended runs keep the 10/5/15 lengths and add cycles: 7 compressions at 1x, 22 at 2.5x, 47 at 5x
            phases = acdc_boundaries(args.epochs, 10, 5, 15)
            n_compressed = sum(p == "compressed" for _, p in phases)
            assert n_compressed == {100: 7, 250: 22, 500: 47, 1000: 97}[args.epochs]
            assert phases[-1] == (args.epochs - 15, "final")
    names = set(expected)
    for sp in (90, 95, 98):
        for length in ("1x", "2.5x", "5x", "10x"):
            assert {f"resnet50_acdc_{sp}_uniform_fld_{length}", f"resnet50_acdc_{sp}_global_{length}"} <= names
    for sp in (90, 95):
        assert f"resnet50_gmp_{sp}_1x" in names and f"resnet50_rigl_{sp}_erk_1x" in names
    assert "resnet50_dense_1x" in names


@pytest.mark.parametrize("when", ["between-renames", "before-cleanup"])
def test_kill_9_inside_the_state_swap_resumes_instead_of_starting_over(tmp_path, image_folder, when, caplog):
    """Killed inside the swap of ``state/`` at the end of epoch 2: the rerun resumes at epoch 3 (not 1) and ends
    with the weights of an uninterrupted run."""
    import signal

    name = "gmp"
    _, full = run(tmp_path / "a", image_folder, name)
    pid = os.fork()
    if pid == 0:
        try:
            real_replace, real_rmtree = os.replace, __import__("shutil").rmtree
            seen = {"swaps": 0}

            def replace(src, dst):
                if str(src).endswith(os.sep + "state.tmp"):
                    seen["swaps"] += 1
                    if seen["swaps"] == 2 and when == "between-renames":
                        os.kill(os.getpid(), signal.SIGKILL)
                real_replace(src, dst)

            def rmtree(path, *a, **k):
                if str(path).endswith(os.sep + "state.old") and seen["swaps"] == 2 and when == "before-cleanup":
                    os.kill(os.getpid(), signal.SIGKILL)
                real_rmtree(path, *a, **k)

            os.replace = replace
            __import__("shutil").rmtree = rmtree
            run(tmp_path / "b", image_folder, name)
        finally:
            os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    state = tmp_path / "b" / name / "state"
    assert not state.exists() or when == "before-cleanup"
    with caplog.at_level("INFO", logger="sparse_transfer.vision.train"):
        _, resumed = run(tmp_path / "b", image_folder, name)
    assert "at epoch 2." in caplog.text  # resumed after epoch 2, not started over
    assert resumed["complete"]
    a = load_file(str(tmp_path / "a" / name / "last" / "model.safetensors"))
    b = load_file(str(tmp_path / "b" / name / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not (tmp_path / "b" / name / "state.old").exists() and not (tmp_path / "b" / name / "state.tmp").exists()


def test_a_non_finite_loss_stops_before_the_epoch_is_saved(tmp_path, image_folder, monkeypatch):
    import torch.nn as nn

    run(tmp_path, image_folder, "gmp", stop_after_epoch=1)
    state_before = (tmp_path / "gmp" / "state" / "state.pt").read_bytes()
    original = nn.CrossEntropyLoss.forward
    monkeypatch.setattr(nn.CrossEntropyLoss, "forward", lambda self, x, y: original(self, x, y) * float("nan"))
    with pytest.raises(RuntimeError, match=r"Epoch 2: the training loss became NaN or inf at step \d+; stopped before saving"):
        run(tmp_path, image_folder, "gmp")
    assert (tmp_path / "gmp" / "state" / "state.pt").read_bytes() == state_before  # epoch 1 kept, not saved over


def test_ctrl_c_in_the_vision_command_is_one_line_and_exit_130(tmp_path, image_folder, monkeypatch, capsys):
    import importlib

    from sparse_transfer.vision.__main__ import main

    vision_train = importlib.import_module("sparse_transfer.vision.train")  # the module (the package exports a function)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(vision_train, "evaluate", interrupted)
    argv = ["--data", str(image_folder), "--model", "test_resnet", "--output_dir", str(tmp_path / "v"), "--epochs", "1",
            "--batch_size", "8", "--train_size_start", "16", "--train_size_end", "16", "--eval_size", "16",
            "--eval_resize", "16", "--num_workers", "0", "--method", "dense", "--progress", "false", "--lr_warmup_epochs", "0"]
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("interrupted at step ") and err[-1].endswith("; rerun the same command to resume")


def test_masked_lora_fine_tunes_a_sparse_timm_checkpoint_and_merges_with_exact_zeros(tmp_path, image_folder):
    import timm
    from peft import PeftModel  # noqa: F401 - peft must be importable for the adapter files

    from sparse_transfer.lora import load_sparse_lora

    run(tmp_path / "a", image_folder, "gmp")
    source = tmp_path / "a" / "gmp" / "last"
    args, results = run(tmp_path / "b", image_folder, "constant", sparsity=0.0, epochs=2, init_checkpoint=str(source),
                        lora_r=2, lora_merge=True)
    out = tmp_path / "b" / "constant"
    lora = results["lora"]
    assert lora["adapted_layers"] > 0 and lora["merged"] == str(out / "merged")
    best = out / "best"
    assert (best / "adapter_config.json").is_file() and not (best / "model.safetensors").exists()
    assert "timm.create_model" in (best / "README.md").read_text()
    # merged/ is a timm checkpoint: same mask as the source, every pruned weight 0, the kept ones trained.
    masks = SparseMasks.load(source / MASKS_NAME)
    merged = load_file(str(out / "merged" / "model.safetensors"))
    original = load_file(str(source / "model.safetensors"))
    assert all((merged[n][~m] == 0).all() for n, m in masks.items())
    assert any(not torch.equal(merged[n], original[n]) for n in masks if n != "fc.weight")
    shipped = SparseMasks.load(out / "merged" / MASKS_NAME)
    assert set(shipped) == set(masks) and all(torch.equal(shipped[n], masks[n]) for n in masks)
    reloaded = timm.create_model(f"local-dir:{out / 'merged'}", pretrained=True).eval()
    # The adapter on the sparse base predicts what the merged model predicts.
    base = timm.create_model("test_resnet", num_classes=reloaded.num_classes)
    base.load_state_dict(original)
    adapted = load_sparse_lora(base, best).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(adapted(x), reloaded(x), rtol=1e-4, atol=1e-5)


def test_lora_needs_the_constant_method(tmp_path, image_folder):
    with pytest.raises(ValueError, match="--lora_r trains an adapter"):
        run(tmp_path, image_folder, "gmp", lora_r=2)


def test_transfer_to_other_classes_recreates_the_head_and_keeps_the_backbone_mask(tmp_path, image_folder):
    import shutil

    run(tmp_path / "a", image_folder, "gmp")  # 3 classes, 80% sparse
    source = tmp_path / "a" / "gmp" / "last"
    two = tmp_path / "two"
    for split in ("train", "val"):
        for name in sorted(os.listdir(os.path.join(image_folder, split)))[:2]:
            shutil.copytree(os.path.join(image_folder, split, name), two / split / name)
    args, results = run(tmp_path / "b", str(two), "constant", sparsity=0.0, epochs=1, init_checkpoint=str(source))
    stored = SparseMasks.load(source / MASKS_NAME)
    kept = SparseMasks.load(tmp_path / "b" / "constant" / "last" / MASKS_NAME)
    assert "fc.weight" in set(stored) and "fc.weight" not in set(kept)  # the new head is dense, outside the mask
    assert set(kept) == set(stored) - {"fc.weight"} and all(torch.equal(kept[n], stored[n]) for n in kept)
    weights = load_file(str(tmp_path / "b" / "constant" / "last" / "model.safetensors"))
    assert weights["fc.weight"].shape[0] == 2 and bool((weights["fc.weight"] != 0).all())
    assert all((weights[n][~kept[n]] == 0).all() for n in kept)


def test_a_checkpoint_of_another_architecture_is_an_error(tmp_path, image_folder):
    run(tmp_path / "a", image_folder, "gmp")
    source = tmp_path / "a" / "gmp" / "last"
    with pytest.raises(ValueError, match="is not a checkpoint of resnet10t: .*Pass the --model it was trained as"):
        run(tmp_path / "b", image_folder, "constant", sparsity=0.0, epochs=1, init_checkpoint=str(source),
            model="resnet10t")
