"""Shannon measures in bits on joint probability arrays: entropy, mutual information and
conditional mutual information, plus the check that an array is a probability distribution."""

from __future__ import annotations

import numpy as np

PROBABILITY_ATOL = 1e-6


def as_distribution(p: np.ndarray, ndim: int, name: str = "p") -> np.ndarray:
    """`p` as a float64 array after checking it has `ndim` axes, is finite, nonnegative and sums
    to 1 (within 1e-6); raises ValueError naming what is wrong."""
    p = np.asarray(p, dtype=np.float64)
    if p.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} axes, got shape {p.shape}")
    if p.size == 0:
        raise ValueError(f"{name} is empty (shape {p.shape})")
    if not np.all(np.isfinite(p)):
        raise ValueError(f"{name} has non-finite entries")
    if np.min(p) < 0:
        raise ValueError(f"{name} has negative entries (min {np.min(p):.3g})")
    total = float(np.sum(p))
    if abs(total - 1.0) > PROBABILITY_ATOL:
        raise ValueError(f"{name} must sum to 1, sums to {total:.9g}")
    return p


def _plogp_bits(p: np.ndarray) -> np.ndarray:
    positive = p > 0
    return np.where(positive, p * np.log2(np.where(positive, p, 1.0)), 0.0)


def entropy(p: np.ndarray) -> float:
    """H(X) in bits of a distribution `p` of any shape (the joint entropy of all its axes)."""
    p = as_distribution(p, np.ndim(p))
    return float(-np.sum(_plogp_bits(p)))


def mutual_information(p_xy: np.ndarray) -> float:
    """I(X;Y) in bits of a joint `p_xy[x, y]`."""
    p_xy = as_distribution(p_xy, 2, "p_xy")
    return entropy(p_xy.sum(1)) + entropy(p_xy.sum(0)) - entropy(p_xy)


def conditional_entropy(p_xy: np.ndarray) -> float:
    """H(Y|X) in bits of a joint `p_xy[x, y]`."""
    p_xy = as_distribution(p_xy, 2, "p_xy")
    return entropy(p_xy) - entropy(p_xy.sum(1))


def conditional_mutual_information(p_xyz: np.ndarray) -> float:
    """I(X;Y|Z) in bits of a joint `p_xyz[x, y, z]`."""
    p_xyz = as_distribution(p_xyz, 3, "p_xyz")
    return (entropy(p_xyz.sum(1)) + entropy(p_xyz.sum(0))
            - entropy(p_xyz) - entropy(p_xyz.sum((0, 1))))
