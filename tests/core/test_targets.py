import pytest
from torch import nn

from sparse_transfer.core import TargetSpec, select_targets

BERT_SIX = {
    "attention.self.query.weight",
    "attention.self.key.weight",
    "attention.self.value.weight",
    "attention.output.dense.weight",
    "intermediate.dense.weight",
    "output.dense.weight",
}


def test_bert_preset_selects_the_six_encoder_linears_per_block(tiny_bert):
    names = list(select_targets(tiny_bert, "bert"))
    assert len(names) == 12
    for layer in range(2):
        prefix = f"bert.encoder.layer.{layer}."
        assert {n[len(prefix):] for n in names if n.startswith(prefix)} == BERT_SIX
    assert not any("embeddings" in n or "pooler" in n or "classifier" in n for n in names)


def test_bert_preset_on_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    model = DistilBertForSequenceClassification(
        DistilBertConfig(vocab_size=50, dim=32, n_layers=2, n_heads=4, hidden_dim=64, max_position_embeddings=32)
    )
    names = list(select_targets(model, "bert"))
    assert len(names) == 12
    assert all(n.startswith("distilbert.transformer.layer.") for n in names)


def test_cnn_preset_and_first_last_dense(tiny_cnn):
    assert list(select_targets(tiny_cnn, "cnn")) == ["stem.weight", "body.weight", "head.weight"]
    assert list(select_targets(tiny_cnn, "cnn-fld")) == ["body.weight"]


def test_include_exclude_patterns(tiny_cnn):
    spec = TargetSpec(include=(r"^(stem|body)\.",), exclude=(r"^stem",))
    assert list(select_targets(tiny_cnn, spec)) == ["body.weight"]


def test_pattern_matching_nothing_is_an_error(tiny_cnn):
    with pytest.raises(ValueError, match=r"\['nonexistent'\] matched no parameter"):
        select_targets(tiny_cnn, TargetSpec(include=("nonexistent", "body")))


def test_nothing_selected_is_an_error():
    with pytest.raises(ValueError, match="No prunable parameter"):
        select_targets(nn.Sequential(nn.LayerNorm(4)), "cnn")


def test_unknown_preset_is_an_error(tiny_cnn):
    with pytest.raises(ValueError, match="Unknown target preset 'vit'"):
        select_targets(tiny_cnn, "vit")


def test_tied_parameters_are_selected_once():
    lin = nn.Linear(4, 4)
    model = nn.Sequential(lin, nn.ReLU(), lin)
    assert list(select_targets(model)) == ["0.weight"]
