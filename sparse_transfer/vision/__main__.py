"""``python -m sparse_transfer.vision --model resnet50 --data /path/to/imagenet --recipe recipes/imagenet/...yaml``"""

from __future__ import annotations

import json
import logging
import sys

from .._cli import run_command
from .config import parse_args
from .train import train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        results = train(parse_args(argv))
        keys = ("final_eval_top1", "best_eval_top1", "final_train_loss", "final_eval_entropy", "final_sparsity")
        print(json.dumps({k: results[k] for k in keys}))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
