"""Projection heads from Z to the loss space: the reference's MLP (Linear-BN-ReLU-Linear-BN-ReLU-Linear,
BatchNorm statistics per fusion mask), or CLIP's bias-free linear projection, one per mask."""

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


class LinearProjection(nnx.Module):
    """`[groups, batch, width]` -> `[groups, batch, out]` through a bias-free linear map per group.

    CLIP's projection as the reference's Trifeatures baseline has it (one per modality, weights
    N(0, width^-1/2)): Z reaches the loss through a linear map only, so whatever the loss must drop
    from the embedding, Z drops too; an MLP head can drop it instead, leaving it in Z.
    """

    def __init__(self, groups: int, width: int, out: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.kernel = nnx.Param(width ** -0.5 * jax.random.normal(rngs.params(), (groups, width, out)))
        self.dtype = dtype

    def __call__(self, z: jax.Array) -> jax.Array:
        if z.shape[0] != self.kernel.shape[0]:
            raise ValueError(f"LinearProjection has {self.kernel.shape[0]} groups, got Z for {z.shape[0]}")
        return jnp.einsum("gbw,gwo->gbo", z.astype(self.dtype), self.kernel[...].astype(self.dtype))
