"""GLUE metrics: ``evaluate``'s GLUE metric when it is available locally, else the same formulas offline.

``evaluate.load("glue", task)`` needs its script, which it downloads from the Hub once and caches; when the cache
has it (load it once with network), :func:`glue_metrics` uses it. Otherwise the offline formulas here compute the
same numbers (evaluate's ``metrics/glue/glue.py``: sklearn's ``matthews_corrcoef`` and ``f1_score``, scipy's
``pearsonr`` and ``spearmanr``, accuracy as the mean of exact matches, with its casts: int64 labels, float32 STS-B
scores), so the numbers agree to the last bit without the network (``tests/glue/test_metrics.py`` compares both where
the Hub is reachable). The look-up never waits on the network: it reads the local cache only.

On top of the metric values, :func:`glue_score` gives one number per evaluation to choose the best epoch
and rank grid runs: the mean of the task's metrics (as the GLUE leaderboard averages F1/accuracy and
Pearson/Spearman, and MNLI's matched/mismatched accuracies).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import f1_score, matthews_corrcoef

from .tasks import GlueTask, get_task


_EVALUATE_METRICS: dict[str, object] = {}


def evaluate_metric(task_name: str):
    """``evaluate``'s GLUE metric for ``task_name`` from the local cache, or ``None`` (looked up once per task)."""
    if task_name not in _EVALUATE_METRICS:
        try:
            import evaluate
            from evaluate.utils.file_utils import DownloadConfig

            _EVALUATE_METRICS[task_name] = evaluate.load(
                "glue", task_name, download_config=DownloadConfig(local_files_only=True)
            )
        except Exception:  # not cached, evaluate missing, or its script fails to import: the offline formulas
            _EVALUATE_METRICS[task_name] = None
    return _EVALUATE_METRICS[task_name]


def glue_metrics(task: str | GlueTask, predictions, references, use_evaluate: bool = True) -> dict[str, float]:
    """The GLUE metric of ``task`` for one evaluation set: ``evaluate``'s when it is cached locally (and
    ``use_evaluate``), else the offline formulas that compute the same numbers.

    Args:
        task: Task name or :class:`GlueTask` (``mnli`` is scored per dev set, each with ``accuracy``).
        predictions: Predicted class ids, or predicted scores for STS-B.
        references: Gold class ids, or gold scores for STS-B.

    Returns:
        ``{"accuracy"}`` (sst2, mnli, qnli, rte, wnli), ``{"accuracy", "f1"}`` (mrpc, qqp),
        ``{"matthews_correlation"}`` (cola) or ``{"pearson", "spearmanr"}`` (stsb), as Python floats.
    """
    task = get_task(task) if isinstance(task, str) else task
    dtype = np.float32 if task.is_regression else np.int64
    preds = np.asarray(predictions).astype(dtype).reshape(-1)
    labels = np.asarray(references).astype(dtype).reshape(-1)
    if preds.shape != labels.shape:
        raise ValueError(f"{preds.size} predictions for {labels.size} references.")
    if preds.size == 0:
        raise ValueError("No predictions to score.")
    metric = evaluate_metric(task.name) if use_evaluate else None
    if metric is not None:
        return {k: float(v) for k, v in metric.compute(predictions=preds, references=labels).items()}
    if task.name == "cola":
        return {"matthews_correlation": float(matthews_corrcoef(labels, preds))}
    if task.name == "stsb":
        return {"pearson": float(pearsonr(preds, labels)[0]), "spearmanr": float(spearmanr(preds, labels)[0])}
    accuracy = float((preds == labels).mean())
    if task.name in ("mrpc", "qqp"):
        return {"accuracy": accuracy, "f1": float(f1_score(y_true=labels, y_pred=preds))}
    return {"accuracy": accuracy}


def glue_score(
    task: str | GlueTask, metrics: Mapping[str, float], prefix: str = "", keys: Sequence[str] | None = None
) -> float:
    """The mean of the task's metrics: ``metrics[prefix + key]`` for ``key`` in ``keys``.

    ``keys`` defaults to :attr:`GlueTask.metric_keys` (MNLI: ``matched_accuracy``, ``mismatched_accuracy``);
    pass :func:`metric_keys` of the evaluation sets actually used.
    """
    task = get_task(task) if isinstance(task, str) else task
    values = [float(metrics[prefix + key]) for key in (task.metric_keys if keys is None else keys)]
    return float(np.mean(values))


def metric_keys(task: GlueTask, eval_names: Sequence[str]) -> list[str]:
    """The metric keys of one evaluation over ``eval_names``: the bare metrics for one set, else prefixed by set."""
    if len(eval_names) == 1:
        return list(task.metrics)
    return [f"{name}_{metric}" for name in eval_names for metric in task.metrics]


def predictions_from_logits(task: GlueTask, logits) -> np.ndarray:
    """Class ids (argmax) or, for the regression task, the single output."""
    logits = np.asarray(logits[0] if isinstance(logits, tuple) else logits)
    if task.is_regression:
        return logits.reshape(-1)
    return logits.argmax(axis=-1)


def make_compute_metrics(task: GlueTask):
    """A ``compute_metrics`` for ``transformers.Trainer`` over one evaluation set of ``task``."""

    def compute_metrics(eval_prediction) -> dict[str, float]:
        predictions = predictions_from_logits(task, eval_prediction.predictions)
        return glue_metrics(task, predictions, eval_prediction.label_ids)

    return compute_metrics
