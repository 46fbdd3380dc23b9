"""GLUE metrics written out in numpy.

Why by hand: the hub's metric scripts (``evaluate.load("glue", ...)``) are fetched from
the network at run time, and the training machines must run offline. The formulas are
short, and the tests check each one against scikit-learn / scipy.

Every function accepts numpy arrays, torch tensors or Python sequences. Classification
metrics take *predicted class ids* (not logits); :func:`glue_metrics` takes either class
ids or logits and does the argmax itself.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Tuple

import numpy as np

__all__ = [
    "accuracy",
    "f1_binary",
    "matthews_corrcoef",
    "pearson",
    "spearman",
    "rankdata_average",
    "glue_metrics",
    "GLUE_METRIC_KEYS",
    "PRIMARY_METRIC",
]

#: Headline metric per GLUE task: the number GLUE leaderboards and papers report
#: (for MRPC/QQP papers quote F1 and accuracy; F1 is the one that moves most with pruning).
PRIMARY_METRIC: Dict[str, str] = {
    "cola": "matthews",
    "sst2": "accuracy",
    "mrpc": "f1",
    "stsb": "pearson",
    "qqp": "f1",
    "mnli": "accuracy",
    "mnli_mismatched": "accuracy",
    "qnli": "accuracy",
    "rte": "accuracy",
    "wnli": "accuracy",
}

#: Exactly the keys :func:`glue_metrics` returns for each task.
GLUE_METRIC_KEYS: Dict[str, Tuple[str, ...]] = {
    "cola": ("matthews",),
    "sst2": ("accuracy",),
    "mrpc": ("accuracy", "f1", "combined"),
    "stsb": ("pearson", "spearmanr", "combined"),
    "qqp": ("accuracy", "f1", "combined"),
    "mnli": ("accuracy",),
    "mnli_mismatched": ("accuracy",),
    "qnli": ("accuracy",),
    "rte": ("accuracy",),
    "wnli": ("accuracy",),
}

_ALIASES = {
    "sst-2": "sst2",
    "sts-b": "stsb",
    "mnli-m": "mnli",
    "mnli_matched": "mnli",
    "mnli-mm": "mnli_mismatched",
    "mnli_mm": "mnli_mismatched",
}


def _np(x: Any) -> np.ndarray:
    """Converts tensors (any device/dtype) and sequences to a flat-or-2D numpy array."""
    if hasattr(x, "detach"):  # torch.Tensor without importing torch here
        x = x.detach().float().cpu().numpy() if x.is_floating_point() else x.detach().cpu().numpy()
    return np.asarray(x)


def _check_same_length(predictions: np.ndarray, labels: np.ndarray) -> None:
    if predictions.shape[0] != labels.shape[0]:
        raise ValueError(
            f"predictions has {predictions.shape[0]} items but labels has {labels.shape[0]}; "
            "pass one prediction per label"
        )
    if labels.shape[0] == 0:
        raise ValueError("empty predictions/labels: a metric over zero examples is undefined")


def accuracy(predictions: Any, labels: Any) -> float:
    """Fraction of exact matches between predicted class ids and labels."""
    p, y = _np(predictions).reshape(-1), _np(labels).reshape(-1)
    _check_same_length(p, y)
    return float(np.mean(p == y))


def f1_binary(predictions: Any, labels: Any, positive: int = 1) -> float:
    """F1 of the ``positive`` class (GLUE uses class 1 for MRPC/QQP: paraphrase/duplicate).

    Returns 0.0 when there are no true positives, as sklearn does with ``zero_division=0``.
    """
    p, y = _np(predictions).reshape(-1), _np(labels).reshape(-1)
    _check_same_length(p, y)
    tp = float(np.sum((p == positive) & (y == positive)))
    fp = float(np.sum((p == positive) & (y != positive)))
    fn = float(np.sum((p != positive) & (y == positive)))
    denom = 2.0 * tp + fp + fn
    return 0.0 if denom == 0.0 else 2.0 * tp / denom


def matthews_corrcoef(predictions: Any, labels: Any) -> float:
    """Matthews correlation, multiclass form (Gorodkin's R_K), equal to the binary MCC for 2 classes.

    Computed from the confusion matrix; returns 0.0 when either side is constant (the
    denominator vanishes), matching sklearn. CoLA's official metric.
    """
    p, y = _np(predictions).reshape(-1), _np(labels).reshape(-1)
    _check_same_length(p, y)
    classes, inv = np.unique(np.concatenate([y, p]), return_inverse=True)
    k = len(classes)
    y_idx, p_idx = inv[: len(y)], inv[len(y):]
    cm = np.zeros((k, k), dtype=np.float64)
    np.add.at(cm, (y_idx, p_idx), 1.0)
    t_sum = cm.sum(axis=1)  # true count per class
    p_sum = cm.sum(axis=0)  # predicted count per class
    n = cm.sum()
    correct = np.trace(cm)
    cov_yp = correct * n - np.dot(t_sum, p_sum)
    cov_pp = n * n - np.dot(p_sum, p_sum)
    cov_yy = n * n - np.dot(t_sum, t_sum)
    denom = cov_yy * cov_pp
    if denom == 0.0:
        return 0.0
    return float(cov_yp / math.sqrt(denom))


def pearson(predictions: Any, labels: Any) -> float:
    """Pearson correlation coefficient; NaN when either input is constant (scipy also returns NaN)."""
    x = _np(predictions).astype(np.float64).reshape(-1)
    y = _np(labels).astype(np.float64).reshape(-1)
    _check_same_length(x, y)
    xm, ym = x - x.mean(), y - y.mean()
    denom = math.sqrt(float(np.dot(xm, xm)) * float(np.dot(ym, ym)))
    if denom == 0.0:
        return float("nan")
    r = float(np.dot(xm, ym)) / denom
    return max(-1.0, min(1.0, r))


def rankdata_average(x: Any) -> np.ndarray:
    """1-based ranks with tied values given the mean of the ranks they span (scipy's 'average')."""
    a = _np(x).astype(np.float64).reshape(-1)
    order = np.argsort(a, kind="mergesort")
    sorted_a = a[order]
    ranks = np.empty(len(a), dtype=np.float64)
    # Boundaries of runs of equal values in sorted order.
    new_run = np.concatenate([[True], sorted_a[1:] != sorted_a[:-1]])
    run_starts = np.flatnonzero(new_run)
    run_ends = np.concatenate([run_starts[1:], [len(a)]])
    for s, e in zip(run_starts, run_ends):
        # positions s..e-1 hold ranks s+1..e; their mean is (s+1+e)/2
        ranks[order[s:e]] = (s + 1 + e) / 2.0
    return ranks


def spearman(predictions: Any, labels: Any) -> float:
    """Spearman rank correlation: Pearson of average ranks, so ties are handled like scipy."""
    x, y = _np(predictions).reshape(-1), _np(labels).reshape(-1)
    _check_same_length(x, y)
    return pearson(rankdata_average(x), rankdata_average(y))


def _normalize_task(task_name: str) -> str:
    key = task_name.lower().strip()
    key = _ALIASES.get(key, key)
    if key not in GLUE_METRIC_KEYS:
        raise ValueError(f"unknown GLUE task {task_name!r}; use one of {sorted(GLUE_METRIC_KEYS)}")
    return key


def glue_metrics(task_name: str, predictions: Any, labels: Any) -> Dict[str, float]:
    """The official GLUE metric set for ``task_name``.

    ``predictions`` may be class ids (shape [N]) or logits (shape [N, C], argmax taken);
    for STS-B it is the regression output, shape [N] or [N, 1]. MRPC/QQP also report
    ``combined`` = mean(accuracy, f1) and STS-B ``combined`` = mean(pearson, spearmanr),
    which is how the GLUE leaderboard folds two numbers into one task score.
    """
    task = _normalize_task(task_name)
    p, y = _np(predictions), _np(labels).reshape(-1)
    if task == "stsb":
        p = p.reshape(-1)
        out = {"pearson": pearson(p, y), "spearmanr": spearman(p, y)}
        out["combined"] = (out["pearson"] + out["spearmanr"]) / 2.0
        return out
    if p.ndim == 2:
        p = p.argmax(axis=-1)
    elif p.ndim != 1:
        raise ValueError(f"predictions for {task} must be class ids [N] or logits [N, C], got shape {p.shape}")
    if task == "cola":
        return {"matthews": matthews_corrcoef(p, y)}
    if task in ("mrpc", "qqp"):
        acc, f1 = accuracy(p, y), f1_binary(p, y)
        return {"accuracy": acc, "f1": f1, "combined": (acc + f1) / 2.0}
    return {"accuracy": accuracy(p, y)}
