"""Discretisation of continuous features and labels for plug-in information estimates: feature
standardisation, PCA, seeded k-means (k-means++ start, Lloyd steps), label quantile bins, and the
empirical joint of discrete codes."""

from __future__ import annotations

import numpy as np

_VARIANCE_FLOOR = 1e-12


def standardise(features: np.ndarray) -> np.ndarray:
    """Each column of `features` [n, d] shifted to mean 0 and scaled to variance 1 (constant
    columns only shifted)."""
    features = np.asarray(features, np.float64)
    std = features.std(0)
    return (features - features.mean(0)) / np.where(std > _VARIANCE_FLOOR, std, 1.0)


def pca(features: np.ndarray, dim: int) -> np.ndarray:
    """Projection [n, min(dim, d, n)] of centred `features` [n, d] on its top principal axes."""
    features = np.asarray(features, np.float64)
    centred = features - features.mean(0)
    _, _, axes = np.linalg.svd(centred, full_matrices=False)
    return centred @ axes[:dim].T


def _squared_distances(points: np.ndarray, centres: np.ndarray) -> np.ndarray:
    return (np.sum(points ** 2, 1)[:, None] - 2.0 * points @ centres.T
            + np.sum(centres ** 2, 1)[None, :]).clip(min=0.0)


def _kmeans_plus_plus(points: np.ndarray, clusters: int, rng: np.random.Generator) -> np.ndarray:
    centres = [points[rng.integers(len(points))]]
    closest = _squared_distances(points, centres[0][None])[:, 0]
    for _ in range(1, clusters):
        total = closest.sum()
        index = rng.choice(len(points), p=closest / total) if total > 0 else rng.integers(len(points))
        centres.append(points[index])
        closest = np.minimum(closest, _squared_distances(points, points[index][None])[:, 0])
    return np.stack(centres)


def kmeans(points: np.ndarray, clusters: int, seed: int = 0, restarts: int = 4,
           max_steps: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """(labels [n], centres [clusters, d]) of k-means on `points` [n, d]: the lowest-inertia run
    of `restarts` k-means++ starts with Lloyd steps; deterministic given `seed`."""
    points = np.asarray(points, np.float64)
    if not 1 <= clusters <= len(points):
        raise ValueError(f"clusters={clusters} must be in [1, {len(points)}] (the number of rows)")
    rng = np.random.default_rng(seed)
    best_inertia, best = np.inf, None
    for _ in range(restarts):
        centres = _kmeans_plus_plus(points, clusters, rng)
        labels = np.full(len(points), -1)
        for _ in range(max_steps):
            distances = _squared_distances(points, centres)
            new_labels = np.argmin(distances, 1)
            if np.array_equal(new_labels, labels):
                break
            labels = new_labels
            counts = np.bincount(labels, minlength=clusters)
            sums = np.zeros_like(centres)
            np.add.at(sums, labels, points)
            # An emptied cluster keeps its centre rather than collapsing to the origin.
            centres = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centres)
        inertia = float(np.sum(np.min(_squared_distances(points, centres), 1)))
        if inertia < best_inertia:
            best_inertia, best = inertia, (np.argmin(_squared_distances(points, centres), 1), centres)
    return best


def discretise_features(features: np.ndarray, clusters: int, pca_dim: int | None = None,
                        seed: int = 0) -> np.ndarray:
    """Cluster codes [n] in [0, clusters) of `features` [n, d]: standardised, projected on
    `pca_dim` principal axes (all axes when None), then k-means."""
    features = np.asarray(features, np.float64)
    if features.ndim != 2:
        raise ValueError(f"features must be [n, d], got shape {features.shape}")
    points = standardise(features)
    if pca_dim is not None:
        points = pca(points, pca_dim)
    return kmeans(points, clusters, seed)[0]


def discretise_labels(labels: np.ndarray, bins: int | None = None) -> np.ndarray:
    """Codes [n] of `labels` [n]: category indices (sorted order) when `bins` is None, else
    quantile bins (about n / bins rows each) of real-valued targets."""
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be [n], got shape {labels.shape}")
    if bins is None:
        if labels.dtype.kind == "f" and not np.all(labels == np.round(labels)):
            raise ValueError("labels are real-valued: pass bins=K to quantile-bin a regression target")
        return np.unique(labels, return_inverse=True)[1].reshape(-1)
    edges = np.quantile(labels.astype(np.float64), np.linspace(0, 1, bins + 1)[1:-1])
    return np.searchsorted(edges, labels, side="right")


def empirical_joint(codes1: np.ndarray, codes2: np.ndarray, codes_y: np.ndarray,
                    shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """p[x1, x2, y]: the frequencies of the code triples (each code array [n] of ints >= 0)."""
    codes = [np.asarray(c, np.int64) for c in (codes1, codes2, codes_y)]
    if len({len(c) for c in codes}) != 1:
        raise ValueError(f"code arrays differ in length: {[len(c) for c in codes]}")
    if shape is None:
        shape = tuple(int(c.max()) + 1 for c in codes)
    flat = np.ravel_multi_index(codes, shape)
    counts = np.bincount(flat, minlength=int(np.prod(shape)))
    return (counts / len(flat)).reshape(shape)
