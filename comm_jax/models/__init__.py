"""Flax NNX models: image and sequence encoders, latent converters, fusion transformer, projection head."""

from comm_jax.models.fusion import FusionTransformer, comm_subsets
from comm_jax.models.multimodal import MultimodalModel, build_model, dummy_inputs, validate_model_config

__all__ = ["FusionTransformer", "MultimodalModel", "build_model", "comm_subsets", "dummy_inputs",
           "validate_model_config"]
