"""CLIP's two towers in Flax NNX: the vision transformer (ViT, conv patches + class token) and the
causal text transformer, with configurable sizes so any CLIP checkpoint's shapes can be built."""

from __future__ import annotations

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.transformer import quick_gelu

# By Hugging Face's names: `gelu` is exact (erf), unlike jax.nn.gelu's default; the others its tanh form.
ACTIVATIONS = {"quick_gelu": quick_gelu, "gelu": lambda x: jax.nn.gelu(x, approximate=False),
               "gelu_new": jax.nn.gelu, "gelu_pytorch_tanh": jax.nn.gelu}


@dataclasses.dataclass(frozen=True)
class VisionSpec:
    """Sizes of a CLIP vision transformer; `embed_dim` None means no visual projection."""
    width: int
    layers: int
    heads: int
    patch: int
    image_size: int
    mlp_width: int
    embed_dim: int | None = None
    activation: str = "quick_gelu"
    eps: float = 1e-5

    @property
    def grid(self) -> int:
        return self.image_size // self.patch


@dataclasses.dataclass(frozen=True)
class TextSpec:
    """Sizes of a CLIP text transformer; `embed_dim` None means no text projection."""
    width: int
    layers: int
    heads: int
    vocab_size: int
    context_length: int
    mlp_width: int
    embed_dim: int | None = None
    activation: str = "quick_gelu"
    eps: float = 1e-5


class TowerOutput(NamedTuple):
    """tokens: `[batch, tokens, width]` last hidden states; pooled: `[batch, width]`;
    embedding: `[batch, embed_dim]` (the pooled output projected; pooled itself without projection)."""
    tokens: jax.Array
    pooled: jax.Array
    embedding: jax.Array


def _check_heads(width: int, heads: int) -> None:
    if heads <= 0 or width % heads:
        raise ValueError(f"width {width} is not divisible by heads {heads}")


class ClipAttention(nnx.Module):
    """Multi-head self-attention with fused q/k/v projections and an optional boolean mask."""

    def __init__(self, width: int, heads: int, *, dtype, rngs: nnx.Rngs):
        _check_heads(width, heads)
        self.heads = heads
        self.dtype = dtype
        self.qkv = nnx.Linear(width, 3 * width, dtype=dtype, rngs=rngs)
        self.out = nnx.Linear(width, width, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """x: `[batch, T, width]`; mask: `[T, T]` bool, True where query q may attend to key k."""
        b, t, width = x.shape
        head_dim = width // self.heads
        qkv = self.qkv(x).reshape(b, t, 3, self.heads, head_dim)
        q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
        logits = jnp.einsum("bqhd,bkhd->bhqk", q * head_dim ** -0.5, k, preferred_element_type=jnp.float32)
        if mask is not None:
            logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
        weights = jax.nn.softmax(logits, axis=-1).astype(self.dtype)
        out = jnp.einsum("bhqk,bkhd->bqhd", weights, v)
        return self.out(out.reshape(b, t, width))


class ClipBlock(nnx.Module):
    """Residual attention block: x + attn(LN(x)); x + MLP(LN(x)) with CLIP's activation."""

    def __init__(self, width: int, heads: int, mlp_width: int, *, activation: str, eps: float, dtype,
                 rngs: nnx.Rngs):
        if activation not in ACTIVATIONS:
            raise ValueError(f"activation must be one of {tuple(ACTIVATIONS)}, got {activation!r}")
        self.ln_1 = nnx.LayerNorm(width, epsilon=eps, dtype=dtype, rngs=rngs)
        self.attn = ClipAttention(width, heads, dtype=dtype, rngs=rngs)
        self.ln_2 = nnx.LayerNorm(width, epsilon=eps, dtype=dtype, rngs=rngs)
        self.fc = nnx.Linear(width, mlp_width, dtype=dtype, rngs=rngs)
        self.proj = nnx.Linear(mlp_width, width, dtype=dtype, rngs=rngs)
        self.activation = activation

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        x = x + self.attn(self.ln_1(x), mask)
        return x + self.proj(ACTIVATIONS[self.activation](self.fc(self.ln_2(x))))


class ClipEncoder(nnx.Module):
    """`layers` residual attention blocks."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, *, activation: str, eps: float,
                 dtype, rngs: nnx.Rngs):
        self.blocks = nnx.List([ClipBlock(width, heads, mlp_width, activation=activation, eps=eps, dtype=dtype,
                                          rngs=rngs) for _ in range(layers)])

    def __call__(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        for block in self.blocks:
            x = block(x, mask)
        return x


def _embedding_param(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> nnx.Param:
    return nnx.Param(jax.random.normal(rngs.params(), shape, jnp.float32) * std)


class ClipVision(nnx.Module):
    """CLIP ViT: patches (conv without bias) + class token + positions -> pre-LN -> blocks; the class
    token's output after post-LN is the pooled output, projected by the visual projection if any."""

    def __init__(self, spec: VisionSpec, *, dtype=jnp.float32, rngs: nnx.Rngs):
        w, p = spec.width, spec.patch
        if spec.image_size % p:
            raise ValueError(f"image size {spec.image_size} is not a multiple of the patch size {p}")
        self.spec = spec
        self.dtype = dtype
        self.patch_embed = nnx.Conv(3, w, kernel_size=(p, p), strides=(p, p), padding="VALID", use_bias=False,
                                    dtype=dtype, rngs=rngs)
        self.class_embedding = _embedding_param(rngs, (w,), w ** -0.5)
        self.positional_embedding = _embedding_param(rngs, (spec.grid ** 2 + 1, w), w ** -0.5)
        self.ln_pre = nnx.LayerNorm(w, epsilon=spec.eps, dtype=dtype, rngs=rngs)
        self.transformer = ClipEncoder(w, spec.layers, spec.heads, spec.mlp_width, activation=spec.activation,
                                       eps=spec.eps, dtype=dtype, rngs=rngs)
        self.ln_post = nnx.LayerNorm(w, epsilon=spec.eps, dtype=dtype, rngs=rngs)
        self.projection = (nnx.Linear(w, spec.embed_dim, use_bias=False, dtype=dtype, rngs=rngs)
                           if spec.embed_dim else None)

    def __call__(self, pixels: jax.Array) -> TowerOutput:
        """pixels: `[batch, image_size, image_size, 3]`, already normalised with CLIP's mean/std.
        tokens: `[batch, 1 + grid**2, width]` (class token first), before the post-LN."""
        x = self.patch_embed(pixels.astype(self.dtype))
        b = x.shape[0]
        x = x.reshape(b, -1, x.shape[-1])
        cls = jnp.broadcast_to(self.class_embedding[...].astype(x.dtype), (b, 1, x.shape[-1]))
        x = jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...].astype(x.dtype)
        tokens = self.transformer(self.ln_pre(x))
        pooled = self.ln_post(tokens[:, 0])
        embedding = self.projection(pooled) if self.projection is not None else pooled
        return TowerOutput(tokens, pooled, embedding)


class ClipText(nnx.Module):
    """CLIP text transformer: token + position embeddings -> causal blocks -> final LN; the output at
    the end-of-text token (the largest id of each row) is pooled, projected by the text projection if any."""

    def __init__(self, spec: TextSpec, *, dtype=jnp.float32, rngs: nnx.Rngs):
        w = spec.width
        self.spec = spec
        self.dtype = dtype
        self.token_embedding = nnx.Embed(spec.vocab_size, w, dtype=dtype, rngs=rngs)
        self.positional_embedding = _embedding_param(rngs, (spec.context_length, w), 0.01)
        self.transformer = ClipEncoder(w, spec.layers, spec.heads, spec.mlp_width, activation=spec.activation,
                                       eps=spec.eps, dtype=dtype, rngs=rngs)
        self.ln_final = nnx.LayerNorm(w, epsilon=spec.eps, dtype=dtype, rngs=rngs)
        self.projection = (nnx.Linear(w, spec.embed_dim, use_bias=False, dtype=dtype, rngs=rngs)
                           if spec.embed_dim else None)

    def __call__(self, token_ids: jax.Array) -> TowerOutput:
        """token_ids: `[batch, L]` int, L <= context_length, each row ending with its end-of-text token
        (the vocabulary's largest id) and then padding. tokens: `[batch, L, width]` after the final LN."""
        length = token_ids.shape[-1]
        if length > self.spec.context_length:
            raise ValueError(f"{length} tokens exceed the context length {self.spec.context_length}")
        x = self.token_embedding(token_ids) + self.positional_embedding[:length].astype(self.dtype)
        causal = jnp.tril(jnp.ones((length, length), bool))
        tokens = self.ln_final(self.transformer(x, causal))
        end = jnp.argmax(token_ids, axis=-1)
        pooled = jnp.take_along_axis(tokens, end[:, None, None], axis=1)[:, 0]
        embedding = self.projection(pooled) if self.projection is not None else pooled
        return TowerOutput(tokens, pooled, embedding)


class ClipTowers(nnx.Module):
    """Both towers (either may be absent, e.g. a vision-only checkpoint)."""

    def __init__(self, vision: VisionSpec | None, text: TextSpec | None, *, dtype=jnp.float32, rngs: nnx.Rngs):
        self.vision = ClipVision(vision, dtype=dtype, rngs=rngs) if vision else None
        self.text = ClipText(text, dtype=dtype, rngs=rngs) if text else None
