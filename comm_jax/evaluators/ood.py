"""OOD detection and failure prediction of frozen representations: the scores of `comm_jax.uncertainty`
fitted on in-distribution (ID) training features, scored on the ID test split and on shifted splits.

Feature sets (`feature_sets`): `"joint"` gives `z`, the fused Z of all the evaluator's modalities;
`"single"` gives `z_<modality>`, each modality's own Z; `"concat"` gives `concat`, those concatenated.
Logit scores read the logits of a linear probe per feature set: a multinomial logistic regression
(inverse regularisation `C`, standardised features) fitted on the ID training features and the labels
of `task` (a name of `config.evals.tasks`), which also serve the class-conditional scores. The
multimodal scores read every set at once: `disagreement` the probes of `z` and of each `z_<modality>`,
`interaction` their features; their feature name is the sets joined by `+`.

Metrics (flat floats; a NaN metric, e.g. AUROC on a split without errors, is left out):
- `<name>/<shift>/<score>/<feature>/<metric>`: `ood_metrics` (auroc, aupr_in, aupr_out, fpr95) of the
  ID test split against split `shift_split` of the dataset `<shift>` (a key of `config.evals.datasets`);
- `<name>/failure/<score>/<feature>/<metric>`: `failure_metrics` (auroc, aurc, eaurc, augrc,
  accuracy) on the ID test split, where a row is correct when the probe of `<feature>` (of `z` for
  the multimodal scores) predicts its `task` label.
Only the first `train_examples` / `test_examples` rows of each split are read (0: all).
"""

from __future__ import annotations

import logging
import math
import warnings
from typing import Any, Callable, Mapping

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

from comm_jax.evaluators import Evaluator, Source
from comm_jax.uncertainty.metrics import failure_metrics, ood_metrics
from comm_jax.uncertainty.scores import ALL_SCORES, FEATURE_SCORES, LOGIT_SCORES, NEEDS_TRAIN_LABELS, make_score

log = logging.getLogger(__name__)
FEATURE_SETS = ("joint", "single", "concat")
FUSED = "z"
FAILURE = "failure"
ID_TEST = "<id test>"     # the ID test split among the scored splits, apart from any dataset key
DEFAULT_SCORES = ("msp", "energy", "knn", "mahalanobis", "relative_mahalanobis", "disagreement", "interaction")


def probe_logits(train_x: np.ndarray, train_y: np.ndarray, scored: Mapping[str, np.ndarray], *,
                 C: float = 1.0, max_iter: int = 200) -> dict[str, np.ndarray]:
    """Logits `{key: [m, classes]}` on each of `scored` (`{key: [m, dim]}`) of a multinomial logistic
    regression fitted on standardised `train_x` `[n, dim]` -> class ids `train_y` `[n]`. With two
    classes the logits are `[0, d]`, d the decision function (the same softmax)."""
    scaler = StandardScaler().fit(train_x)
    # One BLAS thread: see linear_probe._fit_predict (spinning threads slow L-BFGS on a busy host).
    with warnings.catch_warnings(), threadpool_limits(limits=1, user_api="blas"):
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = LogisticRegression(C=C, max_iter=max_iter).fit(scaler.transform(train_x), train_y)
    out = {}
    for key, rows in scored.items():
        decision = model.decision_function(scaler.transform(rows))
        out[key] = np.stack([np.zeros_like(decision), decision], axis=1) if decision.ndim == 1 else decision
    return out


def predicted_classes(logits: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """The class ids `[m]` the probe predicts from its logits `[m, classes]`."""
    return classes[np.argmax(logits, axis=1)]


class OOD(Evaluator):
    """OOD and failure metrics of each score and feature set (module docstring).

    Arguments: `shifts` (dataset keys of `config.evals.datasets` scored as OOD), `shift_split`,
    `scores` (names of `comm_jax.uncertainty.scores`), `feature_sets`, `task` (None: the first of
    `config.evals.tasks`), the probe's `C` and `max_iter`, `knn_k`, `ssd_clusters`, `failure` (also
    write failure metrics), and the row caps `train_examples`, `test_examples`."""

    DEFAULTS = dict(modalities=(), shifts=(), shift_split="test", scores=DEFAULT_SCORES,
                    feature_sets=FEATURE_SETS, task=None, C=1.0, max_iter=200, knn_k=50, ssd_clusters=10,
                    failure=True, train_examples=2000, test_examples=1000)

    def __init__(self, name, args, evals):
        super().__init__(name, args, evals)
        where = f"config.evals.evaluators.{name}"
        datasets, tasks = dict(evals.datasets), dict(evals.tasks)
        unknown = [s for s in self.args["shifts"] if s not in datasets]
        if unknown:
            raise ValueError(f"{where}.shifts names {unknown}, which are not keys of config.evals.datasets "
                             f"{sorted(datasets)}")
        if FAILURE in self.args["shifts"]:
            raise ValueError(f"{where}.shifts: {FAILURE!r} names the failure metrics; call that dataset otherwise")
        unknown = [s for s in self.args["scores"] if s not in ALL_SCORES]
        if unknown:
            raise ValueError(f"{where}.scores names {unknown}; known: {sorted(ALL_SCORES)}")
        unknown = [s for s in self.args["feature_sets"] if s not in FEATURE_SETS]
        if unknown:
            raise ValueError(f"{where}.feature_sets names {unknown}; known: {FEATURE_SETS}")
        self.task = self.args["task"] or next(iter(tasks), None)
        if self.task not in tasks:
            raise ValueError(f"{where}.task={self.task!r} is not a name of config.evals.tasks {sorted(tasks)}")
        for key in ("train_examples", "test_examples"):
            if int(self.args[key]) < 0:
                raise ValueError(f"{where}.{key} must be >= 0 (0: all), got {self.args[key]!r}")

    def _shift_sources(self) -> list[Source]:
        return [(shift, self.args["shift_split"]) for shift in self.args["shifts"]]

    def sources(self) -> list[Source]:
        return super().sources() + self._shift_sources()

    def requests(self, modalities):
        subset = self.subset(modalities)
        subsets = [subset] + [(m,) for m in subset if (m,) != subset]
        return [(source, s) for source in self.sources() for s in subsets]

    def example_limit(self, source: Source) -> int:
        if source == self.source(self.evals.train_split):
            return int(self.args["train_examples"])
        return int(self.args["test_examples"])

    def _feature_sets(self, ctx, source: Source) -> dict[str, np.ndarray]:
        """`{set name: [rows, dim]}` of `source`: every set the scores may read, the first
        `example_limit` rows."""
        rows = slice(None, self.example_limit(source) or None)
        modalities = self.subset(ctx.modalities)
        sets = {FUSED: ctx.z(source, modalities)[rows]}
        singles = {f"z_{m}": ctx.z(source, (m,))[rows] for m in modalities}
        sets.update(singles)
        sets["concat"] = np.concatenate(list(singles.values()), axis=1)
        return sets

    def _selected(self, sets: Mapping[str, Any]) -> list[str]:
        chosen = self.args["feature_sets"]
        return [name for name in sets if (name == FUSED and "joint" in chosen) or (name == "concat" and "concat" in chosen)
                or (name.startswith("z_") and "single" in chosen)]

    def _options(self, score: str, num_train: int) -> dict[str, Any]:
        return {"knn": {"k": min(int(self.args["knn_k"]), num_train)},
                "ssd": {"num_clusters": min(int(self.args["ssd_clusters"]), num_train)},
                "disagreement": {"fused": FUSED}, "interaction": {"fused": FUSED}}.get(score, {})

    def evaluate(self, ctx) -> dict[str, float]:
        train_source, test_source = self.source(self.evals.train_split), self.source(self.evals.test_split)
        label_key = dict(self.evals.tasks)[self.task]
        train = self._feature_sets(ctx, train_source)
        num_train = len(train[FUSED])
        train_y = np.asarray(self.labels(ctx, self.evals.train_split, label_key))[:num_train]
        scored = {ID_TEST: self._feature_sets(ctx, test_source)}
        scored.update({shift: self._feature_sets(ctx, source)
                       for shift, source in zip(self.args["shifts"], self._shift_sources())})
        test_y = np.asarray(self.labels(ctx, self.evals.test_split, label_key))[:len(scored[ID_TEST][FUSED])]
        classes = np.unique(train_y)
        logits: dict[str, dict[str, np.ndarray]] = {}       # split -> set -> [m, classes]
        for set_name in train:
            per_split = probe_logits(train[set_name], train_y, {k: v[set_name] for k, v in scored.items()},
                                     C=float(self.args["C"]), max_iter=int(self.args["max_iter"]))
            for split, values in per_split.items():
                logits.setdefault(split, {})[set_name] = values
        correct = {s: predicted_classes(logits[ID_TEST][s], classes) == test_y for s in train}

        metrics: dict[str, float] = {}
        unimodal = [s for s in train if s.startswith("z_")]
        multimodal_name = "+".join([FUSED] + unimodal)
        for score in self.args["scores"]:
            runs: list[tuple[str, Callable[[str], np.ndarray], str]] = []    # (feature, split -> scores, probe)
            if score in LOGIT_SCORES:
                runs = [(s, self._logit_scorer(score, logits, s), s) for s in self._selected(train)]
            elif score in FEATURE_SCORES:
                runs = [(s, self._feature_scorer(score, train, train_y, scored, s), s) for s in self._selected(train)]
            elif len(unimodal) >= 2:
                runs = [(multimodal_name, self._multimodal_scorer(score, train, logits, scored), FUSED)]
            for feature, scores_of, probe in runs:
                try:
                    metrics.update(self._metrics(score, feature, scores_of, correct[probe]))
                except Exception as error:     # one score failing (e.g. a singular covariance) spares the others
                    log.error("%s: score %r on %r failed: %s: %s", self.name, score, feature, type(error).__name__, error)
        return metrics

    def _logit_scorer(self, score: str, logits, set_name: str) -> Callable[[str], np.ndarray]:
        fitted = make_score(score)
        return lambda split: fitted.score(logits[split][set_name])

    def _feature_scorer(self, score: str, train, train_y, scored, set_name: str) -> Callable[[str], np.ndarray]:
        state: dict[str, Any] = {}

        def scores_of(split: str) -> np.ndarray:
            if "fitted" not in state:     # fitted on first use, inside the caller's error handling
                labels = train_y if score in NEEDS_TRAIN_LABELS else None
                state["fitted"] = make_score(score, **self._options(score, len(train_y))).fit(train[set_name], labels)
            return state["fitted"].score(scored[split][set_name])
        return scores_of

    def _multimodal_scorer(self, score: str, train, logits, scored) -> Callable[[str], np.ndarray]:
        sets = [FUSED] + [s for s in train if s.startswith("z_")]
        inputs = logits if score == "disagreement" else scored
        state: dict[str, Any] = {}

        def scores_of(split: str) -> np.ndarray:
            if "fitted" not in state:
                state["fitted"] = make_score(score, **self._options(score, len(train[FUSED])))
                if score == "interaction":
                    state["fitted"].fit({s: train[s] for s in sets})
            return state["fitted"].score({s: inputs[split][s] for s in sets})
        return scores_of

    def _metrics(self, score: str, feature: str, scores_of: Callable[[str], np.ndarray],
                 correct: np.ndarray) -> dict[str, float]:
        in_scores = scores_of(ID_TEST)
        out: dict[str, float] = {}
        for shift in self.args["shifts"]:
            for metric, value in ood_metrics(in_scores, scores_of(shift)).items():
                out[f"{self.name}/{shift}/{score}/{feature}/{metric}"] = value
        if self.args["failure"]:
            for metric, value in failure_metrics(in_scores, correct).items():
                out[f"{self.name}/{FAILURE}/{score}/{feature}/{metric}"] = value
        return {key: float(value) for key, value in out.items() if math.isfinite(value)}
