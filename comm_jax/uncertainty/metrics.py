"""Metrics of OOD detection (`ood_metrics`) and failure prediction (`failure_metrics`) on scores where
higher means more in-distribution / more confident, with optional bootstrap confidence intervals.

Definitions (a contract; every metric is rank-based, so any increasing transform of a score gives
the same numbers):

- `auroc`: the probability that a random positive outscores a random negative, ties counting one
  half (the Mann-Whitney statistic; equal to scikit-learn's `roc_auc_score`).
- `aupr_in` / `aupr_out`: average precision, `sum_t (R_t - R_{t-1}) P_t` over the distinct score
  thresholds t taken in decreasing order (equal to scikit-learn's `average_precision_score`);
  `aupr_in` has ID positive on the score, `aupr_out` OOD positive on the negated score.
- `fpr95`: the share of OOD scores at or above `np.percentile(in_scores, 5)` with NumPy's default
  "linear" interpolation (Hyndman & Fan type 7: position 0.05 * (n_in - 1) in the sorted ID scores,
  interpolated linearly between its two neighbours).
- Risk-coverage (`risk_coverage`): samples sorted by decreasing confidence; `errors(k)` is the
  number of errors among the k most confident. Tied confidences enter together: inside a group of
  tied samples the group's errors are spread evenly, `errors(k) = errors before the group +
  (k - size before the group) * group errors / group size`, which is the expectation of `errors(k)`
  over every ordering of the tied samples. The metrics therefore equal their mean over random
  tie-breaks and do not depend on the input order.
  `aurc = mean_k errors(k) / k`, `eaurc = aurc - aurc(oracle)` with the oracle ranking every correct
  sample first (`errors_oracle(k) = max(0, k - n_correct)`), `augrc = mean_k errors(k) / n`,
  `accuracy = n_correct / n`, `auroc` with correct positive on confidence.

Defined values on edge cases: constant scores give `auroc = 0.5`; `auroc` is NaN when only one class
is present (all correct or all wrong); all correct gives `aurc = eaurc = augrc = 0`. Empty inputs and
NaN scores raise `ValueError`.

Bootstrap (`bootstrap=B`): B resamples with replacement from `np.random.default_rng(seed)` (ID and
OOD resampled separately; confidence and correctness resampled as pairs); each interval is the
(alpha/2, 1 - alpha/2) percentile interval of the resampled metric, NaN resamples left out. The
result then holds an extra key `"intervals"`: `{metric: (low, high)}`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.stats import rankdata

# The FPR95 threshold keeps 95% of the ID scores: their 5th percentile, written exactly
# (100 * (1 - 0.95) is 5.000000000000004 in floating point).
ID_THRESHOLD_PERCENTILE = 5.0
# Resamples are evaluated in chunks holding at most this many entries, to bound memory.
_BOOTSTRAP_CHUNK_ENTRIES = 1 << 22


def _as_scores(values, name: str) -> np.ndarray:
    values = np.asarray(values, np.float64).reshape(-1)
    if values.size == 0:
        raise ValueError(f"{name} is empty")
    if np.isnan(values).any():
        raise ValueError(f"{name} contains NaN")
    return values


def _group_ends(sorted_values: np.ndarray) -> np.ndarray:
    """For each position of rows sorted in decreasing order `[batch, n]`, the index of the last entry
    of its group of equal values."""
    n = sorted_values.shape[-1]
    index = np.broadcast_to(np.arange(n), sorted_values.shape)
    is_end = np.ones(sorted_values.shape, bool)
    is_end[:, :-1] = sorted_values[:, :-1] != sorted_values[:, 1:]
    return np.minimum.accumulate(np.where(is_end, index, n)[:, ::-1], axis=1)[:, ::-1]


def _group_starts(sorted_values: np.ndarray) -> np.ndarray:
    """For each position of sorted rows `[batch, n]`, the index of the first entry of its tie group."""
    index = np.broadcast_to(np.arange(sorted_values.shape[-1]), sorted_values.shape)
    is_start = np.ones(sorted_values.shape, bool)
    is_start[:, 1:] = sorted_values[:, 1:] != sorted_values[:, :-1]
    return np.maximum.accumulate(np.where(is_start, index, 0), axis=1)


def _sort_decreasing(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    order = np.argsort(-scores, axis=1, kind="stable")
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(labels, order, axis=1)


def _auroc_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """AUROC of each row, `scores` and `positive` `[batch, n]` -> `[batch]` (NaN for one class)."""
    ranks = rankdata(scores, axis=1)  # average ranks: a tie counts one half
    n_pos = positive.sum(axis=1).astype(np.float64)
    n_neg = positive.shape[1] - n_pos
    u_statistic = np.where(positive, ranks, 0.0).sum(axis=1) - n_pos * (n_pos + 1) / 2
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(n_pos * n_neg > 0, u_statistic / (n_pos * n_neg), np.nan)


def _average_precision_rows(scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
    """Average precision of each row `[batch, n]` -> `[batch]`: each positive contributes the precision
    at the end of its tie group (the threshold at which it is first counted)."""
    sorted_scores, sorted_positive = _sort_decreasing(scores, positive)
    precision = np.cumsum(sorted_positive, axis=1) / np.arange(1, scores.shape[1] + 1)
    precision_at_group_end = np.take_along_axis(precision, _group_ends(sorted_scores), axis=1)
    n_pos = sorted_positive.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(sorted_positive, precision_at_group_end, 0.0).sum(axis=1) / n_pos


def _fpr_rows(in_scores: np.ndarray, out_scores: np.ndarray) -> np.ndarray:
    """FPR at 95% TPR of each row: `in_scores` `[batch, n_in]`, `out_scores` `[batch, n_out]` -> `[batch]`."""
    threshold = np.percentile(in_scores, ID_THRESHOLD_PERCENTILE, axis=1, method="linear")
    return (out_scores >= threshold[:, None]).mean(axis=1)


def _ood_rows(in_scores: np.ndarray, out_scores: np.ndarray) -> dict[str, np.ndarray]:
    scores = np.concatenate([in_scores, out_scores], axis=1)
    is_in = np.zeros(scores.shape, bool)
    is_in[:, :in_scores.shape[1]] = True
    return {
        "auroc": _auroc_rows(scores, is_in),
        "aupr_in": _average_precision_rows(scores, is_in),
        "aupr_out": _average_precision_rows(-scores, ~is_in),
        "fpr95": _fpr_rows(in_scores, out_scores),
    }


class RiskCoverage(NamedTuple):
    """Risk-coverage statistics of rows of samples `[batch, n]` sorted by decreasing confidence.

    `errors[:, k-1]` is errors(k) (see the module docstring, ties spread evenly) and `n_correct`
    `[batch]` the correct count; every failure metric is read from these two.
    """

    errors: np.ndarray
    n_correct: np.ndarray

    @property
    def coverage(self) -> np.ndarray:
        """k / n for k = 1..n, `[n]`."""
        n = self.errors.shape[-1]
        return np.arange(1, n + 1) / n

    @property
    def selective_risk(self) -> np.ndarray:
        """Error rate among the k most confident, `[batch, n]`."""
        return self.errors / np.arange(1, self.errors.shape[-1] + 1)

    @property
    def generalised_risk(self) -> np.ndarray:
        """Errors among the k most confident divided by n, `[batch, n]`."""
        return self.errors / self.errors.shape[-1]

    @property
    def oracle_selective_risk(self) -> np.ndarray:
        """Selective risk when every correct sample comes first, `[batch, n]`."""
        k = np.arange(1, self.errors.shape[-1] + 1)
        return np.maximum(0, k - self.n_correct[:, None]) / k

    def aurc(self) -> np.ndarray:
        return self.selective_risk.mean(axis=-1)

    def eaurc(self) -> np.ndarray:
        return self.aurc() - self.oracle_selective_risk.mean(axis=-1)

    def augrc(self) -> np.ndarray:
        return self.generalised_risk.mean(axis=-1)


def _risk_coverage_rows(confidence: np.ndarray, correct: np.ndarray) -> RiskCoverage:
    sorted_confidence, sorted_correct = _sort_decreasing(confidence, correct)
    wrong = (~sorted_correct).astype(np.float64)
    starts, ends = _group_starts(sorted_confidence), _group_ends(sorted_confidence)
    cumulative = np.cumsum(wrong, axis=1)
    errors_before = np.take_along_axis(cumulative - wrong, starts, axis=1)
    errors_in_group = np.take_along_axis(cumulative, ends, axis=1) - errors_before
    position = np.arange(confidence.shape[1])
    errors = errors_before + (position - starts + 1) * errors_in_group / (ends - starts + 1)
    return RiskCoverage(errors=errors, n_correct=sorted_correct.sum(axis=1))


def _failure_rows(confidence: np.ndarray, correct: np.ndarray) -> dict[str, np.ndarray]:
    stats = _risk_coverage_rows(confidence, correct)
    return {
        "auroc": _auroc_rows(confidence, correct),
        "aurc": stats.aurc(),
        "eaurc": stats.eaurc(),
        "augrc": stats.augrc(),
        "accuracy": correct.mean(axis=1),
    }


def _as_correct(correct, n: int) -> np.ndarray:
    correct = np.asarray(correct).reshape(-1)
    if correct.shape[0] != n:
        raise ValueError(f"correct has {correct.shape[0]} entries but confidence has {n}")
    if correct.dtype != bool and not np.isin(correct, (0, 1)).all():
        raise ValueError("correct must be boolean (or 0/1)")
    return correct.astype(bool)


def risk_coverage(confidence, correct) -> RiskCoverage:
    """Risk-coverage statistics of one set: `confidence` `[n]`, `correct` `[n]` (bool) -> a
    `RiskCoverage` whose arrays have a leading batch dimension of 1."""
    confidence = _as_scores(confidence, "confidence")
    return _risk_coverage_rows(confidence[None], _as_correct(correct, confidence.size)[None])


def _intervals(resampled: dict[str, list[np.ndarray]], alpha: float) -> dict[str, tuple[float, float]]:
    intervals = {}
    for name, chunks in resampled.items():
        values = np.concatenate(chunks)
        values = values[~np.isnan(values)]
        if values.size == 0:
            intervals[name] = (float("nan"), float("nan"))
        else:
            low, high = np.percentile(values, [100 * alpha / 2, 100 * (1 - alpha / 2)])
            intervals[name] = (float(low), float(high))
    return intervals


def _check_bootstrap(bootstrap: int, alpha: float) -> None:
    if bootstrap < 0:
        raise ValueError(f"bootstrap must be >= 0, got {bootstrap}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")


def _chunk_rows(bootstrap: int, n: int) -> int:
    return max(1, min(bootstrap, _BOOTSTRAP_CHUNK_ENTRIES // max(n, 1)))


def ood_metrics(in_scores, out_scores, *, bootstrap: int = 0, alpha: float = 0.05,
                seed: int = 0) -> dict:
    """AUROC, AUPR-In, AUPR-Out and FPR@95 of separating ID from OOD (module docstring).

    in_scores `[n_in]`, out_scores `[n_out]`: higher means more in-distribution. With `bootstrap=B`
    the result also holds `"intervals"`: `{metric: (low, high)}` at level 1 - alpha.
    """
    _check_bootstrap(bootstrap, alpha)
    in_scores, out_scores = _as_scores(in_scores, "in_scores"), _as_scores(out_scores, "out_scores")
    result: dict = {k: float(v[0]) for k, v in _ood_rows(in_scores[None], out_scores[None]).items()}
    if bootstrap:
        rng = np.random.default_rng(seed)
        chunk = _chunk_rows(bootstrap, in_scores.size + out_scores.size)
        resampled: dict[str, list[np.ndarray]] = {k: [] for k in result}
        for start in range(0, bootstrap, chunk):
            rows = min(chunk, bootstrap - start)
            in_rows = in_scores[rng.integers(0, in_scores.size, (rows, in_scores.size))]
            out_rows = out_scores[rng.integers(0, out_scores.size, (rows, out_scores.size))]
            for name, values in _ood_rows(in_rows, out_rows).items():
                resampled[name].append(values)
        result["intervals"] = _intervals(resampled, alpha)
    return result


def failure_metrics(confidence, correct, *, bootstrap: int = 0, alpha: float = 0.05,
                    seed: int = 0) -> dict:
    """AUROC, AURC, E-AURC, AUGRC and accuracy of predicting correctness from confidence (module
    docstring). confidence `[n]` (higher = more confident), correct `[n]` bool. With `bootstrap=B`
    the result also holds `"intervals"`: `{metric: (low, high)}` at level 1 - alpha.
    """
    _check_bootstrap(bootstrap, alpha)
    confidence = _as_scores(confidence, "confidence")
    correct = _as_correct(correct, confidence.size)
    result: dict = {k: float(v[0]) for k, v in _failure_rows(confidence[None], correct[None]).items()}
    if bootstrap:
        rng = np.random.default_rng(seed)
        chunk = _chunk_rows(bootstrap, confidence.size)
        resampled: dict[str, list[np.ndarray]] = {k: [] for k in result}
        for start in range(0, bootstrap, chunk):
            rows = min(chunk, bootstrap - start)
            index = rng.integers(0, confidence.size, (rows, confidence.size))
            for name, values in _failure_rows(confidence[index], correct[index]).items():
                resampled[name].append(values)
        result["intervals"] = _intervals(resampled, alpha)
    return result
