"""``python -m sparse_transfer.vision --model resnet50 --data /path/to/imagenet --recipe recipes/imagenet/...yaml``"""

from __future__ import annotations

import logging
import os
import sys

from .._cli import progress, run_command
from .._rundir import RESULTS_NAME, summary_line
from .config import parse_args
from .train import train


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        args = parse_args(argv)
        progress["overwrite"] = args.overwrite
        results = train(args)
        parts = [f"{args.model} {args.method}"]
        if results.get("best_eval_top1") is not None:
            parts.append(f"top-1 {100 * results['best_eval_top1']:.2f} (best epoch {results['best_epoch']} of "
                         f"{results['epochs']}), last {100 * results['final_eval_top1']:.2f}")
        if results.get("final_sparsity") is not None:
            parts.append(f"{results['final_sparsity']:.2%} sparse")
        if not results.get("complete"):
            parts.append("stopped early (--stop_after_epoch): rerun the same command to continue")
        if results.get("hub_url"):
            parts.append(f"pushed to {results['hub_url']}")
        print(summary_line("vision", parts, os.path.join(args.output_dir, RESULTS_NAME)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
