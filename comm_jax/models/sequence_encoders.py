"""Encoders for feature sequences `[batch, steps, features]` -> `[batch, steps, width]`: a GRU and a
small pre-LN transformer encoder. Both pass the key-padding mask `[batch, steps]` through."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.adapters import sincos_1d
from comm_jax.models.transformer import TransformerStack


class GRUEncoder(nnx.Module):
    """Single-layer GRU returning every step's hidden state. Padding steps (valid False) are
    skipped: the hidden state is carried unchanged over them, as with packed sequences."""

    def __init__(self, n_features: int, hidden: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.cell = nnx.GRUCell(n_features, hidden, dtype=dtype, rngs=rngs)
        self.hidden = hidden
        self.out_channels = hidden

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        b, t, _ = x.shape
        valid_steps = jnp.ones((b, t), bool) if valid is None else valid
        carry = jnp.zeros((b, self.hidden), x.dtype if self.cell.dtype is None else self.cell.dtype)

        def step(cell, carry, inputs):
            xt, keep = inputs
            new_carry, out = cell(carry, xt)
            new_carry = jnp.where(keep[:, None], new_carry, carry)
            return new_carry, new_carry

        scan = nnx.scan(step, in_axes=(nnx.StateAxes({...: nnx.Carry}), nnx.Carry, 1), out_axes=(nnx.Carry, 1))
        _, outputs = scan(self.cell, carry, (x, valid_steps))
        return outputs


class TransformerSequenceEncoder(nnx.Module):
    """Linear (1x1 conv, no bias) to `width` + fixed 1D sin-cos positions (unless
    `positional_encoding=False`, as MultiBench's affect encoders) + pre-LN blocks whose feed-forward
    layer is `mlp_ratio * width` wide."""

    def __init__(self, n_features: int, width: int, *, depth: int = 2, heads: int = 4, mlp_ratio: int = 4,
                 positional_encoding: bool = True, max_length: int = 512, dtype=jnp.float32, rngs: nnx.Rngs):
        self.embed = nnx.Linear(n_features, width, use_bias=False, dtype=dtype, rngs=rngs)
        self.stack = TransformerStack(width, depth, heads, mlp_ratio=mlp_ratio, activation="relu", dtype=dtype,
                                      rngs=rngs)
        self.positional_encoding = positional_encoding
        self.max_length = max_length
        self.width = width
        self.out_channels = width

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        if x.shape[1] > self.max_length:
            raise ValueError(f"sequence of {x.shape[1]} steps exceeds max_length {self.max_length}")
        tokens = self.embed(x)
        if self.positional_encoding:
            tokens = tokens + jnp.asarray(sincos_1d(x.shape[1], self.width)).astype(tokens.dtype)
        return self.stack(tokens, valid)


class CausalConvEncoder(nnx.Module):
    """Vision&Touch's force encoder (MultiBench's robotics `ForceEncoder`): causal 1D convolutions of
    kernel 2 and stride 2, each followed by leaky ReLU (slope 0.1) and halving the steps: `[batch, 32, 6]`
    -> `[batch, 1, out]` with the default channels (16, 32, 64, 128) then `out`. As the reference's
    `CausalConv1D` (one step of zero padding on both sides, the last output dropped), output i of a layer
    sees its inputs 2i-1 and 2i, so output j of the stack sees the steps 32j-31 .. 32j only: of 32 steps,
    the first alone. Fixed-length input: no padding mask."""

    def __init__(self, n_features: int, *, out: int = 128, channels: tuple[int, ...] = (16, 32, 64, 128),
                 dtype=jnp.float32, rngs: nnx.Rngs):
        widths = (n_features, *channels, out)
        self.convs = nnx.List([nnx.Conv(a, b, kernel_size=(2,), strides=(2,), padding=((1, 1),), dtype=dtype,
                                        rngs=rngs) for a, b in zip(widths, widths[1:])])
        self.out_channels = out

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        for conv in self.convs:
            x = jax.nn.leaky_relu(conv(x)[:, :-1], negative_slope=0.1)
        return x
