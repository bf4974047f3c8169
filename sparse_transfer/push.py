"""``python -m sparse_transfer.push DIR USER/NAME [--private]``: publish a saved sparse checkpoint folder.

The same push as the commands' ``--push-to-hub``, for retrying one that failed after training or publishing a folder
written by ``save_sparse_pretrained`` / ``SparseTrainer.save_model``: the weights are checked against the folder's
mask file, only the allow-listed files go up (:func:`~sparse_transfer.hub.files_to_upload`), and a file holding an
access token stops it. The token comes from ``HF_TOKEN`` or ``huggingface-cli login`` and is never printed.
"""

from __future__ import annotations

import argparse
import sys

from ._cli import run_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sparse_transfer.push", description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", help="A folder with safetensors weights and sparse_masks.safetensors.")
    parser.add_argument("repo_id", help="Hub repository, USER/NAME; created if missing.")
    parser.add_argument("--private", action="store_true", help="Create the repository as private.")
    args = parser.parse_args(argv)

    def body() -> int:
        from .hub import check_push_target, push_or_explain

        check_push_target(args.repo_id, flag="repository")
        print(push_or_explain(args.folder, args.repo_id, private=args.private or None))
        return 0

    return run_command(body)


if __name__ == "__main__":
    sys.exit(main())
