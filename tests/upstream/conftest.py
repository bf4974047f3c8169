"""Tiny encoders (with and without an MLM head), a tiny tokenizer and text files, all built in-process."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

WORDS = [f"w{i}" for i in range(80)]


def make_tokenizer(directory: Path):
    """A WordPiece BERT tokenizer over a made-up vocabulary (no download)."""
    from transformers import BertTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS, ".", ",", "="]
    tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(vocab)})
    assert len(tokenizer) == len(vocab)
    return tokenizer


def make_encoder_dir(root: Path, mlm_head: bool, seed: int = 0) -> Path:
    """Saves a BERT with hidden size 32 and 2 layers (BertForMaskedLM or BertModel) plus its tokenizer."""
    from transformers import BertConfig, BertForMaskedLM, BertModel

    directory = root / ("tiny-bert-mlm" if mlm_head else "tiny-bert")
    tokenizer = make_tokenizer(directory)
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
    )
    model = BertForMaskedLM(config) if mlm_head else BertModel(config, add_pooling_layer=False)
    model.save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def write_text(path: Path, lines: int, seed: int) -> Path:
    rng = random.Random(seed)
    text = []
    for i in range(lines):
        if i % 10 == 0:
            text.append(f" = {rng.choice(WORDS)} = ")
        text.append(" ".join(rng.choice(WORDS) for _ in range(rng.randint(6, 20))) + " .")
        text.append("")
    path.write_text("\n".join(text))
    return path


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    root = tmp_path_factory.mktemp("upstream")
    return {
        "mlm": make_encoder_dir(root, mlm_head=True),
        "base": make_encoder_dir(root, mlm_head=False),
        "train": write_text(root / "train.txt", 120, seed=1),
        "eval": write_text(root / "eval.txt", 40, seed=2),
        "root": root,
    }
