"""The fusion model (CoMM's): per-modality encoder + latent converter -> fusion transformer (one pass
per mask) -> projection head. Built from the `model` section of a config by `build_model`."""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.adapters import ADAPTERS
from comm_jax.models.encoders import PRECISIONS, cast_input, check_modality_specs, make_encoder
from comm_jax.models.fusion import FusionTransformer, comm_subsets
from comm_jax.models.head import LinearProjection, ProjectionHead

class ModalityEncoder(nnx.Module):
    """One modality: encoder then latent converter, `inputs -> ([batch, T, width], valid [batch, T])`."""

    def __init__(self, name: str, spec: Mapping[str, Any], width: int, *, dtype, rngs: nnx.Rngs):
        self.encoder, self.is_image = make_encoder(name, spec, dtype=dtype, rngs=rngs)
        adapter = spec.get("adapter", "patch" if self.is_image else "identity")
        if adapter not in ADAPTERS:
            raise ValueError(f"model.encoders.{name}.adapter: unknown adapter {adapter!r}; known: {tuple(ADAPTERS)}")
        self.adapter = ADAPTERS[adapter](self.encoder.out_channels, width, dtype=dtype, rngs=rngs,
                                         **dict(spec.get("adapter_args", {})))
        self.dtype = dtype

    def __call__(self, x: jax.Array, valid: jax.Array | None = None):
        x = cast_input(x, self.dtype)
        features = self.encoder(x) if self.is_image else self.encoder(x, valid)
        if getattr(self.encoder, "gives_mask", False):
            features, valid = features
        return self.adapter(features, valid)


class MultimodalModel(nnx.Module):
    """Z for any subset of modalities, and the n + 1 projected embeddings CoMM trains on.

    inputs: dict modality -> array with a leading batch axis (images `[batch, h, w, c]` float,
    sequences `[batch, steps, features]`, tabular `[batch, features]`); valid: optional dict
    modality -> `[batch, steps]` bool key-padding masks (False = padding), honoured everywhere.
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_model_config(cfg)
        self.dtype = PRECISIONS[cfg.get("precision", "float32")]
        self.modalities = tuple(cfg.modalities)
        self.width = int(cfg.width)
        self.encoders = nnx.Dict({name: ModalityEncoder(name, cfg.encoders[name], cfg.width,
                                                        dtype=self.dtype, rngs=rngs)
                                  for name in self.modalities})
        self.fusion = FusionTransformer(cfg.width, cfg.depth, cfg.heads, mlp_ratio=cfg.get("mlp_ratio", 4),
                                        dtype=self.dtype, rngs=rngs)
        if cfg.get("projection", "mlp") == "mlp":
            self.head = ProjectionHead(cfg.width, cfg.head_hidden, cfg.head_out, dtype=self.dtype, rngs=rngs)
        else:   # one map per fusion mask: each modality alone, then all
            masks = len(comm_subsets(len(self.modalities)))
            self.head = LinearProjection(masks, cfg.width, cfg.head_out, dtype=self.dtype, rngs=rngs)

    def _tokens(self, inputs: Mapping[str, jax.Array], names: Sequence[str],
                valid: Mapping[str, jax.Array] | None):
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ValueError(f"inputs lack modalities {missing}; got {sorted(inputs)}")
        out = [self.encoders[n](inputs[n], None if valid is None else valid.get(n)) for n in names]
        return [t for t, _ in out], [v for _, v in out]

    def representations(self, inputs, subsets: Sequence[Sequence[str]], valid=None) -> jax.Array:
        """Z for each subset of modality names: `[len(subsets), batch, width]`. Each modality
        encoder runs once; every fusion pass reuses its tokens."""
        names = [n for n in self.modalities if any(n in s for s in subsets)]
        unknown = {n for s in subsets for n in s} - set(self.modalities)
        if unknown:
            raise ValueError(f"unknown modalities {sorted(unknown)}; the model has {self.modalities}")
        tokens, token_valid = self._tokens(inputs, names, valid)
        index = {n: i for i, n in enumerate(names)}
        return self.fusion(tokens, token_valid, [tuple(index[n] for n in s) for s in subsets])

    def feature_dim(self, subset: Sequence[str]) -> int:
        """Width of Z for any subset: the fusion's CLS output."""
        return self.width

    def embed(self, inputs, modalities: Sequence[str] | None = None, valid=None) -> jax.Array:
        """The representation Z `[batch, width]` (fusion CLS output, before the head)."""
        return self.representations(inputs, [tuple(modalities or self.modalities)], valid)[0]

    def __call__(self, inputs, valid=None) -> tuple[jax.Array, jax.Array]:
        """CoMM's n + 1 masks (each modality alone, then all): returns (Z `[n+1, batch, width]`,
        projected embeddings `[n+1, batch, head_out]` in float32)."""
        subsets = [tuple(self.modalities[i] for i in s) for s in comm_subsets(len(self.modalities))]
        z = self.representations(inputs, subsets, valid)
        return z, self.head(z).astype(jnp.float32)


REQUIRED_MODEL_KEYS = ("width", "depth", "heads", "head_hidden", "head_out")
# `model.projection` (absent means "mlp"): the reference's MLP head, or CLIP's linear projection per mask.
PROJECTIONS = ("mlp", "linear")


def validate_model_config(cfg) -> None:
    """Fail early, naming the key, on a model config that cannot build."""
    check_modality_specs(cfg, REQUIRED_MODEL_KEYS)
    if cfg.get("projection", "mlp") not in PROJECTIONS:
        raise ValueError(f"model.projection must be one of {PROJECTIONS}, got {cfg.projection!r}")
    if cfg.width % cfg.heads:
        raise ValueError(f"model.width ({cfg.width}) must be divisible by model.heads ({cfg.heads})")
