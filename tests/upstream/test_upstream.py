"""python -m sparse_transfer.upstream on tiny encoders built in-process."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparse_transfer.core import SparseMasks
from sparse_transfer.core.schedules import gmp_sparsity
from sparse_transfer.hf import MaskMethodCallback
from sparse_transfer.methods import GMP, NM, dense_masks
from sparse_transfer.upstream import UpstreamArguments, parse_args, run_upstream
from sparse_transfer.upstream import train as upstream_train
from sparse_transfer.upstream.__main__ import main
from sparse_transfer.upstream.data import tokenize_blocks

from .conftest import make_tokenizer, write_text

TARGET_SUFFIXES = ("query.weight", "key.weight", "value.weight", "attention.output.dense.weight",
                   "intermediate.dense.weight", "output.dense.weight")


def base_argv(dirs, model_key: str, out: Path, *extra: str) -> list[str]:
    return [
        "--model", str(dirs[model_key]), "--text", str(dirs["train"]), "--eval-text", str(dirs["eval"]),
        "--output-dir", str(out), "--max-steps", "10", "--prune-interval", "2", "--prune-end-step", "6",
        "--batch-size", "4", "--block-size", "32", "--eval-steps", "5", "--save-steps", "3", "--logging-steps", "2",
        "--learning-rate", "1e-3", "--max-eval-blocks", "8", "--eval-sentences", "16", "--disable-tqdm", *extra,
    ]


def target_weights(directory: Path) -> dict[str, torch.Tensor]:
    tensors = load_file(str(directory / "model.safetensors"))
    return {n: t for n, t in tensors.items() if ".layer." in n and n.endswith(TARGET_SUFFIXES)}


# ------------------------------------------------------------------------------------------- schedule
def test_schedule_follows_the_cubic_formula(tiny_bert):
    start, end, interval, s_i, s_f = 3, 23, 4, 0.1, 0.9
    pruner = GMP(dense_masks(tiny_bert, "bert"), s_f, start, end, interval, s_i)
    numel = pruner.masks.numel()
    seen = []
    for step in range(30):
        expected = s_f if step >= end else (s_i if step < start else s_f + (s_i - s_f) * (1 - (step - start) / (end - start)) ** 3)
        assert pruner.target_sparsity(step) == pytest.approx(expected, abs=1e-12)
        assert gmp_sparsity(step, s_i, s_f, start, end) == pytest.approx(expected, abs=1e-12)
        event = pruner.step(step)
        if event is not None:
            seen.append(step)
            # The cut keeps exactly N - round(s_t N) weights over all targets (global magnitude).
            assert pruner.masks.numel() - pruner.masks.num_kept() == round(expected * numel)
            assert pruner.masks.violations() == 0
    assert seen == [3, 7, 11, 15, 19, 23]


def test_nm_pattern_is_imposed_once_at_start(tiny_bert):
    pruner = NM(dense_masks(tiny_bert, "bert"), 2, 4, prune_step=2)
    assert pruner.final_sparsity == 0.5
    assert [s for s in range(8) if pruner.step(s) is not None] == [2]
    for name, mask in pruner.masks.items():
        groups = mask.reshape(mask.shape[0], -1, 4).sum(-1)
        assert torch.all(groups == 2), name


# ----------------------------------------------------------------------------------- end-to-end outputs
@pytest.mark.parametrize(
    "model_key, extra",
    [("mlm", ["--sparsity", "0.8"]),
     ("base", ["--sparsity", "0.75", "--distribution", "uniform", "--attention-weight", "0.5"]),
     ("base", ["--nm", "2:4", "--prune-end-step", "0"])],
    ids=["mlm-global", "base-uniform-attention", "base-2of4"],
)
def test_output_is_exactly_sparse_and_loads_in_transformers(tiny_dirs, tmp_path, model_key, extra, capsys):
    from transformers import AutoModel

    out = tmp_path / "out"
    assert main(base_argv(tiny_dirs, model_key, out, *extra)) == 0
    summary = capsys.readouterr().out.strip().splitlines()[-1]  # one line, ending with where results.json is
    assert summary.startswith("upstream: ") and summary.endswith(f"results: {out / 'results.json'}")
    results = json.loads((out / "results.json").read_text())
    sparsity = 0.5 if "--nm" in extra else float(extra[1])

    weights = target_weights(out)
    assert len(weights) == 12  # 6 linears x 2 blocks
    total = sum(t.numel() for t in weights.values())
    zeros = sum(int((t == 0).sum()) for t in weights.values())
    assert zeros == round(sparsity * total)
    assert results["sparsity"] == pytest.approx(zeros / total, abs=1e-6)
    assert f"{zeros / total:.2%} sparse after" in summary
    if "uniform" in extra:
        for name, t in weights.items():
            assert int((t == 0).sum()) == round(sparsity * t.numel()), name
    if "--nm" in extra:
        for name, t in weights.items():
            assert torch.all((t != 0).reshape(t.shape[0], -1, 4).sum(-1) == 2), name

    # The mask file is the explicit record of the zeros.
    masks = SparseMasks.load(out / "sparse_masks.safetensors")
    for name, t in weights.items():
        key = next(k for k in masks if k.endswith(name))
        assert torch.equal(masks[key], t != 0), name

    # Plain transformers loads it, zeros in place; the dense original is unchanged on disk.
    model = AutoModel.from_pretrained(out)
    reloaded = {n: p for n, p in model.named_parameters() if any(n.endswith(s) for s in TARGET_SUFFIXES) and ".layer." in n}
    assert sum(int((p == 0).sum()) for p in reloaded.values()) == zeros
    assert (out / "tokenizer_config.json").is_file() and (out / "config.json").is_file()

    card = (out / "README.md").read_text()
    assert "cubic GMP schedule" in card or "N:M" in card
    assert "encoder.layer.1.output.dense.weight" in card  # per-layer sparsity table

    assert results["finished"] and results["mlm_head"] == (model_key == "mlm")
    assert results["train_log"] and all("kd_hidden" in r for r in results["train_log"])
    if model_key == "mlm":
        assert all("kd_logit" in r for r in results["train_log"])
    if "--attention-weight" in extra:
        assert all("kd_attention" in r for r in results["train_log"])
    assert results["eval_log"], "periodic evaluation on --eval-text did not run"
    assert math.isfinite(results["final"]["heldout_hidden_loss"])
    assert -1.0 <= results["final"]["embedding_cosine"] <= 1.0
    # The resolved recipe reruns the same run: --recipe RUN/recipe.yaml gives the same arguments.
    from sparse_transfer.upstream.config import parse_args

    again = parse_args(["--recipe", str(out / "recipe.yaml")])
    first = parse_args(base_argv(tiny_dirs, model_key, out, *extra))
    assert again.to_dict() == first.to_dict()
    assert not list(out.glob("checkpoint-*"))  # removed after a finished run (optimizer state)

    from sparse_transfer.inspect import main as inspect_main

    assert inspect_main([str(out), "--json"]) == 0
    inspected = json.loads(capsys.readouterr().out)
    assert inspected["masks"]["zeros_intact"] is True
    assert inspected["report"]["target_sparsity"] == pytest.approx(zeros / total, abs=1e-9)


def test_targets_all_on_an_mlm_with_tied_embeddings_saves_and_reloads_exact(tiny_dirs, tmp_path):
    """'all' takes the MLM decoder, which is the word embeddings: it is pruned and saved under the embeddings' name
    (the tied decoder is not in the checkpoint), and the reloaded model holds every zero in both."""
    from transformers import AutoModelForMaskedLM

    out = tmp_path / "out"
    assert main(base_argv(tiny_dirs, "mlm", out, "--sparsity", "0.5", "--targets", "all", "--max-steps", "4",
                          "--prune-end-step", "2", "--train-embeddings")) == 0
    masks = SparseMasks.load(out / "sparse_masks.safetensors")
    assert "bert.embeddings.word_embeddings.weight" in masks and "cls.predictions.decoder.weight" not in masks
    model = AutoModelForMaskedLM.from_pretrained(out)
    masks.bind(model)
    assert masks.violations() == 0 and masks.sparsity() == pytest.approx(0.5, abs=1e-3)
    assert model.cls.predictions.decoder.weight is model.bert.embeddings.word_embeddings.weight


@pytest.mark.parametrize(
    "method, events",
    [("acdc", {"compress", "decompress"}), ("rigl", {"drop_grow"}), ("gmp", {"prune"})],
)
def test_every_method_runs_upstream(tiny_dirs, tmp_path, method, events):
    out = tmp_path / method
    extra = ["--sparsity", "0.8", "--method", method, "--rigl-interval", "2", "--max-steps", "12"]
    argv = base_argv(tiny_dirs, "base", out, *extra)
    assert main(argv if method == "gmp" else _without_end(argv)) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == method
    assert {e["event"] for e in results["pruning_events"]} >= events
    weights = target_weights(out)
    total = sum(t.numel() for t in weights.values())
    zeros = sum(int((t == 0).sum()) for t in weights.values())
    assert zeros / total == pytest.approx(0.8, abs=0.01)
    masks = SparseMasks.load(out / "sparse_masks.safetensors")
    for name, t in weights.items():
        key = next(k for k in masks if k.endswith(name))
        assert torch.equal(masks[key], t != 0), name
    card = (out / "README.md").read_text()
    assert {"acdc": "AC/DC", "rigl": "RigL", "gmp": "cubic GMP"}[method] in card


def test_acdc_lengths_that_do_not_fit_are_an_error(tiny_dirs, tmp_path, capsys):
    argv = base_argv(tiny_dirs, "base", tmp_path / "x", "--sparsity", "0.8", "--method", "acdc", "--acdc-phase-steps", "4")
    assert main(_without_end(argv)) == 2
    assert "AC/DC needs warm-up" in capsys.readouterr().err


def test_finished_run_is_not_trained_again(tiny_dirs, tmp_path, monkeypatch):
    out = tmp_path / "out"
    args = parse_args(base_argv(tiny_dirs, "base", out, "--sparsity", "0.5", "--max-steps", "4", "--prune-end-step", "2"))
    first = run_upstream(args)
    monkeypatch.setattr(upstream_train.UpstreamTrainer, "train", lambda *a, **k: pytest.fail("trained again"))
    assert run_upstream(args) == first
    other = parse_args(base_argv(tiny_dirs, "base", out, "--sparsity", "0.6", "--max-steps", "4", "--prune-end-step", "2"))
    with pytest.raises(ValueError, match="different recipe"):
        run_upstream(other)


# ------------------------------------------------------------------------------------------------- resume
class Interrupted(Exception):
    pass


def test_resume_reaches_the_same_weights(tiny_dirs, tmp_path, monkeypatch):
    # MLM loss (random masking) and dropout (--keep-dropout: the model's 0.1): RNG state must resume too.
    extra = ["--sparsity", "0.8", "--mlm-weight", "0.5", "--keep-dropout", "--keep-checkpoints"]
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    assert main(base_argv(tiny_dirs, "mlm", whole, *extra)) == 0

    original = MaskMethodCallback.on_step_begin

    def stop_at_step_8(self, args, state, control, **kwargs):
        if state.global_step == 8:
            raise Interrupted
        return original(self, args, state, control, **kwargs)

    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", stop_at_step_8)
    with pytest.raises(Interrupted):
        run_upstream(parse_args(base_argv(tiny_dirs, "mlm", broken, *extra)))
    assert (broken / "checkpoint-6").is_dir() and not (broken / "results.json").exists()
    # the upstream state is written before the completion marker, which covers it
    marker = json.loads((broken / "checkpoint-6" / "checkpoint_complete.json").read_text())
    assert "upstream_state.json" in marker["fingerprints"]
    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", original)
    resumed = run_upstream(parse_args(base_argv(tiny_dirs, "mlm", broken, *extra)))
    assert resumed["resumed_from"].endswith("checkpoint-6")

    a, b = load_file(str(whole / "model.safetensors")), load_file(str(broken / "model.safetensors"))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    first = json.loads((whole / "results.json").read_text())
    assert [r["loss"] for r in first["train_log"] if r["step"] > 6] == [r["loss"] for r in resumed["train_log"] if r["step"] > 6]
    assert first["pruning_events"] == resumed["pruning_events"]


# --------------------------------------------------------------------------------------------- bad input
def test_bad_inputs_give_clear_errors(tiny_dirs, tmp_path, capsys):
    from transformers import BertConfig, BertModel

    def error(argv) -> str:
        assert main(argv) == 2
        return capsys.readouterr().err

    out = tmp_path / "out"
    argv = base_argv(tiny_dirs, "base", out, "--sparsity", "0.5")
    missing = list(argv)
    missing[missing.index("--text") + 1] = str(tmp_path / "nope.txt")
    assert "nope.txt does not exist" in error(missing)

    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n\n")
    blank = list(argv)
    blank[blank.index("--text") + 1] = str(empty)
    assert "No text in" in error(blank)

    for bad in ("1.0", "-0.1", "1.5"):
        assert "must be in [0, 1)" in error(base_argv(tiny_dirs, "base", out, "--sparsity", bad))
    assert "No target sparsity" in error(base_argv(tiny_dirs, "base", out))
    assert "must be before max_steps" in error(base_argv(tiny_dirs, "base", out, "--sparsity", "0.5", "--prune-end-step", "10"))
    assert "needs a masked-LM head" in error(base_argv(tiny_dirs, "base", out, "--sparsity", "0.5", "--mlm-weight", "1"))
    assert "Could not load the model" in error(base_argv(tiny_dirs, "base", out, "--sparsity", "0.5") [:1] + [str(tmp_path / "no-model")]
                                               + base_argv(tiny_dirs, "base", out, "--sparsity", "0.5")[2:])

    longer = error(base_argv(tiny_dirs, "base", out, "--sparsity", "0.5", "--block-size", "65"))
    assert "--block_size 65 gives sequences of 65 tokens, longer than" in longer and "64 tokens" in longer and "--block_size 64 or less" in longer

    no_blocks = tmp_path / "no-blocks"
    tokenizer = make_tokenizer(no_blocks)
    config = BertConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=0, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    BertModel(config, add_pooling_layer=False).save_pretrained(no_blocks)
    tokenizer.save_pretrained(no_blocks)
    flat = base_argv(tiny_dirs, "base", out, "--sparsity", "0.5")
    flat[flat.index("--model") + 1] = str(no_blocks)
    message = error(flat)
    assert "No encoder blocks found" in message and "BERT-family encoder" in message
    assert not (out / "results.json").exists()


def test_blocks_are_deterministic_and_fixed_length(tiny_dirs):
    tokenizer = make_tokenizer(tiny_dirs["root"] / "tok")
    lines = [line for line in tiny_dirs["train"].read_text().splitlines() if line.strip()]
    a, b = tokenize_blocks(lines, tokenizer, 32), tokenize_blocks(lines, tokenizer, 32)
    assert torch.equal(a, b) and a.shape[1] == 32
    assert torch.all(a[:, 0] == tokenizer.cls_token_id) and torch.all(a[:, -1] == tokenizer.sep_token_id)
    assert int((a == tokenizer.unk_token_id).sum()) == 0
    with pytest.raises(ValueError, match="fewer than one block"):
        tokenize_blocks(["w1 w2"], tokenizer, 32)


def test_recipe_fills_fields_and_flags_override(tmp_path, tiny_dirs):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("description: x\nsparsity: 0.7\nmax_steps: 50\nhidden_weight: 0.5\n")
    args = parse_args(["--recipe", str(recipe), "--max-steps", "60", "--model", "m", "--text", "a.txt"])
    assert isinstance(args, UpstreamArguments)
    assert (args.sparsity, args.max_steps, args.hidden_weight, args.end_step) == (0.7, 60, 0.5, 40)
    recipe.write_text("sparsity: 0.7\nnot_a_field: 1\n")
    with pytest.raises(ValueError, match="unknown field"):
        parse_args(["--recipe", str(recipe)])
    write_text(tmp_path / "t.txt", 2, 0)


def _ctrl_c_at_step(step: int, original):
    """A MaskMethodCallback.on_step_begin that raises KeyboardInterrupt (Ctrl-C) when training reaches ``step``."""
    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step == step:
            raise KeyboardInterrupt
        return original(self, args, state, control, **kwargs)
    return on_step_begin


def _retrain_in_place(model_dir: Path) -> None:
    from safetensors.torch import save_file

    weights = load_file(str(model_dir / "model.safetensors"))
    name = next(n for n in weights if n.endswith("intermediate.dense.weight"))
    weights[name] = weights[name] * 1.5
    save_file(weights, str(model_dir / "model.safetensors"), metadata={"format": "pt"})


def test_a_teacher_trained_again_under_the_same_path_is_never_mixed_with_its_old_run(tiny_dirs, tmp_path,
                                                                                      monkeypatch, capsys):
    import shutil

    from sparse_transfer._rundir import start_identity

    teacher = tmp_path / "teacher"
    shutil.copytree(tiny_dirs["base"], teacher)
    dirs = {**tiny_dirs, "base": teacher}
    out = tmp_path / "out"
    argv = base_argv(dirs, "base", out, "--sparsity", "0.8", "--keep-checkpoints")
    original = MaskMethodCallback.on_step_begin
    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", _ctrl_c_at_step(7, original))
    assert main(argv) == 130 and (out / "checkpoint-6").is_dir()
    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", original)
    _retrain_in_place(teacher)
    capsys.readouterr()
    assert main(argv) == 2  # its checkpoint was distilled from the old teacher
    assert "started from other weights than" in capsys.readouterr().err
    assert (out / "checkpoint-6").is_dir() and not (out / "results.json").exists()
    assert main([*argv, "--overwrite"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["start"] == start_identity(teacher) and results["resumed_from"] is None

    # Finished: cached while the teacher is the same, an error once it is not.
    assert main(argv) == 0
    _retrain_in_place(teacher)
    capsys.readouterr()
    assert main(argv) == 2 and "started from other weights than" in capsys.readouterr().err

    # Never into the teacher's own folder (the pruned model would replace the dense one).
    assert main(base_argv(dirs, "base", teacher, "--sparsity", "0.8")) == 2
    assert "is the --model folder" in capsys.readouterr().err


def test_ctrl_c_ends_with_one_line_and_exit_130_then_the_same_command_resumes(tiny_dirs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = base_argv(tiny_dirs, "base", out, "--sparsity", "0.8", "--keep-checkpoints")
    original = MaskMethodCallback.on_step_begin
    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", _ctrl_c_at_step(7, original))
    assert main(argv) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "interrupted at step 7; rerun the same command to resume"
    assert "Traceback" not in "\n".join(err)
    assert not (out / "results.json").exists() and not (out / "model.safetensors").exists()  # nothing looks finished
    monkeypatch.setattr(MaskMethodCallback, "on_step_begin", original)
    assert main(argv) == 0
    assert json.loads((out / "results.json").read_text())["resumed_from"].endswith("checkpoint-6")


@pytest.mark.parametrize(
    "extra, message",
    [(["--method", "rigl", "--nm", "2:4"], "drop one of them"),
     (["--method", "acdc", "--sparsity", "0.8", "--initial-sparsity", "0.2"], "--initial-sparsity belong"),
     (["--method", "rigl", "--sparsity", "0.8", "--prune-start-step", "2"], "--prune-start-step belong")],
)
def test_flags_of_another_method_are_an_error_not_ignored(tiny_dirs, tmp_path, capsys, extra, message):
    assert main(_without_end(base_argv(tiny_dirs, "base", tmp_path / "x", *extra))) == 2
    assert message in capsys.readouterr().err


def _without_end(argv: list[str]) -> list[str]:
    """base_argv without its GMP-only --prune-end-step (refused with the other methods)."""
    i = argv.index("--prune-end-step")
    return argv[:i] + argv[i + 2 :]
