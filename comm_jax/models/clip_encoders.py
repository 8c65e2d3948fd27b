"""Pretrained CLIP towers as frozen encoders of the registry: `clip_vision` and `clip_text`, read from the
encoder spec's `weights=PATH` by `load_clip`, run inside the train step without being trained.

Frozen means: the towers' weights are `FrozenParam` variables (a subclass of `nnx.Param`, so they ride with the
model's parameters into checkpoints, evaluation and export); the train step splits them off
(`comm_jax.train_state.split_frozen`) before differentiating, so they get no gradient and the optimizer neither
sees them nor holds state for them; and the towers' outputs pass through `jax.lax.stop_gradient`, so nothing is
back-propagated into the towers even when the model is differentiated as a whole.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.clip import Clip, load_clip, preprocess


class FrozenParam(nnx.Param):
    """A pretrained weight the train step never updates (no optimizer state, no gradient)."""


def is_frozen(variable) -> bool:
    return isinstance(variable, FrozenParam)


@functools.lru_cache(maxsize=4)
def cached_clip(weights: str) -> Clip:
    """`load_clip(weights)` once per process (float32): the config, the model and the pipeline's tokenizer
    share it."""
    return load_clip(weights)


def frozen_copy(module: nnx.Module, dtype) -> nnx.Module:
    """A copy of `module` (sharing its arrays) whose parameters are `FrozenParam`s, computing in `dtype`."""
    graphdef, state = nnx.split(module)
    copy = nnx.merge(graphdef, state)
    for _, sub in nnx.iter_modules(copy):
        for name, value in list(vars(sub).items()):
            if isinstance(value, nnx.Param):
                setattr(sub, name, FrozenParam(value.get_value()))
        if hasattr(sub, "dtype"):
            sub.dtype = dtype
    return copy


def text_valid(token_ids: jax.Array) -> jax.Array:
    """`[batch, L]` ids (start, tokens, end, zero padding) -> bool `[batch, L]`, True up to and including the
    last non-zero id (the end-of-text token), as the feature extraction's `text_lengths`."""
    nonzero = token_ids != 0
    length = jnp.where(nonzero.any(axis=1), token_ids.shape[1] - jnp.argmax(nonzero[:, ::-1], axis=1), 0)
    return jnp.arange(token_ids.shape[1])[None, :] < length[:, None]


class ClipVisionEncoder(nnx.Module):
    """float `[batch, S, S, 3]` in [0, 1], S the tower's image size (the poster already resized and
    centre-cropped, `data.image_sizes`) -> the frozen ViT's tokens `[batch, 1 + grid**2, width]`, normalised
    with the checkpoint's mean/std inside the step as `Clip.image_tokens` does."""

    gives_mask = False

    def __init__(self, n_channels: int, *, weights: str, dtype, rngs: nnx.Rngs | None = None):
        clip = cached_clip(weights)
        self.frozen = frozen_copy(clip._need("vision"), dtype)
        self.image_size = clip.image_size
        self.mean, self.std = clip.mean, clip.std
        self.out_channels = clip.vision_spec.width
        if n_channels != 3:
            raise ValueError(f"clip_vision takes RGB images [S, S, 3]; input_shape ends with {n_channels}")

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        if x.shape[1:3] != (self.image_size, self.image_size):
            raise ValueError(f"clip_vision expects images [batch, {self.image_size}, {self.image_size}, 3] "
                             f"(set data.image_sizes), got {x.shape}")
        pixels = preprocess(x, self.image_size, self.mean, self.std)
        return jax.lax.stop_gradient(self.frozen(pixels).tokens.astype(jnp.float32))


class ClipTextEncoder(nnx.Module):
    """int `[batch, L]` token ids (CLIP's tokenizer, `data.tokenizer`) -> (the frozen text transformer's tokens
    `[batch, L, width]`, zero after the end-of-text token, and their key-padding mask `[batch, L]`)."""

    gives_mask = True

    def __init__(self, n_features: int, *, weights: str, dtype, rngs: nnx.Rngs | None = None):
        clip = cached_clip(weights)
        self.frozen = frozen_copy(clip._need("text"), dtype)
        self.context_length = clip.context_length
        self.out_channels = clip.text_spec.width

    def __call__(self, token_ids: jax.Array, valid: jax.Array | None = None) -> tuple[jax.Array, jax.Array]:
        if token_ids.ndim != 2 or token_ids.shape[1] > self.context_length:
            raise ValueError(f"clip_text expects token ids [batch, <= {self.context_length}], got {token_ids.shape}")
        token_ids = token_ids.astype(jnp.int32)
        tokens = jax.lax.stop_gradient(self.frozen(token_ids).tokens.astype(jnp.float32))
        mask = text_valid(token_ids)
        return jnp.where(mask[..., None], tokens, 0.0), mask


CLIP_ENCODERS = {"clip_vision": ClipVisionEncoder, "clip_text": ClipTextEncoder}
