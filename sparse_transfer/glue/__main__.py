"""``python -m sparse_transfer.glue --task rte [--model PATH] [--data_dir DIR] [--grid] [--push-to-hub REPO]``"""

from __future__ import annotations

import logging
import sys

from .._cli import progress, run_command
from .config import parse_args
from .run import run_glue


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    def body() -> int:
        glue_args, training_args, recipe_file = parse_args(argv)
        progress["overwrite"] = glue_args.overwrite
        run_glue(glue_args, training_args, recipe_file)
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
