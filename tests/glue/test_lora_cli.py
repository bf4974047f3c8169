"""``python -m sparse_transfer.glue --lora-r ...``: a masked LoRA adapter, the merged model with exact zeros, push."""

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparse_transfer.glue.__main__ import main

from .test_cli import dev_accuracy, fast_args, pruned_positions


def test_lora_run_writes_the_adapter_and_the_merged_model_with_exact_zeros(tiny_model_dir, glue_dir, tmp_path, fake_hub,
                                                                          capsys):
    out = tmp_path / "rte-lora"
    # Without gradual unfreezing the adapters train from the first epoch (stage 0 trains only the heads), so
    # whichever epoch is best, the kept weights of the merged model moved.
    args = ["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--lora-r", "4", "--lora-merge",
            "--unfreeze", "none", "--push-to-hub", "me/tiny-rte-merged"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    lora = results["lora"]
    assert lora["r"] == 4 and lora["alpha"] == 8 and lora["adapted_layers"] == 12
    assert results["sparsity"]["exact"] is True

    # best/ is a peft adapter with the masks recorded, its heads (classifier, pooler) included.
    adapter = out / "best"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert len(config["sparse_masks"]) == 12 and config["r"] == 4
    assert set(config["modules_to_save"]) >= {"classifier", "bert.pooler.dense"}
    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert any("lora_A" in k for k in tensors) and any("classifier" in k for k in tensors)
    assert not (adapter / "model.safetensors").exists()
    card = (adapter / "README.md").read_text()
    assert "library_name: peft" in card and "masked-lora" in card and "load_sparse_lora" in card

    # merged/ is an ordinary sparse checkpoint: exact zeros, and plain transformers scores it as the run did.
    merged = out / "merged"
    before = pruned_positions(tiny_model_dir)
    after = load_file(str(merged / "model.safetensors"))
    for name, mask in before.items():
        assert (after[name][mask] == 0).all(), name
    assert dev_accuracy(merged, glue_dir / "RTE" / "dev.tsv") == pytest.approx(results["best"]["accuracy"])
    # ...and the kept weights moved: the adapter was merged in.
    original = load_file(str(Path(tiny_model_dir) / "model.safetensors"))
    assert any(not torch.equal(after[n], original[n]) for n in before)

    # The adapter reloads on the sparse base and predicts like the merged model.
    from transformers import AutoModelForSequenceClassification

    from sparse_transfer.lora import load_sparse_lora

    base = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=2)
    reloaded = load_sparse_lora(base, adapter).eval()
    plain = AutoModelForSequenceClassification.from_pretrained(merged).eval()
    ids = torch.randint(5, 30, (3, 7))
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, plain(input_ids=ids).logits, rtol=1e-4, atol=1e-5)

    # inspect reads both: the adapter by its recorded masks, the merged model by its weights and mask file.
    from sparse_transfer.inspect import main as inspect_main

    capsys.readouterr()
    assert inspect_main([str(adapter)]) == 0
    shown = capsys.readouterr().out
    assert "masked LoRA adapter; r=4, alpha=8" in shown and "12 adapted layers, sparsity of their masks 50.0" in shown
    assert inspect_main([str(merged)]) == 0
    assert "zeros intact" in capsys.readouterr().out
    assert inspect_main([str(adapter), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["adapter"]["masked"] and len(report["adapter"]["layers"]) == 12

    # --lora-merge pushes the merged model.
    assert [repo for repo, _ in fake_hub] == ["me/tiny-rte-merged"]
    assert {"model.safetensors", "sparse_masks.safetensors"} <= set(fake_hub[0][1])


def test_lora_run_pushes_the_adapter_without_merge(tiny_model_dir, glue_dir, tmp_path, fake_hub):
    out = tmp_path / "rte-adapter"
    args = ["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--lora-r", "2", "--lora-alpha", "4",
            "--lora-target-modules", "query", "value", "--push-to-hub", "me/tiny-rte-adapter"]
    assert main(args) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["lora"]["adapted_layers"] == 4 and "merged" not in results["lora"]
    assert not (out / "merged").exists()
    assert results["sparsity"]["exact"] is True
    files = fake_hub[0][1]
    assert {"adapter_config.json", "adapter_model.safetensors", "README.md"} <= set(files)
    assert not any(name.endswith((".bin", ".pt", ".pth")) for name in files)
    # The recipe round-trips with the LoRA settings.
    from sparse_transfer.glue import parse_args

    glue, _, _ = parse_args(["--recipe", str(out / "recipe.yaml")])
    assert glue.lora_r == 2 and glue.lora_alpha == 4 and glue.lora_target_modules == ["query", "value"]


def test_lora_flags_without_a_rank_are_an_error(tiny_model_dir, glue_dir, tmp_path, capsys):
    assert main(["--task", "rte", *fast_args(tiny_model_dir, glue_dir, tmp_path / "x"), "--lora-merge"]) == 2
    assert "need --lora-r" in capsys.readouterr().err


def test_inspect_reports_a_plain_lora_adapter_as_such(tmp_path, capsys):
    from peft import LoraConfig, get_peft_model

    from sparse_transfer.inspect import main as inspect_main
    from tests.conftest import make_tiny_bert

    get_peft_model(make_tiny_bert(), LoraConfig(r=2, target_modules=["query"])).save_pretrained(tmp_path / "plain")
    assert inspect_main([str(tmp_path / "plain")]) == 0
    assert "plain LoRA adapter (no mask record)" in capsys.readouterr().out


@pytest.mark.parametrize("k", [3, 14])
def test_kill_9_mid_lora_run_then_the_same_command_ends_like_an_uninterrupted_run(tiny_model_dir, glue_dir, tmp_path, k):
    """A SIGKILL at the k-th file write of a masked-LoRA GLUE run (an adapter save of the best epoch so far or of a
    Trainer checkpoint), then the same command: the same best epoch and the same adapter."""
    from .test_cli import kill_at_write_then_rerun

    def argv(out):
        return ["--task", "rte", *fast_args(tiny_model_dir, glue_dir, out), "--lora-r", "2", "--save_strategy", "epoch",
                "--save_total_limit", "1", "--max_train_samples", "32", "--max_eval_samples", "8"]

    kill_at_write_then_rerun(argv, tmp_path, k, "adapter_model.safetensors")
