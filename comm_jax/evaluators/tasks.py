"""Downstream task kinds, read from the labels themselves, and their scores.

A label array `[examples]` of integers is a multiclass task (scored by balanced accuracy, and on request
by plain accuracy under the suffix `accuracy`, the metric of the MultiBench tables); a 2-D
integer array `[examples, labels]` of 0/1 is multi-label (macro and weighted F1); floats are a
regression target `[examples]` or `[examples, targets]` (mean squared error).
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import accuracy_score, balanced_accuracy_score, f1_score, mean_squared_error

MULTICLASS, MULTILABEL, REGRESSION = "multiclass", "multilabel", "regression"


def task_kind(labels: np.ndarray) -> str:
    labels = np.asarray(labels)
    if np.issubdtype(labels.dtype, np.floating):
        return REGRESSION
    if np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool:
        if labels.ndim == 1:
            return MULTICLASS
        if labels.ndim == 2:
            return MULTILABEL
    raise ValueError(f"labels of dtype {labels.dtype} and shape {labels.shape} are neither class ids [N], "
                     f"multi-label indicators [N, L] nor regression targets")


def score(kind: str, truth: np.ndarray, predicted: np.ndarray, accuracy: bool = False) -> dict[str, float]:
    """The task's metrics, keyed by suffix ("" for the headline number of a multiclass task, and with
    `accuracy` its plain accuracy under "accuracy")."""
    if kind == MULTICLASS:
        metrics = {"": float(balanced_accuracy_score(truth, predicted))}
        return metrics | ({"accuracy": float(accuracy_score(truth, predicted))} if accuracy else {})
    if kind == MULTILABEL:
        return {"f1_macro": float(f1_score(truth, predicted, average="macro", zero_division=0)),
                "f1_weighted": float(f1_score(truth, predicted, average="weighted", zero_division=0))}
    if kind == REGRESSION:
        return {"mse": float(mean_squared_error(truth, predicted))}
    raise ValueError(f"unknown task kind {kind!r}")


def selection_score(kind: str, truth: np.ndarray, predicted: np.ndarray) -> float:
    """One number to maximise when choosing a hyperparameter: balanced accuracy, macro F1 or -MSE."""
    metrics = score(kind, truth, predicted)
    return {MULTICLASS: metrics.get(""), MULTILABEL: metrics.get("f1_macro"),
            REGRESSION: -metrics.get("mse", 0.0)}[kind]


def metric_name(prefix: str, task: str, suffix: str) -> str:
    return f"{prefix}/{task}" + (f"/{suffix}" if suffix else "")
