"""Shared fixtures: tiny models built in-process, never downloaded."""

import pytest
import torch
from torch import nn


def make_tiny_bert(num_labels: int = 2, seed: int = 0, **overrides):
    """A 2-layer BERT classifier with hidden size 32, built from a config (no download)."""
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        num_labels=num_labels,
        **overrides,
    )
    return BertForSequenceClassification(config)


class TinyCNN(nn.Module):
    """conv -> conv -> linear, with a BatchNorm, enough to exercise conv targets and first/last dense."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)
        self.body = nn.Conv2d(8, 16, 3, padding=1)
        self.head = nn.Linear(16, 4)

    def forward(self, x):
        x = torch.relu(self.bn(self.stem(x)))
        x = torch.relu(self.body(x)).mean(dim=(2, 3))
        return self.head(x)


@pytest.fixture
def tiny_bert():
    return make_tiny_bert()


@pytest.fixture
def tiny_cnn():
    torch.manual_seed(0)
    return TinyCNN()


@pytest.fixture
def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 2))


@pytest.fixture
def hub_login(monkeypatch):
    """A logged-in user on a reachable Hub, for the push preflight (no network: whoami answers here)."""
    import huggingface_hub

    token = "hf_" + "T" * 34
    monkeypatch.setattr(huggingface_hub, "get_token", lambda: token)
    monkeypatch.setattr(huggingface_hub.HfApi, "whoami", lambda self, token=None, **kw: {"name": "me"})
    return token
