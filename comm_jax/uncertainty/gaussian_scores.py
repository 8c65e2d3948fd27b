"""Gaussian scores on features: class-conditional Mahalanobis with a shared (tied) covariance (Lee et al.
2018) and relative Mahalanobis (Ren et al. 2021), with the covariance estimators they use.

Fit (NumPy, float64): class means mu_c; the shared covariance is that of the class-centred training
rows, `S = 1/n sum_i (x_i - mu_{y_i})(x_i - mu_{y_i})^T`, shrunk towards a scaled identity:
`(1 - s) S + s (trace(S) / dim) I`. `shrinkage="ledoit_wolf"` takes s from Ledoit & Wolf (2004),
`s = min(1, b^2 / d^2)` with `d^2 = ||S - (trace(S)/dim) I||_F^2 / dim` and
`b^2 = (mean_i ||x_i||^4 - ||S||_F^2) / (n dim)` for the centred rows x_i; a number uses that fixed s
(0: the empirical covariance, inverted as a pseudo-inverse when singular).

Score (JAX, jitted, batched): squared distances in whitened coordinates (`W W^T = Sigma^-1`).
- Mahalanobis: `-min_c (x - mu_c)^T Sigma^-1 (x - mu_c)`.
- Relative Mahalanobis: `-min_c [MD_c(x) - MD_0(x)]`, MD_0 the squared distance under one
  class-agnostic Gaussian (mean and shrunk covariance of all training rows).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from comm_jax.uncertainty.score_base import DEFAULT_BATCH_SIZE, Score, as_rows, map_row_batches

LEDOIT_WOLF = "ledoit_wolf"


def ledoit_wolf_shrinkage(centred: np.ndarray) -> float:
    """Ledoit-Wolf shrinkage coefficient of rows `centred` `[n, dim]` (already centred; module doc)."""
    centred = np.asarray(centred, np.float64)
    n, dim = centred.shape
    covariance = centred.T @ centred / n
    scale = np.trace(covariance) / dim
    frobenius_sq = np.sum(covariance ** 2)
    distance_sq = (frobenius_sq - dim * scale ** 2) / dim
    spread_sq = (np.mean(np.sum(centred ** 2, axis=1) ** 2) - frobenius_sq) / (n * dim)
    if distance_sq <= 0:
        return 0.0
    return float(min(spread_sq, distance_sq) / distance_sq)


def shrunk_covariance(centred: np.ndarray, shrinkage: float | str = LEDOIT_WOLF
                      ) -> tuple[np.ndarray, float]:
    """`((1 - s) S + s trace(S)/dim I, s)` for rows `centred` `[n, dim]` with S = centred^T centred / n."""
    centred = np.asarray(centred, np.float64)
    n, dim = centred.shape
    covariance = centred.T @ centred / n
    if shrinkage == LEDOIT_WOLF:
        coefficient = ledoit_wolf_shrinkage(centred)
    elif isinstance(shrinkage, str):
        raise ValueError(f"shrinkage must be {LEDOIT_WOLF!r} or a number in [0, 1], got {shrinkage!r}")
    else:
        coefficient = float(shrinkage)
        if not 0 <= coefficient <= 1:
            raise ValueError(f"shrinkage must be in [0, 1], got {coefficient}")
    target = np.trace(covariance) / dim * np.eye(dim)
    return (1 - coefficient) * covariance + coefficient * target, coefficient


def whitening_matrix(covariance: np.ndarray) -> np.ndarray:
    """W `[dim, dim]` with `W W^T` the (pseudo-)inverse of `covariance`, so that
    `||(x - mu) @ W||^2` is the squared Mahalanobis distance; directions of (numerically) zero
    variance are dropped, as a pseudo-inverse does."""
    eigenvalues, eigenvectors = np.linalg.eigh(np.asarray(covariance, np.float64))
    floor = max(eigenvalues.max(), 0.0) * eigenvalues.size * np.finfo(np.float64).eps
    inverse_sqrt = np.where(eigenvalues > floor, 1 / np.sqrt(np.maximum(eigenvalues, floor)), 0.0)
    return eigenvectors * inverse_sqrt


class GaussianModel(NamedTuple):
    """Gaussians with one shared covariance, in whitened coordinates: `offset` `[dim]` (subtracted
    first, for float32 accuracy), `whitening` `[dim, dim]`, `whitened_means` `[components, dim]`."""

    offset: jax.Array
    whitening: jax.Array
    whitened_means: jax.Array


def fit_tied_gaussians(features: np.ndarray, labels: np.ndarray,
                       shrinkage: float | str = LEDOIT_WOLF) -> tuple[GaussianModel, np.ndarray]:
    """Class means and shared shrunk covariance of `features` `[n, dim]` grouped by `labels` `[n]`.
    Returns the model and the sorted class labels `[components]` (the order of its means)."""
    features = np.asarray(features, np.float64)
    labels = np.asarray(labels).reshape(-1)
    if labels.shape[0] != features.shape[0]:
        raise ValueError(f"{labels.shape[0]} labels for {features.shape[0]} feature rows")
    classes, index = np.unique(labels, return_inverse=True)
    counts = np.bincount(index, minlength=len(classes))
    means = np.zeros((len(classes), features.shape[1]))
    np.add.at(means, index, features)
    means /= counts[:, None]
    covariance, _ = shrunk_covariance(features - means[index], shrinkage)
    offset = features.mean(axis=0)
    whitening = whitening_matrix(covariance)
    model = GaussianModel(
        offset=jnp.asarray(offset, jnp.float32),
        whitening=jnp.asarray(whitening, jnp.float32),
        whitened_means=jnp.asarray((means - offset) @ whitening, jnp.float32),
    )
    return model, classes


def squared_distances(batch: jax.Array, model: GaussianModel) -> jax.Array:
    """Squared Mahalanobis distances `[b, components]` of `batch` `[b, dim]` to each Gaussian."""
    whitened = (batch - model.offset) @ model.whitening
    cross = whitened @ model.whitened_means.T
    distances = (jnp.sum(whitened ** 2, axis=-1, keepdims=True) - 2 * cross
                 + jnp.sum(model.whitened_means ** 2, axis=-1))
    return jnp.maximum(distances, 0.0)


_squared_distances = jax.jit(squared_distances)


@jax.jit
def _nearest_distance_score(batch: jax.Array, model: GaussianModel) -> jax.Array:
    return -jnp.min(squared_distances(batch, model), axis=-1)


@jax.jit
def _relative_score(batch: jax.Array, classes: GaussianModel, background: GaussianModel) -> jax.Array:
    relative = squared_distances(batch, classes) - squared_distances(batch, background)
    return -jnp.min(relative, axis=-1)


class Mahalanobis(Score):
    """`-min_c` squared Mahalanobis distance to the class means under a shared shrunk covariance."""

    def __init__(self, shrinkage: float | str = LEDOIT_WOLF, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(batch_size)
        self.shrinkage = shrinkage
        self.model: GaussianModel | None = None

    def fit(self, train_features, train_labels=None) -> "Mahalanobis":
        if train_labels is None:
            raise ValueError(f"{type(self).__name__} needs train_labels (class-conditional Gaussians)")
        features = as_rows(train_features, "train_features", np.float64)
        self.model, self.classes = fit_tied_gaussians(features, train_labels, self.shrinkage)
        return self

    def class_distances(self, test_features) -> np.ndarray:
        """Squared distances `[m, classes]` of `test_features` `[m, dim]` to each class (sorted labels)."""
        rows = as_rows(test_features, "test_features")
        return map_row_batches(_squared_distances, rows, self.batch_size, self._fitted())

    def score(self, test_features) -> np.ndarray:
        rows = as_rows(test_features, "test_features")
        return map_row_batches(_nearest_distance_score, rows, self.batch_size, self._fitted())

    def _fitted(self) -> GaussianModel:
        if self.model is None:
            raise RuntimeError(f"{type(self).__name__}.fit must run before scoring")
        return self.model


class RelativeMahalanobis(Mahalanobis):
    """`-min_c [MD_c(x) - MD_0(x)]`: class distances relative to one class-agnostic Gaussian."""

    def fit(self, train_features, train_labels=None) -> "RelativeMahalanobis":
        super().fit(train_features, train_labels)
        features = as_rows(train_features, "train_features", np.float64)
        self.background, _ = fit_tied_gaussians(features, np.zeros(len(features)), self.shrinkage)
        return self

    def score(self, test_features) -> np.ndarray:
        rows = as_rows(test_features, "test_features")
        return map_row_batches(_relative_score, rows, self.batch_size, self._fitted(), self.background)
