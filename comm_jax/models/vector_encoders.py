"""Encoders of one feature vector per example: an MLP `[batch, features] -> [batch, out]`."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


class VectorMLP(nnx.Module):
    """Linear layers of widths `hidden` with ReLU after each, then a linear layer to `out`
    (FactorCL's synthetic backbones: `hidden=(512, 512, 512)`). `[batch, F] -> [batch, out]`."""

    def __init__(self, n_features: int, *, hidden: Sequence[int] = (256,), out: int = 128, dtype=jnp.float32,
                 rngs: nnx.Rngs):
        widths = (n_features, *hidden, out)
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.out_channels = out

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2:
            raise ValueError(f"the mlp encoder expects vectors [batch, features], got shape {x.shape}")
        for layer in self.layers[:-1]:
            x = jax.nn.relu(layer(x))
        return self.layers[-1](x)
