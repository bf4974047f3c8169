"""``python -m sparse_transfer.upstream --model DIR --text train.txt --eval-text test.txt --sparsity 0.9 --output-dir runs/x``"""

from __future__ import annotations

import logging
import os
import sys

from .._cli import progress, run_command
from .._rundir import RESULTS_NAME, summary_line
from .config import parse_args
from .run import run_upstream


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        args = parse_args(argv)
        progress["overwrite"] = args.overwrite
        if args.push_to_hub:
            from ..hub import check_push_target

            check_push_target(args.push_to_hub)  # before any training: fails in seconds, not hours
        results = run_upstream(args)
        final, floor = results["final"], results["magnitude_only"]
        parts = [f"{results['sparsity']:.2%} sparse after {results['steps']} steps"]
        if "heldout_hidden_loss" in final:
            parts.append(f"held-out hidden loss {final['heldout_hidden_loss']:.4f} (magnitude only "
                         f"{floor.get('heldout_hidden_loss', float('nan')):.4f})")
        if "embedding_cosine" in final:
            parts.append(f"embedding cosine {final['embedding_cosine']:.4f}")
        parts.append(f"model {results['output_dir']}")
        if args.push_to_hub:
            from ..hub import push_or_explain

            parts.append("pushed to " + push_or_explain(results["output_dir"], args.push_to_hub,
                                                        private=args.hub_private_repo or None))
        print(summary_line("upstream", parts, os.path.join(results["output_dir"], RESULTS_NAME)))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
