import pytest
import torch

from sparse_transfer.core import sparsity_report


def test_report_counts_nonzeros_and_zero_channels(tiny_cnn):
    with torch.no_grad():
        tiny_cnn.body.weight[:4] = 0  # 4 of 16 output channels entirely zero
        tiny_cnn.body.weight[4, 0] = 0  # a partly zero channel does not count
    report = sparsity_report(tiny_cnn, "cnn")
    body = next(layer for layer in report.layers if layer.name == "body.weight")
    assert body.zero_channels == 4 and body.channels == 16
    assert body.nonzeros == body.numel - 4 * 8 * 9 - 9
    assert report.target_numel == sum(p.numel() for p in (tiny_cnn.stem.weight, tiny_cnn.body.weight, tiny_cnn.head.weight))
    assert report.zero_channel_fraction == pytest.approx(4 / (8 + 16 + 4))
    assert report.model_numel == sum(p.numel() for p in tiny_cnn.parameters())
    table = report.format_table()
    assert "body.weight" in table and "whole model" in table


def test_report_from_a_state_dict_matches_the_module(tiny_bert):
    with torch.no_grad():
        tiny_bert.bert.encoder.layer[1].intermediate.dense.weight[:, :10] = 0
    from_module = sparsity_report(tiny_bert, "bert")
    from_state = sparsity_report(tiny_bert.state_dict(), "bert")
    assert [layer.name for layer in from_state.layers] == [layer.name for layer in from_module.layers]
    assert from_state.target_sparsity == from_module.target_sparsity > 0
    as_dict = from_state.to_dict()
    assert as_dict["layers"][0]["sparsity"] == from_state.layers[0].sparsity


def test_report_from_a_state_dict_without_preset_skips_embeddings_and_norms(tiny_bert):
    names = [layer.name for layer in sparsity_report(tiny_bert.state_dict()).layers]
    assert "bert.encoder.layer.0.intermediate.dense.weight" in names
    assert not any("embeddings" in n or "LayerNorm" in n for n in names)
