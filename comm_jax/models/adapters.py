"""Latent converters: an encoder's output -> tokens `[batch, tokens, width]` for the fusion transformer."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx


def sincos_2d(height: int, width: int, dim: int, temperature: float = 10000.0) -> np.ndarray:
    """Fixed 2D sin-cos position embedding `[height * width, dim]` (MoCo v3 / MultiMAE layout:
    sin and cos of the row index fill the first half of the dims, of the column index the second)."""
    if dim % 4:
        raise ValueError(f"2D sin-cos position embedding needs a width divisible by 4, got {dim}")
    omega = 1.0 / temperature ** (np.arange(dim // 4, dtype=np.float64) / (dim // 4))
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    r = rows.reshape(-1, 1) * omega
    c = cols.reshape(-1, 1) * omega
    return np.concatenate([np.sin(r), np.cos(r), np.sin(c), np.cos(c)], axis=1).astype(np.float32)


def sincos_1d(length: int, dim: int) -> np.ndarray:
    """Fixed 1D sin-cos position embedding `[length, dim]` (Transformer, interleaved sin/cos)."""
    if dim % 2:
        raise ValueError(f"1D sin-cos position embedding needs an even width, got {dim}")
    div = np.exp(np.arange(0, dim, 2) * -(np.log(10000.0) / dim))
    pos = np.arange(length)[:, None] * div
    out = np.zeros((length, dim), np.float32)
    out[:, 0::2], out[:, 1::2] = np.sin(pos), np.cos(pos)
    return out


class PatchAdapter(nnx.Module):
    """Feature map `[batch, h, w, channels]` -> 1x1 conv to `width` + fixed 2D sin-cos position
    embedding -> `[batch, h * w, width]`. The embedding is built for `base_grid` (default: the
    actual grid) and bicubically interpolated to the actual grid when they differ."""

    def __init__(self, channels: int, width: int, *, base_grid: tuple[int, int] | None = None,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.proj = nnx.Linear(channels, width, dtype=dtype, rngs=rngs)
        self.width = width
        self.base_grid = None if base_grid is None else tuple(base_grid)

    def position_embedding(self, h: int, w: int) -> jax.Array:
        base_h, base_w = self.base_grid or (h, w)
        table = sincos_2d(base_h, base_w, self.width)
        if (base_h, base_w) == (h, w):
            return jnp.asarray(table)
        grid = jnp.asarray(table).reshape(base_h, base_w, self.width)
        return jax.image.resize(grid, (h, w, self.width), "bicubic").reshape(h * w, self.width)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None):
        b, h, w, _ = x.shape
        tokens = self.proj(x).reshape(b, h * w, self.width)
        return tokens + self.position_embedding(h, w).astype(tokens.dtype), valid


class TabularAdapter(nnx.Module):
    """Per-feature tokens: scalar feature j -> x_j * W_j + b_j. `[batch, F]` -> `[batch, F, width]`."""

    def __init__(self, n_features: int, width: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (n_features, width)))
        self.bias = nnx.Param(jax.random.normal(rngs.params(), (n_features, width)))
        self.dtype = dtype

    def __call__(self, x: jax.Array, valid: jax.Array | None = None):
        if x.ndim != 2 or x.shape[1] != self.weight[...].shape[0]:
            raise ValueError(f"tabular adapter expects [batch, {self.weight[...].shape[0]}], got {x.shape}")
        tokens = x[..., None].astype(self.dtype) * self.weight[...].astype(self.dtype)
        return tokens + self.bias[...].astype(self.dtype), valid


class VectorAdapter(nnx.Module):
    """One vector per example -> one token: `[batch, F]` -> `[batch, 1, width]` (a linear map
    when F differs from width, else the vector itself)."""

    def __init__(self, n_features: int, width: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.proj = None if n_features == width else nnx.Linear(n_features, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None):
        x = x if self.proj is None else self.proj(x)
        return x[:, None, :], None


class IdentityAdapter(nnx.Module):
    """Tokens already of the fusion width: `[batch, T, width]` passes through unchanged."""

    def __init__(self, n_features: int, width: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        if n_features != width:
            raise ValueError(f"identity adapter needs encoder width {n_features} == fusion width {width}")

    def __call__(self, x: jax.Array, valid: jax.Array | None = None):
        return x, valid


class LinearTokenAdapter(nnx.Module):
    """Tokens of another width (a frozen encoder's features): `[batch, T, F]` -> a shared linear map ->
    `[batch, T, width]`; the key-padding mask passes through."""

    def __init__(self, n_features: int, width: int, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.proj = nnx.Linear(n_features, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None):
        return self.proj(x), valid


ADAPTERS = {"patch": PatchAdapter, "tabular": TabularAdapter, "vector": VectorAdapter,
            "identity": IdentityAdapter, "linear": LinearTokenAdapter}
