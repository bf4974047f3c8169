"""Sparse checkpoints: save, reload with plain libraries, check, load and (mocked) upload."""

import json
import os
import re

import huggingface_hub
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

from sparse_transfer import MASKS_NAME, SparseMasks, sparsity_report
from sparse_transfer.hub import (
    auto_targets,
    check_sparsity,
    load_sparse_masks,
    load_state_dict_from_checkpoint,
    model_card,
    push_sparse_to_hub,
    save_sparse_pretrained,
    verify_checkpoint_sparsity,
)

from .conftest import make_tiny_bert

CARD = {
    "title": "Tiny sparse BERT",
    "base_model": "org/tiny-bert",
    "method": "gradual unfreezing with LR rewinding",
    "datasets": ["glue"],
    "tags": ["text-classification"],
    "recipe": {"learning_rate": 1e-4, "unfreeze": "gradual", "stage_epochs": 1.0},
    "results": {"eval_accuracy": 0.6125, "epochs": 4},
}


@pytest.fixture
def sparse_bert():
    model = make_tiny_bert()
    masks = SparseMasks.from_magnitude(model, sparsity=0.8, targets="bert")
    masks.apply_()
    return model, masks


@pytest.fixture
def saved_bert(sparse_bert, tmp_path):
    model, masks = sparse_bert
    out = tmp_path / "sparse-bert"
    save_sparse_pretrained(model, out, masks=masks, card=CARD)
    return model, masks, out


def _revive_one_pruned_weight(model, masks):
    name, mask = next(iter(masks.items()))
    index = tuple(int(i) for i in (~mask).nonzero()[0])
    with torch.no_grad():
        dict(model.named_parameters())[name][index] = 0.5
    return name


def test_reload_with_plain_transformers_keeps_exact_zeros(saved_bert):
    from transformers import AutoModelForSequenceClassification

    model, masks, out = saved_bert
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    params = dict(reloaded.named_parameters())
    for name, mask in masks.items():
        assert (params[name][~mask] == 0).all(), name
        assert torch.equal(params[name], dict(model.named_parameters())[name])
    before = sparsity_report(model, "bert")
    after = sparsity_report(reloaded, "bert")
    assert [layer.nonzeros for layer in after.layers] == [layer.nonzeros for layer in before.layers]
    assert after.target_sparsity == before.target_sparsity
    assert abs(after.target_sparsity - 0.8) < 1e-3


def test_state_dict_has_ordinary_keys_only(saved_bert):
    model, _, out = saved_bert
    state_dict = load_state_dict_from_checkpoint(out)
    assert set(state_dict) == set(model.state_dict())
    assert not [k for k in state_dict if "orig" in k or "mask" in k]
    assert sorted(os.listdir(out)) == sorted(["README.md", "config.json", "model.safetensors", MASKS_NAME])


def test_mask_file_round_trip(saved_bert):
    model, masks, out = saved_bert
    loaded = SparseMasks.load(out / MASKS_NAME, model)
    assert list(loaded) == list(masks)
    for name, mask in masks.items():
        assert torch.equal(loaded[name], mask)
    assert verify_checkpoint_sparsity(out).sparsity() == masks.sparsity()


def test_model_card_has_front_matter_sparsity_recipe_and_results(saved_bert):
    _, masks, out = saved_bert
    text = (out / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["base_model"] == "org/tiny-bert"
    assert front["datasets"] == ["glue"]
    assert {"sparse", "text-classification"} <= set(front["tags"])
    assert front["library_name"] == "transformers"
    assert "## Sparsity" in text
    assert "**80.00%**" in text  # global sparsity over the targets
    for name, sparsity in masks.layer_sparsity().items():
        assert f"| `{name}` |" in text and f"{sparsity:.2%}" in text
    assert "learning_rate: 0.0001" in text
    assert "| eval_accuracy | 0.6125 |" in text


def test_model_card_rejects_unknown_fields(sparse_bert):
    model, _ = sparse_bert
    with pytest.raises(ValueError, match="basemodel"):
        model_card(sparsity_report(model, "bert"), card={"basemodel": "x"})


def test_check_sparsity_names_the_revived_tensor(sparse_bert, tmp_path):
    model, masks = sparse_bert
    check_sparsity(model, masks)
    name = _revive_one_pruned_weight(model, masks)
    with pytest.raises(ValueError, match=rf"non-zero in 1 tensor\(s\): {name} \(1\)"):
        check_sparsity(model, masks)
    with pytest.raises(ValueError, match=name):
        check_sparsity(model.state_dict(), masks)
    # Nothing is written for a model that lost its sparsity.
    with pytest.raises(ValueError, match=name):
        save_sparse_pretrained(model, tmp_path / "out", masks=masks)
    assert os.listdir(tmp_path) == []


def test_check_sparsity_reports_missing_and_misshapen_tensors(sparse_bert):
    model, masks = sparse_bert
    state_dict = dict(model.state_dict())
    first, second = list(masks)[:2]
    del state_dict[first]
    state_dict[second] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="missing") as err:
        check_sparsity(state_dict, masks)
    assert second in str(err.value)
    assert "made for another model" in str(err.value) and "attach" not in str(err.value)  # not a training fix


def test_failed_save_leaves_previous_checkpoint_intact(saved_bert, tmp_path):
    model, masks, out = saved_bert
    before = {name: (out / name).read_bytes() for name in os.listdir(out)}

    class BrokenTokenizer:
        def save_pretrained(self, directory):
            (directory / "tokenizer.json").write_text("{")
            raise OSError("disk full")

    with torch.no_grad():
        next(iter(masks.params.values())).mul_(2.0)  # new weights, same zeros
    with pytest.raises(OSError, match="disk full"):
        save_sparse_pretrained(model, out, masks=masks, processing_class=BrokenTokenizer())
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before
    assert sorted(os.listdir(tmp_path)) == ["sparse-bert"]  # no temporary folder left behind


def test_resave_into_existing_folder_keeps_other_files_and_drops_stale_ones(saved_bert):
    model, _, out = saved_bert
    (out / "checkpoint-10").mkdir()
    (out / "checkpoint-10" / "optimizer.pt").write_bytes(b"x")
    (out / "model-00001-of-00002.safetensors").write_bytes(b"stale shard")
    save_sparse_pretrained(model, out)  # no masks this time: an old mask file would now be wrong
    names = set(os.listdir(out))
    assert "checkpoint-10" in names
    assert MASKS_NAME not in names
    assert "model-00001-of-00002.safetensors" not in names
    assert verify_checkpoint_sparsity(out) is None
    assert "**80.00%**" in (out / "README.md").read_text()  # auto targets: the BERT encoder linears


def test_timm_model_saves_as_safetensors_with_timm_config(tmp_path):
    timm = pytest.importorskip("timm")
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=4)
    masks = SparseMasks.from_magnitude(model, sparsity=0.9, targets="cnn")
    masks.apply_()
    out = tmp_path / "sparse-resnet"
    save_sparse_pretrained(model, out, masks=masks)
    assert {"model.safetensors", "config.json", MASKS_NAME, "README.md"} <= set(os.listdir(out))
    config = json.loads((out / "config.json").read_text())
    assert config["architecture"] == "test_resnet" and config["num_classes"] == 4
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True)
    for name, mask in masks.items():
        assert (dict(reloaded.named_parameters())[name][~mask] == 0).all()
    assert set(load_state_dict_from_checkpoint(out)) == set(model.state_dict())  # BatchNorm buffers included
    assert "library_name: timm" in (out / "README.md").read_text()


def test_plain_module_round_trip(mlp, tmp_path):
    masks = SparseMasks.from_magnitude(mlp, sparsity=0.5, targets="all")
    masks.apply_()
    save_sparse_pretrained(mlp, tmp_path / "mlp", masks=masks)
    assert "config.json" not in os.listdir(tmp_path / "mlp")
    state_dict = load_state_dict_from_checkpoint(tmp_path / "mlp" / "model.safetensors")
    for name, tensor in mlp.state_dict().items():
        assert torch.equal(state_dict[name], tensor)
    assert load_sparse_masks(mlp, tmp_path / "mlp").sparsity() == masks.sparsity()


def test_load_sparse_masks_flags_a_model_that_lost_its_zeros(saved_bert):
    from transformers import AutoModelForSequenceClassification

    _, masks, out = saved_bert
    reloaded = AutoModelForSequenceClassification.from_pretrained(out)
    name = _revive_one_pruned_weight(reloaded, masks)
    with pytest.raises(ValueError, match=name):
        load_sparse_masks(reloaded, out)
    restored = load_sparse_masks(reloaded, out, strict=False)
    restored.apply_()
    assert restored.violations() == 0


def test_load_sharded_and_pickle_fallback(tmp_path, mlp):
    state_dict = {k: v.clone() for k, v in mlp.state_dict().items()}
    sharded = tmp_path / "sharded"
    sharded.mkdir()
    names = list(state_dict)
    shards = {"model-00001-of-00002.safetensors": names[:2], "model-00002-of-00002.safetensors": names[2:]}
    for shard, keys in shards.items():
        save_file({k: state_dict[k] for k in keys}, sharded / shard)
    weight_map = {k: shard for shard, keys in shards.items() for k in keys}
    (sharded / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    loaded = load_state_dict_from_checkpoint(sharded)
    assert set(loaded) == set(state_dict) and all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)

    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(state_dict, pickled / "pytorch_model.bin")
    loaded = load_state_dict_from_checkpoint(pickled)
    assert all(torch.equal(loaded[k], state_dict[k]) for k in state_dict)


def test_load_errors_are_clear(tmp_path, monkeypatch):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="No weights in"):
        load_state_dict_from_checkpoint(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="No such file"):
        load_state_dict_from_checkpoint(str(tmp_path / "missing"))

    def offline(*args, **kwargs):
        raise huggingface_hub.errors.LocalEntryNotFoundError("cannot reach the Hub")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    with pytest.raises(OSError, match="pass its local path"):
        load_state_dict_from_checkpoint("org/sparse-bert", revision="v1")


def test_load_from_hub_id_downloads_safetensors_and_json_only(saved_bert, monkeypatch):
    model, _, out = saved_bert
    calls = []

    def fake_snapshot_download(repo_id, revision=None, allow_patterns=None, **kwargs):
        calls.append((repo_id, revision, allow_patterns))
        return str(out)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    state_dict = load_state_dict_from_checkpoint("org/sparse-bert", revision="main")
    assert set(state_dict) == set(model.state_dict())
    assert calls == [("org/sparse-bert", "main", ["*.safetensors", "*.json"])]
    assert verify_checkpoint_sparsity("org/sparse-bert") is not None


class _FakeHub:
    """Records create_repo / upload_folder calls, and the files the upload would send."""

    def __init__(self, monkeypatch):
        self.created, self.uploads = [], []
        monkeypatch.setattr(huggingface_hub, "create_repo", self.create_repo)
        monkeypatch.setattr(huggingface_hub, "upload_folder", self.upload_folder)

    def create_repo(self, repo_id, token=None, private=False, exist_ok=False, **kwargs):
        self.created.append(dict(repo_id=repo_id, token=token, private=private, exist_ok=exist_ok))
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(self, *, repo_id, folder_path, commit_message=None, token=None, allow_patterns=None,
                      ignore_patterns=None, **kwargs):
        from huggingface_hub.utils import filter_repo_objects

        files = sorted(
            os.path.relpath(os.path.join(root, f), folder_path) for root, _, fs in os.walk(folder_path) for f in fs
        )
        sent = list(filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns))
        self.uploads.append(dict(repo_id=repo_id, files=sent, message=commit_message, token=token))


def test_push_command_leaves_visibility_to_the_hub_unless_private_is_asked(saved_bert, monkeypatch, capsys, hub_login):
    from sparse_transfer.push import main as push_main

    _, _, out = saved_bert
    hub = _FakeHub(monkeypatch)
    assert push_main([str(out), "me/a"]) == 0 and push_main([str(out), "me/b", "--private"]) == 0
    assert [c["private"] for c in hub.created] == [None, True]  # None: the namespace's default, as transformers


def test_push_uploads_the_sparse_files(saved_bert, monkeypatch, capsys):
    _, _, out = saved_bert
    (out / "checkpoint-5").mkdir()
    (out / "checkpoint-5" / "optimizer.pt").write_bytes(b"x")
    hub = _FakeHub(monkeypatch)
    url = push_sparse_to_hub(out, "me/tiny-sparse-bert", token="hf_secret_token", private=True)
    assert url == "https://huggingface.co/me/tiny-sparse-bert"
    assert hub.created == [dict(repo_id="me/tiny-sparse-bert", token="hf_secret_token", private=True, exist_ok=True)]
    (upload,) = hub.uploads
    assert upload["files"] == sorted(["README.md", "config.json", "model.safetensors", MASKS_NAME])
    assert "80.0% sparse" in upload["message"]
    captured = capsys.readouterr()
    assert "hf_secret_token" not in captured.out + captured.err


def test_push_refuses_a_checkpoint_whose_zeros_were_lost(saved_bert, monkeypatch):
    _, masks, out = saved_bert
    weights = load_file(out / "model.safetensors")
    name = next(iter(masks))
    weights[name] = torch.ones_like(weights[name])
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    hub = _FakeHub(monkeypatch)
    with pytest.raises(ValueError, match=name):
        push_sparse_to_hub(out, "me/tiny-sparse-bert")
    assert hub.created == [] and hub.uploads == []


def test_push_refuses_a_folder_without_masks(sparse_bert, tmp_path, monkeypatch):
    model, _ = sparse_bert
    save_sparse_pretrained(model, tmp_path / "no-masks")
    hub = _FakeHub(monkeypatch)
    with pytest.raises(FileNotFoundError, match=MASKS_NAME):
        push_sparse_to_hub(tmp_path / "no-masks", "me/x")
    assert hub.uploads == []


def test_auto_targets(sparse_bert, tiny_cnn):
    model, _ = sparse_bert
    assert auto_targets(model).include  # the BERT preset
    assert auto_targets(tiny_cnn) == "cnn"
    assert auto_targets(model.state_dict()) == "bert"
    assert auto_targets(tiny_cnn.state_dict()) == "cnn"


def test_push_uploads_an_allow_list_never_a_pickle_or_a_token(saved_bert, monkeypatch):
    """A ``trainer.save_model()`` folder holds ``training_args.bin`` (a pickle with the Hub token) and the Trainer's
    other pickles: none of them, no sub-folder and no hidden file is uploaded."""
    _, _, out = saved_bert
    for name in ("training_args.bin", "optimizer.pt", "scheduler.pt", "rng_state_0.pth", "pytorch_model.bin",
                 ".hidden.json", "model.safetensors.tmp"):
        (out / name).write_bytes(b"pickle")
    (out / "runs").mkdir()
    (out / "runs" / "events.json").write_text("{}")
    (out / "trainer_state.json").write_text("{}")
    (out / "vocab.txt").write_text("[PAD]\n")
    hub = _FakeHub(monkeypatch)
    push_sparse_to_hub(out, "me/tiny-sparse-bert", token="hf_" + "a" * 34)
    (upload,) = hub.uploads
    assert upload["files"] == sorted(["README.md", "config.json", "model.safetensors", MASKS_NAME,
                                      "trainer_state.json", "vocab.txt"])


@pytest.mark.parametrize("stray", ["model-00001-of-00002.safetensors", "dense_copy.safetensors"])
def test_push_refuses_safetensors_it_did_not_check(saved_bert, monkeypatch, stray):
    """A stale shard of an earlier save, or another model's weights, would go up unchecked beside the checked ones."""
    model, _, out = saved_bert
    save_file({n: p.detach().clone() for n, p in model.named_parameters()}, out / stray, metadata={"format": "pt"})
    hub = _FakeHub(monkeypatch)
    with pytest.raises(ValueError, match=re.escape(f"not the weights the push checked: ['{stray}']")):
        push_sparse_to_hub(out, "me/tiny-sparse-bert")
    assert hub.created == [] and hub.uploads == []


@pytest.mark.parametrize("where", ["config.json", "README.md", "model.safetensors"])
def test_push_refuses_a_file_holding_a_token(saved_bert, monkeypatch, capsys, where):
    _, _, out = saved_bert
    secret = "hf_" + "Z" * 34
    if where == "model.safetensors":
        weights = load_file(out / "model.safetensors")
        save_file(weights, out / "model.safetensors", metadata={"format": "pt", "note": secret})
    else:
        (out / where).write_text((out / where).read_text() + f"\n{secret}\n")
    hub = _FakeHub(monkeypatch)
    with pytest.raises(ValueError, match=f"{where} contains a Hugging Face access token") as err:
        push_sparse_to_hub(out, "me/x", token="hf_" + "b" * 34)
    assert secret not in str(err.value)
    assert hub.created == [] and hub.uploads == []
    captured = capsys.readouterr()
    assert secret not in captured.out + captured.err


def test_push_refuses_the_pushing_token_in_any_shape(saved_bert, monkeypatch):
    _, _, out = saved_bert
    (out / "results.json").write_text(json.dumps({"token": "my-org-token-123"}))
    hub = _FakeHub(monkeypatch)
    with pytest.raises(ValueError, match="results.json contains"):
        push_sparse_to_hub(out, "me/x", token="my-org-token-123")
    assert hub.uploads == []


# ----------------------------------------------------------------- consumers check weights against the mask file
def test_verify_checkpoint_sparsity_catches_a_kept_to_pruned_flip(saved_bert):
    """A mask file that claims more zeros than the weights have (a kept bit flipped to pruned) is caught."""
    _, masks, out = saved_bert
    flipped = {n: m.clone() for n, m in masks.items()}
    name = next(iter(flipped))
    flipped[name].view(-1)[int(flipped[name].view(-1).nonzero()[0])] = False
    SparseMasks(flipped).save(out / MASKS_NAME)
    with pytest.raises(ValueError, match=f"1 pruned weight.* {name}"):
        verify_checkpoint_sparsity(out)


def test_shipped_masks_are_the_record_and_must_agree_with_the_weights(saved_bert, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from sparse_transfer.hub import shipped_masks

    _, masks, out = saved_bert
    model = AutoModelForSequenceClassification.from_pretrained(out)
    loaded = shipped_masks(model, out)
    assert all(torch.equal(loaded[n], masks[n]) for n in masks) and loaded.model is model
    # a mask file of another checkpoint of the same architecture, copied in
    other = make_tiny_bert(seed=3)
    other_masks = SparseMasks.from_magnitude(other, 0.8, "global", targets="bert")
    other_masks.apply_()
    other_masks.save(out / MASKS_NAME)
    with pytest.raises(ValueError, match="disagrees with the weights"):
        shipped_masks(model, out)


def test_shipped_masks_of_a_head_the_model_does_not_load_are_dropped_after_checking_the_file(tmp_path, caplog):
    """An MLM checkpoint pruned with 'all' masks its own head (cls.predictions.transform.dense); a classifier loaded
    from it has no such tensor. Its masks are dropped, the rest (the tied word embeddings among them) bind, and the
    file is still checked against the checkpoint's weights."""
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForMaskedLM

    from sparse_transfer.hub import shipped_masks

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    mlm = BertForMaskedLM(config)
    masks = SparseMasks.from_magnitude(mlm, 0.5, targets="all")
    masks.apply_()
    out = tmp_path / "mlm-all"
    save_sparse_pretrained(mlm, out, masks=masks)
    model = AutoModelForSequenceClassification.from_pretrained(out)
    with caplog.at_level("WARNING", logger="sparse_transfer.hub"):
        loaded = shipped_masks(model, out)
    assert "cls.predictions.transform.dense.weight" in caplog.text and "dropped" in caplog.text
    assert "cls.predictions.transform.dense.weight" not in loaded and "bert.embeddings.word_embeddings.weight" in loaded
    assert loaded.model is model and loaded.violations() == 0
    assert all(torch.equal(loaded[n], masks[n]) for n in loaded)
    # a pruned weight revived in the checkpoint's head is still caught, by the check against the checkpoint's file
    weights = load_file(out / "model.safetensors")
    head = weights["cls.predictions.transform.dense.weight"]
    head[~masks["cls.predictions.transform.dense.weight"]] = 1.0
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="cls.predictions.transform.dense.weight"):
        shipped_masks(AutoModelForSequenceClassification.from_pretrained(out), out)


def test_inspect_reports_a_damaged_mask_file_instead_of_crashing(saved_bert, capsys):
    from sparse_transfer.inspect import main as inspect_main

    _, _, out = saved_bert
    data = bytearray((out / MASKS_NAME).read_bytes())
    data[-1] ^= 0x10
    (out / MASKS_NAME).write_bytes(bytes(data))
    assert inspect_main([str(out)]) == 1
    printed = capsys.readouterr().out
    assert "REFUSED" in printed and "fails its checksum" in printed


@pytest.mark.parametrize("form", ["file-name", "utf-16", "base64", "json-escaped", "tensor-data"])
def test_push_refuses_the_token_in_other_forms(saved_bert, monkeypatch, form):
    import base64

    _, _, out = saved_bert
    token = "hf_" + "Q" * 34
    if form == "file-name":
        (out / f"{token}.txt").write_text("x")
    elif form == "utf-16":
        (out / "notes.txt").write_bytes(f"token: {token}".encode("utf-16"))
    elif form == "base64":
        (out / "results.json").write_text(json.dumps({"auth": base64.b64encode(f"user:{token}".encode()).decode()}))
    elif form == "json-escaped":
        (out / "results.json").write_text('{"t": "hf\\u005f' + "Q" * 34 + '"}')
    else:
        weights = load_file(out / "model.safetensors")  # in the checked weights: an extra file is refused anyway
        weights["secret"] = torch.frombuffer(bytearray(token.encode()), dtype=torch.uint8)
        save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    hub = _FakeHub(monkeypatch)
    with pytest.raises(ValueError, match="contains a Hugging Face access token"):
        push_sparse_to_hub(out, "me/x", token=token)
    assert hub.uploads == []


def test_push_refuses_a_linked_mask_file_and_a_mask_file_of_other_weights(saved_bert, tmp_path, monkeypatch):
    _, masks, out = saved_bert
    hub = _FakeHub(monkeypatch)
    elsewhere = tmp_path / "elsewhere.safetensors"
    os.replace(out / MASKS_NAME, elsewhere)
    os.symlink(elsewhere, out / MASKS_NAME)
    with pytest.raises(ValueError, match="is a link"):
        push_sparse_to_hub(out, "me/x")
    os.remove(out / MASKS_NAME)
    # the same zeros, but the file was saved beside other weights: an earlier checkpoint's mask file
    from transformers import AutoModelForSequenceClassification

    model = AutoModelForSequenceClassification.from_pretrained(out)
    with torch.no_grad():
        for name, mask in masks.items():
            model.get_parameter(name)[mask] *= 2.0  # kept weights changed, zeros intact
    SparseMasks(dict(masks.items()), model).save(out / MASKS_NAME)
    with pytest.raises(ValueError, match="saved beside other weights"):
        push_sparse_to_hub(out, "me/x")
    assert hub.uploads == []
