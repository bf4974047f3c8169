"""Unlabeled text into fixed-length token blocks, deterministically.

Lines are read in file order, empty lines dropped, tokenized without special tokens, concatenated and cut
into blocks of ``block_size - 2`` tokens, each wrapped in the tokenizer's ``[CLS] ... [SEP]`` (as BERT's own
pre-training data is). The remainder shorter than a block is dropped. Nothing here is random: the data order
comes from the Trainer's seeded sampler.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch.utils.data import Dataset


class BlockDataset(Dataset):
    """Token blocks of equal length as ``{"input_ids", "attention_mask"}`` (every position is real text)."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        ids = self.blocks[index]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def read_text_files(paths: Sequence[str]) -> list[str]:
    """Non-empty lines of the files, in order.

    Raises:
        FileNotFoundError: for a missing file.
        ValueError: if the files hold no text at all.
    """
    lines: list[str] = []
    for path in paths:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"Text file {path} does not exist.")
        with open(path, encoding="utf-8") as f:
            lines.extend(line.strip() for line in f if line.strip())
    if not lines:
        raise ValueError(f"No text in {', '.join(paths)}: the file(s) are empty or hold only blank lines.")
    return lines


def read_text_dataset(name: str, config: str | None, split: str, column: str) -> list[str]:
    """Non-empty rows of a `datasets` text dataset (``datasets.load_dataset(name, config, split=split)``)."""
    import datasets

    try:
        ds = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, unknown name or config: datasets raises many types
        raise ValueError(
            f"Could not load the dataset {name!r} (config {config!r}, split {split!r}): {str(err).splitlines()[0]}. "
            "Without network pass plain text files with --text."
        ) from None
    if column not in ds.column_names:
        raise ValueError(f"Dataset {name!r} has no column {column!r}; its columns are {ds.column_names} (use --text-column).")
    lines = [t.strip() for t in ds[column] if isinstance(t, str) and t.strip()]
    if not lines:
        raise ValueError(f"Dataset {name!r} split {split!r} holds no text in column {column!r}.")
    return lines


def tokenize_blocks(lines: Sequence[str], tokenizer, block_size: int, max_blocks: int | None = None) -> torch.Tensor:
    """Concatenates the tokenized lines and cuts them into ``[CLS] body [SEP]`` blocks of ``block_size`` tokens.

    Raises:
        ValueError: if the text is shorter than one block.
    """
    body = block_size - 2
    ids: list[int] = []
    # Batched calls of the fast tokenizer; lines are independent, so the result equals one long call.
    chunk = 1000
    for start in range(0, len(lines), chunk):
        encoded = tokenizer(list(lines[start : start + chunk]), add_special_tokens=False)["input_ids"]
        for row in encoded:
            ids.extend(row)
        if max_blocks is not None and len(ids) >= max_blocks * body:
            break
    n_blocks = len(ids) // body
    if max_blocks is not None:
        n_blocks = min(n_blocks, max_blocks)
    if n_blocks == 0:
        raise ValueError(
            f"The text has {len(ids)} tokens, fewer than one block of {body} (block_size {block_size} minus the two "
            "special tokens): give more text or a smaller --block-size."
        )
    cls_id, sep_id = tokenizer.cls_token_id, tokenizer.sep_token_id
    if cls_id is None or sep_id is None:
        # RoBERTa-style tokenizers call them bos/eos.
        cls_id, sep_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    body_ids = torch.tensor(ids[: n_blocks * body], dtype=torch.long).view(n_blocks, body)
    parts = [body_ids]
    if cls_id is not None:
        parts.insert(0, torch.full((n_blocks, 1), cls_id, dtype=torch.long))
    if sep_id is not None:
        parts.append(torch.full((n_blocks, 1), sep_id, dtype=torch.long))
    return torch.cat(parts, dim=1)


def held_out_sentences(lines: Sequence[str], count: int, min_words: int = 4) -> list[str]:
    """The first ``count`` lines that are prose (not ``= Heading =`` lines, at least ``min_words`` words)."""
    picked = []
    for line in lines:
        if line.startswith("=") and line.endswith("="):
            continue
        if len(line.split()) < min_words:
            continue
        picked.append(line)
        if len(picked) >= count:
            break
    return picked
