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


def test_a_weight_tied_to_an_embedding_goes_by_the_name_checkpoints_keep(caplog):
    """BertForMaskedLM's decoder shares the word embeddings: under 'all' it is a target, named as save_pretrained
    keeps it (the embedding), with a warning that says so and how to leave it dense."""
    from transformers import BertConfig, BertForMaskedLM

    config = BertConfig(vocab_size=99, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                        max_position_embeddings=64)
    model = BertForMaskedLM(config)
    embeddings = "bert.embeddings.word_embeddings.weight"
    with caplog.at_level("WARNING", logger="sparse_transfer.core.targets"):
        selected = select_targets(model, "all")
    assert embeddings in selected and "cls.predictions.decoder.weight" not in selected
    assert selected[embeddings] is model.cls.predictions.decoder.weight
    assert "tied to bert.embeddings.word_embeddings.weight" in caplog.text
    # Either name excludes it.
    for pattern in (r"cls\.predictions\.decoder\.weight$", "word_embeddings"):
        assert embeddings not in select_targets(model, TargetSpec(exclude=(pattern,)))
    assert "bert.embeddings.word_embeddings.weight" not in select_targets(model, "bert")
