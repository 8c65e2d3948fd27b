"""Encoders of one feature vector per example: an MLP `[batch, features] -> [batch, out]`."""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx


ACTIVATIONS = {"relu": jax.nn.relu, "leaky_relu": lambda x: jax.nn.leaky_relu(x, negative_slope=0.1)}


class VectorMLP(nnx.Module):
    """Linear layers of widths `hidden` with `activation` after each, then a linear layer to `out`
    (FactorCL's synthetic backbones: `hidden=(512, 512, 512)`). `[batch, F] -> [batch, out]`.
    `activation`: "relu" or "leaky_relu" (slope 0.1); `final_activation`: also after the last layer
    (MultiBench's Vision&Touch proprioception encoder: 8-32-64-128-out, leaky ReLU after every layer)."""

    def __init__(self, n_features: int, *, hidden: Sequence[int] = (256,), out: int = 128, activation: str = "relu",
                 final_activation: bool = False, dtype=jnp.float32, rngs: nnx.Rngs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"mlp encoder: activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        widths = (n_features, *hidden, out)
        self.layers = nnx.List([nnx.Linear(a, b, dtype=dtype, rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.activation = activation
        self.final_activation = final_activation
        self.out_channels = out

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        if x.ndim != 2:
            raise ValueError(f"the mlp encoder expects vectors [batch, features], got shape {x.shape}")
        act = ACTIVATIONS[self.activation]
        for layer in self.layers[:-1]:
            x = act(layer(x))
        x = self.layers[-1](x)
        return act(x) if self.final_activation else x
