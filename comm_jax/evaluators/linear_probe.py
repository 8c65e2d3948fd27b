"""Linear probe on frozen, standardised Z: multinomial logistic regression (scikit-learn, L-BFGS) for
class labels, one-vs-rest logistic regression for multi-label indicators, ridge regression for real
targets. The inverse regularisation C is swept on a stratified held-out part of the training
features, then the probe is refit on all of them with the best C and scored on the test features.

Class labels are scored by balanced accuracy. The loss is unweighted by default, as the CoMM
reference's probe; `class_weight="balanced"` weights each class by the inverse of its frequency, so
the loss the probe minimises matches the balanced score. On a rare class (Trifeatures' synergy
label: 10% positives) an unweighted probe may predict the majority class only and score exactly
chance even when the features carry the signal.
"""

from __future__ import annotations

import dataclasses
import logging
import warnings
from typing import Sequence

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import ShuffleSplit, StratifiedShuffleSplit
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from comm_jax.evaluators import Evaluator, with_task_means
from comm_jax.evaluators.tasks import MULTICLASS, MULTILABEL, REGRESSION, metric_name, score, selection_score, task_kind

DEFAULT_CS = tuple(float(c) for c in np.logspace(-4, 4, 9))
log = logging.getLogger(__name__)


@dataclasses.dataclass
class ProbeResult:
    """kind: task kind; metrics: suffix -> test score; C: the chosen inverse regularisation;
    sweep: C -> held-out selection score (balanced accuracy, macro F1 or -MSE); predictions: on test."""

    kind: str
    metrics: dict[str, float]
    C: float
    sweep: dict[float, float]
    predictions: np.ndarray


def holdout_split(labels: np.ndarray, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(fit indices, held-out indices) of the training features: stratified by class for class
    labels when every class has at least two examples, a plain shuffle otherwise."""
    if not 0 < fraction < 1:
        raise ValueError(f"holdout_fraction must be in (0, 1), got {fraction}")
    labels = np.asarray(labels)
    placeholder = np.zeros((len(labels), 1))
    if task_kind(labels) == MULTICLASS and np.unique(labels, return_counts=True)[1].min() >= 2:
        try:
            splitter = StratifiedShuffleSplit(n_splits=1, test_size=fraction, random_state=seed)
            return next(splitter.split(placeholder, labels))
        except ValueError:   # too few examples per class for this fraction
            pass
    return next(ShuffleSplit(n_splits=1, test_size=fraction, random_state=seed).split(placeholder))


CLASS_WEIGHTS = (None, "balanced")


def _estimator(kind: str, C: float, max_iter: int, class_weight: str | None = None):
    if kind == MULTICLASS:      # lbfgs, multinomial loss
        return LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight)
    if kind == MULTILABEL:
        return OneVsRestClassifier(LogisticRegression(C=C, max_iter=max_iter, class_weight=class_weight))
    if kind == REGRESSION:
        if class_weight is not None:
            raise ValueError(f"class_weight={class_weight!r} applies to class labels, not to regression targets")
        return Ridge(alpha=1.0 / C)
    raise ValueError(f"unknown task kind {kind!r}")


def _fit_predict(kind: str, C: float, max_iter: int, fit_x, fit_y, eval_x,
                 class_weight: str | None = None) -> np.ndarray:
    scaler = StandardScaler().fit(fit_x)
    # One BLAS thread: L-BFGS on [N, D] x [D, classes] products gains nothing from more, and
    # OpenBLAS's spinning threads made fits 30-60x slower on a busy 2-core host (measured).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = _estimator(kind, C, max_iter, class_weight).fit(scaler.transform(fit_x), fit_y)
    return model.predict(scaler.transform(eval_x))


def linear_probe(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *,
                 Cs: Sequence[float] = DEFAULT_CS, holdout_fraction: float = 0.2, max_iter: int = 1000,
                 seed: int = 0, class_weight: str | None = None, accuracy: bool = False) -> ProbeResult:
    """Probe `[n_train, dim]` -> labels, chosen on a held-out part of the training set, scored on
    `[n_test, dim]`. Regression uses ridge with alpha = 1 / C. Ties in the sweep go to the smaller C.
    `class_weight`: None (unweighted loss) or "balanced" (see the module doc); `accuracy`: class labels
    are also scored by plain accuracy (`metrics["accuracy"]`)."""
    if class_weight not in CLASS_WEIGHTS:
        raise ValueError(f"class_weight must be one of {CLASS_WEIGHTS}, got {class_weight!r}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise ValueError(f"features and labels differ in length: train {len(train_x)} vs {len(train_y)}, "
                         f"test {len(test_x)} vs {len(test_y)}")
    if not Cs:
        raise ValueError("the C sweep is empty")
    kind = task_kind(train_y)
    if kind == MULTICLASS and len(np.unique(train_y)) < 2:
        raise ValueError("the training labels hold a single class; a probe needs at least two")
    fit, held = holdout_split(train_y, holdout_fraction, seed)
    sweep = {}
    for C in sorted(float(c) for c in Cs):
        predicted = _fit_predict(kind, C, max_iter, train_x[fit], train_y[fit], train_x[held], class_weight)
        sweep[C] = selection_score(kind, train_y[held], predicted)
    best = max(sweep, key=lambda c: (sweep[c], -c))
    predictions = _fit_predict(kind, best, max_iter, train_x, train_y, test_x, class_weight)
    return ProbeResult(kind, score(kind, test_y, predictions, accuracy), best, sweep, predictions)


class LinearProbe(Evaluator):
    """`<name>/<task>` for each of `config.evals.tasks` (balanced accuracy, and with `accuracy=True`
    plain accuracy as `<name>/<task>/accuracy`; `/f1_macro`, `/f1_weighted` for multi-label; `/mse` for
    regression), plus the task means.

    Arguments: `tasks` (names from `config.evals.tasks`; empty: all), `features` ("joint": the fused
    Z of `modalities`; "concat": each modality's own Z, concatenated), `class_weight` (None or
    "balanced"), `accuracy`, the C sweep `Cs`, `holdout_fraction`, `max_iter`, `seed`."""

    DEFAULTS = dict(modalities=(), tasks=(), features="joint", class_weight=None, accuracy=False, Cs=DEFAULT_CS,
                    holdout_fraction=0.2, max_iter=1000, seed=0)

    def __init__(self, name, args, evals):
        super().__init__(name, args, evals)
        if self.args["class_weight"] not in CLASS_WEIGHTS:
            raise ValueError(f"config.evals.evaluators.{name}.class_weight must be one of {CLASS_WEIGHTS}, "
                             f"got {self.args['class_weight']!r}")
        unknown = [t for t in self.args["tasks"] if t not in dict(evals.tasks)]
        if unknown:
            raise ValueError(f"config.evals.evaluators.{name}.tasks names {unknown}, which are not in "
                             f"config.evals.tasks {sorted(dict(evals.tasks))}")

    def evaluate(self, ctx) -> dict[str, float]:
        train, test = self.evals.train_split, self.evals.test_split
        train_x, test_x = self.features(ctx, train), self.features(ctx, test)
        tasks = dict(self.evals.tasks)
        chosen = tuple(self.args["tasks"]) or tuple(tasks)
        metrics = {}
        for task in chosen:
            key = tasks[task]
            result = linear_probe(train_x, self.labels(ctx, train, key), test_x,
                                  self.labels(ctx, test, key), Cs=tuple(self.args["Cs"]),
                                  holdout_fraction=self.args["holdout_fraction"],
                                  max_iter=self.args["max_iter"], seed=self.args["seed"],
                                  class_weight=self.args["class_weight"], accuracy=bool(self.args["accuracy"]))
            log.info("%s/%s: C=%g chosen on held-out scores %s", self.name, task, result.C, result.sweep)
            metrics.update({metric_name(self.name, task, k): v for k, v in result.metrics.items()})
        return with_task_means(metrics, self.name, self.evals.task_means)
