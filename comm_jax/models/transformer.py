"""Pre-LayerNorm transformer blocks (multi-head self-attention + MLP) with key-padding masks.

Arrays carry any number of leading batch dimensions: `[..., tokens, width]`, so several fusion
passes can run stacked as `[passes, batch, tokens, width]` without reshaping a sharded batch axis.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx


def quick_gelu(x: jax.Array) -> jax.Array:
    """CLIP's GELU approximation x * sigmoid(1.702 x)."""
    return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "quick_gelu": quick_gelu, "gelu": jax.nn.gelu, "relu": jax.nn.relu}


class SelfAttention(nnx.Module):
    """Multi-head self-attention; queries may be a prefix of the tokens (e.g. the CLS token only)."""

    def __init__(self, width: int, heads: int, *, qkv_std: float, out_std: float,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        if width % heads:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.heads = heads
        self.dtype = dtype
        init = jax.nn.initializers.normal
        self.qkv = nnx.Linear(width, 3 * width, kernel_init=init(qkv_std), dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(width, width, kernel_init=init(out_std), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None,
                 num_queries: int | None = None) -> jax.Array:
        """x: `[..., T, width]`; valid: `[..., T]` bool (False = padding, never attended);
        num_queries: attend from the first `num_queries` tokens only. Returns `[..., Q, width]`."""
        *lead, t, width = x.shape
        head_dim = width // self.heads
        qkv = self.qkv(x).reshape(*lead, t, 3, self.heads, head_dim)
        q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
        if num_queries is not None:
            q = q[..., :num_queries, :, :]
        logits = jnp.einsum("...qhd,...khd->...hqk", q, k,
                            preferred_element_type=jnp.float32) * head_dim ** -0.5
        if valid is not None:
            logits = jnp.where(valid[..., None, None, :], logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("...hqk,...khd->...qhd", weights, v)
        return self.out(out.reshape(*out.shape[:-2], width))


class ResidualBlock(nnx.Module):
    """x + attn(LN(x)); x + MLP(LN(x)), MLP = Linear(w, r*w) - activation - Linear(r*w, w).

    Init follows CLIP: qkv std w^-0.5, output projections w^-0.5 (2L)^-0.5, fc (2w)^-0.5.
    """

    def __init__(self, width: int, heads: int, *, depth: int, mlp_ratio: int = 4,
                 activation: str = "quick_gelu", dtype=jnp.float32, rngs: nnx.Rngs):
        proj_std = width ** -0.5 * (2 * depth) ** -0.5
        init = jax.nn.initializers.normal
        self.ln_1 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.attn = SelfAttention(width, heads, qkv_std=width ** -0.5, out_std=proj_std,
                                  dtype=dtype, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)
        self.fc = nnx.Linear(width, mlp_ratio * width, kernel_init=init((2 * width) ** -0.5),
                             dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(mlp_ratio * width, width, kernel_init=init(proj_std),
                               dtype=dtype, rngs=rngs)
        self.activation = ACTIVATIONS[activation]

    def __call__(self, x: jax.Array, valid: jax.Array | None = None,
                 num_queries: int | None = None) -> jax.Array:
        """`[..., T, w]` -> `[..., T, w]`, or `[..., num_queries, w]` when only the first tokens'
        outputs are needed (the last fusion block computes the CLS token alone)."""
        residual = x if num_queries is None else x[..., :num_queries, :]
        x = residual + self.attn(self.ln_1(x), valid, num_queries)
        return x + self.proj(self.activation(self.fc(self.ln_2(x))))


class TransformerStack(nnx.Module):
    """`depth` residual blocks; with `cls_only` the last block computes token 0's output alone."""

    def __init__(self, width: int, depth: int, heads: int, *, mlp_ratio: int = 4,
                 activation: str = "quick_gelu", dtype=jnp.float32, rngs: nnx.Rngs):
        self.blocks = nnx.List([
            ResidualBlock(width, heads, depth=depth, mlp_ratio=mlp_ratio, activation=activation,
                          dtype=dtype, rngs=rngs) for _ in range(depth)])

    def __call__(self, x: jax.Array, valid: jax.Array | None = None,
                 cls_only: bool = False) -> jax.Array:
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            x = block(x, valid, num_queries=1 if (cls_only and last) else None)
        return x
