"""The encoder registry: one modality's input -> feature map or sequence, by the name a model config gives."""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.image_encoders import AlexNetFeatures, ResNet18Trunk, SmallCNN
from comm_jax.models.sequence_encoders import CausalConvEncoder, GRUEncoder, TransformerSequenceEncoder
from comm_jax.models.vector_encoders import VectorMLP

PRECISIONS = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
IMAGE_ENCODERS = {"alexnet": AlexNetFeatures, "resnet18": ResNet18Trunk, "small_cnn": SmallCNN}
SEQUENCE_ENCODERS = {"causal_conv": CausalConvEncoder, "gru": GRUEncoder, "transformer": TransformerSequenceEncoder}
VECTOR_ENCODERS = {"mlp": VectorMLP}
# Frozen pretrained towers (`comm_jax.models.clip_encoders`, imported when one is built: the export loader's
# imports stay jax, flax and numpy).
CLIP_ENCODERS = ("clip_vision", "clip_text")
ENCODERS = (*IMAGE_ENCODERS, *SEQUENCE_ENCODERS, *VECTOR_ENCODERS, *CLIP_ENCODERS, "none")


class NoEncoder(nnx.Module):
    """Inputs that are already features (e.g. precomputed embeddings) pass through unchanged."""

    def __init__(self, n_features: int):
        self.out_channels = n_features

    def __call__(self, x, valid=None):
        return x


def make_encoder(name: str, spec: Mapping[str, Any], *, dtype, rngs: nnx.Rngs) -> tuple[nnx.Module, bool]:
    """(encoder, whether it is an image encoder) for modality `name` of a model config: images
    `[batch, h, w, c]` -> `[batch, h', w', C]`; sequences `[batch, steps, features]` (with key-padding
    `valid` `[batch, steps]`) -> `[batch, steps, C]`; vectors `[batch, F]` -> `[batch, C]`; `none` passes
    features through; `clip_vision` / `clip_text` run frozen pretrained CLIP towers read from the spec's
    `weights` (`comm_jax.models.clip_encoders`) and give token sequences. Its `out_channels` is C. An encoder
    with `gives_mask = True` returns (features, key-padding mask) and the mask replaces the input's."""
    kind = spec.get("encoder", "none")
    args = dict(spec.get("encoder_args", {}))
    shape = tuple(spec["input_shape"])
    if kind in IMAGE_ENCODERS:
        return IMAGE_ENCODERS[kind](shape[-1], dtype=dtype, rngs=rngs, **args), True
    if kind in SEQUENCE_ENCODERS:
        return SEQUENCE_ENCODERS[kind](shape[-1], dtype=dtype, rngs=rngs, **args), False
    if kind in VECTOR_ENCODERS:
        return VECTOR_ENCODERS[kind](shape[-1], dtype=dtype, rngs=rngs, **args), False
    if kind in CLIP_ENCODERS:
        if not spec.get("weights"):
            raise ValueError(f"model.encoders.{name}.weights: encoder {kind!r} needs the path of the CLIP weights")
        from comm_jax.models import clip_encoders

        return clip_encoders.CLIP_ENCODERS[kind](shape[-1], weights=str(spec["weights"]), dtype=dtype,
                                                 rngs=rngs), False
    if kind == "none":
        return NoEncoder(shape[-1]), False
    raise ValueError(f"model.encoders.{name}.encoder: unknown encoder {kind!r}; known: {ENCODERS}")


def check_modality_specs(cfg, positive_keys: tuple[str, ...] = ()) -> None:
    """Fail early, naming the key, on a model config whose modalities, encoders, precision or
    `positive_keys` cannot build."""
    missing = [k for k in ("modalities", "encoders", *positive_keys) if k not in cfg]
    if missing:
        raise ValueError(f"model config lacks keys {missing}")
    if len(cfg.modalities) < 1 or len(set(cfg.modalities)) != len(cfg.modalities):
        raise ValueError(f"model.modalities must be distinct names, got {tuple(cfg.modalities)}")
    for name in cfg.modalities:
        if name not in cfg.encoders:
            raise ValueError(f"model.encoders has no entry for modality {name!r}")
        if "input_shape" not in cfg.encoders[name]:
            raise ValueError(f"model.encoders.{name}.input_shape is required")
    if cfg.get("precision", "float32") not in PRECISIONS:
        raise ValueError(f"model.precision must be one of {tuple(PRECISIONS)}, got {cfg.precision!r}")
    for key in positive_keys:
        if int(cfg[key]) <= 0:
            raise ValueError(f"model.{key} must be positive, got {cfg[key]}")


def cast_input(x: jax.Array, dtype) -> jax.Array:
    """Float inputs in the model's compute dtype; integer inputs (token ids) keep theirs."""
    return x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating) else x
