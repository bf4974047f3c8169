"""What every command line shares: exit codes, one-line errors, and a Ctrl-C that leaves a resumable run.

Exit codes: 0 done; 1 trained and saved, but the push after training failed (the message says how to retry); 2 bad
input or a refused file (the message names the problem and the fix); 3 training stopped on a NaN or inf loss or weight
(nothing was saved over a good checkpoint); 130 interrupted (SIGINT), after which rerunning the same command resumes
from the last complete checkpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

import torch

EXIT_PUSH_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_NOT_FINITE = 3
EXIT_INTERRUPTED = 130

class TrainingStopped(RuntimeError):
    """Training stopped on a non-finite loss or weight, before anything was saved over a good checkpoint."""


#: For the interruption message: the optimizer step a running loop last finished (set by the training loops), and
#: whether the command was started with --overwrite (set by the commands once their arguments are parsed).
progress: dict[str, int | bool | None] = {"step": None, "overwrite": False}


def check_sequence_length(longest: int, flag: str, value: int, model_name: str, model, tokenizer=None) -> None:
    """Refuses sequences (of ``longest`` tokens, as ``flag value`` lets through) that ``model_name`` has no positions
    for, before anything is trained.

    The limit is the lowest of what its position embeddings hold (RoBERTa-family models reserve the first
    ``padding_idx + 1`` of them: 514 hold 512 tokens), ``max_position_embeddings`` of its config and its tokenizer's
    ``model_max_length``. transformers' run_glue.py silently shortens the length to the tokenizer's instead; past
    the positions, PyTorch would stop at the first long batch with an index error.

    Args:
        model: The model, possibly on the meta device (only its modules and config are read).
    """
    limits = []
    # Duck-typed: I-BERT's table is a QuantEmbedding, with a weight and a padding_idx but no num_embeddings.
    table = next((m for n, m in model.named_modules() if n.endswith("position_embeddings")
                  and isinstance(getattr(m, "weight", None), torch.Tensor) and m.weight.dim() == 2), None)
    positions = getattr(model.config, "max_position_embeddings", None)
    if table is not None:
        padding_idx = getattr(table, "padding_idx", None)
        reserved = 0 if padding_idx is None else padding_idx + 1
        limits.append((table.weight.shape[0] - reserved, "its position embeddings" + (
            f", {reserved} of them reserved for padding" if reserved else "")))
    if isinstance(positions, int) and positions > 0:  # also with a table: Nystromformer's has 2 rows more than it uses
        limits.append((positions, "max_position_embeddings in its config"))
    declared = getattr(tokenizer, "model_max_length", None)
    if isinstance(declared, int) and 0 < declared < 1_000_000:  # tokenizers without a limit declare 1e30
        limits.append((declared, "model_max_length of its tokenizer"))
    if not limits:
        return
    limit, source = min(limits)
    if longest > limit:
        raise ValueError(
            f"{flag} {value} gives sequences of {longest} tokens, longer than {model_name} takes: {limit} tokens "
            f"({source}). Pass {flag} {limit} or less."
        )


def run_command(body: Callable[[], int]) -> int:
    """Runs a command's body: bad input -> one line on stderr and exit code 2; Ctrl-C -> one line and exit code 130,
    no traceback."""
    progress["step"], progress["overwrite"] = None, False
    try:
        return body()
    except (ValueError, FileNotFoundError) as err:
        # Bad input (unknown task, bad data, a model folder without weights, a refused file, no network and no
        # local data): the message names the problem and the fix; a traceback would only hide it.
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except TrainingStopped as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_NOT_FINITE
    except RuntimeError as err:
        from .hub import PushFailed

        if not isinstance(err, PushFailed):
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_PUSH_FAILED
    except KeyboardInterrupt:
        where = f" at step {progress['step']}" if progress["step"] is not None else ""
        # With --overwrite the same command would start over again: the run resumes without it.
        rerun = "the same command without --overwrite" if progress["overwrite"] else "the same command"
        print(f"interrupted{where}; rerun {rerun} to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
