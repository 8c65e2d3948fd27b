"""Flax NNX models: the fusion model (CoMM) and the unimodal towers (baselines), built from a model config.

`model.architecture` selects one: `fusion` (absent means fusion) or `towers`. Both give
`representations(inputs, subsets, valid)` (Z per subset of modalities), `embed` and `feature_dim`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from comm_jax.models.fusion import FusionTransformer, comm_subsets
from comm_jax.models.multimodal import MultimodalModel, validate_model_config
from comm_jax.models.towers import TowersModel, validate_towers_config

ARCHITECTURES = {"fusion": (MultimodalModel, validate_model_config), "towers": (TowersModel, validate_towers_config)}


def architecture(cfg) -> tuple[type, callable]:
    kind = cfg.get("architecture", "fusion")
    if kind not in ARCHITECTURES:
        raise ValueError(f"model.architecture must be one of {tuple(ARCHITECTURES)}, got {kind!r}")
    return ARCHITECTURES[kind]


def validate(cfg) -> None:
    """Fail early, naming the key, on a model config that cannot build."""
    architecture(cfg)[1](cfg)


def build_model(cfg, seed: int = 0, rngs: nnx.Rngs | None = None) -> nnx.Module:
    """A freshly initialised model from the `model` config section."""
    return architecture(cfg)[0](cfg, rngs=rngs or nnx.Rngs(params=seed))


def split_model(model: nnx.Module):
    """(graph definition, parameters, batch statistics); any other variable kind is an error."""
    return nnx.split(model, nnx.Param, nnx.BatchStat)


def dummy_inputs(cfg, batch: int = 2) -> dict[str, jax.Array]:
    """Zeros of each modality's configured input shape, for shape inference and compilation."""
    return {n: jnp.zeros((batch, *cfg.encoders[n].input_shape), jnp.float32) for n in cfg.modalities}


__all__ = ["FusionTransformer", "MultimodalModel", "TowersModel", "build_model", "comm_subsets", "dummy_inputs",
           "split_model", "validate"]
