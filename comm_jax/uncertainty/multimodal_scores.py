"""Multimodal scores on dicts of feature sets `{name: [n, dim]}`, e.g. the fused `"z"` and each
modality's own `"z_image_1"`, `"z_image_2"`.

(a) `PerFeatureSet`: the same score fitted on each feature set separately, returning one score per
    set. Each set is a representation of a different subset of modalities, so a set whose scores
    drop while the others' do not names the modality that looks out of distribution.
(b) `CrossModalDisagreement`: with probe logits from each unimodal Z_i and from the fused Z, the
    score is `-mean_i D(p_i, p_z)` over the unimodal sets i, D one of
    `"kl"`: KL(p_i || p_z); `"js"`: Jensen-Shannon divergence (natural log, at most log 2);
    `"argmax"`: 1 when argmax p_i != argmax p_z, else 0 (the score is minus the disagreement rate).
    On training-like inputs each modality supports the fused prediction; a shift in one modality
    moves its prediction away from the fused one, and contradictory modalities (mismatched pairs)
    pull all of them apart, so disagreement rises in both cases.
(c) `InteractionResidual`: ridge regression `Z ~ [Z_1, ..., Z_n] B + b` (intercept not penalised, as
    scikit-learn's `Ridge(alpha, fit_intercept=True)`) fitted on training rows; the residual
    `r = Z - [Z_i] B - b` is the part of the fused representation that the unimodal ones do not
    predict linearly: the interaction (synergy) the fusion adds. The residuals of training rows have
    mean zero; their covariance Sigma_r is shrunk (see `gaussian_scores`), and the score is
    `-r^T Sigma_r^-1 r` (squared Mahalanobis norm; every metric is rank-based, so the square root
    would give the same numbers). When each modality looks in-distribution on its own but their
    combination is new, Z leaves the plane the Z_i predict and the residual grows.
"""

from __future__ import annotations

from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from comm_jax.uncertainty.gaussian_scores import (LEDOIT_WOLF, GaussianModel, shrunk_covariance,
                                                  squared_distances, whitening_matrix)
from comm_jax.uncertainty.score_base import DEFAULT_BATCH_SIZE, Score, as_rows, map_row_batches

DIVERGENCES = ("kl", "js", "argmax")


class PerFeatureSet:
    """One fresh `make_score()` per feature set; `score` returns `{name: [m]}`."""

    def __init__(self, make_score: Callable[[], Score]):
        self.make_score = make_score
        self.scores: dict[str, Score] = {}

    def fit(self, train_features: Mapping[str, np.ndarray], train_labels=None) -> "PerFeatureSet":
        """Fits a score on each set `{name: [n, dim_name]}` (labels `[n]` shared by all)."""
        self.scores = {name: self.make_score().fit(rows, train_labels)
                       for name, rows in train_features.items()}
        return self

    def score(self, test_features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Scores `{name: [m]}` of each test set `{name: [m, dim_name]}` (a subset of the fitted ones)."""
        unknown = sorted(set(test_features) - set(self.scores))
        if unknown:
            raise ValueError(f"feature sets {unknown} were not fitted (fitted: {sorted(self.scores)})")
        return {name: self.scores[name].score(rows) for name, rows in test_features.items()}


def _split_sets(sets: Mapping[str, np.ndarray], fused: str, what: str, dtype=np.float32
                ) -> tuple[np.ndarray, list[np.ndarray]]:
    if fused not in sets:
        raise ValueError(f"the fused {what} set {fused!r} is missing (have {sorted(sets)})")
    unimodal = sorted(name for name in sets if name != fused)
    if not unimodal:
        raise ValueError(f"no unimodal {what} set besides the fused {fused!r}")
    rows = [as_rows(sets[name], f"{what} {name!r}", dtype) for name in [fused] + unimodal]
    if len({r.shape[0] for r in rows}) != 1:
        raise ValueError(f"{what} sets have different row counts: "
                         f"{ {name: r.shape[0] for name, r in zip([fused] + unimodal, rows)} }")
    return rows[0], rows[1:]


def _kl(log_p: jax.Array, log_q: jax.Array) -> jax.Array:
    return jnp.sum(jnp.where(log_p > -jnp.inf, jnp.exp(log_p) * (log_p - log_q), 0.0), axis=-1)


def _disagreement_score(stacked_logits: jax.Array, divergence: str) -> jax.Array:
    """`stacked_logits` `[b, sets, classes]`, fused first -> `[b]` (module docstring, (b))."""
    log_probabilities = jax.nn.log_softmax(stacked_logits, axis=-1)
    fused, unimodal = log_probabilities[:, :1], log_probabilities[:, 1:]
    if divergence == "kl":
        per_set = _kl(unimodal, fused)
    elif divergence == "js":
        log_mixture = jnp.logaddexp(unimodal, fused) - jnp.log(2.0)
        per_set = 0.5 * _kl(unimodal, log_mixture) + 0.5 * _kl(fused, log_mixture)
    else:
        per_set = (jnp.argmax(unimodal, -1) != jnp.argmax(fused, -1)).astype(jnp.float32)
    return -jnp.mean(per_set, axis=-1)


_disagreement_score_jit = jax.jit(_disagreement_score, static_argnames="divergence")


class CrossModalDisagreement:
    """`-mean_i D(p_i, p_fused)` over the unimodal probes' predictions (module docstring, (b))."""

    def __init__(self, fused: str = "z", divergence: str = "js", batch_size: int = DEFAULT_BATCH_SIZE):
        if divergence not in DIVERGENCES:
            raise ValueError(f"divergence must be one of {DIVERGENCES}, got {divergence!r}")
        self.fused, self.divergence, self.batch_size = fused, divergence, batch_size

    def fit(self, train_logits: Mapping[str, np.ndarray] | None = None, train_labels=None
            ) -> "CrossModalDisagreement":
        """Nothing to learn: the probes are already trained."""
        return self

    def score(self, test_logits: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores `[m]` of logits `{name: [m, classes]}` holding the fused set and >= 1 unimodal one."""
        fused, unimodal = _split_sets(test_logits, self.fused, "logits")
        if len({r.shape[1] for r in [fused] + unimodal}) != 1:
            raise ValueError("logits sets have different class counts")
        stacked = np.stack([fused] + unimodal, axis=1)                 # [m, sets, classes]
        return map_row_batches(lambda b: _disagreement_score_jit(b, divergence=self.divergence),
                               stacked, self.batch_size)


@jax.jit
def _residual_score(fused: jax.Array, unimodal: jax.Array, coefficients: jax.Array,
                    intercept: jax.Array, residual_model: GaussianModel) -> jax.Array:
    residual = fused - unimodal @ coefficients - intercept
    return -squared_distances(residual, residual_model)[:, 0]


class InteractionResidual:
    """`-` squared Mahalanobis norm of the ridge residual of Z on the concatenated Z_i (docstring, (c))."""

    def __init__(self, fused: str = "z", ridge: float = 1.0, shrinkage: float | str = LEDOIT_WOLF,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        if ridge < 0:
            raise ValueError(f"ridge must be >= 0, got {ridge}")
        self.fused, self.ridge, self.shrinkage, self.batch_size = fused, float(ridge), shrinkage, batch_size

    def fit(self, train_features: Mapping[str, np.ndarray], train_labels=None) -> "InteractionResidual":
        """Fits the ridge map and the residual covariance on training sets `{name: [n, dim_name]}`."""
        self.unimodal_names = sorted(name for name in train_features if name != self.fused)
        targets, unimodal = _split_sets(train_features, self.fused, "feature", np.float64)
        inputs = np.concatenate(unimodal, axis=1)                       # [n, sum of unimodal dims]
        input_mean, target_mean = inputs.mean(axis=0), targets.mean(axis=0)
        centred_inputs = inputs - input_mean
        gram = centred_inputs.T @ centred_inputs + self.ridge * np.eye(inputs.shape[1])
        coefficients = np.linalg.lstsq(gram, centred_inputs.T @ (targets - target_mean), rcond=None)[0]
        intercept = target_mean - input_mean @ coefficients
        residuals = targets - inputs @ coefficients - intercept
        covariance, _ = shrunk_covariance(residuals, self.shrinkage)
        whitening = whitening_matrix(covariance)
        self.coefficients, self.intercept = coefficients, intercept     # [sum dims, dim], [dim]
        self._state = (jnp.asarray(coefficients, jnp.float32), jnp.asarray(intercept, jnp.float32),
                       GaussianModel(offset=jnp.zeros(targets.shape[1], jnp.float32),
                                     whitening=jnp.asarray(whitening, jnp.float32),
                                     whitened_means=jnp.zeros((1, targets.shape[1]), jnp.float32)))
        return self

    def _rows(self, features: Mapping[str, np.ndarray], dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
        if not hasattr(self, "_state"):
            raise RuntimeError("InteractionResidual.fit must run before scoring")
        if sorted(name for name in features if name != self.fused) != self.unimodal_names:
            raise ValueError(f"need feature sets {[self.fused] + self.unimodal_names}, got {sorted(features)}")
        fused, unimodal = _split_sets(features, self.fused, "feature", dtype)
        unimodal = np.concatenate(unimodal, axis=1)
        expected = (self.intercept.shape[0], self.coefficients.shape[0])
        if (fused.shape[1], unimodal.shape[1]) != expected:
            raise ValueError(f"fused / concatenated unimodal widths {(fused.shape[1], unimodal.shape[1])} "
                             f"differ from the fitted {expected}")
        return fused, unimodal

    def residuals(self, test_features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Ridge residuals `[m, dim]` of the fused set given the unimodal ones (float64, NumPy)."""
        fused, unimodal = self._rows(test_features, np.float64)
        return fused - unimodal @ self.coefficients - self.intercept

    def score(self, test_features: Mapping[str, np.ndarray]) -> np.ndarray:
        """Scores `[m]` of test sets `{name: [m, dim_name]}` (the fitted names)."""
        fused, unimodal = self._rows(test_features)
        joined = np.concatenate([fused, unimodal], axis=1)
        width = fused.shape[1]
        return map_row_batches(lambda b, *state: _residual_score(b[:, :width], b[:, width:], *state),
                               joined, self.batch_size, *self._state)
