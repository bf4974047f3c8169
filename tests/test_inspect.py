"""`python -m sparse_transfer.inspect` on local checkpoints, timm names and bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub
import pytest
import torch
from safetensors.torch import load_file, save_file

from sparse_transfer import SparseMasks, select_targets
from sparse_transfer.hub import save_sparse_pretrained
from sparse_transfer.inspect import main

from .conftest import make_tiny_bert

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def saved(tmp_path):
    model = make_tiny_bert()
    masks = SparseMasks.from_magnitude(model, sparsity=0.75, targets="bert")
    masks.apply_()
    out = tmp_path / "ckpt"
    save_sparse_pretrained(model, out, masks=masks)
    return model, masks, out


def run_json(capsys, *argv):
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def test_local_dir_with_mask_file(saved, capsys):
    _, masks, out = saved
    assert main([str(out)]) == 0
    text = capsys.readouterr().out
    assert "targets: mask file" in text
    assert "sparsity 75.00%" in text and "zeros intact" in text
    for name in masks:
        assert name in text
    # Layers print in numeric order.
    assert text.index("layer.0.attention.self.query") < text.index("layer.1.attention.self.query")


def test_json_output_matches_the_masks(saved, capsys):
    _, masks, out = saved
    code, result = run_json(capsys, str(out))
    assert code == 0
    assert result["source"] == "local" and result["masks"]["zeros_intact"] is True
    report = result["report"]
    assert report["target_sparsity"] == pytest.approx(masks.sparsity(), abs=1e-12)
    assert {layer["name"]: layer["sparsity"] for layer in report["layers"]} == pytest.approx(masks.layer_sparsity())
    assert report["target_numel"] == masks.numel()


def test_plain_checkpoint_uses_bert_preset_and_single_file(tmp_path, capsys):
    model = make_tiny_bert()
    SparseMasks.from_magnitude(model, sparsity=0.5, targets="bert").apply_()
    model.save_pretrained(tmp_path / "plain")
    code, result = run_json(capsys, str(tmp_path / "plain"))
    assert code == 0 and result["masks"] is None and result["targets"] == "auto"
    assert sorted(layer["name"] for layer in result["report"]["layers"]) == sorted(select_targets(model, "bert"))
    assert result["report"]["target_sparsity"] == pytest.approx(0.5, abs=1e-3)
    code, single = run_json(capsys, str(tmp_path / "plain" / "model.safetensors"), "--targets", "cnn")
    assert code == 0
    assert "classifier.weight" in {layer["name"] for layer in single["report"]["layers"]}
    code, included = run_json(capsys, str(tmp_path / "plain"), "--include", r"layer\.1\..*query\.weight$")
    assert [layer["name"] for layer in included["report"]["layers"]] == ["bert.encoder.layer.1.attention.self.query.weight"]


def test_lost_zeros_exit_1(saved, capsys):
    _, masks, out = saved
    weights = load_file(out / "model.safetensors")
    name = next(iter(masks))
    weights[name] = torch.ones_like(weights[name])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    assert main([str(out)]) == 1
    text = capsys.readouterr().out
    assert "ZEROS LOST" in text and name in text


def test_timm_name(capsys):
    timm = pytest.importorskip("timm")
    code, result = run_json(capsys, "test_resnet")
    assert code == 0 and result["source"] == "timm"
    expected = list(select_targets(timm.create_model("test_resnet"), "cnn"))
    assert [layer["name"] for layer in result["report"]["layers"]] == expected
    code, result = run_json(capsys, "test_resnet", "--include", r"^layer1\.")
    assert code == 0 and all(layer["name"].startswith("layer1.") for layer in result["report"]["layers"])


@pytest.mark.parametrize(
    "argv, message",
    [
        (["does/not/exist/here"], "is not a file, a folder"),
        (["--targets", "bert", "{tiny_cnn_ckpt}"], "BERT encoder preset"),
        (["{tiny_cnn_ckpt}", "--include", "("], "not a valid regular expression"),
        (["{tiny_cnn_ckpt}", "--include", "nothing_matches"], "match no tensor"),
        (["{corrupt}"], "could not read"),
    ],
)
def test_bad_input_exit_2(argv, message, tmp_path, tiny_cnn, capsys):
    save_file({k: v.contiguous() for k, v in tiny_cnn.state_dict().items()}, tmp_path / "cnn.safetensors")
    (tmp_path / "corrupt.safetensors").write_bytes(b"not a safetensors file")
    argv = [a.format(tiny_cnn_ckpt=tmp_path / "cnn.safetensors", corrupt=tmp_path / "corrupt.safetensors") for a in argv]
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err
    assert captured.err.count("\n") == 1


def test_unreachable_hub_says_to_pass_a_local_path(monkeypatch, capsys):
    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    assert main(["org/sparse-bert", "--revision", "v2"]) == 2
    err = capsys.readouterr().err
    assert "org/sparse-bert" in err and "pass its local path" in err


def test_module_entry_point_bad_path_has_no_traceback(tmp_path):
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), HF_HUB_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "sparse_transfer.inspect", str(tmp_path / "missing")],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().startswith("error: ") and "missing" in proc.stderr
