"""SparseTrainer and the Hub: transformers' push (the output folder as it is, pickles included) is replaced by the
checked, allow-listed push of sparse_transfer.hub."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sparse_transfer import SparseTrainer
from sparse_transfer.core import MASKS_NAME

from ..test_hub import _FakeHub
from .conftest import make_args, make_dataset, make_sparse_bert

TOKEN = "hf_" + "S" * 34


def test_push_to_hub_in_the_arguments_is_refused_before_anything_is_created(tmp_path, monkeypatch):
    hub = _FakeHub(monkeypatch)
    args = make_args(tmp_path, push_to_hub=True, hub_model_id="me/sparse")
    with pytest.raises(ValueError, match=r"push_to_hub=True .*training_args.bin .*trainer.push_to_hub\(repo_id='USER/NAME'\)"):
        SparseTrainer(model=make_sparse_bert(), args=args, train_dataset=make_dataset(8))
    assert hub.created == [] and not (tmp_path / "training_args.bin").exists()


def test_trainer_push_to_hub_uploads_the_checked_files_only(tmp_path, monkeypatch):
    hub = _FakeHub(monkeypatch)
    model = make_sparse_bert()
    pruned = {name: p.detach() == 0 for name, p in model.named_parameters() if "encoder" in name and p.dim() == 2}
    args = make_args(tmp_path, max_steps=2, hub_token=TOKEN, hub_private_repo=True)
    trainer = SparseTrainer(model=model, args=args, train_dataset=make_dataset(8))
    assert sum(int(mask.sum()) for mask in pruned.values()) > 0
    trainer.train()
    url = trainer.push_to_hub(repo_id="me/sparse", model_name="Tiny sparse BERT", tags=["glue"])
    assert url == "https://huggingface.co/me/sparse"
    assert hub.created == [dict(repo_id="me/sparse", token=TOKEN, private=True, exist_ok=True)]
    (upload,) = hub.uploads
    assert upload["files"] == sorted(["README.md", "config.json", "model.safetensors", MASKS_NAME])
    assert (tmp_path / "training_args.bin").exists()  # written by save_model, never uploaded
    card = (tmp_path / "README.md").read_text()
    assert "Tiny sparse BERT" in card and "glue" in card and TOKEN not in card
    saved = load_file(tmp_path / "model.safetensors")
    assert all(torch.all(saved[name][mask] == 0) for name, mask in pruned.items())


def test_trainer_push_to_hub_of_a_lora_run_uploads_the_adapter(tmp_path, monkeypatch):
    from .test_lora_trainer import lora_model

    hub = _FakeHub(monkeypatch)
    trainer = SparseTrainer(lora_model(make_sparse_bert(sparsity=0.9)), make_args(tmp_path, max_steps=1),
                            train_dataset=make_dataset(8))
    trainer.train()
    (tmp_path / "README.md").write_text("# An earlier full model's card")
    base = tmp_path / "models" / "bert-tiny"  # a local base model: its path stays off the card
    trainer.push_to_hub(repo_id="me/adapter", model_name="Tiny adapter", tags="rte", license="mit",
                        tasks=["text-classification"], finetuned_from=str(base))
    (upload,) = hub.uploads
    assert {"README.md", "adapter_config.json", "adapter_model.safetensors"} <= set(upload["files"])
    card = (tmp_path / "README.md").read_text()
    assert "# Tiny adapter" in card and "- rte" in card and "earlier" not in card
    assert "license: mit" in card and "pipeline_tag: text-classification" in card
    assert "for `bert-tiny`" in card and f"`{base}`" not in card  # (its loading snippet, as peft's config, keeps it)
    assert not any(name.endswith((".bin", ".pt")) for name in upload["files"])


def test_trainer_push_to_hub_refuses_revived_weights_and_unknown_arguments(tmp_path, monkeypatch):
    hub = _FakeHub(monkeypatch)
    model = make_sparse_bert()
    trainer = SparseTrainer(model=model, args=make_args(tmp_path, max_steps=1), train_dataset=make_dataset(8))
    trainer.train()
    with pytest.raises(ValueError, match=r"does not take \['revision'\]"):
        trainer.push_to_hub(repo_id="me/sparse", revision="dev")
    trainer.args.hub_revision = "dev"  # read as transformers reads it: refused too, not pushed to main
    with pytest.raises(ValueError, match=r"does not take \['revision'\]"):
        trainer.push_to_hub(repo_id="me/sparse")
    trainer.args.hub_revision = None
    with torch.no_grad():
        weight = model.bert.encoder.layer[0].attention.self.query.weight
        weight[weight == 0] = 1.0
    with pytest.raises(RuntimeError, match=r"Refusing to save .*pruned weights are non-zero"):
        trainer.push_to_hub(repo_id="me/sparse")
    assert hub.created == [] and hub.uploads == []


def test_trainer_push_to_hub_defaults_as_transformers_and_pushes_only_what_it_saved(tmp_path, monkeypatch):
    """No hub_model_id: the output folder's name (the Hub puts it under the token's user); hub_private_repo unset:
    the Hub's default, not an explicit public; files an earlier run left in output_dir stay local."""
    import huggingface_hub

    hub = _FakeHub(monkeypatch)
    monkeypatch.setattr(huggingface_hub, "create_repo", lambda repo_id, **kw: hub.create_repo(f"me/{repo_id}", **kw))
    uploaded_cards = []

    def upload_folder(**kwargs):
        uploaded_cards.append((Path(kwargs["folder_path"]) / "README.md").read_text())
        hub.upload_folder(**kwargs)

    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    out = tmp_path / "my-run"
    out.mkdir()
    for stale in ("adapter_config.json", "vocab.txt", "all_results.json"):
        (out / stale).write_text("{}")  # an earlier run's
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "vocab.txt").write_text("another tokenizer's")
    (out / ".push").symlink_to(elsewhere)  # a reserved name taken by a link: removed, never followed
    (out / ".push-x1y2").mkdir()  # the upload's own staging, left by a push that was killed
    model = make_sparse_bert()
    trainer = SparseTrainer(model=model, args=make_args(out, max_steps=1), train_dataset=make_dataset(8))
    trainer.train()
    # the card arguments of transformers' run_glue.py, all taken
    trainer.push_to_hub(finetuned_from="prajjwal1/bert-tiny", tasks="text-classification", language="en",
                        dataset_tags="glue", dataset_args="rte", dataset="GLUE RTE")
    assert hub.created == [dict(repo_id="me/my-run", token=None, private=None, exist_ok=True)]
    (upload,) = hub.uploads
    assert upload["files"] == sorted(["README.md", "config.json", "model.safetensors", MASKS_NAME])
    assert not (out / ".push").exists() and (out / "vocab.txt").exists()
    assert not (out / ".push-x1y2").exists() and os.listdir(elsewhere) == ["vocab.txt"]
    card = (out / "README.md").read_text()
    assert "Fine-tuned on GLUE RTE (rte)." in card and "- glue" in card and "language: en" in card
    assert "pipeline_tag: text-classification" in card and "base_model: prajjwal1/bert-tiny" in card
    assert f'from_pretrained("{out.resolve()}")' in card  # the local card loads from the folder...
    assert 'from_pretrained("me/my-run")' in uploaded_cards[0] and str(tmp_path) not in uploaded_cards[0]  # ...the Hub's from the repo


def test_transformers_own_push_is_refused_when_switched_on_after_construction(tmp_path, monkeypatch):
    hub = _FakeHub(monkeypatch)
    trainer = SparseTrainer(model=make_sparse_bert(), args=make_args(tmp_path, max_steps=1), train_dataset=make_dataset(8))
    trainer.args.push_to_hub = True
    for call in (trainer.train, trainer.init_hf_repo, lambda: trainer._push_from_checkpoint(str(tmp_path))):
        with pytest.raises(ValueError, match=r"push_to_hub=True lets transformers upload"):
            call()
    assert hub.created == [] and hub.uploads == []
    # transformers' save_model pushes when the flag is on: through this package's checked push, once
    trainer.args.hub_model_id = "me/sparse"
    trainer.save_model()
    assert [u["files"] for u in hub.uploads] == [sorted(["README.md", "config.json", "model.safetensors", MASKS_NAME])]


def test_trainer_push_to_hub_refuses_released_masks(tmp_path, monkeypatch):
    from sparse_transfer import GMP, dense_masks

    hub = _FakeHub(monkeypatch)
    model = make_sparse_bert()
    method = GMP(dense_masks(model, "bert"), 0.8, start_step=10, end_step=20, interval=2)  # not started after 1 step
    trainer = SparseTrainer(model=model, args=make_args(tmp_path, max_steps=1), train_dataset=make_dataset(8),
                            method=method)
    trainer.train()
    with pytest.raises(ValueError, match=r"GMP's masks are released .*nothing to check"):
        trainer.push_to_hub(repo_id="me/sparse")
    assert hub.created == [] and not (tmp_path / "model.safetensors").exists()
