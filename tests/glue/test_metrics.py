"""GLUE metrics against their definitions, computed here from first principles on random data.

``evaluate.load("glue")`` needs the Hub, so the reference is the formulas of evaluate's GLUE metric
(accuracy = mean of exact matches; F1 of the positive class; Matthews correlation from the confusion
matrix; Pearson and Spearman with average ranks for ties, on float32 values), written out in numpy.
"""

import math

import numpy as np
import pytest

from sparse_transfer.glue import GLUE_TASKS, get_task, glue_metrics, glue_score


def ref_f1(y, p):
    tp = np.sum((p == 1) & (y == 1))
    fp = np.sum((p == 1) & (y == 0))
    fn = np.sum((p == 0) & (y == 1))
    return 0.0 if tp == 0 else 2 * tp / (2 * tp + fp + fn)


def ref_mcc(y, p):
    tp = np.sum((p == 1) & (y == 1))
    tn = np.sum((p == 0) & (y == 0))
    fp = np.sum((p == 1) & (y == 0))
    fn = np.sum((p == 0) & (y == 1))
    den = math.sqrt(float((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn)))
    return 0.0 if den == 0 else float(tp * tn - fp * fn) / den


def ref_pearson(x, y):
    x, y = x.astype(np.float64), y.astype(np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    return float((xc * yc).sum() / math.sqrt((xc**2).sum() * (yc**2).sum()))


def ranks(a):
    order = np.argsort(a, kind="mergesort")
    r = np.empty(len(a), dtype=np.float64)
    r[order] = np.arange(1, len(a) + 1)
    for value in np.unique(a):  # ties share their average rank
        tie = a == value
        r[tie] = r[tie].mean()
    return r


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("task", sorted(GLUE_TASKS))
def test_metrics_match_the_formulas(task, seed):
    rng = np.random.default_rng(seed)
    t = get_task(task)
    n = int(rng.integers(20, 200))
    if t.is_regression:
        y = np.round(rng.uniform(0, 5, n), 1)  # rounded: ties exercise Spearman's average ranks
        p = np.round(y + rng.normal(0, 1.5, n), 1)
    else:
        y = rng.integers(0, t.num_labels, n)
        p = np.where(rng.random(n) < 0.6, y, rng.integers(0, t.num_labels, n))
    got = glue_metrics(task, p, y)
    assert all(type(v) is float for v in got.values())
    if task == "cola":
        assert got.keys() == {"matthews_correlation"}
        assert got["matthews_correlation"] == pytest.approx(ref_mcc(y, p), abs=1e-12)
    elif task == "stsb":
        assert got.keys() == {"pearson", "spearmanr"}
        y32, p32 = y.astype(np.float32), p.astype(np.float32)  # evaluate casts STS-B values to float32
        assert got["pearson"] == pytest.approx(ref_pearson(p32, y32), abs=1e-6)
        assert got["spearmanr"] == pytest.approx(ref_pearson(ranks(p32), ranks(y32)), abs=1e-12)
    elif task in ("mrpc", "qqp"):
        assert got.keys() == {"accuracy", "f1"}
        assert got["accuracy"] == float(np.mean(p == y))
        assert got["f1"] == pytest.approx(ref_f1(y, p), abs=1e-12)
    else:
        assert got == {"accuracy": float(np.mean(p == y))}


def test_known_values():
    assert glue_metrics("rte", [0, 1, 1, 0], [0, 1, 0, 0]) == {"accuracy": 0.75}
    assert glue_metrics("mrpc", [1, 1, 0, 0], [1, 0, 1, 0]) == {"accuracy": 0.5, "f1": 0.5}
    assert glue_metrics("cola", [1, 0, 1, 0], [1, 0, 1, 0]) == {"matthews_correlation": 1.0}
    assert glue_metrics("cola", [1, 0, 1, 0], [0, 1, 0, 1]) == {"matthews_correlation": -1.0}
    stsb = glue_metrics("stsb", [1.0, 2.0, 3.0], [2.0, 4.0, 6.5])
    assert stsb["spearmanr"] == pytest.approx(1.0) and stsb["pearson"] < 1.0


def test_score_is_the_mean_of_the_task_metrics():
    assert glue_score("mrpc", {"accuracy": 0.8, "f1": 0.9}) == pytest.approx(0.85)
    mnli = get_task("mnli")
    assert mnli.metric_keys == ("matched_accuracy", "mismatched_accuracy")
    assert glue_score(mnli, {"eval_matched_accuracy": 0.8, "eval_mismatched_accuracy": 0.7}, "eval_") == pytest.approx(0.75)


def test_bad_metric_input():
    with pytest.raises(ValueError, match="3 predictions for 2 references"):
        glue_metrics("rte", [0, 1, 1], [0, 1])
    with pytest.raises(ValueError, match="Unknown GLUE task 'glue'"):
        glue_metrics("glue", [0], [0])


def test_the_offline_formulas_are_used_when_evaluate_has_no_cached_metric(monkeypatch):
    from sparse_transfer.glue import metrics

    monkeypatch.setattr(metrics, "_EVALUATE_METRICS", {})
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert metrics.evaluate_metric("rte") is None  # nothing cached on this machine: no wait, no error
    assert glue_metrics("rte", [0, 1, 1], [0, 1, 0]) == {"accuracy": 2 / 3}


class _Recorder:
    def __init__(self):
        self.calls = 0

    def compute(self, predictions, references):
        self.calls += 1
        return {"accuracy": 0.25}


def test_a_cached_evaluate_metric_is_used(monkeypatch):
    from sparse_transfer.glue import metrics

    recorder = _Recorder()
    monkeypatch.setattr(metrics, "_EVALUATE_METRICS", {"rte": recorder})
    assert glue_metrics("rte", [0, 1], [0, 1]) == {"accuracy": 0.25} and recorder.calls == 1
    assert glue_metrics("rte", [0, 1], [0, 1], use_evaluate=False) == {"accuracy": 1.0}


@pytest.mark.hub
@pytest.mark.parametrize("task", ["cola", "sst2", "mrpc", "stsb", "qqp", "mnli", "qnli", "rte", "wnli"])
def test_evaluate_and_the_offline_formulas_agree(task):
    """Where the Hub is reachable: evaluate's own GLUE metric and the offline formulas give the same numbers."""
    import evaluate

    metric = evaluate.load("glue", task)
    rng = np.random.default_rng(0)
    if task == "stsb":
        preds, labels = rng.uniform(0, 5, 200).astype(np.float32), rng.uniform(0, 5, 200).astype(np.float32)
    else:
        classes = 3 if task == "mnli" else 2
        preds, labels = rng.integers(0, classes, 200), rng.integers(0, classes, 200)
    expected = {k: float(v) for k, v in metric.compute(predictions=preds, references=labels).items()}
    assert glue_metrics(task, preds, labels, use_evaluate=False) == expected
