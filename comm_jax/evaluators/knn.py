"""k-nearest-neighbour evaluation of frozen Z: the training features are the memory bank, each test
feature takes the labels of its k most cosine-similar bank entries.

Prediction: class labels by majority vote (a tie goes to the smallest label), multi-label indicators
by a per-label majority, regression targets by the mean. Scores as the linear probe's (balanced
accuracy for class labels, and plain accuracy as `<name>/<task>/accuracy` with `accuracy=True`).
"""

from __future__ import annotations

import numpy as np

from comm_jax.evaluators import Evaluator, with_task_means
from comm_jax.evaluators.tasks import MULTICLASS, MULTILABEL, metric_name, score, task_kind


def _unit(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def nearest_neighbours(bank: np.ndarray, queries: np.ndarray, k: int, chunk: int = 1024) -> np.ndarray:
    """Indices `[queries, k]` of the k bank rows of highest cosine similarity to each query row,
    most similar first. bank `[n, dim]`, queries `[m, dim]`."""
    if not 0 < k <= len(bank):
        raise ValueError(f"k={k} must be in [1, {len(bank)}] (the memory bank size)")
    bank = _unit(bank)
    out = np.empty((len(queries), k), np.int64)
    for start in range(0, len(queries), chunk):
        sims = _unit(queries[start:start + chunk]) @ bank.T                 # [chunk, n]
        top = np.argpartition(-sims, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(sims, top, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def vote(bank_labels: np.ndarray, indices: np.ndarray) -> np.ndarray:
    """Predictions from the labels of each query's neighbours (`indices` `[m, k]` into the bank)."""
    bank_labels = np.asarray(bank_labels)
    neighbours = bank_labels[indices]                                         # [m, k, ...]
    kind = task_kind(bank_labels)
    if kind == MULTICLASS:
        classes, codes = np.unique(neighbours, return_inverse=True)
        votes = np.zeros((len(neighbours), len(classes)), np.int64)
        np.add.at(votes, (np.arange(len(neighbours))[:, None], codes.reshape(neighbours.shape)), 1)
        return classes[np.argmax(votes, axis=1)]                            # first maximum: smallest label
    if kind == MULTILABEL:
        return (neighbours.mean(axis=1) > 0.5).astype(bank_labels.dtype)
    return neighbours.mean(axis=1)


def knn_predict(bank: np.ndarray, bank_labels: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """Predicted labels of `queries` `[m, dim]` from their k nearest bank entries (see module doc)."""
    return vote(bank_labels, nearest_neighbours(bank, queries, k))


class KNN(Evaluator):
    """`<name>/<task>` for each of `config.evals.tasks`, bank = train split, queries = test split.
    `features`: "joint" (the fused Z of `modalities`) or "concat" (each modality's own Z, concatenated);
    `accuracy`: class labels also scored by plain accuracy."""

    DEFAULTS = dict(k=20, modalities=(), features="joint", accuracy=False)

    def __init__(self, name, args, evals):
        super().__init__(name, args, evals)
        if int(self.args["k"]) < 1:
            raise ValueError(f"config.evals.evaluators.{name}.k must be >= 1, got {self.args['k']}")

    def evaluate(self, ctx) -> dict[str, float]:
        train, test = self.evals.train_split, self.evals.test_split
        bank, queries = self.features(ctx, train), self.features(ctx, test)
        indices = nearest_neighbours(bank, queries, int(self.args["k"]))     # shared by every task
        metrics = {}
        for task, key in dict(self.evals.tasks).items():
            bank_labels, truth = self.labels(ctx, train, key), self.labels(ctx, test, key)
            predicted = vote(bank_labels, indices)
            kind = task_kind(bank_labels)
            scores = score(kind, truth, predicted, bool(self.args["accuracy"]))
            metrics.update({metric_name(self.name, task, s): v for s, v in scores.items()})
        return with_task_means(metrics, self.name, self.evals.task_means)

