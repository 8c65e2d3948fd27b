"""The interface every uncertainty score follows (fit on training rows, score test rows; higher means
more in-distribution) and the row-batched evaluation of a jitted scoring function they share."""

from __future__ import annotations

from typing import Callable

import jax
import numpy as np

DEFAULT_BATCH_SIZE = 1024


class Score:
    """A score on rows of features (or logits): `fit` once on training rows, then `score` test rows.

    Test rows are scored `batch_size` at a time by a jitted function, so memory grows with
    `batch_size` (times the training-set size for kNN), never with the number of test rows squared.
    """

    def __init__(self, batch_size: int = DEFAULT_BATCH_SIZE):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    def fit(self, train_features, train_labels=None) -> "Score":
        """Learns what the score needs from `train_features` `[n, dim]` (and `train_labels` `[n]`)."""
        return self

    def score(self, test_features) -> np.ndarray:
        """Scores `[m]` of `test_features` `[m, dim]`; higher means more in-distribution."""
        raise NotImplementedError


def as_rows(values, name: str = "features", dtype=np.float32) -> np.ndarray:
    """`values` as a 2-D array `[n, dim]`, with a message naming it otherwise."""
    values = np.asarray(values, dtype)
    if values.ndim != 2 or values.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty [rows, dim] array, got shape {values.shape}")
    return values


def map_row_batches(fn: Callable[..., jax.Array], rows: np.ndarray, batch_size: int,
                    *state) -> np.ndarray:
    """`fn(batch [b, ...], *state) -> [b]` applied to `rows` `[n, ...]` in batches of `batch_size`.

    The last batch is padded to full size (padding rows discarded) so a jitted `fn` compiles once.
    """
    n = rows.shape[0]
    size = min(batch_size, n)
    outputs = []
    for start in range(0, n, size):
        batch = rows[start:start + size]
        if batch.shape[0] < size:
            padding = np.zeros((size - batch.shape[0],) + batch.shape[1:], batch.dtype)
            batch = np.concatenate([batch, padding])
        outputs.append(fn(batch, *state))
    return np.concatenate([np.asarray(o) for o in outputs])[:n]
