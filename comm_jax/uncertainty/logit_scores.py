"""Scores from a probe's logits `[n, classes]`: maximum softmax probability, maximum logit, energy and
GEN (generalised entropy). They need no training data; `fit` only checks nothing is amiss.

- MSP (Hendrycks & Gimpel 2017): `max_c softmax(logits)_c`.
- Max-logit (Hendrycks et al. 2022): `max_c logits_c`.
- Energy (Liu et al. 2020): `T * logsumexp(logits / T)` (the negative free energy).
- GEN (Liu, Lochman & Zach, CVPR 2023): with p the softmax probabilities and p_(1) >= p_(2) >= ...
  sorted, `G = sum_{j=1..M} p_(j)^gamma (1 - p_(j))^gamma` over the M largest; the score is `-G`.
  Defaults gamma = 0.1 and M = 100 (the paper's ImageNet setting); M is capped at the class count.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from comm_jax.uncertainty.score_base import DEFAULT_BATCH_SIZE, Score, as_rows, map_row_batches


@jax.jit
def _msp(logits: jax.Array) -> jax.Array:
    return jnp.max(jax.nn.softmax(logits, axis=-1), axis=-1)


@jax.jit
def _max_logit(logits: jax.Array) -> jax.Array:
    return jnp.max(logits, axis=-1)


@jax.jit
def _energy(logits: jax.Array, temperature: float) -> jax.Array:
    return temperature * jax.nn.logsumexp(logits / temperature, axis=-1)


@partial(jax.jit, static_argnames="top_m")
def _gen(logits: jax.Array, gamma: float, top_m: int) -> jax.Array:
    probabilities = jax.nn.softmax(logits, axis=-1)
    largest, _ = jax.lax.top_k(probabilities, top_m)
    return -jnp.sum(largest ** gamma * (1 - largest) ** gamma, axis=-1)


class _LogitScore(Score):
    def score(self, test_logits) -> np.ndarray:
        """Scores `[m]` of probe logits `[m, classes]`; higher means more in-distribution."""
        logits = as_rows(test_logits, "logits")
        return map_row_batches(self._batch_score, logits, self.batch_size)

    def _batch_score(self, logits: jax.Array) -> jax.Array:
        raise NotImplementedError


class MSP(_LogitScore):
    """Maximum softmax probability of the logits."""

    def _batch_score(self, logits):
        return _msp(logits)


class MaxLogit(_LogitScore):
    """Largest logit."""

    def _batch_score(self, logits):
        return _max_logit(logits)


class Energy(_LogitScore):
    """`T * logsumexp(logits / T)`, T = `temperature`."""

    def __init__(self, temperature: float = 1.0, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(batch_size)
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        self.temperature = float(temperature)

    def _batch_score(self, logits):
        return _energy(logits, self.temperature)


class GEN(_LogitScore):
    """Negative generalised entropy of the `top_m` largest softmax probabilities (module docstring)."""

    def __init__(self, gamma: float = 0.1, top_m: int = 100, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(batch_size)
        if not 0 < gamma < 1:
            raise ValueError(f"gamma must be in (0, 1), got {gamma}")
        if top_m < 1:
            raise ValueError(f"top_m must be >= 1, got {top_m}")
        self.gamma, self.top_m = float(gamma), int(top_m)

    def _batch_score(self, logits):
        return _gen(logits, self.gamma, min(self.top_m, logits.shape[-1]))
