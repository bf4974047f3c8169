"""``python -m sparse_transfer.glue --task rte [--model PATH] [--data_dir DIR] [--grid] [--push-to-hub REPO]``"""

from __future__ import annotations

import logging
import sys

from .config import parse_args
from .run import run_glue


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        glue_args, training_args, recipe_file = parse_args(argv)
        run_glue(glue_args, training_args, recipe_file)
    except (ValueError, FileNotFoundError) as err:
        # Bad input (unknown task, bad data, a model folder without weights, no network and no local data): the
        # message names the problem and the fix; a traceback would only hide it.
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
