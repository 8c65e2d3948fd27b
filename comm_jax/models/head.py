"""Projection head Linear-BN-ReLU-Linear-BN-ReLU-Linear, with BatchNorm statistics per fusion mask."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


class GroupedBatchNorm(nnx.Module):
    """BatchNorm over `[groups, batch, features]` with batch statistics per group.

    The reference applies its head to each mask's representation separately, so each mask is
    normalised with its own batch statistics. Under a sharded jit the mean over the batch axis is
    over the global batch. Running statistics (for `use_running_average`) average the groups.
    """

    def __init__(self, features: int, *, momentum: float = 0.9, epsilon: float = 1e-5,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.scale = nnx.Param(jnp.ones((features,)))
        self.bias = nnx.Param(jnp.zeros((features,)))
        self.mean = nnx.BatchStat(jnp.zeros((features,)))
        self.var = nnx.BatchStat(jnp.ones((features,)))
        self.momentum, self.epsilon, self.dtype = momentum, epsilon, dtype
        self.use_running_average = False

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.use_running_average:
            mean, var = self.mean[...], self.var[...]
        else:
            xf = x.astype(jnp.float32)
            mean = xf.mean(axis=-2, keepdims=True)
            var = jnp.square(xf - mean).mean(axis=-2, keepdims=True)
            m = self.momentum
            self.mean[...] = m * self.mean[...] + (1 - m) * mean.reshape(-1, mean.shape[-1]).mean(0)
            self.var[...] = m * self.var[...] + (1 - m) * var.reshape(-1, var.shape[-1]).mean(0)
        y = (x.astype(jnp.float32) - mean) * jax.lax.rsqrt(var + self.epsilon)
        return (y * self.scale[...] + self.bias[...]).astype(self.dtype)


class ProjectionHead(nnx.Module):
    """`[groups, batch, width]` -> `[groups, batch, out]` through a 3-layer MLP with grouped BN."""

    def __init__(self, width: int, hidden: int = 512, out: int = 256, *, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        self.fc1 = nnx.Linear(width, hidden, dtype=dtype, rngs=rngs)
        self.bn1 = GroupedBatchNorm(hidden, dtype=dtype, rngs=rngs)
        self.fc2 = nnx.Linear(hidden, hidden, dtype=dtype, rngs=rngs)
        self.bn2 = GroupedBatchNorm(hidden, dtype=dtype, rngs=rngs)
        self.fc3 = nnx.Linear(hidden, out, dtype=dtype, rngs=rngs)

    def __call__(self, z: jax.Array) -> jax.Array:
        h = jax.nn.relu(self.bn1(self.fc1(z)))
        h = jax.nn.relu(self.bn2(self.fc2(h)))
        return self.fc3(h)
