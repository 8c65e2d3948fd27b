"""Label-free scores on features: deep k-nearest neighbours (Sun et al. 2022) and SSD (Sehwag et al.
2021), with the k-means (seeded k-means++ init, then Lloyd's iterations) that SSD clusters with.

- kNN: training and test rows L2-normalised; score = `-||z - z_(k)||`, the negated Euclidean distance
  to the k-th nearest training row. Each test batch is compared with the whole training bank, so
  memory is `batch_size x n_train`. Scoring the training rows themselves counts each row as its
  own nearest neighbour.
- SSD: rows L2-normalised (as SSD does for contrastive features, `l2_normalize=False` skips it),
  clustered by k-means; the score is the Mahalanobis score with the clusters as classes. The
  covariance is shared by the clusters and shrunk (see `gaussian_scores`), where SSD estimates one
  per cluster: a tied covariance stays well-conditioned with few rows per cluster.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from comm_jax.uncertainty.gaussian_scores import LEDOIT_WOLF, Mahalanobis
from comm_jax.uncertainty.score_base import DEFAULT_BATCH_SIZE, Score, as_rows, map_row_batches


def _unit_rows(rows: jax.Array) -> jax.Array:
    return rows / jnp.maximum(jnp.linalg.norm(rows, axis=-1, keepdims=True), 1e-12)


def _squared_distances_to(rows: jax.Array, centres: jax.Array) -> jax.Array:
    """`[n, k]` squared Euclidean distances of rows `[n, dim]` to centres `[k, dim]`."""
    distances = (jnp.sum(rows ** 2, axis=-1, keepdims=True) - 2 * rows @ centres.T
                 + jnp.sum(centres ** 2, axis=-1))
    return jnp.maximum(distances, 0.0)


def kth_largest(values: jax.Array, k: int) -> jax.Array:
    """The k-th largest entry `[...]` of each row of float32 `values` `[..., n]`, exactly.

    A 32-step bisection on the float's bits mapped to an order-preserving uint32: each step counts
    the entries at or above the midpoint. XLA's CPU `top_k` sorts whole rows and is several times
    slower on a `[batch, n_train]` similarity block.
    """
    bits = jax.lax.bitcast_convert_type(values.astype(jnp.float32), jnp.uint32)
    ordered = jnp.where(bits >> 31 == 1, ~bits, bits | jnp.uint32(0x80000000))
    low = jnp.zeros(values.shape[:-1], jnp.uint32)                      # count(ordered >= low) >= k
    high = jnp.full(values.shape[:-1], 0xFFFFFFFF, jnp.uint32)          # the answer is <= high

    def halve(_, bounds):
        low, high = bounds
        middle = low + (high - low) // 2 + (low < high).astype(jnp.uint32)
        enough = jnp.sum(ordered >= middle[..., None], axis=-1) >= k
        return jnp.where(enough, middle, low), jnp.where(enough, high, middle - 1)

    low, _ = jax.lax.fori_loop(0, 32, halve, (low, high))
    bits = jnp.where(low >> 31 == 1, low & jnp.uint32(0x7FFFFFFF), ~low)
    return jax.lax.bitcast_convert_type(bits, jnp.float32)


@partial(jax.jit, static_argnames="k")
def _kth_neighbour_score(batch: jax.Array, bank: jax.Array, k: int) -> jax.Array:
    similarities = _unit_rows(batch) @ bank.T                            # [b, n_train]
    kth_similarity = kth_largest(similarities, k)
    return -jnp.sqrt(jnp.maximum(2 - 2 * kth_similarity, 0.0))          # unit rows: |a-b|^2 = 2 - 2 a.b


class KNN(Score):
    """`-` distance from the L2-normalised test row to its k-th nearest L2-normalised training row."""

    def __init__(self, k: int = 50, batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(batch_size)
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = int(k)
        self.bank: jax.Array | None = None

    def fit(self, train_features, train_labels=None) -> "KNN":
        rows = as_rows(train_features, "train_features")
        if self.k > rows.shape[0]:
            raise ValueError(f"k={self.k} exceeds the {rows.shape[0]} training rows")
        self.bank = _unit_rows(jnp.asarray(rows))
        return self

    def score(self, test_features) -> np.ndarray:
        if self.bank is None:
            raise RuntimeError("KNN.fit must run before scoring")
        rows = as_rows(test_features, "test_features")
        if rows.shape[1] != self.bank.shape[1]:
            raise ValueError(f"test_features have {rows.shape[1]} columns, training had {self.bank.shape[1]}")
        return map_row_batches(partial(_kth_neighbour_score, k=self.k), rows, self.batch_size, self.bank)


@partial(jax.jit, static_argnames="num_clusters")
def kmeans_plus_plus_init(rows: jax.Array, num_clusters: int, key: jax.Array) -> jax.Array:
    """k-means++ centres `[num_clusters, dim]` of `rows` `[n, dim]`: the first uniformly at random,
    each next one drawn with probability proportional to the squared distance to the nearest chosen."""
    first_key, key = jax.random.split(key)
    first = rows[jax.random.randint(first_key, (), 0, rows.shape[0])]
    centres = jnp.zeros((num_clusters, rows.shape[1]), rows.dtype).at[0].set(first)
    nearest = _squared_distances_to(rows, first[None])[:, 0]

    def add_centre(i, state):
        centres, nearest, key = state
        key, draw_key = jax.random.split(key)
        # Once every row coincides with a centre, draw uniformly (duplicate centres, empty clusters).
        logits = jnp.where(jnp.any(nearest > 0), jnp.log(nearest), jnp.zeros_like(nearest))
        chosen = rows[jax.random.categorical(draw_key, logits)]
        nearest = jnp.minimum(nearest, _squared_distances_to(rows, chosen[None])[:, 0])
        return centres.at[i].set(chosen), nearest, key

    centres, _, _ = jax.lax.fori_loop(1, num_clusters, add_centre, (centres, nearest, key))
    return centres


@partial(jax.jit, static_argnames="max_iters")
def lloyd(rows: jax.Array, centres: jax.Array, max_iters: int = 100) -> tuple[jax.Array, jax.Array]:
    """Lloyd's iterations from `centres` `[k, dim]`: assign each row `[n, dim]` to its nearest centre,
    move each centre to the mean of its rows (an empty cluster keeps its centre), until the
    assignment stops changing or `max_iters`. Returns centres `[k, dim]` and assignments `[n]`."""
    num_clusters = centres.shape[0]

    def assign(centres):
        return jnp.argmin(_squared_distances_to(rows, centres), axis=-1)

    def means(assignment, centres):
        sums = jax.ops.segment_sum(rows, assignment, num_clusters)
        counts = jax.ops.segment_sum(jnp.ones(rows.shape[0], rows.dtype), assignment, num_clusters)
        return jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1)[:, None], centres)

    def not_done(state):
        iteration, _, _, changed = state
        return (iteration < max_iters) & changed

    def step(state):
        iteration, centres, assignment, _ = state
        new_assignment = assign(centres)
        return iteration + 1, means(new_assignment, centres), new_assignment, jnp.any(new_assignment != assignment)

    assignment = assign(centres)
    state = (jnp.int32(1), means(assignment, centres), assignment, jnp.bool_(True))
    _, centres, assignment, _ = jax.lax.while_loop(not_done, step, state)
    return centres, assignment


def kmeans(rows, num_clusters: int, seed: int = 0, max_iters: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """k-means of `rows` `[n, dim]`: seeded k-means++ init then `lloyd`; centres `[k, dim]`, assignments `[n]`."""
    rows = jnp.asarray(as_rows(rows, "rows"))
    if not 1 <= num_clusters <= rows.shape[0]:
        raise ValueError(f"num_clusters={num_clusters} must be in [1, {rows.shape[0]}] (the row count)")
    initial = kmeans_plus_plus_init(rows, num_clusters, jax.random.key(seed))
    centres, assignment = lloyd(rows, initial, max_iters)
    return np.asarray(centres), np.asarray(assignment)


class SSD(Score):
    """Mahalanobis score to the nearest k-means cluster of the (L2-normalised) training rows."""

    def __init__(self, num_clusters: int = 10, shrinkage: float | str = LEDOIT_WOLF,
                 l2_normalize: bool = True, seed: int = 0, max_iters: int = 100,
                 batch_size: int = DEFAULT_BATCH_SIZE):
        super().__init__(batch_size)
        self.num_clusters, self.l2_normalize = int(num_clusters), l2_normalize
        self.seed, self.max_iters = seed, max_iters
        self.gaussians = Mahalanobis(shrinkage, batch_size)

    def _prepare(self, features, name: str) -> np.ndarray:
        rows = as_rows(features, name)
        return np.asarray(_unit_rows(jnp.asarray(rows))) if self.l2_normalize else rows

    def fit(self, train_features, train_labels=None) -> "SSD":
        rows = self._prepare(train_features, "train_features")
        self.centres, self.assignment = kmeans(rows, self.num_clusters, self.seed, self.max_iters)
        self.gaussians.fit(rows, self.assignment)
        return self

    def score(self, test_features) -> np.ndarray:
        return self.gaussians.score(self._prepare(test_features, "test_features"))
