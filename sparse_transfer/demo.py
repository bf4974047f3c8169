"""The whole product in one offline command: ``python -m sparse_transfer.demo`` (or ``make demo``).

On a fresh machine, without network, in about a minute on 2 CPU cores:

1. a small BERT (4 blocks) and its WordPiece tokenizer are built in-process, trained dense for a few seconds on a
   source set of sentiment sentences, and made 80% sparse (global magnitude over the six encoder linears per block,
   one shot); saved as an ordinary checkpoint with its mask file: the "sparse pretrained model";
2. a small labelled sentiment set in GLUE's SST-2 layout is written (400 training, 200 dev sentences);
3. ``python -m sparse_transfer.glue`` transfers the sparse model with the paper's recipe: gradual unfreezing back
   to front, one epoch per stage, the LR rewound at every stage, the best epoch kept;
4. the best checkpoint is reloaded with plain transformers and every pruned weight is checked to be exactly 0;
5. ``python -m sparse_transfer.inspect`` prints its sparsity table;
6. a plot of the unfreezing stage, the learning rate, the sparsity and the dev accuracy is written (with matplotlib).

Everything goes under ``--output_dir`` (default ``runs/demo``); rerunning starts over.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import sys
import time
from pathlib import Path

POSITIVE = ["good", "great", "fine", "lovely", "superb", "moving", "funny", "clever", "warm", "bright"]
NEGATIVE = ["bad", "awful", "dull", "boring", "weak", "flat", "silly", "cold", "tired", "messy"]
FILLER = ["the", "a", "movie", "film", "story", "plot", "cast", "was", "is", "very", "quite", "and", "but", "it",
          "with", "of", "acting", "ending", "music", "really", "not", "so", "at", "times", "overall"]
SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]


def _sentence(rng: random.Random, label: int) -> str:
    """A sentence whose sentiment words mostly agree with ``label`` (one in twenty is a contrary word)."""
    words = [rng.choice(FILLER) for _ in range(rng.randint(4, 10))]
    for _ in range(rng.randint(1, 2)):
        pool = POSITIVE if (label == 1) != (rng.random() < 0.05) else NEGATIVE
        words.insert(rng.randrange(len(words) + 1), rng.choice(pool))
    return " ".join(words)


def write_data(root: Path, n_train: int = 400, n_dev: int = 200, seed: int = 0) -> Path:
    """SST-2 in GLUE's layout: ``root/SST-2/{train,dev}.tsv`` with a ``sentence\\tlabel`` header."""
    rng = random.Random(seed)
    folder = root / "SST-2"
    folder.mkdir(parents=True, exist_ok=True)
    for name, n in (("train", n_train), ("dev", n_dev)):
        rows = ["sentence\tlabel"]
        for _ in range(n):
            label = rng.randint(0, 1)
            rows.append(f"{_sentence(rng, label)} \t{label}")
        (folder / f"{name}.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return root


def _pretrain(model, tokenizer, n: int = 2000, epochs: int = 2, seed: int = 1) -> float:
    """A short dense "pretraining" on a source set of sentiment sentences (another sample than the transfer data), so
    that the sparse model has something to transfer; returns its training accuracy over the last epoch."""
    import torch

    rng = random.Random(seed)
    labels = [rng.randint(0, 1) for _ in range(n)]
    batch = tokenizer([_sentence(rng, y) for y in labels], padding=True, return_tensors="pt")
    targets = torch.tensor(labels)
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3)
    model.train()
    correct = 0
    for epoch in range(epochs):
        order = torch.randperm(n, generator=torch.Generator().manual_seed(seed + epoch))
        correct = 0
        for i in range(0, n, 32):
            idx = order[i:i + 32]
            out = model(input_ids=batch["input_ids"][idx], attention_mask=batch["attention_mask"][idx], labels=targets[idx])
            out.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            correct += int((out.logits.argmax(-1) == targets[idx]).sum())
    model.eval()
    return correct / n


def write_sparse_model(path: Path, sparsity: float = 0.8, seed: int = 0) -> Path:
    """A 4-block BERT (hidden 64) with a WordPiece tokenizer, briefly pretrained dense on a source sentiment set, then
    made ``sparsity`` sparse on the six encoder linears by global magnitude (one shot, no recovery)."""
    import torch
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    from .core import SparseMasks
    from .hub import save_sparse_pretrained

    path.mkdir(parents=True, exist_ok=True)
    vocab = SPECIAL + sorted(set(POSITIVE + NEGATIVE + FILLER))
    (path / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast(str(path / "vocab.txt"), do_lower_case=True)  # positional: v5 ignores vocab_file=
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=len(vocab), hidden_size=64, num_hidden_layers=4, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64, num_labels=2)
    model = BertForSequenceClassification(config)
    accuracy = _pretrain(model, tokenizer)
    print(f"   dense pretraining on 2000 source sentences: training accuracy {100 * accuracy:.1f}%")
    masks = SparseMasks.from_magnitude(model, sparsity, "global", targets="bert")
    masks.apply_()
    save_sparse_pretrained(model, path, masks=masks, processing_class=tokenizer,
                           card={"title": "Demo sparse BERT (random weights, built in-process)"})
    return path


def plot(run_dir: Path, out: Path) -> Path | None:
    """Stage, learning rate and sparsity per step, dev accuracy per epoch, stage changes marked."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("(matplotlib is not installed: no plot; pip install matplotlib)")
        return None
    history = json.loads((run_dir / "log_history.json").read_text())
    steps = [h for h in history if "learning_rate" in h]
    evals = [h for h in history if "eval_accuracy" in h]
    fig, axes = plt.subplots(4, 1, figsize=(7, 8), sharex=True)
    x = [h["step"] for h in steps]
    axes[0].step(x, [h["unfreeze_stage"] for h in steps], where="post")
    axes[0].set_ylabel("unfreezing stage")
    axes[1].plot(x, [h["learning_rate"] for h in steps])
    axes[1].set_ylabel("learning rate")
    axes[2].plot(x, [h["mask_sparsity"] for h in steps], label="mask")
    axes[2].plot(x, [h["sparsity"] for h in steps], "--", label="weights")
    axes[2].set_ylabel("sparsity")
    axes[2].legend()
    axes[3].plot([h["step"] for h in evals], [100 * h["eval_accuracy"] for h in evals], "o-")
    axes[3].set_ylabel("dev accuracy (%)")
    axes[3].set_xlabel("optimizer step")
    changes = [b["step"] for a, b in zip(steps, steps[1:]) if b["unfreeze_stage"] != a["unfreeze_stage"]]
    for ax in axes:
        for step in changes:
            ax.axvline(step, color="grey", lw=0.5, ls=":")
    fig.suptitle("sparse_transfer demo: gradual unfreezing with LR rewind, 80% sparse")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_transfer.demo", description=__doc__.split("\n")[0])
    parser.add_argument("--output_dir", "--output-dir", default="runs/demo", help="Where everything goes (default runs/demo).")
    args = parser.parse_args(argv)
    import os

    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the demo never needs the network
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    from safetensors.torch import load_file
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging as hf_logging

    from .core import MASKS_NAME, SparseMasks
    from .glue.__main__ import main as glue_main
    from .inspect import format_result, inspect_sparsity

    hf_logging.set_verbosity_error()
    start = time.time()
    root = Path(args.output_dir)
    shutil.rmtree(root, ignore_errors=True)
    print("1. A small BERT (4 blocks, hidden 64) built in-process, pretrained briefly, made 80% sparse, saved with its "
          "mask file")
    model_dir = write_sparse_model(root / "sparse-bert")
    print(f"   -> {model_dir}")
    print("2. A small labelled set in GLUE's SST-2 layout (400 train, 200 dev sentences)")
    data_dir = write_data(root / "glue")
    print(f"   -> {data_dir / 'SST-2'}")
    print("3. Gradual sparse transfer: python -m sparse_transfer.glue --task sst2 (one epoch per unfreezing stage, "
          "LR rewound at each)")
    run_dir = root / "sst2"
    code = glue_main(["--task", "sst2", "--model", str(model_dir), "--data_dir", str(data_dir),
                      "--output_dir", str(run_dir), "--learning_rate", "1e-3", "--per_device_train_batch_size", "16",
                      "--logging_steps", "1", "--disable_tqdm", "true", "--seed", "0"])
    if code != 0:
        return code
    print("4. Exact zeros: the best checkpoint reloaded with plain transformers")
    best = run_dir / "best"
    reloaded = AutoModelForSequenceClassification.from_pretrained(best)
    masks = SparseMasks.load(best / MASKS_NAME, reloaded)
    original = SparseMasks.load(model_dir / MASKS_NAME)
    same_mask = all(bool((original[n] == masks[n]).all()) for n in masks)
    weights = load_file(str(best / "model.safetensors"))
    nonzero = sum(int((weights[n][~m] != 0).sum()) for n, m in masks.items())
    print(f"   pruned weights: {masks.numel() - masks.num_kept():,}; non-zero after training: {nonzero}; "
          f"mask unchanged from the sparse model: {same_mask}")
    if nonzero or not same_mask:
        print("error: the demo lost zeros", file=sys.stderr)
        return 1
    print("5. python -m sparse_transfer.inspect", best)
    print("\n".join("   " + line for line in format_result(inspect_sparsity(str(best))).splitlines()))
    picture = plot(run_dir, root / "demo.png")
    if picture:
        print(f"6. Plot of stage, learning rate, sparsity and dev accuracy -> {picture}")
    results = json.loads((run_dir / "results.json").read_text())
    print(f"Done in {time.time() - start:.0f} s: dev accuracy {100 * results['best']['accuracy']:.1f} "
          f"(best epoch {results['best']['epoch']:g} of {results['epochs']:g}), "
          f"{results['sparsity']['checkpoint_target_sparsity']:.1%} sparse, exact: {results['sparsity']['exact']}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
