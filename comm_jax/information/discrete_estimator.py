"""PID of (X1, X2; Y) from continuous features, as the PID benchmark estimates it: each modality's
features are clustered, labels made discrete, and the exact BROJA decomposition taken of the
empirical joint; bootstrap percentile intervals resample rows of the code triples."""

from __future__ import annotations

import dataclasses

import numpy as np

from comm_jax.information.discretise import (
    discretise_features, discretise_labels, empirical_joint)
from comm_jax.information.pid import PID_PARTS, broja


@dataclasses.dataclass(frozen=True)
class PIDEstimate:
    """A PID estimate in bits.

    parts: {"R", "U1", "U2", "S"} of the full sample. intervals: part -> (low, high) bootstrap
    percentile interval at `confidence` (None without bootstrap). samples: [bootstrap, 4] parts
    of each resample in PID_PARTS order (None without bootstrap). joint: p[x1, x2, y] of the sample.
    """

    parts: dict[str, float]
    intervals: dict[str, tuple[float, float]] | None
    samples: np.ndarray | None
    joint: np.ndarray
    confidence: float


def pid_from_codes(codes1: np.ndarray, codes2: np.ndarray, codes_y: np.ndarray, bootstrap: int = 0,
                   confidence: float = 0.95, seed: int = 0) -> PIDEstimate:
    """BROJA PID of the empirical joint of three discrete code arrays [n], with `bootstrap`
    row resamples (deterministic given `seed`) for percentile intervals."""
    codes = [np.asarray(c, np.int64).reshape(-1) for c in (codes1, codes2, codes_y)]
    shape = tuple(int(c.max()) + 1 for c in codes)
    joint = empirical_joint(*codes, shape=shape)
    parts = broja(joint)
    if bootstrap <= 0:
        return PIDEstimate(parts, None, None, joint, confidence)
    rng = np.random.default_rng(seed)
    n = len(codes[0])
    samples = np.empty((bootstrap, len(PID_PARTS)))
    for b in range(bootstrap):
        rows = rng.integers(n, size=n)
        resampled = broja(empirical_joint(*(c[rows] for c in codes), shape=shape))
        samples[b] = [resampled[part] for part in PID_PARTS]
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(samples, [tail, 100 - tail], axis=0)
    intervals = {part: (float(low[i]), float(high[i])) for i, part in enumerate(PID_PARTS)}
    return PIDEstimate(parts, intervals, samples, joint, confidence)


def pid_from_features(features1: np.ndarray, features2: np.ndarray, labels: np.ndarray,
                      clusters: int = 20, pca_dim: int | None = 8, label_bins: int | None = None,
                      seed: int = 0, bootstrap: int = 0, confidence: float = 0.95) -> PIDEstimate:
    """PID of (features1 [n, d1], features2 [n, d2]; labels [n]) in bits.

    Each modality is standardised, projected on `pca_dim` principal axes and clustered by k-means
    into `clusters` codes; labels are categories, or `label_bins` quantile bins of a regression
    target. The clustering is done once on all rows (seeded by `seed`); the bootstrap resamples rows
    of the code triples, so its intervals hold the sampling spread of the joint given the clusters.
    """
    n = len(labels)
    if len(features1) != n or len(features2) != n:
        raise ValueError(f"row counts differ: {len(features1)}, {len(features2)}, {n} labels")
    codes1 = discretise_features(features1, clusters, pca_dim, seed)
    codes2 = discretise_features(features2, clusters, pca_dim, seed + 1)
    codes_y = discretise_labels(labels, label_bins)
    return pid_from_codes(codes1, codes2, codes_y, bootstrap, confidence, seed)
