"""``python -m sparse_transfer.upstream --model DIR --text train.txt --eval-text test.txt --sparsity 0.9 --output-dir runs/x``"""

from __future__ import annotations

import json
import logging
import sys

from .._cli import run_command
from .config import parse_args
from .run import run_upstream


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        results = run_upstream(parse_args(argv))
        summary = {"output_dir": results["output_dir"], "sparsity": round(results["sparsity"], 6), "steps": results["steps"],
                   **{f"final_{k}": round(v, 6) for k, v in results["final"].items()},
                   **{f"magnitude_only_{k}": round(v, 6) for k, v in results["magnitude_only"].items()}}
        print(json.dumps(summary))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
