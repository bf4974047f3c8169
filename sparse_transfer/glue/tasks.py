"""The nine GLUE tasks: columns, labels, metrics, and where GLUE's own TSV files keep them.

One :class:`GlueTask` per task is the single table every other module reads. Column names are those of
the Hugging Face ``nyu-mll/glue`` dataset; ``tsv`` says how the same data is laid out in the files that
GLUE's download script (``download_glue_data.py``) writes, so both sources give the same examples.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class TsvLayout:
    """Where a task's fields are in GLUE's TSV files.

    Attributes:
        directory: Folder name in GLUE's layout (``RTE``, ``CoLA``, ...).
        header: Whether the files start with a header row (all but CoLA).
        text_columns: Header names (or, without a header, 0-based positions) of the one or two texts.
        label_column: Header name (or position) of the label.
        num_columns: Without a header: the exact number of fields per row.
        dev_files: Dev file name per evaluation split.
    """

    directory: str
    header: bool
    text_columns: tuple[str | int, ...]
    label_column: str | int
    num_columns: int | None = None
    dev_files: tuple[tuple[str, str], ...] = (("validation", "dev.tsv"),)


@dataclass(frozen=True)
class GlueTask:
    """One GLUE task.

    Attributes:
        name: Configuration name in ``nyu-mll/glue`` (``rte``, ``mnli``...).
        text_columns: The one or two text columns (Hub column names).
        label_names: Class names in label-id order; empty for the regression task (STS-B).
        metrics: Metric names as the ``evaluate`` GLUE metric returns them.
        eval_splits: Hub split per evaluation set name (MNLI has two).
        tsv: The layout of GLUE's own TSV files.
    """

    name: str
    text_columns: tuple[str, ...]
    label_names: tuple[str, ...]
    metrics: tuple[str, ...]
    tsv: TsvLayout
    eval_splits: tuple[tuple[str, str], ...] = (("validation", "validation"),)

    @property
    def is_regression(self) -> bool:
        return not self.label_names

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)

    @property
    def eval_names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.eval_splits)

    @property
    def metric_keys(self) -> tuple[str, ...]:
        """The metric keys of one evaluation: ``accuracy``, or ``matched_accuracy``/``mismatched_accuracy`` for MNLI."""
        if len(self.eval_splits) == 1:
            return self.metrics
        return tuple(f"{split}_{metric}" for split, _ in self.eval_splits for metric in self.metrics)


# STS-B scores are similarities on GLUE's 0-5 scale.
STSB_RANGE = (0.0, 5.0)

GLUE_TASKS: dict[str, GlueTask] = {
    task.name: task
    for task in [
        GlueTask(
            "cola", ("sentence",), ("unacceptable", "acceptable"), ("matthews_correlation",),
            # No header: source, label, original annotation, sentence.
            TsvLayout("CoLA", header=False, text_columns=(3,), label_column=1, num_columns=4),
        ),
        GlueTask(
            "sst2", ("sentence",), ("negative", "positive"), ("accuracy",),
            TsvLayout("SST-2", header=True, text_columns=("sentence",), label_column="label"),
        ),
        GlueTask(
            "mrpc", ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"),
            # msr_paraphrase layout: Quality, #1 ID, #2 ID, #1 String, #2 String (the file starts with a BOM).
            TsvLayout("MRPC", header=True, text_columns=("#1 String", "#2 String"), label_column="Quality"),
        ),
        GlueTask(
            "stsb", ("sentence1", "sentence2"), (), ("pearson", "spearmanr"),
            # index, genre, filename, year, old_index, source1, source2, sentence1, sentence2, score.
            TsvLayout("STS-B", header=True, text_columns=("sentence1", "sentence2"), label_column="score"),
        ),
        GlueTask(
            "qqp", ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"),
            TsvLayout("QQP", header=True, text_columns=("question1", "question2"), label_column="is_duplicate"),
        ),
        GlueTask(
            "mnli", ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",),
            TsvLayout(
                "MNLI", header=True, text_columns=("sentence1", "sentence2"), label_column="gold_label",
                dev_files=(("matched", "dev_matched.tsv"), ("mismatched", "dev_mismatched.tsv")),
            ),
            eval_splits=(("matched", "validation_matched"), ("mismatched", "validation_mismatched")),
        ),
        GlueTask(
            "qnli", ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",),
            TsvLayout("QNLI", header=True, text_columns=("question", "sentence"), label_column="label"),
        ),
        GlueTask(
            "rte", ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",),
            TsvLayout("RTE", header=True, text_columns=("sentence1", "sentence2"), label_column="label"),
        ),
        GlueTask(
            "wnli", ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",),
            TsvLayout("WNLI", header=True, text_columns=("sentence1", "sentence2"), label_column="label"),
        ),
    ]
}

# Names users type for the same task (GLUE's folder names, run_glue's names).
_ALIASES = {"sst-2": "sst2", "sts-b": "stsb", "mnli-m": "mnli", "mnli_matched": "mnli"}


def get_task(name: str) -> GlueTask:
    """Looks a task up by its ``nyu-mll/glue`` name (case-insensitive; GLUE folder names such as ``SST-2`` too).

    Raises:
        ValueError: for an unknown task, listing the known ones.
    """
    key = str(name).strip().lower()
    key = _ALIASES.get(key, key)
    if key not in GLUE_TASKS:
        raise ValueError(f"Unknown GLUE task {name!r}: use one of {', '.join(GLUE_TASKS)}.")
    return GLUE_TASKS[key]
