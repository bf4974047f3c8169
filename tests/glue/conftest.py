"""Tiny GLUE data in GLUE's own TSV layout for every task, and a tiny sparse BERT with its WordPiece tokenizer.

Everything is built in-process; nothing is downloaded. The files copy the quirks of GLUE's download
script: CoLA has no header and four columns, MRPC has the msr_paraphrase columns and a BOM, STS-B has ten
columns, MNLI has dev_matched/dev_mismatched with label1..label5 and gold_label, SST-2's sentences end with
a space, and quotes are text (``QUOTE_NONE``).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

WORDS = [
    "the", "a", "cat", "dog", "sat", "ran", "on", "mat", "is", "not", "good", "bad", "movie", "man", "woman",
    "big", "small", "house", "red", "blue", "\"", "'", "it", "was", "very", "and", "to", "of",
]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
GLUE_DIRS = {
    "cola": "CoLA", "sst2": "SST-2", "mrpc": "MRPC", "stsb": "STS-B", "qqp": "QQP", "mnli": "MNLI", "qnli": "QNLI",
    "rte": "RTE", "wnli": "WNLI",
}
TEXT_LABELS = {
    "mnli": ["entailment", "neutral", "contradiction"],
    "qnli": ["entailment", "not_entailment"],
    "rte": ["entailment", "not_entailment"],
}


def sentence(rng: random.Random, label: int | float = 0) -> str:
    # A label-dependent word so that a tiny model can learn something in a few steps.
    marker = ["good", "bad", "big"][int(label) % 3]
    return " ".join([marker] + [rng.choice(WORDS) for _ in range(rng.randint(3, 9))])


def glue_rows(task: str, n: int, rng: random.Random, split: str = "train") -> tuple[list[str] | None, list[list[str]]]:
    """Header (None for CoLA) and rows of one GLUE file, with labels drawn at random."""
    rows = []
    if task == "cola":
        for _ in range(n):
            y = rng.randint(0, 1)
            rows.append(["gj04", str(y), "" if y else "*", sentence(rng, y)])
        return None, rows
    if task == "sst2":
        for _ in range(n):
            y = rng.randint(0, 1)
            rows.append([sentence(rng, y) + " ", str(y)])
        return ["sentence", "label"], rows
    if task == "mrpc":
        for i in range(n):
            y = rng.randint(0, 1)
            rows.append([str(y), str(1000 + i), str(2000 + i), sentence(rng, y), sentence(rng, y)])
        return ["\ufeffQuality", "#1 ID", "#2 ID", "#1 String", "#2 String"], rows
    if task == "stsb":
        for i in range(n):
            y = round(rng.uniform(0, 5), 3)
            rows.append([str(i), "main-captions", "MSRvid", "2012test", f"{i:04d}", "none", "none",
                         sentence(rng, y > 2.5), sentence(rng, y > 2.5), f"{y:.3f}"])
        return ["index", "genre", "filename", "year", "old_index", "source1", "source2", "sentence1", "sentence2",
                "score"], rows
    if task == "qqp":
        for i in range(n):
            y = rng.randint(0, 1)
            rows.append([str(i), str(2 * i), str(2 * i + 1), sentence(rng, y) + " ?", sentence(rng, y) + " ?", str(y)])
        return ["id", "qid1", "qid2", "question1", "question2", "is_duplicate"], rows
    if task == "mnli":
        header = ["index", "promptID", "pairID", "genre", "sentence1_binary_parse", "sentence2_binary_parse",
                  "sentence1_parse", "sentence2_parse", "sentence1", "sentence2"]
        labels = ["label1"] if split == "train" else ["label1", "label2", "label3", "label4", "label5"]
        for i in range(n):
            y = rng.randint(0, 2)
            name = TEXT_LABELS["mnli"][y]
            s1, s2 = sentence(rng, y), sentence(rng, y)
            rows.append([str(i), str(i), f"{i}e", "fiction", f"( {s1} )", f"( {s2} )", f"(ROOT {s1})", f"(ROOT {s2})",
                         s1, s2] + [name] * len(labels) + [name])
        return header + labels + ["gold_label"], rows
    if task == "qnli":
        for i in range(n):
            y = rng.randint(0, 1)
            rows.append([str(i), sentence(rng, y) + " ?", sentence(rng, y), TEXT_LABELS["qnli"][y]])
        return ["index", "question", "sentence", "label"], rows
    if task in ("rte", "wnli"):
        for i in range(n):
            y = rng.randint(0, 1)
            label = TEXT_LABELS["rte"][y] if task == "rte" else str(y)
            rows.append([str(i), sentence(rng, y), sentence(rng, y), label])
        return ["index", "sentence1", "sentence2", "label"], rows
    raise KeyError(task)


def write_tsv(path: Path, header: list[str] | None, rows: list[list[str]], final_newline: bool = True) -> Path:
    lines = (["\t".join(header)] if header is not None else []) + ["\t".join(r) for r in rows]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + ("\n" if final_newline else ""), encoding="utf-8")
    return path


def make_glue_dir(root: Path, tasks=tuple(GLUE_DIRS), n_train: int = 48, n_dev: int = 24, seed: int = 0) -> Path:
    """GLUE's folder layout with every task: ROOT/RTE/train.tsv, ROOT/MNLI/dev_matched.tsv, ..."""
    rng = random.Random(seed)
    for task in tasks:
        folder = root / GLUE_DIRS[task]
        header, rows = glue_rows(task, n_train, rng, "train")
        write_tsv(folder / "train.tsv", header, rows)
        dev_files = ["dev_matched.tsv", "dev_mismatched.tsv"] if task == "mnli" else ["dev.tsv"]
        for name in dev_files:
            header, rows = glue_rows(task, n_dev, rng, "dev")
            # CoLA's real dev.tsv has no final newline.
            write_tsv(folder / name, header, rows, final_newline=task != "cola")
    return root


def make_tiny_model_dir(path: Path, sparsity: float = 0.5, seed: int = 0) -> Path:
    """A 2-block BERT (hidden 32) with a WordPiece tokenizer, 50% globally sparse on the six encoder linears."""
    import torch
    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    from sparse_transfer.core import SparseMasks

    path.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted(set(WORDS) | {"?", ".", ","})
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=True)  # positional: v5 ignores vocab_file=
    tokenizer.save_pretrained(path)
    # Words must be words, not [UNK] (transformers 5 silently ignores vocab_file=, and every word became [UNK]).
    assert tokenizer.convert_ids_to_tokens(tokenizer("the cat sat")["input_ids"]) == ["[CLS]", "the", "cat", "sat", "[SEP]"]
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=64,
    )
    # A masked-LM checkpoint, as the oBERT upstream models are: the classifier head starts fresh.
    model = BertForMaskedLM(config)
    masks = SparseMasks.from_magnitude(model, sparsity, "global", targets="bert")
    masks.apply_()
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def glue_dir(tmp_path_factory) -> Path:
    return make_glue_dir(tmp_path_factory.mktemp("glue") / "glue_data")


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    return make_tiny_model_dir(tmp_path_factory.mktemp("model") / "tiny-bert-50")


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    # A test that reaches for the Hub must fail at once, not wait on the network.
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")


@pytest.fixture
def fake_hub(monkeypatch, hub_login):
    """Records what a push would upload (the allowed files of the folder, read at upload time); nothing leaves."""
    import huggingface_hub

    uploads = []

    def create_repo(repo_id, token=None, private=False, exist_ok=False, **kw):
        return huggingface_hub.RepoUrl(f"https://huggingface.co/{repo_id}")

    def upload_folder(repo_id, folder_path, allow_patterns=None, **kw):
        from huggingface_hub.utils import filter_repo_objects

        names = filter_repo_objects([p.name for p in Path(folder_path).iterdir() if p.is_file()], allow_patterns=allow_patterns)
        uploads.append((repo_id, {name: (Path(folder_path) / name).read_bytes() for name in names}))

    monkeypatch.setattr(huggingface_hub, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub, "upload_folder", upload_folder)
    return uploads
