"""comm-jax: CoMM multimodal contrastive learning and its baselines in JAX/Flax."""

__version__ = "0.1.0"
