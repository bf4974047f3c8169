"""``python -m sparse_transfer.glue``: sparse transfer on GLUE with SparseTrainer (arXiv 2308.02060, section 4.3).

Public pieces for scripts and notebooks: the task table, offline GLUE metrics identical to ``evaluate``'s,
the data loaders (Hub, GLUE's TSV files, csv/json) and the run/grid driver.
"""

from .config import DEFAULT_MODEL, GlueArguments, parse_args, resolve_epochs
from .data import GlueData, GlueDataError, load_glue_data, read_glue_tsv, tokenize_glue
from .metrics import glue_metrics, glue_score
from .run import GlueModelError, run_glue, summarize_grid
from .tasks import GLUE_TASKS, GlueTask, get_task

__all__ = [
    "DEFAULT_MODEL",
    "GLUE_TASKS",
    "GlueArguments",
    "GlueData",
    "GlueDataError",
    "GlueModelError",
    "GlueTask",
    "get_task",
    "glue_metrics",
    "glue_score",
    "load_glue_data",
    "parse_args",
    "read_glue_tsv",
    "resolve_epochs",
    "run_glue",
    "summarize_grid",
    "tokenize_glue",
]
