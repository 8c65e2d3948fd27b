"""The unimodal-towers model of the baselines (Cross, Cross+Self, CMC, SimCLR): each modality through
its own encoder to one pooled vector, then its own head; no fusion.

As the reference's baselines on Bimodal Trifeatures: AlexNet features -> flattened feature map ->
linear to a `latent`-d vector (torchvision's AlexNet with its classifier replaced by one linear
layer), then per modality either CLIP's bias-free linear projection or the SimCLR MLP head.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.encoders import PRECISIONS, cast_input, check_modality_specs, make_encoder
from comm_jax.models.head import LinearProjection, ProjectionHead

# `model.pool` per encoder spec: how a feature map or sequence becomes one vector.
POOLS = ("flatten", "mean")
# `model.representation`: what Z of a modality is (what probes and export read).
REPRESENTATIONS = ("pooled", "projected")
PROJECTIONS = ("mlp", "linear")


def _masked_mean(x: jax.Array, valid: jax.Array | None) -> jax.Array:
    """Mean over the steps of `[batch, steps, C]`, padding steps (valid False) left out."""
    if valid is None:
        return x.mean(axis=1)
    weights = valid.astype(x.dtype)[..., None]
    return (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)


class PooledEncoder(nnx.Module):
    """One modality: encoder -> one vector `[batch, latent]`.

    `flatten` (images, the reference's AlexNetEncoder, and vectors): the whole feature map
    flattened, then a linear layer. `mean`: the mean over positions or valid steps, then a linear layer.
    """

    def __init__(self, name: str, spec: Mapping[str, Any], latent: int, *, dtype, rngs: nnx.Rngs):
        self.encoder, self.is_image = make_encoder(name, spec, dtype=dtype, rngs=rngs)
        vector = len(tuple(spec["input_shape"])) == 1   # one vector per example: nothing to pool over
        self.pool = spec.get("pool", "flatten" if self.is_image or vector else "mean")
        if self.pool not in POOLS:
            raise ValueError(f"model.encoders.{name}.pool must be one of {POOLS}, got {self.pool!r}")
        if self.pool == "flatten":
            shape = tuple(spec["input_shape"])
            features = jax.eval_shape(lambda x: self._features(x, None)[0], jax.ShapeDtypeStruct((1, *shape), dtype))
            n_in = math.prod(features.shape[1:])
        else:
            n_in = self.encoder.out_channels
        self.linear = nnx.Linear(n_in, latent, dtype=dtype, rngs=rngs)
        self.dtype = dtype

    def _features(self, x: jax.Array, valid: jax.Array | None) -> tuple[jax.Array, jax.Array | None]:
        features = self.encoder(x) if self.is_image else self.encoder(x, valid)
        return features if getattr(self.encoder, "gives_mask", False) else (features, valid)

    def __call__(self, x: jax.Array, valid: jax.Array | None = None) -> jax.Array:
        features, valid = self._features(cast_input(x, self.dtype), valid)
        if self.pool == "flatten":
            pooled = features.reshape(features.shape[0], -1)
        elif features.ndim == 4:
            pooled = features.mean(axis=(1, 2))
        else:
            pooled = _masked_mean(features, valid)
        return self.linear(pooled)


class TowersModel(nnx.Module):
    """Per-modality pooled vectors and heads, no fusion.

    inputs: dict modality -> array with a leading batch axis; valid: optional dict modality ->
    `[batch, steps]` key-padding masks. Z of a subset of modalities is the concatenation, in the
    subset's order, of each modality's vector: its pooled vector (`representation="pooled"`, the
    reference's Cross+Self, CMC and SimCLR probes) or its projection (`"projected"`, CLIP's).
    """

    def __init__(self, cfg, *, rngs: nnx.Rngs):
        validate_towers_config(cfg)
        self.dtype = PRECISIONS[cfg.get("precision", "float32")]
        self.modalities = tuple(cfg.modalities)
        self.latent = int(cfg.latent)
        self.head_out = int(cfg.head_out)
        self.towers = nnx.Dict({m: PooledEncoder(m, cfg.encoders[m], self.latent, dtype=self.dtype, rngs=rngs)
                                for m in self.modalities})
        self.projection = cfg.get("projection", "mlp")
        if self.projection == "linear":
            self.head = LinearProjection(len(self.modalities), self.latent, self.head_out, dtype=self.dtype,
                                         rngs=rngs)
        else:
            self.heads = nnx.Dict({m: ProjectionHead(self.latent, cfg.head_hidden, self.head_out,
                                                     dtype=self.dtype, rngs=rngs) for m in self.modalities})
        self.representation = cfg.get("representation", "pooled")

    def _check(self, names: Sequence[str], inputs: Mapping[str, jax.Array]) -> None:
        unknown = [n for n in names if n not in self.modalities]
        if unknown:
            raise ValueError(f"unknown modalities {unknown}; the model has {self.modalities}")
        missing = [n for n in names if n not in inputs]
        if missing:
            raise ValueError(f"inputs lack modalities {missing}; got {sorted(inputs)}")

    def pooled(self, inputs, names: Sequence[str], valid=None) -> jax.Array:
        """`[len(names), batch, latent]`: each named modality's pooled vector."""
        self._check(names, inputs)
        return jnp.stack([self.towers[n](inputs[n], None if valid is None else valid.get(n)) for n in names])

    def project(self, pooled: jax.Array, names: Sequence[str]) -> jax.Array:
        """`[len(names), batch, latent]` -> `[len(names), batch, head_out]` float32, each modality
        through its own head (MLP heads normalise with this call's batch statistics)."""
        if self.projection == "linear":
            index = jnp.array([self.modalities.index(n) for n in names])
            kernel = self.head.kernel[...][index].astype(self.dtype)
            out = jnp.einsum("gbw,gwo->gbo", pooled.astype(self.dtype), kernel)
        else:
            out = jnp.stack([self.heads[n](pooled[i][None])[0] for i, n in enumerate(names)])
        return out.astype(jnp.float32)

    def __call__(self, inputs, valid=None, names: Sequence[str] | None = None) -> tuple[jax.Array, jax.Array]:
        """(pooled `[n, batch, latent]`, projected `[n, batch, head_out]` float32) of `names`
        (default: every modality)."""
        names = tuple(names or self.modalities)
        pooled = self.pooled(inputs, names, valid)
        return pooled, self.project(pooled, names)

    def feature_dim(self, subset: Sequence[str]) -> int:
        per_modality = self.head_out if self.representation == "projected" else self.latent
        return per_modality * len(subset)

    def representations(self, inputs, subsets: Sequence[Sequence[str]], valid=None) -> list[jax.Array]:
        """Z `[batch, feature_dim(subset)]` for each subset; every modality's tower runs once."""
        names = [n for n in self.modalities if any(n in s for s in subsets)]
        pooled = self.pooled(inputs, names, valid)
        vectors = self.project(pooled, names) if self.representation == "projected" else pooled
        by_name = {n: vectors[i] for i, n in enumerate(names)}
        return [jnp.concatenate([by_name[n] for n in s], axis=-1) for s in subsets]

    def embed(self, inputs, modalities: Sequence[str] | None = None, valid=None) -> jax.Array:
        return self.representations(inputs, [tuple(modalities or self.modalities)], valid)[0]


def validate_towers_config(cfg) -> None:
    """Fail early, naming the key, on a towers model config that cannot build."""
    check_modality_specs(cfg, ("latent", "head_out"))
    if cfg.get("projection", "mlp") not in PROJECTIONS:
        raise ValueError(f"model.projection must be one of {PROJECTIONS}, got {cfg.projection!r}")
    if cfg.get("projection", "mlp") == "mlp" and int(cfg.get("head_hidden", 0)) <= 0:
        raise ValueError("model.head_hidden must be positive for projection='mlp'")
    if cfg.get("representation", "pooled") not in REPRESENTATIONS:
        raise ValueError(f"model.representation must be one of {REPRESENTATIONS}, got {cfg.representation!r}")
