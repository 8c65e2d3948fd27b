"""Synthetic bimodal data of known PID: discrete latents x1, x2, y drawn from a rule (unique,
redundant, synergistic) and each modality's latent embedded as Gaussian blobs in feature space."""

from __future__ import annotations

import dataclasses

import numpy as np

from comm_jax.information.discretise import empirical_joint

RULES = ("unique", "redundant", "synergy")


@dataclasses.dataclass(frozen=True)
class BlobPIDCase:
    """features1 [n, dim], features2 [n, dim], labels [n]; latent1, latent2 [n] the discrete
    generating variables, whose empirical joint `latent_joint` p[x1, x2, y] has the true PID."""

    features1: np.ndarray
    features2: np.ndarray
    labels: np.ndarray
    latent1: np.ndarray
    latent2: np.ndarray
    latent_joint: np.ndarray


def latent_variables(rule: str, n: int, rng: np.random.Generator, levels: int = 4
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x1, x2, y) [n] each. unique: x1, x2 independent in [0, levels), y = x1 (U1 = log2 levels).
    redundant: x1 = x2 = y uniform in [0, levels) (R = log2 levels). synergy: x1, x2 independent
    bits, y = x1 xor x2 (S = 1)."""
    if rule == "unique":
        x1, x2 = rng.integers(levels, size=n), rng.integers(levels, size=n)
        return x1, x2, x1.copy()
    if rule == "redundant":
        shared = rng.integers(levels, size=n)
        return shared, shared.copy(), shared.copy()
    if rule == "synergy":
        x1, x2 = rng.integers(2, size=n), rng.integers(2, size=n)
        return x1, x2, x1 ^ x2
    raise ValueError(f"unknown rule {rule!r}; known: {RULES}")


def embed_as_blobs(latent: np.ndarray, dim: int, separation: float, rng: np.random.Generator
                   ) -> np.ndarray:
    """Features [n, dim]: a random centre per latent value (pairwise distance about
    `separation` noise standard deviations) plus unit Gaussian noise."""
    values = int(latent.max()) + 1
    centres = rng.normal(size=(values, dim)) * separation / np.sqrt(2 * dim)
    return centres[latent] + rng.normal(size=(len(latent), dim))


def blob_pid_case(rule: str, n: int = 2000, dim: int = 8, separation: float = 12.0,
                  levels: int = 4, seed: int = 0) -> BlobPIDCase:
    """A synthetic case of `rule` (see `latent_variables`) with each latent embedded in `dim`-d."""
    rng = np.random.default_rng(seed)
    x1, x2, y = latent_variables(rule, n, rng, levels)
    features1 = embed_as_blobs(x1, dim, separation, rng)
    features2 = embed_as_blobs(x2, dim, separation, rng)
    return BlobPIDCase(features1, features2, y, x1, x2, empirical_joint(x1, x2, y))
