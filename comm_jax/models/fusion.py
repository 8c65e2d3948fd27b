"""Fusion transformer: CLS token + pre-LN blocks over the tokens of a subset of modalities.

Masking a modality drops its tokens, exactly as the reference does: each subset's pass sees only
its modalities' tokens. Masks are static, so subsets are static token slices; subsets with the
same token count run as one stacked pass `[k, batch, tokens, width]`.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.transformer import TransformerStack

Subset = tuple[int, ...]


def comm_subsets(n_modalities: int) -> list[Subset]:
    """The n + 1 masks of CoMM: each modality alone, then all of them."""
    return [(i,) for i in range(n_modalities)] + [tuple(range(n_modalities))]


class FusionTransformer(nnx.Module):
    """Learnable CLS + `depth` pre-LN residual blocks + final LayerNorm; returns the CLS output."""

    def __init__(self, width: int, depth: int, heads: int, *, mlp_ratio: int = 4,
                 dtype=jnp.float32, rngs: nnx.Rngs):
        self.dtype = dtype
        self.cls = nnx.Param(width ** -0.5 * jax.random.normal(rngs.params(), (width,)))
        self.stack = TransformerStack(width, depth, heads, mlp_ratio=mlp_ratio, dtype=dtype, rngs=rngs)
        self.norm = nnx.LayerNorm(width, dtype=dtype, rngs=rngs)

    def _pass(self, tokens: jax.Array, valid: jax.Array | None) -> jax.Array:
        """tokens `[..., T, w]`, valid `[..., T]` or None -> CLS output `[..., w]`."""
        cls = jnp.broadcast_to(self.cls[...].astype(self.dtype), (*tokens.shape[:-2], 1, tokens.shape[-1]))
        x = jnp.concatenate([cls, tokens.astype(self.dtype)], axis=-2)
        if valid is not None:
            valid = jnp.concatenate([jnp.ones((*valid.shape[:-1], 1), bool), valid], axis=-1)
        return self.norm(self.stack(x, valid, cls_only=True)[..., 0, :])

    def __call__(self, tokens: Sequence[jax.Array], valid: Sequence[jax.Array | None] | None = None,
                 subsets: Sequence[Subset] | None = None) -> jax.Array:
        """tokens: per modality `[batch, T_i, width]`; valid: per modality `[batch, T_i]` bool or
        None (all valid); subsets: which modalities each pass sees (default: all).
        Returns `[len(subsets), batch, width]`."""
        subsets = [tuple(range(len(tokens)))] if subsets is None else [tuple(s) for s in subsets]
        if valid is None or all(v is None for v in valid):
            valid = None
        else:
            valid = [jnp.ones(t.shape[:2], bool) if v is None else v for t, v in zip(tokens, valid)]
        by_length: dict[int, list[int]] = {}
        for k, subset in enumerate(subsets):
            by_length.setdefault(sum(tokens[i].shape[1] for i in subset), []).append(k)
        outputs: dict[int, jax.Array] = {}
        for members in by_length.values():
            stacked = jnp.stack([jnp.concatenate([tokens[i] for i in subsets[k]], axis=1) for k in members])
            stacked_valid = None if valid is None else jnp.stack(
                [jnp.concatenate([valid[i] for i in subsets[k]], axis=1) for k in members])
            fused = self._pass(stacked, stacked_valid)
            outputs |= {k: fused[j] for j, k in enumerate(members)}
        return jnp.stack([outputs[k] for k in range(len(subsets))])
