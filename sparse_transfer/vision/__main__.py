"""``python -m sparse_transfer.vision --model resnet50 --data /path/to/imagenet --recipe recipes/imagenet/...yaml``"""

from __future__ import annotations

import json
import logging
import sys

from .config import parse_args
from .train import train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        args = parse_args(argv)
        results = train(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary = {k: results[k] for k in ("final_eval_top1", "best_eval_top1", "final_train_loss", "final_eval_entropy", "final_sparsity")}
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
